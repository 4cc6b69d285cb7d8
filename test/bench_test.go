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
// SPT_BENCH_ROUNDS (transfers per path and direction, default 3),
// SPT_BENCH_LOGINS (logins per path, default 30), SPT_BENCH_SESSIONS (idle
// sessions, default 1000).

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
	fmt.Printf("\n=== Sallyport benchmark summary (%s, %d CPUs, %s) ===\n", cpuModel(), runtimeCPUs(), time.Now().Format("2006-01-02 15:04 MST"))
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

func runtimeCPUs() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return bytes.Count(b, []byte("\nprocessor")) + bytes.Count(b[:min(len(b), 9)], []byte("processor"))
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
func (p *benchPaths) command(ctx context.Context, proxy bool, remote string) *exec.Cmd {
	var args []string
	askDir := p.directAsk
	if proxy {
		askDir = p.proxyAsk
		args = append(p.g.clientArgs("-p", p.source), "-c", benchCipher, p.g.Alice.Name+"@"+p.secret+"@127.0.0.1", remote)
	} else {
		args = append(clientOptions(p.tgt.KnownHosts, "keyboard-interactive,password"),
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

// procCPU returns the user plus system CPU time pid has used so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name in parentheses may hold spaces; fields follow the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / clkTck, nil
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
}

func (t transfer) mbps() float64     { return float64(t.bytes) / t.steady.Seconds() / 1e6 }
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

	var cpu0 time.Duration
	if proxy {
		if cpu0, err = procCPU(p.gatewayPID()); err != nil {
			return transfer{}, err
		}
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
	if proxy {
		cpu1, err := procCPU(p.gatewayPID())
		if err != nil {
			return t, err
		}
		t.cpu = cpu1 - cpu0
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
// straight to sshd, alternately, SPT_BENCH_ROUNDS (3) times each, in each
// direction, and reports the medians, their ratio, and the gateway's CPU
// time per GiB relayed.
func BenchmarkThroughput(b *testing.B) {
	n := envInt(b, "SPT_BENCH_BYTES", gib)
	rounds := int(envInt(b, "SPT_BENCH_ROUNDS", 3))
	if n <= transferWarmup {
		b.Fatalf("SPT_BENCH_BYTES=%d: want more than %d", n, transferWarmup)
	}
	p := newBenchPaths(b)
	for _, dir := range []struct {
		name string
		up   bool
	}{{"upload", true}, {"download", false}} {
		b.Run(dir.name, func(b *testing.B) {
			var proxyRates, directRates, cpuPerGiB, proxyWall, directWall []float64
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
					if proxy {
						proxyRates = append(proxyRates, t.mbps())
						proxyWall = append(proxyWall, t.wallMBps(n))
						cpuPerGiB = append(cpuPerGiB, t.cpu.Seconds()*gib/float64(n))
					} else {
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
			summarize(b, "proxy CPU  %-8s median %.2f CPU-s per GiB relayed (goal <= 1.5; utime+stime of sallyport dev, login included)", dir.name, cpu)
		})
	}
}

func cpuNote(t transfer, proxy bool, n int64) string {
	if !proxy {
		return ""
	}
	return fmt.Sprintf(", gateway CPU %.2fs = %.2f CPU-s/GiB", t.cpu.Seconds(), t.cpu.Seconds()*gib/float64(n))
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

// BenchmarkSetupLatency runs `ssh ... true` SPT_BENCH_LOGINS (30) times
// along each path, interleaved, and reports p50 and p90 of the wall time.
// To explain the difference it also times one argon2id verification with
// the gateway's parameters, and splits a login through the gateway (with
// an x/crypto/ssh client) into handshake-and-authentication, which includes
// argon2id and the credential checkout, and session open, which includes
// the gateway's own login to the target.
func BenchmarkSetupLatency(b *testing.B) {
	logins := int(envInt(b, "SPT_BENCH_LOGINS", 30))
	p := newBenchPaths(b)
	runOnce := func(proxy bool) time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := p.command(ctx, proxy, "true")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		d := time.Since(start)
		if err != nil {
			b.Fatalf("%s ssh ... true: %v\n%s\ngateway log tail:\n%s", pathName(proxy), err, out.String(), p.g.LogTail(10))
		}
		return d
	}
	// Warm up: page cache, sshd's and the gateway's first-use paths.
	for range 2 {
		runOnce(true)
		runOnce(false)
	}
	var proxyD, directD []time.Duration
	for i := range logins {
		order := []bool{true, false}
		if i%2 == 1 {
			order = []bool{false, true}
		}
		for _, proxy := range order {
			d := runOnce(proxy)
			if proxy {
				proxyD = append(proxyD, d)
			} else {
				directD = append(directD, d)
			}
		}
	}
	pp50, pp90 := percentile(proxyD, 50), percentile(proxyD, 90)
	dp50, dp90 := percentile(directD, 50), percentile(directD, 90)
	b.ReportMetric(ms(pp50), "proxy_p50_ms")
	b.ReportMetric(ms(pp90), "proxy_p90_ms")
	b.ReportMetric(ms(dp50), "direct_p50_ms")
	b.ReportMetric(ms(dp90), "direct_p90_ms")
	b.ReportMetric(ms(pp50-dp50), "p50_extra_ms")
	summarize(b, "setup      `ssh ... true` x %d each, interleaved: proxy p50 %.1f ms p90 %.1f ms; direct p50 %.1f ms p90 %.1f ms; p50 proxy-direct %+.1f ms (goal <= +15 ms)",
		logins, ms(pp50), ms(pp90), ms(dp50), ms(dp90), ms(pp50-dp50))

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
	summarize(b, "setup      x/crypto/ssh client, median of %d: via proxy handshake+auth %.1f ms (argon2id, checkout) + session open %.1f ms (proxy dials and logs in to sshd); direct handshake+auth %.1f ms + session open %.1f ms",
		len(auth), ms(median(auth)), ms(median(open)), ms(median(dauth)), ms(median(dopen)))
	b.ReportMetric(0, "ns/op")
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
// and reports how much the gateway's resident memory and goroutine count
// grew per session once they are all open and idle.
func BenchmarkIdleSessions(b *testing.B) {
	sessions := int(envInt(b, "SPT_BENCH_SESSIONS", 1000))
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

	// One session first, so that first-use allocations are in the baseline.
	warm, err := openIdleSession(cfg, g.SSHPort, source)
	if err != nil {
		b.Fatalf("open one session: %v\ngateway log tail:\n%s", err, g.LogTail(10))
	}
	time.Sleep(3 * time.Second)
	rss0, err := procStatusKiB(pid, "VmRSS")
	if err != nil {
		b.Fatal(err)
	}
	m0, err := metrics()
	if err != nil {
		b.Fatal(err)
	}
	active0 := m0["sallyport_ssh_sessions_active"]

	// Open them, openConcurrency at a time.
	open := make([]*idleSession, 0, sessions)
	var mu sync.Mutex
	var firstErr error
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for range openConcurrency {
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

	// Idle: wait until the gateway counts them all, then a few seconds more.
	deadline := time.Now().Add(time.Minute)
	var m1 map[string]float64
	for {
		if m1, err = metrics(); err != nil {
			b.Fatal(err)
		}
		if m1["sallyport_ssh_sessions_active"]-active0 >= float64(sessions) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := m1["sallyport_ssh_sessions_active"] - active0; got != float64(sessions) {
		b.Fatalf("gateway reports %v more active sessions, want %d", got, sessions)
	}
	time.Sleep(5 * time.Second)
	rss1, err := procStatusKiB(pid, "VmRSS")
	if err != nil {
		b.Fatal(err)
	}
	if m1, err = metrics(); err != nil {
		b.Fatal(err)
	}
	n := float64(sessions)
	perRSS := float64(rss1-rss0) / n
	perG := (m1["go_goroutines"] - m0["go_goroutines"]) / n
	perHeap := (m1["go_memstats_heap_inuse_bytes"] - m0["go_memstats_heap_inuse_bytes"]) / n / 1024
	perStack := (m1["go_memstats_stack_inuse_bytes"] - m0["go_memstats_stack_inuse_bytes"]) / n / 1024
	b.ReportMetric(perRSS, "RSS_KiB/session")
	b.ReportMetric(perG, "goroutines/session")
	b.ReportMetric(perHeap, "heap_KiB/session")
	b.ReportMetric(perStack, "stack_KiB/session")
	b.ReportMetric(0, "ns/op")
	summarize(b, "idle       %d interactive sessions (pty + shell) opened in %.1fs (%d at a time): gateway RSS %d -> %d KiB = %.1f KiB/session (goal <= 100); goroutines %.0f -> %.0f = %.1f/session; Go heap in use %.1f KiB/session, goroutine stacks %.1f KiB/session",
		sessions, opening.Seconds(), openConcurrency, rss0, rss1, perRSS, m0["go_goroutines"], m1["go_goroutines"], perG, perHeap, perStack)
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
	return func() (map[string]float64, error) {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", auth)
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
		}
		m := map[string]float64{}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
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
		return m, sc.Err()
	}, sc.Err()
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
