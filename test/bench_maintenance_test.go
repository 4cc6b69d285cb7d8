package e2e

// Benchmarks of credential maintenance against the suite's PAM sshd
// (`make bench`), each against the real alternative in the same run:
//
//   - BenchmarkHeartbeats: heartbeats of key secrets through a
//     `sallyport engine` of a `sallyport vault` (built-in connector),
//     against a bare x/crypto/ssh loop making the same key logins to the
//     same target with the same number in flight; the target is the
//     suite's sshd, then an in-process server that costs little.
//   - BenchmarkRotate1000: 1,000 key rotations through two engines,
//     against a loop calling sshtarget.RotateKey in this process with as
//     many in flight as the vault lets the engines run.
//
// Both read CPU time from /proc: the engines' and the vault's own, sshd's
// (the listener's and its reaped per-connection children's), this
// process's, and the whole machine's.
//
// Knobs: SPT_BENCH_HEARTBEATS (heartbeats per round against sshd, default
// 200), SPT_BENCH_HEARTBEATS_CHEAP (the same against an in-process target,
// default 1000), SPT_BENCH_HEARTBEAT_ROUNDS (rounds per path, default 3),
// SPT_BENCH_ROTATIONS (default 1000) and SPT_BENCH_ROTATE_ACCOUNTS_PARALLEL
// (useradd runs at once while setting up, default 1: useradd and chpasswd
// lock /etc/passwd and /etc/shadow, and contending for the locks made it
// slower).

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/internal/sshdtest"
	"github.com/sallyport/sallyport/sshtarget"
	"github.com/sallyport/sallyport/vault"
)

const (
	// heartbeatBenchConfig: lifetimes short enough that a lost item shows
	// in seconds; no changes run.
	heartbeatBenchConfig = `maintenance:
  heartbeat_ttl: 30s
  change_ttl: 60s
  resend_grace: 5s
`
	// hbResendAfter is heartbeat_ttl + resend_grace above: a heartbeat
	// whose result was lost goes out again this long after it was sent,
	// so a result recorded later than this after a round began is a
	// second try.
	hbResendAfter = 35 * time.Second
	// rotateBenchConfig lets 16 changes run at once on the one target
	// host (every secret is on 127.0.0.1), each engine up to 16.
	rotateBenchConfig = `maintenance:
  heartbeat_ttl: 30s
  change_ttl: 2m
  resend_grace: 10s
  host_changes: 16
  engine_changes: 16
`
	// rotateInFlight is host_changes above: the vault sends no more
	// changes to one host at once, whatever the engines could take.
	rotateInFlight = 16
	// heartbeatInFlight is the engine's work prefetch (engine/work.go):
	// the heartbeats one engine runs at once.
	heartbeatInFlight = 32
	// heartbeatAccounts bounds the accounts the heartbeat secrets share:
	// a heartbeat changes nothing, so secrets may share an account and key.
	heartbeatAccounts = 8
	// maintLoginTimeout is the engine's per-login bound (engine/tasks.go).
	maintLoginTimeout = 20 * time.Second
)

// --- shared helpers ---------------------------------------------------------

// adminAPI returns a client of the cluster's admin API, built the way
// `sallyport ctl` builds one, so that requests cost an API call and not a
// ctl process each.
func adminAPI(b *testing.B, c *cluster) *vault.Client {
	b.Helper()
	token, err := vault.ReadToken(filepath.Join(c.vaultData, "admin.token"))
	if err != nil {
		b.Fatal(err)
	}
	defer clear(token)
	ca, err := os.ReadFile(filepath.Join(c.vaultData, "api.crt"))
	if err != nil {
		b.Fatal(err)
	}
	api, err := vault.NewClient("https://127.0.0.1:"+strconv.Itoa(c.apiPort), string(token), ca)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(api.Close)
	return api
}

// eachParallel runs f(i) for i in [0, n) on at most workers goroutines.
func eachParallel(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}

// sshdPID returns the PID of srv's listening sshd, from its pid file, or
// 0 when that cannot be read or is not srv's sshd.
func sshdPID(srv *sshdtest.Server) int {
	dir := filepath.Dir(srv.KnownHosts)
	raw, err := os.ReadFile(filepath.Join(dir, "sshd.pid")) // #nosec G304 -- sshdtest's own directory
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !bytes.Contains(cmdline, []byte(dir)) {
		return 0
	}
	return pid
}

// treeCPU returns the CPU time pid has used and that of its children it
// has waited for (utime + stime + cutime + cstime). For sshd's listener
// that is every finished connection: each is a child that sshd reaps,
// with its own privilege-separated children reaped by it.
func treeCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var sum int64
	for _, s := range f[11:15] { // utime, stime, cutime, cstime
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return time.Duration(sum) * time.Second / clkTck, nil
}

// cpuMeter reads the CPU time of the parties to a maintenance run.
type cpuMeter struct {
	engines []int // engine PIDs
	vault   int
	sshd    int // 0: unknown
}

// cpuSnap is one reading.
type cpuSnap struct {
	at                         time.Time
	engines, vault, sshd, self time.Duration
	box                        time.Duration // the whole machine, busy
}

func (m cpuMeter) read(b *testing.B) cpuSnap {
	b.Helper()
	s := cpuSnap{at: time.Now()}
	own := func(pid int) time.Duration {
		u, sy, err := procCPU(pid)
		if err != nil {
			b.Fatal(err)
		}
		return u + sy
	}
	for _, pid := range m.engines {
		s.engines += own(pid)
	}
	if m.vault != 0 {
		s.vault = own(m.vault)
	}
	s.self = own(os.Getpid())
	if m.sshd != 0 {
		var err error
		if s.sshd, err = treeCPU(m.sshd); err != nil {
			b.Fatal(err)
		}
	}
	var err error
	if s.box, err = machineBusy(); err != nil {
		b.Fatal(err)
	}
	return s
}

// sub is the CPU used between from and s.
func (s cpuSnap) sub(from cpuSnap) cpuSnap {
	return cpuSnap{at: s.at, engines: s.engines - from.engines, vault: s.vault - from.vault, sshd: s.sshd - from.sshd,
		self: s.self - from.self, box: s.box - from.box}
}

// per is d divided among n operations, in ms.
func per(d time.Duration, n int) float64 { return ms(d) / float64(max(n, 1)) }

// settleSSHD gives sshd a moment to reap the connections that just ended,
// so that their CPU shows in its children's time.
func settleSSHD() { time.Sleep(500 * time.Millisecond) }

// notApplied counts the lines of the vault's log (this run of it) that
// say a task result was not applied, and hold every one of also.
func notApplied(c *cluster, also ...string) int {
	n := 0
	for _, line := range strings.Split(string(c.vault.Log()), "\n") {
		if strings.Contains(line, "task result not applied") && !slices.ContainsFunc(also, func(s string) bool { return !strings.Contains(line, s) }) {
			n++
		}
	}
	return n
}

// authorizedLine is the authorized_keys form of a wire-format host key.
func authorizedLine(b *testing.B, wire []byte) string {
	b.Helper()
	pk, err := gossh.ParsePublicKey(wire)
	if err != nil {
		b.Fatal(err)
	}
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pk)))
}

// addKeySecrets adds one key secret per name through the API, four at a
// time, on 127.0.0.1:port with that host key: names[i] logs in as
// accounts[i] with keys[i].
func addKeySecrets(b *testing.B, api *vault.Client, c *cluster, port int, hostKeyWire []byte, site string, names []string, accounts []*sshdtest.Account, keys [][]byte) {
	b.Helper()
	hostKey := authorizedLine(b, hostKeyWire)
	var failed atomic.Int64
	var firstErr atomic.Value
	eachParallel(len(names), 4, func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := api.AddSecret(ctx, vault.SecretSpec{Name: names[i], Host: "127.0.0.1", Port: port,
			Username: accounts[i].Name, PrivateKey: bytes.Clone(keys[i]), HostKey: hostKey,
			Allow: []string{c.Alice.Name}, Site: site})
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		}
	})
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d secrets not added; first: %v", n, len(names), firstErr.Load())
	}
}

// listSecrets is the secret list by name.
func listSecrets(b *testing.B, api *vault.Client) map[string]vault.SecretInfo {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := api.ListSecrets(ctx)
	if err != nil {
		b.Fatal(err)
	}
	out := make(map[string]vault.SecretInfo, len(list))
	for _, s := range list {
		out[s.Name] = s
	}
	return out
}

// request calls call (HeartbeatSecret or RotateSecret) for every name,
// eight at a time, failing b on any error.
func request(b *testing.B, api *vault.Client, names []string, what string, call func(*vault.Client, context.Context, string) error) {
	b.Helper()
	var failed atomic.Int64
	var firstErr atomic.Value
	eachParallel(len(names), 8, func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := call(api, ctx, names[i]); err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		}
	})
	if n := failed.Load(); n > 0 {
		b.Fatalf("%s: %d of %d requests failed; first: %v", what, n, len(names), firstErr.Load())
	}
}

// bareKeyConfig is a client configuration for the bare loops: the key
// login the engine makes (the same key exchanges, ciphers and MACs as
// sshtarget, the pinned host key compared in constant time).
func bareKeyConfig(user string, signer gossh.Signer, hostKey []byte) *gossh.ClientConfig {
	return &gossh.ClientConfig{
		Config: gossh.Config{
			KeyExchanges: []string{gossh.KeyExchangeMLKEM768X25519, gossh.KeyExchangeCurve25519, gossh.KeyExchangeECDHP256,
				gossh.KeyExchangeECDHP384, gossh.KeyExchangeECDHP521},
			Ciphers: []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM, gossh.CipherChaCha20Poly1305},
			MACs:    []string{gossh.HMACSHA256ETM, gossh.HMACSHA512ETM},
		},
		User:              user,
		Auth:              []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyAlgorithms: []string{gossh.KeyAlgoED25519},
		HostKeyCallback: func(_ string, _ net.Addr, key gossh.PublicKey) error {
			if subtle.ConstantTimeCompare(key.Marshal(), hostKey) == 1 {
				return nil
			}
			return errors.New("host key does not match the pin")
		},
		Timeout: maintLoginTimeout,
	}
}

// --- 1: heartbeats -----------------------------------------------------------

// BenchmarkHeartbeats measures heartbeats (sshtarget.Check: connect,
// check the pinned host key, log in with the secret's key, close) through
// one `sallyport engine` of a `sallyport vault` on the built-in connector.
// Key secrets with no heartbeat interval; a
// round asks the vault (through the admin API) for a heartbeat of every
// one and waits until each has a new result. The alternative is a bare
// x/crypto/ssh loop in this process: the same logins (same keys, same
// algorithms, pinned host key) to the same target, with as many in flight
// as the engine runs (its work prefetch, 32). SPT_BENCH_HEARTBEAT_ROUNDS
// (3) rounds per path, the paths taking turns, after a warm-up round of
// each that touches every secret once.
//
// It runs against two targets. The suite's PAM sshd is the real one:
// SPT_BENCH_HEARTBEATS (200) secrets there share heartbeatAccounts
// accounts (a heartbeat changes nothing). sshd costs far more per login
// than either client, so the second target is an in-process x/crypto/ssh
// server that accepts the key and closes, with SPT_BENCH_HEARTBEATS_CHEAP
// (1000) secrets: it shows what the engine does when the target is not the
// bottleneck (the loop's CPU then includes that server's).
//
// A round's rate is (n-1) over the time from its first result to its last:
// for the engine, the times the vault recorded the results; for the loop,
// when each login had closed. CPU per heartbeat is the engine process's
// utime+stime over the round divided by n; the loop's is this process's.
func BenchmarkHeartbeats(b *testing.B) {
	n := int(envInt(b, "SPT_BENCH_HEARTBEATS", 200))
	nCheap := int(envInt(b, "SPT_BENCH_HEARTBEATS_CHEAP", 1000))
	rounds := int(envInt(b, "SPT_BENCH_HEARTBEAT_ROUNDS", 3))
	srv := env.SSHD(b)
	dir := b.TempDir()
	cfg := filepath.Join(dir, "sallyport.yaml")
	if err := os.WriteFile(cfg, []byte(heartbeatBenchConfig), 0o600); err != nil {
		b.Fatal(err)
	}
	c := startCluster(b, "--config", cfg)
	c.Ctl(b, "site", "add", "bench-hb")
	e := c.StartEngine(b, "bench-hb", "--config", cfg)
	c.Approve(b, e)
	hb := &heartbeatBench{b: b, api: adminAPI(b, c), e: e, sshd: srv, rounds: rounds,
		meter: cpuMeter{engines: []int{e.cmd.Process.Pid}, vault: c.vault.cmd.Process.Pid, sshd: sshdPID(srv)}}
	if hb.meter.sshd == 0 {
		summarize(b, "heartbeat  sshd's PID not found: its CPU is left out")
	}

	// The suite's sshd: n secrets on heartbeatAccounts accounts.
	nAcct := min(n, heartbeatAccounts)
	accounts := make([]*sshdtest.Account, nAcct)
	keys := make([][]byte, nAcct)
	signers := make([]gossh.Signer, nAcct)
	for i := range accounts {
		accounts[i] = srv.AddAccount(b)
		keys[i] = newAccountKey(b, srv, accounts[i])
		c.admin.AddNeedle("the password of "+accounts[i].Name, accounts[i].Password)
		c.admin.AddNeedle("the key of "+accounts[i].Name, keys[i])
		var err error
		if signers[i], err = gossh.ParsePrivateKey(keys[i]); err != nil {
			b.Fatal(err)
		}
	}
	sshdNames := make([]string, n)
	secAccounts := make([]*sshdtest.Account, n)
	secKeys := make([][]byte, n)
	for i := range sshdNames {
		sshdNames[i] = fmt.Sprintf("bench-hb-%04d", i)
		secAccounts[i], secKeys[i] = accounts[i%nAcct], keys[i%nAcct]
	}
	addKeySecrets(b, hb.api, c, srv.Port, srv.HostKey, "bench-hb", sshdNames, secAccounts, secKeys)
	sshdAddr := srv.Addr()
	viaSSHD := hb.run("sshd", sshdNames, func(i int) error {
		k := i % nAcct
		cl, err := gossh.Dial("tcp", sshdAddr, bareKeyConfig(accounts[k].Name, signers[k], srv.HostKey))
		if err != nil {
			return err
		}
		return cl.Close()
	})

	// An in-process target that costs little: the same key for all.
	kt := startKeyTarget(b, signers[0].PublicKey())
	cheapNames := make([]string, nCheap)
	cheapAccount := &sshdtest.Account{Name: "bench"}
	secAccounts, secKeys = make([]*sshdtest.Account, nCheap), make([][]byte, nCheap)
	for i := range cheapNames {
		cheapNames[i] = fmt.Sprintf("bench-hbq-%04d", i)
		secAccounts[i], secKeys[i] = cheapAccount, keys[0]
	}
	addKeySecrets(b, hb.api, c, kt.port, kt.hostKey, "bench-hb", cheapNames, secAccounts, secKeys)
	cheapAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(kt.port))
	viaCheap := hb.run("cheap", cheapNames, func(int) error {
		cl, err := gossh.Dial("tcp", cheapAddr, bareKeyConfig(cheapAccount.Name, signers[0], kt.hostKey))
		if err != nil {
			return err
		}
		return cl.Close()
	})

	b.ReportMetric(viaSSHD.engineRate, "heartbeats/s")
	b.ReportMetric(viaSSHD.bareRate, "bare_logins/s")
	b.ReportMetric(viaSSHD.engineRate/viaSSHD.bareRate, "engine/bare")
	b.ReportMetric(viaSSHD.engineCPU, "engine_cpu_ms/heartbeat")
	b.ReportMetric(viaSSHD.vaultCPU, "vault_cpu_ms/heartbeat")
	b.ReportMetric(viaSSHD.bareCPU, "bare_client_cpu_ms/login")
	b.ReportMetric(viaSSHD.sshdCPU, "sshd_cpu_ms/heartbeat")
	b.ReportMetric(viaSSHD.bareSSHD, "sshd_cpu_ms/bare_login")
	b.ReportMetric(viaCheap.engineRate, "cheap_heartbeats/s")
	b.ReportMetric(viaCheap.bareRate, "cheap_bare_logins/s")
	b.ReportMetric(viaCheap.engineCPU, "cheap_engine_cpu_ms/heartbeat")
	b.ReportMetric(0, "ns/op")
	summarize(b, "heartbeat  %d secrets on sshd, %d on the cheap target, %d rounds per path, %d in flight; idle, the engine used %.1f ms CPU/s; the vault logged %d results it could not apply (%d of them SQLITE_BUSY)",
		n, nCheap, rounds, heartbeatInFlight, hb.idleEngine, notApplied(c), notApplied(c, "SQLITE_BUSY"))
	for _, r := range []heartbeatResult{viaSSHD, viaCheap} {
		summarize(b, "heartbeat  %-5s engine: median %.1f heartbeats/s (rounds %s); bare x/crypto/ssh loop: %.1f logins/s (rounds %s); ratio %.2f",
			r.target, r.engineRate, r.engineRates, r.bareRate, r.bareRates, r.engineRate/r.bareRate)
		summarize(b, "heartbeat  %-5s %d of %d heartbeats had their result lost by the vault and were sent again %v later; counting those, to the last result: median %.1f heartbeats/s (rounds %s)",
			r.target, r.resent, r.total, hbResendAfter, r.engineAllRate, r.engineAllRates)
		summarize(b, "heartbeat  %-5s CPU per heartbeat, ms: engine %.2f (rounds %s; goal <= 2, i.e. >= 500 per engine CPU-second: %.0f), vault %.2f, sshd %.2f, whole machine %.2f",
			r.target, r.engineCPU, r.engineCPUs, 1000/r.engineCPU, r.vaultCPU, r.sshdCPU, r.engineBox)
		who := "this process"
		if r.target == "cheap" {
			who = "this process (the target's side too)"
		}
		summarize(b, "heartbeat  %-5s CPU per bare login, ms: %s %.2f (rounds %s), sshd %.2f, whole machine %.2f",
			r.target, who, r.bareCPU, r.bareCPUs, r.bareSSHD, r.bareBox)
	}
}

// heartbeatBench runs the rounds of BenchmarkHeartbeats.
type heartbeatBench struct {
	b          *testing.B
	api        *vault.Client
	e          *engineProc
	sshd       *sshdtest.Server // its log tail explains a refused heartbeat
	meter      cpuMeter
	rounds     int
	idleEngine float64 // ms of CPU per second, engine idle
}

// heartbeatRound is one round of one path.
type heartbeatRound struct {
	rate float64 // per second, first result to last of the first pass
	snap cpuSnap // CPU used over the round
	n    int
	// For the engine: work is the CPU used until the first pass was in,
	// for the k heartbeats of that pass; the rest (n-k) had their result
	// lost and were sent again (allRate counts them, to the last result).
	work    cpuSnap
	k       int
	allRate float64
}

// heartbeatResult is the medians of one target's rounds, CPU in ms per
// heartbeat or login.
type heartbeatResult struct {
	target                                       string
	engineRate, bareRate, engineAllRate          float64
	engineRates, bareRates, engineCPUs, bareCPUs string
	engineAllRates                               string
	engineCPU, vaultCPU, sshdCPU, engineBox      float64
	bareCPU, bareSSHD, bareBox                   float64
	resent, total                                int // heartbeats sent twice, and all, over the rounds
}

// run warms up, measures the background once, and takes turns: engine
// heartbeats of names, and the bare loop calling login(i) for i < n.
func (h *heartbeatBench) run(target string, names []string, login func(i int) error) heartbeatResult {
	b := h.b
	h.engineRound(names)
	h.bareRound(len(names), login)
	if h.idleEngine == 0 {
		idle0 := h.meter.read(b)
		noteBackground(b)
		idle := h.meter.read(b).sub(idle0)
		h.idleEngine = ms(idle.engines) / idle.at.Sub(idle0.at).Seconds()
	}
	var ours, bare []heartbeatRound
	for r := range h.rounds {
		if r%2 == 0 {
			ours = append(ours, h.engineRound(names))
			bare = append(bare, h.bareRound(len(names), login))
		} else {
			bare = append(bare, h.bareRound(len(names), login))
			ours = append(ours, h.engineRound(names))
		}
	}
	res := heartbeatResult{target: target}
	// pick is the median over rounds of f, and every round's value.
	pick := func(rs []heartbeatRound, f func(heartbeatRound) float64) (float64, string) {
		xs := make([]float64, len(rs))
		parts := make([]string, len(rs))
		for i, r := range rs {
			xs[i] = f(r)
			parts[i] = strconv.FormatFloat(xs[i], 'f', 2, 64)
		}
		return median(xs), strings.Join(parts, ", ")
	}
	rate := func(r heartbeatRound) float64 { return r.rate }
	res.engineRate, res.engineRates = pick(ours, rate)
	res.engineAllRate, res.engineAllRates = pick(ours, func(r heartbeatRound) float64 { return r.allRate })
	res.bareRate, res.bareRates = pick(bare, rate)
	res.engineCPU, res.engineCPUs = pick(ours, func(r heartbeatRound) float64 { return per(r.work.engines, r.k) })
	res.vaultCPU, _ = pick(ours, func(r heartbeatRound) float64 { return per(r.work.vault, r.k) })
	for _, r := range ours {
		res.resent += r.n - r.k
		res.total += r.n
	}
	res.sshdCPU, _ = pick(ours, func(r heartbeatRound) float64 { return per(r.snap.sshd, r.n) })
	res.engineBox, _ = pick(ours, func(r heartbeatRound) float64 { return per(r.snap.box, r.n) })
	res.bareCPU, res.bareCPUs = pick(bare, func(r heartbeatRound) float64 { return per(r.snap.self, r.n) })
	res.bareSSHD, _ = pick(bare, func(r heartbeatRound) float64 { return per(r.snap.sshd, r.n) })
	res.bareBox, _ = pick(bare, func(r heartbeatRound) float64 { return per(r.snap.box, r.n) })
	return res
}

// engineRound asks for a heartbeat of every name and waits for all the
// results. The first pass is every result recorded before a lost one
// could have been sent again (hbResendAfter); its rate and CPU are the
// engine's. A result the vault failed to record shows up as a second try,
// after the resend window: the round waits for those too, and counts
// them.
func (h *heartbeatBench) engineRound(names []string) heartbeatRound {
	b := h.b
	s0 := h.meter.read(b)
	t0 := time.Now()
	request(b, h.api, names, "heartbeat", (*vault.Client).HeartbeatSecret)
	deadline := time.Now().Add(5 * time.Minute)
	type poll struct {
		snap cpuSnap
		done int
	}
	var polls []poll
	var at []time.Time
	var bad []string // "name: outcome" of each heartbeat not ok
	for {
		at, bad = at[:0], bad[:0]
		rows := listSecrets(b, h.api)
		for _, name := range names {
			m := rows[name].Maintenance
			if m.LastHeartbeatAt.After(t0) {
				at = append(at, m.LastHeartbeatAt)
				if m.LastHeartbeat != "ok" {
					bad = append(bad, name+": "+m.LastHeartbeat)
				}
			}
		}
		polls = append(polls, poll{h.meter.read(b), len(at)})
		if len(at) == len(names) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d heartbeats came back in 5 minutes; engine log:\n%s", len(at), len(names), h.e.LogTail(20))
		}
		time.Sleep(500 * time.Millisecond)
	}
	settleSSHD()
	used := h.meter.read(b).sub(s0)
	if len(bad) > 0 {
		b.Errorf("%d of %d heartbeats did not come back ok:\n%s\nsshd log:\n%s",
			len(bad), len(names), strings.Join(bad, "\n"), h.sshd.LogTail(40))
	}
	slices.SortFunc(at, time.Time.Compare)
	cut := t0.Add(hbResendAfter)
	k := len(at)
	for k > 0 && at[k-1].After(cut) {
		k--
	}
	r := heartbeatRound{snap: used, n: len(names), k: k, work: used,
		allRate: float64(len(at)-1) / at[len(at)-1].Sub(at[0]).Seconds()}
	r.rate = r.allRate
	if k >= 2 && k < len(at) {
		r.rate = float64(k-1) / at[k-1].Sub(at[0]).Seconds()
		for _, p := range polls {
			if p.done >= k {
				r.work = p.snap.sub(s0)
				break
			}
		}
	}
	return r
}

// bareRound calls login(i) for i < n, heartbeatInFlight at once.
func (h *heartbeatBench) bareRound(n int, login func(i int) error) heartbeatRound {
	b := h.b
	s0 := h.meter.read(b)
	ends := make([]time.Time, n)
	var bad atomic.Int64
	var firstErr atomic.Value
	eachParallel(n, heartbeatInFlight, func(i int) {
		err := login(i)
		ends[i] = time.Now()
		if err != nil {
			bad.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		}
	})
	settleSSHD()
	used := h.meter.read(b).sub(s0)
	if bad.Load() > 0 {
		b.Errorf("bare loop: %d of %d logins failed; first: %v", bad.Load(), n, firstErr.Load())
	}
	first, last := slices.MinFunc(ends, time.Time.Compare), slices.MaxFunc(ends, time.Time.Compare)
	rate := float64(n-1) / last.Sub(first).Seconds()
	return heartbeatRound{rate: rate, snap: used, n: n, work: used, k: n, allRate: rate}
}

// keyTarget is an in-process SSH server that lets one key in and does
// nothing else: a target that costs little per login.
type keyTarget struct {
	ln      net.Listener
	port    int
	hostKey []byte // wire format
	wg      sync.WaitGroup
}

// startKeyTarget serves until the benchmark ends, admitting any user
// with the key allowed.
func startKeyTarget(b *testing.B, allowed gossh.PublicKey) *keyTarget {
	b.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		b.Fatal(err)
	}
	want := allowed.Marshal()
	cfg := &gossh.ServerConfig{
		PublicKeyCallback: func(_ gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
			if subtle.ConstantTimeCompare(key.Marshal(), want) == 1 {
				return &gossh.Permissions{}, nil
			}
			return nil, errors.New("not this key")
		},
	}
	cfg.AddHostKey(signer)
	t := &keyTarget{hostKey: signer.PublicKey().Marshal()}
	if t.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	t.port = t.ln.Addr().(*net.TCPAddr).Port
	t.wg.Go(func() {
		for {
			nc, err := t.ln.Accept()
			if err != nil {
				return
			}
			t.wg.Go(func() { serveKeyLogin(nc, cfg) })
		}
	})
	b.Cleanup(func() { _ = t.ln.Close(); t.wg.Wait() })
	return t
}

// serveKeyLogin completes one login, refuses every channel, and returns
// when the client hangs up (or after a minute).
func serveKeyLogin(nc net.Conn, cfg *gossh.ServerConfig) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	sc, chans, reqs, err := gossh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go gossh.DiscardRequests(reqs)
	for ch := range chans {
		_ = ch.Reject(gossh.Prohibited, "logins only")
	}
}

// --- 2: 1,000 rotations ------------------------------------------------------

// BenchmarkRotate1000 measures how long SPT_BENCH_ROTATIONS (1000) key
// rotations take through two engines of one site on the built-in
// connector. Every secret has an account of its own (a rotation rewrites
// the account's authorized_keys, so two at once on one account could lose
// a line). The vault lets rotateInFlight changes run on the one target
// host at once (host_changes), each engine up to 16 (engine_changes).
// A rotation is: the vault makes and stores a new ed25519 key and sends
// a change; the engine runs sshtarget.RotateKey (append the new key, log
// in with it, remove the old, check that the old is refused and the new
// logs in) and then logs in with the new key once more to report what
// logs in; the vault promotes it.
//
// The alternative, in the same run and first: the same rotations done by
// a loop in this process calling sshtarget.RotateKey with a fresh key,
// rotateInFlight at once, on the same accounts (the keys it leaves are
// the ones the secrets are added with). Afterwards a sample of 20 secrets
// is revealed with `sallyport keys reveal` (vault stopped) and tried with
// OpenSSH: the new key must log in, the one before it must not.
func BenchmarkRotate1000(b *testing.B) {
	n := int(envInt(b, "SPT_BENCH_ROTATIONS", 1000))
	addWorkers := int(envInt(b, "SPT_BENCH_ROTATE_ACCOUNTS_PARALLEL", 1))
	srv := env.SSHD(b)
	dir := b.TempDir()
	cfg := filepath.Join(dir, "sallyport.yaml")
	if err := os.WriteFile(cfg, []byte(rotateBenchConfig), 0o600); err != nil {
		b.Fatal(err)
	}
	c := startCluster(b, "--config", cfg)
	c.Ctl(b, "site", "add", "bench-rot")
	e1 := c.StartEngine(b, "bench-rot", "--config", cfg)
	e2 := c.StartEngine(b, "bench-rot", "--config", cfg)
	c.Approve(b, e1)
	c.Approve(b, e2)
	api := adminAPI(b, c)

	// Accounts, one per secret, each with a first key.
	accounts := make([]*sshdtest.Account, n)
	k0 := make([][]byte, n)
	start := time.Now()
	eachParallel(n, addWorkers, func(i int) {
		a := srv.AddAccount(b)
		k0[i] = newAccountKey(b, srv, a)
		accounts[i] = a
	})
	if b.Failed() {
		b.FailNow()
	}
	setup := time.Since(start)
	summarize(b, "rotate     setup: %d accounts (useradd, chpasswd, a first key in authorized_keys), %d at a time: %.1f s, %.0f ms per account",
		n, addWorkers, setup.Seconds(), per(setup, n))

	meter := cpuMeter{engines: []int{e1.cmd.Process.Pid, e2.cmd.Process.Pid}, vault: c.vault.cmd.Process.Pid, sshd: sshdPID(srv)}
	if meter.sshd == 0 {
		summarize(b, "rotate     sshd's PID not found: its CPU is left out")
	}
	noteBackground(b)

	// The alternative: RotateKey in a loop, rotateInFlight at once.
	k1 := make([][]byte, n)
	var bareFailed atomic.Int64
	var bareErr atomic.Value
	s0 := meter.read(b)
	bareStart := time.Now()
	eachParallel(n, rotateInFlight, func(i int) {
		priv, pub, err := sshtarget.NewKey("bench rotation")
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			err = sshtarget.RotateKey(ctx, sshtarget.Login{Host: "127.0.0.1", Port: srv.Port, User: accounts[i].Name,
				PrivateKey: k0[i], HostKey: srv.HostKey, Timeout: maintLoginTimeout}, priv, pub)
			cancel()
		}
		if err != nil {
			bareFailed.Add(1)
			bareErr.CompareAndSwap(nil, err.Error())
			k1[i] = k0[i] // the old key stays
			return
		}
		k1[i] = priv
	})
	bareWall := time.Since(bareStart)
	settleSSHD()
	bareUsed := meter.read(b).sub(s0)
	if f := bareFailed.Load(); f > 0 {
		b.Errorf("bare loop: %d of %d rotations failed; first: %v", f, n, bareErr.Load())
	}

	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("bench-rot-%04d", i)
	}
	addStart := time.Now()
	addKeySecrets(b, api, c, srv.Port, srv.HostKey, "bench-rot", names, accounts, k1)
	summarize(b, "rotate     %d key secrets added through the admin API in %.1f s", n, time.Since(addStart).Seconds())

	// Through the vault and the engines.
	s0 = meter.read(b)
	t0 := time.Now()
	request(b, api, names, "rotate", (*vault.Client).RotateSecret)
	requested := time.Since(t0)
	deadline := time.Now().Add(max(10*time.Minute, time.Duration(n)*time.Second))
	type poll struct {
		snap     cpuSnap
		promoted int
	}
	var polls []poll
	var rows map[string]vault.SecretInfo
	lastMoved, lastProgress := -1, time.Now()
	for {
		rows = listSecrets(b, api)
		moved, open := 0, 0
		for _, name := range names {
			m := rows[name].Maintenance
			if m.Generation >= 1 {
				moved++
			}
			if m.Rotation != "" {
				open++
			}
		}
		polls = append(polls, poll{meter.read(b), moved})
		if moved == n {
			break
		}
		if moved != lastMoved {
			lastMoved, lastProgress = moved, time.Now()
		}
		if open == 0 && time.Since(lastProgress) > time.Minute {
			b.Errorf("%d of %d rotations promoted; the rest ended without (see their history)", moved, n)
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d rotations promoted after %v", moved, n, time.Since(t0).Round(time.Second))
		}
		time.Sleep(time.Second)
	}
	settleSSHD()
	used := meter.read(b).sub(s0)
	lostResults, busyResults := notApplied(c), notApplied(c, "SQLITE_BUSY")

	// Where a rotation's time went, from the secrets' histories: sent to
	// result is the engine's work and the target's, queue waits included.
	// A rotation whose change result the vault did not record is verified
	// once the change item's lifetime and grace have passed: those are
	// "second tries", and the first pass is every other rotation.
	var latency, waits []time.Duration
	perEngine := map[string]int{}
	var sumFlight time.Duration
	var last, firstPassEnd time.Time
	promoted, secondTries := 0, 0
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		h, err := api.SecretHistory(ctx, name)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		var started, sent, result time.Time
		second := false
		for _, ev := range h {
			switch ev.Event {
			case "rotation_started":
				started = ev.At
			case "rotation_change_sent":
				sent = ev.At
			case "rotation_change_result":
				result = ev.At
				perEngine[ev.Engine]++
			case "rotation_unknown", "rotation_verify_sent":
				second = true
			}
		}
		if !sent.IsZero() && !result.IsZero() {
			latency = append(latency, result.Sub(sent))
			sumFlight += result.Sub(sent)
		}
		if !started.IsZero() && !sent.IsZero() {
			waits = append(waits, sent.Sub(started))
		}
		m := rows[name].Maintenance
		if m.Generation < 1 {
			continue
		}
		promoted++
		if m.LastRotation.After(last) {
			last = m.LastRotation
		}
		if second {
			secondTries++
		} else if m.LastRotation.After(firstPassEnd) {
			firstPassEnd = m.LastRotation
		}
	}
	if firstPassEnd.IsZero() {
		firstPassEnd = last
	}
	total := last.Sub(t0)
	firstPass := firstPassEnd.Sub(t0)
	// The CPU up to the end of the first pass, and the rotations promoted
	// by then (a second try that ended earlier counts, with its work).
	work, workDone := used, promoted
	for _, p := range polls {
		if !p.snap.at.Before(firstPassEnd) {
			work, workDone = p.snap.sub(s0), p.promoted
			break
		}
	}
	doneByFirstPass := 0
	for _, name := range names {
		if m := rows[name].Maintenance; m.Generation >= 1 && !m.LastRotation.After(firstPassEnd) {
			doneByFirstPass++
		}
	}
	avgInFlight := sumFlight.Seconds() / firstPass.Seconds()
	var split []string
	for id, k := range perEngine {
		short := id
		if len(short) > 8 {
			short = short[:8]
		}
		split = append(split, fmt.Sprintf("%s %d", short, k))
	}
	slices.Sort(split)

	oursRate := float64(doneByFirstPass) / firstPass.Seconds()
	allRate := float64(promoted) / total.Seconds()
	bareRate := float64(n) / bareWall.Seconds()
	b.ReportMetric(firstPass.Seconds(), "first_pass_s")
	b.ReportMetric(total.Seconds(), "total_s")
	b.ReportMetric(oursRate, "rotations/s")
	b.ReportMetric(bareWall.Seconds(), "bare_total_s")
	b.ReportMetric(bareRate, "bare_rotations/s")
	b.ReportMetric(oursRate/bareRate, "engines/bare")
	b.ReportMetric(allRate/bareRate, "engines_all/bare")
	b.ReportMetric(per(work.engines, workDone), "engine_cpu_ms/rotation")
	b.ReportMetric(per(work.vault, workDone), "vault_cpu_ms/rotation")
	b.ReportMetric(per(bareUsed.self, n), "bare_cpu_ms/rotation")
	b.ReportMetric(per(used.sshd, promoted), "sshd_cpu_ms/rotation")
	b.ReportMetric(per(bareUsed.sshd, n), "sshd_cpu_ms/bare_rotation")
	b.ReportMetric(float64(secondTries), "second_tries")
	b.ReportMetric(0, "ns/op")
	summarize(b, "rotate     %d key rotations through 2 engines (host_changes %d; requests took %.1f s): %d promoted on the first pass, all of them %.1f s after the first request, %.2f rotations/s; RotateKey loop, %d at once: %.1f s, %.2f rotations/s; ratio %.2f",
		n, rotateInFlight, requested.Seconds(), doneByFirstPass, firstPass.Seconds(), oursRate, rotateInFlight, bareWall.Seconds(), bareRate, oursRate/bareRate)
	summarize(b, "rotate     %d rotations needed a second try (their change result was not recorded: the vault logged %d results not applied, %d of them SQLITE_BUSY); with those, %d promoted in %.1f s, %.2f rotations/s, ratio %.2f",
		secondTries, lostResults, busyResults, promoted, total.Seconds(), allRate, allRate/bareRate)
	summarize(b, "rotate     CPU per rotation, ms: engines %.2f, vault %.2f (to the end of the first pass), sshd %.1f, whole machine %.1f; RotateKey loop: this process %.2f, sshd %.1f, whole machine %.1f",
		per(work.engines, workDone), per(work.vault, workDone), per(used.sshd, promoted), per(used.box, promoted),
		per(bareUsed.self, n), per(bareUsed.sshd, n), per(bareUsed.box, n))
	if len(latency) > 0 {
		summarize(b, "rotate     change sent -> result: p50 %.0f ms, p90 %.0f ms; started -> sent p50 %.0f ms, p90 %.0f ms; changes in flight on average %.1f of %d; results per engine: %s",
			ms(percentile(latency, 50)), ms(percentile(latency, 90)), ms(percentile(waits, 50)), ms(percentile(waits, 90)),
			avgInFlight, rotateInFlight, strings.Join(split, ", "))
	}

	// Spot check: reveal a sample and try it with OpenSSH.
	sample := min(20, n)
	picks := make([]int, sample)
	for j := range picks {
		picks[j] = j * n / sample
	}
	for _, i := range picks {
		c.admin.AddNeedle("the first key of "+accounts[i].Name, k0[i])
		c.admin.AddNeedle("the bare loop's key of "+accounts[i].Name, k1[i])
	}
	c.StopVault(b)
	revealed := make(map[int][]byte, sample)
	for _, i := range picks {
		revealed[i] = c.reveal(b, names[i])
	}
	c.startVault(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	failing := 0
	for _, i := range picks {
		now := revealed[i]
		if bytes.Equal(now, k1[i]) {
			failing++
			b.Errorf("%s: the stored key did not change", names[i])
			continue
		}
		if err := srv.SSHKey(ctx, accounts[i].Name, now); err != nil {
			failing++
			b.Errorf("%s: the revealed key does not log in with OpenSSH: %v", names[i], err)
			continue
		}
		if err := srv.SSHKey(ctx, accounts[i].Name, k1[i]); !errors.Is(err, sshdtest.ErrDenied) {
			failing++
			b.Errorf("%s: the key before it still logs in (or failed otherwise): %v", names[i], err)
		}
	}
	summarize(b, "rotate     spot check: %d secrets revealed with `keys reveal` and tried with OpenSSH: %d failing", sample, failing)
}
