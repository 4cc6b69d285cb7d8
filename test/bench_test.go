package e2e

// Benchmarks behind `make bench`. Each one measures the proxy side by side,
// in the same run, with the real alternative: OpenSSH's ssh straight to the
// same sshd target. They report with b.ReportMetric and add lines to a
// summary printed once at the end (printBenchSummary); they assert nothing
// about time. BENCHMARKS.md explains the numbers.
//
//	go test -run '^$' -bench . -benchtime 1x -timeout 30m ./test/
//
// Knobs for quick runs while developing (defaults are what BENCHMARKS.md
// reports): SPT_BENCH_BYTES (bytes per transfer, default 1 GiB),
// SPT_BENCH_ROUNDS (transfers per path and direction, default 5),
// SPT_BENCH_LOGINS (logins per path, default 30), SPT_BENCH_SESSIONS (idle
// sessions, default 1000), SPT_BENCH_OPEN_CONCURRENCY (logins in flight
// while opening them, default 16), SPT_BENCH_FLOOD_ROUNDS and
// SPT_BENCH_FLOOD_LOGINS (see BenchmarkLoginsUnderFlood).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
	gossh "golang.org/x/crypto/ssh"
)

const (
	gib = 1 << 30
	// benchCipher is the cipher both paths use, on every hop.
	benchCipher = "aes128-gcm@openssh.com"
	// transferWarmup is how much of a transfer passes before the clock
	// starts, so that login and window ramp-up are not counted as transfer.
	transferWarmup = 16 << 20
	// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat
	// (sysconf(_SC_CLK_TCK); 100 on every Linux architecture Go supports).
	clkTck = 100
	// The gateway's argon2id parameters (vault/password.go).
	argonTime, argonMemoryKiB, argonThreads = 2, 19456, 1
	// openConcurrency bounds logins in flight in the idle-sessions benchmark.
	openConcurrency = 16
)

// envInt returns the integer in environment variable name, or def.
func envInt(tb testing.TB, name string, def int64) int64 {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 {
		tb.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}

// --- summary -------------------------------------------------------------

var benchSummary struct {
	mu    sync.Mutex
	lines []string
}

// summarize adds a line to the summary printed after all benchmarks ran,
// and logs it with the benchmark.
func summarize(b *testing.B, format string, args ...any) {
	b.Helper()
	line := fmt.Sprintf(format, args...)
	b.Log(line)
	benchSummary.mu.Lock()
	benchSummary.lines = append(benchSummary.lines, line)
	benchSummary.mu.Unlock()
}

// printBenchSummary prints the summary lines, if any benchmark added one.
func printBenchSummary() {
	benchSummary.mu.Lock()
	defer benchSummary.mu.Unlock()
	if len(benchSummary.lines) == 0 {
		return
	}
	fmt.Printf("\n=== Sallyport benchmark summary (%s, %d CPUs, %s) ===\n", cpuModel(), runtime.NumCPU(), time.Now().Format("2006-01-02 15:04 MST"))
	sshV, _ := exec.Command("ssh", "-V").CombinedOutput()
	fmt.Printf("%s, %s", runtime.Version(), sshV)
	for _, k := range []string{"GOGC", "GOMEMLIMIT", "GODEBUG", "GOMAXPROCS"} {
		if v, ok := os.LookupEnv(k); ok {
			fmt.Printf("note: %s=%s was set and applies to the gateway too\n", k, v)
		}
	}
	for _, l := range benchSummary.lines {
		fmt.Println(l)
	}
	fmt.Println()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// --- statistics ----------------------------------------------------------

// percentile returns the nearest-rank p-th percentile of xs (0 < p ≤ 100).
func percentile[T int64 | float64 | time.Duration](xs []T, p float64) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func median[T int64 | float64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// --- the two paths -------------------------------------------------------

// benchPaths runs OpenSSH's ssh along the two paths being compared: through
// the gateway as alice onto a secret for the sshd target, and straight to
// the same sshd as the target account. Both log in with a password answered
// by the same askpass script and use the same cipher.
type benchPaths struct {
	g      *gateway
	tgt    *sshdTarget
	secret string
	ssh    string
	source string // the gateway path's loopback source address

	proxyAsk, directAsk string // askpass answer directories
}

func newBenchPaths(b *testing.B) *benchPaths {
	b.Helper()
	g := env.Gateway(b)
	p := &benchPaths{g: g, tgt: g.target, secret: g.Name("bench"), ssh: clientTool(b, "ssh"), source: g.nextSource()}
	g.AddSecret(b, secretSpec{Name: p.secret, Allow: []string{g.Alice.Name}})
	var err error
	if p.proxyAsk, err = writeAnswers(g.Alice.Answers()); err != nil {
		b.Fatal(err)
	}
	if p.directAsk, err = writeAnswers(answers{Password: p.tgt.Password}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(p.proxyAsk); os.RemoveAll(p.directAsk) })
	return p
}

// command returns an ssh run of remote along one path (proxy or direct).
// extra are ssh options put first, where they win over the harness's own
// (ssh keeps the first value it sees).
func (p *benchPaths) command(ctx context.Context, proxy bool, remote string, extra ...string) *exec.Cmd {
	args := slices.Clone(extra)
	askDir := p.directAsk
	if proxy {
		askDir = p.proxyAsk
		args = append(append(args, p.g.clientArgs("-p", p.source)...), "-c", benchCipher, p.g.Alice.Name+"@"+p.secret+"@127.0.0.1", remote)
	} else {
		args = append(append(args, clientOptions(p.tgt.KnownHosts, "keyboard-interactive,password")...),
			"-p", strconv.Itoa(p.tgt.Port), "-c", benchCipher, p.tgt.User+"@127.0.0.1", remote)
	}
	cmd := exec.CommandContext(ctx, p.ssh, args...)
	cmd.Env = append(cleanEnv(), "SSH_ASKPASS="+env.askpass(), "SSH_ASKPASS_REQUIRE=force", "SPT_ASKPASS_DIR="+askDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func pathName(proxy bool) string {
	if proxy {
		return "proxy"
	}
	return "direct"
}

// gatewayPID is the PID of the `sallyport dev` process the suite started.
func (p *benchPaths) gatewayPID() int { return p.g.cmd.Process.Pid }

// procCPU returns the user and the system CPU time pid has used so far.
func procCPU(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name in parentheses may hold spaces; fields follow the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return time.Duration(utime) * time.Second / clkTck, time.Duration(stime) * time.Second / clkTck, nil
}

// noteBackground measures how busy the machine is over two seconds before
// a benchmark starts its work, and adds it to the summary: the machine is
// shared, and a compile running alongside skews every number.
func noteBackground(b *testing.B) {
	b.Helper()
	busy0, err := machineBusy()
	if err != nil {
		b.Fatal(err)
	}
	const window = 2 * time.Second
	time.Sleep(window)
	busy1, err := machineBusy()
	if err != nil {
		b.Fatal(err)
	}
	cpus := (busy1 - busy0).Seconds() / window.Seconds()
	warn := ""
	if cpus > 0.25 {
		warn = " -- something else is running: treat these numbers with suspicion and rerun"
	}
	summarize(b, "background %.2f of %d CPUs busy in the %v before %s%s", cpus, runtime.NumCPU(), window, b.Name(), warn)
}

// machineBusy returns the CPU time all CPUs together have spent busy (not
// idle or waiting for I/O) since boot, from /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 7 { // steal, guest, guest_nice: not this machine's work
			break
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clkTck, nil
}

// procStatusKiB returns a "Name:   N kB" field of /proc/PID/status.
func procStatusKiB(pid int, name string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, name)
}

// --- 1 and 2: throughput and the proxy's CPU per GiB ----------------------

// transfer is one timed bulk transfer.
type transfer struct {
	wall   time.Duration // ssh start to exit, login included
	steady time.Duration // from transferWarmup bytes to exit
	bytes  int64         // counted in steady
	cpu    time.Duration // the gateway's CPU time over the run (proxy only)
	sys    time.Duration // the part of cpu spent in the kernel
	box    time.Duration // CPU time the whole machine was busy over the run
}

func (t transfer) mbps() float64            { return float64(t.bytes) / t.steady.Seconds() / 1e6 }
func (t transfer) wallMBps(n int64) float64 { return float64(n) / t.wall.Seconds() / 1e6 }

// runTransfer streams n zero bytes through ssh along one path: up writes
// them to ssh's stdin for `cat > /dev/null`, down reads them from ssh's
// stdout out of `head -c n /dev/zero`.
func (p *benchPaths) runTransfer(proxy, up bool, n int64) (transfer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	remote := "cat > /dev/null"
	if !up {
		remote = "head -c " + strconv.FormatInt(n, 10) + " /dev/zero"
	}
	cmd := p.command(ctx, proxy, remote)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	var stdin io.WriteCloser
	var stdout io.ReadCloser
	var err error
	if up {
		cmd.Stdout = &stderr
		stdin, err = cmd.StdinPipe()
	} else {
		stdout, err = cmd.StdoutPipe()
	}
	if err != nil {
		return transfer{}, err
	}

	var user0, sys0 time.Duration
	if proxy {
		if user0, sys0, err = procCPU(p.gatewayPID()); err != nil {
			return transfer{}, err
		}
	}
	box0, err := machineBusy()
	if err != nil {
		return transfer{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return transfer{}, err
	}
	buf := make([]byte, 256<<10)
	var done, markBytes int64
	var mark time.Time
	var ioErr error
	for done < n {
		var k int
		if up {
			k, ioErr = stdin.Write(buf[:min(int64(len(buf)), n-done)])
		} else {
			k, ioErr = stdout.Read(buf)
		}
		done += int64(k)
		if mark.IsZero() && done >= transferWarmup {
			mark, markBytes = time.Now(), done
		}
		if ioErr != nil {
			break
		}
	}
	if up {
		stdin.Close()
	} else if ioErr == nil {
		// Nothing may follow the n bytes.
		var extra [1]byte
		if k, _ := io.ReadFull(stdout, extra[:]); k != 0 {
			ioErr = errors.New("more output than requested")
		}
	}
	waitErr := cmd.Wait()
	end := time.Now()
	t := transfer{wall: end.Sub(start), steady: end.Sub(mark), bytes: done - markBytes}
	box1, err := machineBusy()
	if err != nil {
		return t, err
	}
	t.box = box1 - box0
	if proxy {
		user1, sys1, err := procCPU(p.gatewayPID())
		if err != nil {
			return t, err
		}
		t.cpu, t.sys = user1-user0+sys1-sys0, sys1-sys0
	}
	if ioErr == io.EOF {
		ioErr = nil
	}
	if err := errors.Join(ioErr, waitErr); err != nil || done != n || mark.IsZero() {
		return t, fmt.Errorf("%s transfer moved %d of %d bytes: %v; ssh stderr:\n%s", pathName(proxy), done, n, err, stderr.String())
	}
	return t, nil
}

// BenchmarkThroughput streams SPT_BENCH_BYTES (1 GiB) through the proxy and
// straight to sshd, alternately, SPT_BENCH_ROUNDS (5) times each, in each
// direction, and reports the medians, their ratio, and the gateway's CPU
// time per GiB relayed.
func BenchmarkThroughput(b *testing.B) {
	n := envInt(b, "SPT_BENCH_BYTES", gib)
	rounds := int(envInt(b, "SPT_BENCH_ROUNDS", 5))
	if n <= transferWarmup {
		b.Fatalf("SPT_BENCH_BYTES=%d: want more than %d", n, transferWarmup)
	}
	p := newBenchPaths(b)
	noteBackground(b)
	for _, dir := range []struct {
		name string
		up   bool
	}{{"upload", true}, {"download", false}} {
		b.Run(dir.name, func(b *testing.B) {
			var proxyRates, directRates, cpuPerGiB, sysShare, proxyWall, directWall, proxyBox, directBox []float64
			for r := 0; r < rounds; r++ {
				// Alternate which path goes first, so a drift in the
				// machine's load does not favour one of them.
				order := []bool{true, false}
				if r%2 == 1 {
					order = []bool{false, true}
				}
				for _, proxy := range order {
					t, err := p.runTransfer(proxy, dir.up, n)
					if err != nil {
						b.Fatalf("%v\ngateway log tail:\n%s", err, p.g.LogTail(10))
					}
					b.Logf("round %d %-6s %s: %7.1f MB/s after the first %d MiB (%6.1f MB/s over %.2fs including login)%s",
						r+1, pathName(proxy), dir.name, t.mbps(), transferWarmup>>20, t.wallMBps(n), t.wall.Seconds(), cpuNote(t, proxy, n))
					boxPerGiB := t.box.Seconds() * gib / float64(n)
					if proxy {
						proxyBox = append(proxyBox, boxPerGiB)
						proxyRates = append(proxyRates, t.mbps())
						proxyWall = append(proxyWall, t.wallMBps(n))
						cpuPerGiB = append(cpuPerGiB, t.cpu.Seconds()*gib/float64(n))
						sysShare = append(sysShare, 100*t.sys.Seconds()/t.cpu.Seconds())
					} else {
						directBox = append(directBox, boxPerGiB)
						directRates = append(directRates, t.mbps())
						directWall = append(directWall, t.wallMBps(n))
					}
				}
			}
			pm, dm, cpu := median(proxyRates), median(directRates), median(cpuPerGiB)
			b.ReportMetric(pm, "proxy_MB/s")
			b.ReportMetric(dm, "direct_MB/s")
			b.ReportMetric(pm/dm, "proxy/direct")
			b.ReportMetric(cpu, "proxy_CPU-s/GiB")
			b.ReportMetric(0, "ns/op") // the whole run is one op; its time is meaningless
			summarize(b, "throughput %-8s %s, median of %d x %s: proxy %.0f MB/s, direct %.0f MB/s, proxy/direct %.2f (goal >= 0.65); including login: proxy %.0f, direct %.0f MB/s",
				dir.name, benchCipher, rounds, humanBytes(n), pm, dm, pm/dm, median(proxyWall), median(directWall))
			summarize(b, "proxy CPU  %-8s median %.2f CPU-s per GiB relayed (goal <= 1.5; utime+stime of sallyport dev, login included), %.0f%% of it in the kernel; whole machine busy %.2f CPU-s/GiB proxied, %.2f direct",
				dir.name, cpu, median(sysShare), median(proxyBox), median(directBox))
		})
	}
}

func cpuNote(t transfer, proxy bool, n int64) string {
	box := fmt.Sprintf("; machine busy %.2f CPU-s/GiB (%.2f of %d CPUs)", t.box.Seconds()*gib/float64(n), t.box.Seconds()/t.wall.Seconds(), runtime.NumCPU())
	if !proxy {
		return box
	}
	return fmt.Sprintf("; gateway CPU %.2fs (%.0f%% system) = %.2f CPU-s/GiB", t.cpu.Seconds(), 100*t.sys.Seconds()/t.cpu.Seconds(), t.cpu.Seconds()*gib/float64(n)) + box
}

func humanBytes(n int64) string {
	switch {
	case n%gib == 0:
		return fmt.Sprintf("%d GiB", n/gib)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// --- 3: setup latency ----------------------------------------------------

// sameKex makes ssh use the key exchange that OpenSSH 9.2 ends up with
// through the gateway on both hops (the gateway offers no sntrup761), so a
// direct run with it differs from a proxied one only by the proxy.
var sameKex = []string{"-o", "KexAlgorithms=" + gossh.KeyExchangeCurve25519}

// BenchmarkSetupLatency runs `ssh ... true` SPT_BENCH_LOGINS (30) times
// along each of three paths, interleaved: through the proxy; straight to
// sshd as OpenSSH does by default (sntrup761x25519 key exchange); and
// straight to sshd with curve25519-sha256, the key exchange the proxied
// run gets on both of its hops. It reports p50 and p90 of the wall time.
// To explain the difference it also times one argon2id verification with
// the gateway's parameters, times the phases of a login from ssh's own
// debug output, and splits a login through the gateway (with an
// x/crypto/ssh client) into handshake-and-authentication, which includes
// argon2id and the credential checkout, and session open, which includes
// the gateway's own login to the target.
func BenchmarkSetupLatency(b *testing.B) {
	logins := int(envInt(b, "SPT_BENCH_LOGINS", 30))
	p := newBenchPaths(b)
	noteBackground(b)
	type path struct {
		name  string
		proxy bool
		extra []string
		d     []time.Duration
	}
	paths := []*path{
		{name: "proxy", proxy: true},
		{name: "direct", proxy: false},
		{name: "direct-samekex", proxy: false, extra: sameKex},
	}
	runOnce := func(pa *path) time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := p.command(ctx, pa.proxy, "true", pa.extra...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		d := time.Since(start)
		if err != nil {
			b.Fatalf("%s ssh ... true: %v\n%s\ngateway log tail:\n%s", pa.name, err, out.String(), p.g.LogTail(10))
		}
		return d
	}
	// Warm up: page cache, sshd's and the gateway's first-use paths.
	for range 2 {
		for _, pa := range paths {
			runOnce(pa)
		}
	}
	for i := range logins {
		// Rotate the order, so that no path always follows the same one.
		for j := range paths {
			pa := paths[(i+j)%len(paths)]
			pa.d = append(pa.d, runOnce(pa))
		}
	}
	pr, dd, ds := paths[0].d, paths[1].d, paths[2].d
	b.ReportMetric(ms(percentile(pr, 50)), "proxy_p50_ms")
	b.ReportMetric(ms(percentile(pr, 90)), "proxy_p90_ms")
	b.ReportMetric(ms(percentile(dd, 50)), "direct_p50_ms")
	b.ReportMetric(ms(percentile(dd, 90)), "direct_p90_ms")
	b.ReportMetric(ms(percentile(ds, 50)), "direct_samekex_p50_ms")
	b.ReportMetric(ms(percentile(ds, 90)), "direct_samekex_p90_ms")
	b.ReportMetric(ms(percentile(pr, 50)-percentile(ds, 50)), "p50_extra_ms")
	summarize(b, "setup      `ssh ... true` x %d each, interleaved: proxy p50 %.1f ms p90 %.1f ms; direct, same key exchange (curve25519-sha256) p50 %.1f ms p90 %.1f ms; direct, OpenSSH default (sntrup761x25519) p50 %.1f ms p90 %.1f ms",
		logins, ms(percentile(pr, 50)), ms(percentile(pr, 90)), ms(percentile(ds, 50)), ms(percentile(ds, 90)), ms(percentile(dd, 50)), ms(percentile(dd, 90)))
	summarize(b, "setup      p50 proxy - direct: %+.1f ms with the same key exchange (goal <= +15 ms); %+.1f ms against OpenSSH's default",
		ms(percentile(pr, 50)-percentile(ds, 50)), ms(percentile(pr, 50)-percentile(dd, 50)))

	// Where the time goes, from ssh's debug messages.
	const traced = 5
	phaseNames := []string{"key exchange", "service request", "authentication", "session open", "command and close"}
	for _, pa := range paths {
		var phases [][]time.Duration
		for range traced {
			ph, err := p.tracePhases(pa.proxy, pa.extra)
			if err != nil {
				b.Fatalf("%s: %v", pa.name, err)
			}
			phases = append(phases, ph)
		}
		var parts []string
		for k, name := range phaseNames {
			col := make([]time.Duration, 0, traced)
			for _, ph := range phases {
				col = append(col, ph[k])
			}
			parts = append(parts, fmt.Sprintf("%s %.1f", name, ms(median(col))))
		}
		summarize(b, "setup      %-14s phases from ssh -o LogLevel=DEBUG2, median of %d, ms: %s", pa.name, traced, strings.Join(parts, ", "))
	}

	// One argon2id verification, as the gateway runs it.
	var argon []time.Duration
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	for range 11 {
		start := time.Now()
		_ = argon2.IDKey([]byte(p.g.Alice.Password), salt, argonTime, argonMemoryKiB, argonThreads, 32)
		argon = append(argon, time.Since(start))
	}
	b.ReportMetric(ms(median(argon)), "argon2id_ms")
	summarize(b, "argon2id   one verification (m=%d KiB, t=%d, p=%d) in this process: median %.1f ms of %d",
		argonMemoryKiB, argonTime, argonThreads, ms(median(argon)), len(argon))

	// Where a gateway login spends its time, seen from an x/crypto/ssh client.
	var auth, open, dauth, dopen []time.Duration
	for i := range 10 {
		a, o, err := p.goLogin(true)
		if err != nil {
			b.Fatalf("x/crypto client through the gateway: %v\ngateway log tail:\n%s", err, p.g.LogTail(10))
		}
		da, do, err := p.goLogin(false)
		if err != nil {
			b.Fatalf("x/crypto client to sshd: %v", err)
		}
		if i > 0 { // the first is a warm-up
			auth, open, dauth, dopen = append(auth, a), append(open, o), append(dauth, da), append(dopen, do)
		}
	}
	b.ReportMetric(ms(median(auth)), "proxy_auth_ms")
	b.ReportMetric(ms(median(open)), "proxy_session_open_ms")
	summarize(b, "setup      x/crypto/ssh client (TCP_NODELAY), median of %d: via proxy handshake+auth %.1f ms (incl. argon2id, checkout) + session open %.1f ms (proxy logs in to sshd); direct handshake+auth %.1f ms + session open %.1f ms",
		len(auth), ms(median(auth)), ms(median(open)), ms(median(dauth)), ms(median(dopen)))
	b.ReportMetric(0, "ns/op")
}

// tracePhases runs `ssh ... true` along one path with debug messages on and
// returns how long its phases took, from when ssh printed the messages
// that end them: the key exchange reply, the service accept, the
// authentication success, the session channel's open confirmation, and
// the exit.
func (p *benchPaths) tracePhases(proxy bool, extra []string) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := p.command(ctx, proxy, "true", append([]string{"-o", "LogLevel=DEBUG2"}, extra...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	markers := []string{"SSH2_MSG_KEX_ECDH_REPLY received", "SSH2_MSG_SERVICE_ACCEPT received", "Authenticated to ", "channel 0: open confirm"}
	at := make([]time.Duration, len(markers))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(stderr)
	next := 0
	for sc.Scan() {
		if next < len(markers) && strings.Contains(sc.Text(), markers[next]) {
			at[next] = time.Since(start)
			next++
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("ssh ... true: %w", err)
	}
	end := time.Since(start)
	if next < len(markers) {
		return nil, fmt.Errorf("ssh printed no %q", markers[next])
	}
	phases := []time.Duration{at[0]}
	for k := 1; k < len(at); k++ {
		phases = append(phases, at[k]-at[k-1])
	}
	return append(phases, end-at[len(at)-1]), nil
}

// goLogin logs in along one path with an x/crypto/ssh client, with the key
// exchange OpenSSH 9.2 ends up using with the gateway (curve25519-sha256),
// and returns the time to an authenticated connection and then to an open
// session channel.
func (p *benchPaths) goLogin(proxy bool) (auth, open time.Duration, err error) {
	var cfg *gossh.ClientConfig
	addr := "127.0.0.1:" + strconv.Itoa(p.tgt.Port)
	d := net.Dialer{Timeout: 10 * time.Second}
	if proxy {
		cfg, err = p.g.aliceClientConfig(p.secret)
		addr = "127.0.0.1:" + strconv.Itoa(p.g.SSHPort)
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(p.source)}
	} else {
		var hk gossh.PublicKey
		hk, _, _, _, err = gossh.ParseAuthorizedKey([]byte(p.tgt.HostKeyPub))
		cfg = &gossh.ClientConfig{
			User:            p.tgt.User,
			Auth:            []gossh.AuthMethod{gossh.Password(p.tgt.Password)},
			HostKeyCallback: gossh.FixedHostKey(hk),
		}
	}
	if err != nil {
		return 0, 0, err
	}
	cfg.KeyExchanges = []string{gossh.KeyExchangeCurve25519}
	cfg.Ciphers = []string{gossh.CipherAES128GCM}
	cfg.Timeout = 10 * time.Second
	start := time.Now()
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	sc, chans, reqs, err := gossh.NewClientConn(nc, addr, cfg)
	if err != nil {
		return 0, 0, err
	}
	auth = time.Since(start)
	c := gossh.NewClient(sc, chans, reqs)
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		return 0, 0, err
	}
	open = time.Since(start) - auth
	s.Close()
	return auth, open, nil
}

// aliceClientConfig is an x/crypto/ssh client configuration that logs in to
// the gateway as alice onto secret, answering the password prompt.
func (g *gateway) aliceClientConfig(secret string) (*gossh.ClientConfig, error) {
	pub, err := os.ReadFile(filepath.Join(g.dataDir, "ssh_host_key.pub"))
	if err != nil {
		return nil, err
	}
	hk, _, _, _, err := gossh.ParseAuthorizedKey(pub)
	if err != nil {
		return nil, err
	}
	pw := g.Alice.Password
	return &gossh.ClientConfig{
		User: g.Alice.Name + "@" + secret,
		Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
			a := make([]string, len(qs))
			for i, q := range qs {
				if !strings.Contains(q, "assword") {
					return nil, fmt.Errorf("unexpected prompt %q", q)
				}
				a[i] = pw
			}
			return a, nil
		})},
		HostKeyCallback: gossh.FixedHostKey(hk),
		Timeout:         10 * time.Second,
	}, nil
}

// --- 4: memory per idle interactive session ------------------------------

// BenchmarkIdleSessions opens SPT_BENCH_SESSIONS (1000) interactive
// sessions (pty-req and shell) through the gateway with x/crypto/ssh
// clients, onto an in-process x/crypto/ssh target whose shell just waits,
// and reports how much the gateway's resident memory (VmRSS), its live Go
// heap and goroutine stacks, and its goroutine count grew per session once
// they are all open and idle. Both readings follow a garbage collection
// (see sampleIdle). Logins go SPT_BENCH_OPEN_CONCURRENCY (16) at a time;
// the target's password is added as a secret with its host key pinned.
func BenchmarkIdleSessions(b *testing.B) {
	sessions := int(envInt(b, "SPT_BENCH_SESSIONS", 1000))
	conc := int(envInt(b, "SPT_BENCH_OPEN_CONCURRENCY", openConcurrency))
	g := env.Gateway(b)
	pid := g.cmd.Process.Pid

	// Two descriptors per session here (client and target side), two in the gateway.
	need := uint64(2*sessions + 256)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur < need {
		lim.Cur = min(lim.Max, max(need, lim.Cur))
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			b.Fatalf("raise RLIMIT_NOFILE: %v", err)
		}
	}
	if lim.Cur < need {
		b.Fatalf("RLIMIT_NOFILE hard limit %d is below the %d descriptors %d sessions need", lim.Max, need, sessions)
	}
	if gwLim, err := procOpenFilesLimit(pid); err != nil || gwLim < need {
		b.Fatalf("the gateway may open %d files (%v); %d sessions need %d", gwLim, err, sessions, need)
	}

	tgt, err := startIdleTarget()
	if err != nil {
		b.Fatal(err)
	}
	defer tgt.Close()
	secret := g.Name("idle")
	g.MustCtl(b, tgt.password+"\n", "secret", "add", secret,
		"--host", "127.0.0.1", "--port", strconv.Itoa(tgt.port), "--username", tgt.user,
		"--password-stdin", "--host-key", tgt.hostKeyPub, "--allow", g.Alice.Name)
	cfg, err := g.aliceClientConfig(secret)
	if err != nil {
		b.Fatal(err)
	}
	metrics, err := g.metricsClient()
	if err != nil {
		b.Fatal(err)
	}
	source := g.nextSource()
	noteBackground(b)

	// One session first, so that first-use allocations are in the baseline.
	warm, err := openIdleSession(cfg, g.SSHPort, source)
	if err != nil {
		b.Fatalf("open one session: %v\ngateway log tail:\n%s", err, g.LogTail(10))
	}
	firstOpen := time.Now()
	base, err := sampleIdle(pid, metrics)
	if err != nil {
		b.Fatal(err)
	}
	active0 := base.m["sallyport_ssh_sessions_active"]

	// Open them, openConcurrency at a time.
	open := make([]*idleSession, 0, sessions)
	var mu sync.Mutex
	var firstErr error
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				s, err := openIdleSession(cfg, g.SSHPort, source)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if s != nil {
					open = append(open, s)
				}
				mu.Unlock()
			}
		}()
	}
	for range sessions {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	opening := time.Since(start)
	defer func() {
		// Close everything and wait (bounded) for the gateway to notice, so
		// that the suite's end-of-run shutdown finds no sessions left.
		closeAll(append(open, warm))
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			if m, err := metrics(); err == nil && m["sallyport_ssh_sessions_active"] == 0 {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		b.Errorf("sessions still active at the gateway a minute after closing them")
	}()
	if firstErr != nil {
		b.Fatalf("opened %d of %d sessions, then: %v\ngateway log tail:\n%s", len(open), sessions, firstErr, g.LogTail(10))
	}

	// Wait until the gateway counts them all.
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := metrics()
		if err != nil {
			b.Fatal(err)
		}
		got := m["sallyport_ssh_sessions_active"] - active0
		if got == float64(sessions) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("gateway reports %v more active sessions, want %d", got, sessions)
		}
		time.Sleep(200 * time.Millisecond)
	}
	peakRSS, err := procStatusKiB(pid, "VmRSS")
	if err != nil {
		b.Fatal(err)
	}
	idle, err := sampleIdle(pid, metrics)
	if err != nil {
		b.Fatal(err)
	}
	if got := idle.m["sallyport_ssh_sessions_active"] - active0; got != float64(sessions) {
		b.Fatalf("only %v of the %d sessions were still open at the gateway when measured, %v after the first was opened", got, sessions, time.Since(firstOpen).Round(time.Second))
	}

	n := float64(sessions)
	perRSS := float64(idle.rss-base.rss) / n
	perAnon := float64(idle.anon-base.anon) / n
	delta := func(k string) float64 { return (idle.m[k] - base.m[k]) / n }
	perG := delta("go_goroutines")
	perHeap := delta("go_memstats_heap_inuse_bytes") / 1024
	perStack := delta("go_memstats_stack_inuse_bytes") / 1024
	b.ReportMetric(perRSS, "RSS_KiB/session")
	b.ReportMetric(perG, "goroutines/session")
	b.ReportMetric(perHeap, "heap_KiB/session")
	b.ReportMetric(perStack, "stack_KiB/session")
	b.ReportMetric(0, "ns/op")
	perNet := (float64(idle.rss) - idle.freeHeld - float64(base.rss) + base.freeHeld) / n
	b.ReportMetric(perNet, "RSS_minus_free_heap_KiB/session")
	summarize(b, "idle       %d interactive sessions (pty + shell) opened in %.1fs (%d at a time); gateway VmRSS, each after a collection and %v idle: %d -> %d KiB = %.1f KiB/session (goal <= 100; RssAnon %.1f KiB/session; right after opening %.1f KiB/session)",
		sessions, opening.Seconds(), conc, idleWait, base.rss, idle.rss, perRSS, perAnon, float64(peakRSS-base.rss)/n)
	summarize(b, "idle       free heap the Go runtime held (resident, reusable) at those readings: %.0f -> %.0f MiB; VmRSS minus it: %.1f KiB/session",
		base.freeHeld/1024, idle.freeHeld/1024, perNet)
	summarize(b, "idle       per session: Go heap in use %.1f KiB + goroutine stacks %.1f KiB = %.1f KiB live; %.1f goroutines (%.0f -> %.0f)",
		perHeap, perStack, perHeap+perStack, perG, base.m["go_goroutines"], idle.m["go_goroutines"])
	b.Logf("/metrics requests to bring on a collection: %d before, %d after opening", base.scrapes, idle.scrapes)

	// The alternative: what an idle interactive session costs OpenSSH's
	// sshd (as a jump host would hold it), measured on the suite's sshd.
	sshdKiB, shellKiB, err := sshdIdleCost(env.Target(b), directIdleSessions)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(sshdKiB, "sshd_PSS_KiB/session")
	summarize(b, "idle       alternative: OpenSSH sshd, %d idle interactive sessions opened straight to it: %.0f KiB PSS per session in its two sshd processes, plus %.0f KiB for the login shell",
		directIdleSessions, sshdKiB, shellKiB)
}

// directIdleSessions is how many idle sessions measure sshd's cost; each is
// two sshd processes and a shell, so a few are enough.
const directIdleSessions = 20

// sshdIdleCost opens n interactive sessions (pty-req and shell) straight to
// the sshd target and returns the proportional set size they added, per
// session, in sshd's own processes and in the shells under them.
func sshdIdleCost(tgt *sshdTarget, n int) (sshdKiB, shellKiB float64, err error) {
	hk, _, _, _, err := gossh.ParseAuthorizedKey([]byte(tgt.HostKeyPub))
	if err != nil {
		return 0, 0, err
	}
	cfg := &gossh.ClientConfig{
		User:            tgt.User,
		Auth:            []gossh.AuthMethod{gossh.Password(tgt.Password)},
		HostKeyCallback: gossh.FixedHostKey(hk),
		Timeout:         10 * time.Second,
	}
	sshd0, shell0, err := pssUnder(tgt.cmd.Process.Pid)
	if err != nil {
		return 0, 0, err
	}
	var open []*idleSession
	defer func() { closeAll(open) }()
	for range n {
		s, err := openIdleSession(cfg, tgt.Port, "127.0.0.1")
		if err != nil {
			return 0, 0, fmt.Errorf("session straight to sshd: %w", err)
		}
		open = append(open, s)
	}
	time.Sleep(2 * time.Second) // let the shells start and settle
	sshd1, shell1, err := pssUnder(tgt.cmd.Process.Pid)
	if err != nil {
		return 0, 0, err
	}
	return float64(sshd1-sshd0) / float64(n), float64(shell1-shell0) / float64(n), nil
}

// pssUnder sums the Pss (KiB) of the processes descending from root,
// separately for those running sshd and for the others (shells).
func pssUnder(root int) (sshdKiB, otherKiB int64, err error) {
	parent := map[int]int{}
	comm := map[int]string{}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, err
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue // gone
		}
		lp, rp := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if lp < 0 || rp < lp {
			continue
		}
		f := strings.Fields(string(b[rp+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid], comm[pid] = ppid, string(b[lp+1:rp])
	}
	for pid := range parent {
		p := pid
		for p != 0 && p != root {
			p = parent[p]
		}
		if p != root || pid == root {
			continue
		}
		pss, err := smapsPss(pid)
		if err != nil {
			continue // gone
		}
		if comm[pid] == "sshd" {
			sshdKiB += pss
		} else {
			otherKiB += pss
		}
	}
	return sshdKiB, otherKiB, nil
}

func smapsPss(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/smaps_rollup has no Pss", pid)
}

// memSample is the gateway's memory at one point.
type memSample struct {
	rss, anon int64   // VmRSS and RssAnon, KiB
	freeHeld  float64 // KiB of free heap the runtime held at the same time
	m         map[string]float64
	scrapes   int // /metrics requests it took to bring on a collection
}

// idleWait is how long the gateway is left alone before its memory is
// read: it checks every 10 s whether free heap has piled up and, if so,
// returns it to the operating system (cmd/sallyport/memory.go).
const idleWait = 15 * time.Second

// sampleIdle brings on a garbage collection in the gateway, leaves it idle
// for idleWait, and reads its memory. The collection comes first because an
// idle gateway allocates almost nothing: the garbage of the last logins
// (argon2id alone allocates 19 MiB per login) would otherwise stay counted
// as heap in use, and resident, for minutes, and the gateway cuts every
// session two minutes after it connected (see BENCHMARKS.md), so the
// benchmark cannot wait for the runtime's own. It asks for /metrics, which
// allocates a little each time, until the runtime reports a collection that
// ended after the first request.
func sampleIdle(pid int, metrics func() (map[string]float64, error)) (memSample, error) {
	const maxScrapes = 20000
	var s memSample
	since := float64(time.Now().UnixNano()) / 1e9
	for ; ; s.scrapes++ {
		m, err := metrics()
		if err != nil {
			return s, err
		}
		if m["go_memstats_last_gc_time_seconds"] > since {
			break
		}
		if s.scrapes == maxScrapes {
			return s, fmt.Errorf("no garbage collection in the gateway after %d requests for /metrics", maxScrapes)
		}
	}
	time.Sleep(idleWait)
	var err error
	if s.rss, err = procStatusKiB(pid, "VmRSS"); err != nil {
		return s, err
	}
	if s.anon, err = procStatusKiB(pid, "RssAnon"); err != nil {
		return s, err
	}
	if s.m, err = metrics(); err != nil {
		return s, err
	}
	// Free heap pages the runtime has not returned to the OS are resident
	// but reusable: a later reading may find them reused instead of new.
	s.freeHeld = (s.m["go_memstats_heap_idle_bytes"] - s.m["go_memstats_heap_released_bytes"]) / 1024
	return s, nil
}

func procOpenFilesLimit(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/limits")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseUint(f[0], 10, 64)
			}
		}
	}
	return 0, errors.New("no Max open files line")
}

// idleSession is one client connection with a shell open through the gateway.
type idleSession struct {
	client  *gossh.Client
	session *gossh.Session
}

func openIdleSession(cfg *gossh.ClientConfig, port int, source string) (*idleSession, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	sc, chans, reqs, err := gossh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	c := gossh.NewClient(sc, chans, reqs)
	s, err := c.NewSession()
	if err == nil {
		err = s.RequestPty("xterm", 24, 80, gossh.TerminalModes{gossh.ECHO: 1})
	}
	if err == nil {
		err = s.Shell()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return &idleSession{client: c, session: s}, nil
}

func closeAll(ss []*idleSession) {
	for _, s := range ss {
		if s != nil {
			s.session.Close()
			s.client.Close()
		}
	}
}

// metricsClient returns a function that fetches the gateway's /metrics with
// the admin token, trusting only the API's own certificate, and returns the
// unlabelled series.
func (g *gateway) metricsClient() (func() (map[string]float64, error), error) {
	text, err := g.metricsTextClient()
	if err != nil {
		return nil, err
	}
	return func() (map[string]float64, error) {
		body, err := text()
		if err != nil {
			return nil, err
		}
		m := map[string]float64{}
		for _, line := range strings.Split(body, "\n") {
			if line == "" || line[0] == '#' || strings.Contains(line, "{") {
				continue
			}
			f := strings.Fields(line)
			if len(f) == 2 {
				if v, err := strconv.ParseFloat(f[1], 64); err == nil {
					m[f[0]] = v
				}
			}
		}
		return m, nil
	}, nil
}

// metricsTextClient returns a function that fetches the gateway's /metrics
// page (Prometheus text format) over its admin API.
func (g *gateway) metricsTextClient() (func() (string, error), error) {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(g.dataDir, name)) }
	token, err := read("admin.token")
	if err != nil {
		return nil, err
	}
	caPEM, err := read("api.crt")
	if err != nil {
		return nil, err
	}
	addr, err := read("api.addr")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("api.crt holds no certificate")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	url := strings.TrimSpace(string(addr)) + "/metrics"
	auth := "Bearer " + strings.TrimSpace(string(token))
	return func() (string, error) {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return "", err
		}
		req.Header.Set("Authorization", auth)
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("GET /metrics: %s", resp.Status)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		return string(b), err
	}, nil
}

// idleTarget is an in-process x/crypto/ssh server standing in for 1000
// targets: password authentication, and session channels whose shell
// accepts a pty and then waits, silent, until the channel closes.
type idleTarget struct {
	ln         net.Listener
	port       int
	user       string
	password   string
	hostKeyPub string

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startIdleTarget() (*idleTarget, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	sshPub, err := gossh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	t := &idleTarget{
		user:       "idle",
		password:   "Idle-" + randString(alnum, 24) + "-7q",
		hostKeyPub: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sshPub))),
	}
	cfg := &gossh.ServerConfig{
		PasswordCallback: func(meta gossh.ConnMetadata, pw []byte) (*gossh.Permissions, error) {
			if meta.User() == t.user && subtle.ConstantTimeCompare(pw, []byte(t.password)) == 1 {
				return &gossh.Permissions{}, nil
			}
			return nil, errors.New("denied")
		},
	}
	cfg.AddHostKey(signer)
	if t.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	t.port = t.ln.Addr().(*net.TCPAddr).Port
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		for {
			nc, err := t.ln.Accept()
			if err != nil {
				return
			}
			t.mu.Lock()
			t.conns = append(t.conns, nc)
			t.mu.Unlock()
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				t.serve(nc, cfg)
			}()
		}
	}()
	return t, nil
}

func (t *idleTarget) serve(nc net.Conn, cfg *gossh.ServerConfig) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	sc, chans, reqs, err := gossh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	_ = nc.SetDeadline(time.Time{})
	go gossh.DiscardRequests(reqs)
	for nch := range chans {
		if nch.ChannelType() != "session" {
			_ = nch.Reject(gossh.UnknownChannelType, "sessions only")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for r := range creqs { // ends when the channel closes
				ok := r.Type == "pty-req" || r.Type == "shell" || r.Type == "window-change"
				if r.WantReply {
					_ = r.Reply(ok, nil)
				}
			}
		}()
	}
}

// Close stops the listener and every connection and waits for the handlers.
func (t *idleTarget) Close() {
	t.ln.Close()
	t.mu.Lock()
	for _, c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}
