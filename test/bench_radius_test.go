package e2e

// BenchmarkRADIUSLogin: what logging in through RADIUS costs, against the
// real FreeRADIUS 3.2 of radius_test.go, each number side by side with its
// alternative in the same run. BENCHMARKS.md ("RADIUS login") explains them.
//
//	go test -run '^$' -bench RADIUS -benchtime 1x -timeout 30m ./test/
//
// Knobs (defaults are what BENCHMARKS.md reports):
// SPT_BENCH_RADIUS_LOGINS (RADIUS exchanges per client for the latency
// percentiles, default 2000), SPT_BENCH_RADIUS_SSH_LOGINS (SSH logins per
// gateway for the latency percentiles, default 300),
// SPT_BENCH_RADIUS_CONCURRENCY (logins in flight for the rates, default 8),
// SPT_BENCH_RADIUS_RATE_LOGINS (RADIUS logins per rate round, default
// 12000), SPT_BENCH_RADIUS_SECONDS (length of one SSH rate round, default 4).

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/md5" // #nosec G501 -- RADIUS Message-Authenticator is HMAC-MD5 by definition (RFC 3579)
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2869"

	"github.com/sallyport/sallyport/radius"
)

const (
	// bob logs in with a password alone (test/freeradius/authorize).
	rbUser, rbPassword = "bob", "bobpass"
	rbNAS              = "sallyport-bench"
	rbCallingStation   = "127.0.0.1:40022"
	// Both RADIUS clients send again after 1 s without a reply (layeh's
	// DefaultClient does; ours with this timeout), so a lost datagram costs
	// them the same.
	rbTimeout = time.Second
	rbRetries = 2
	// rbRounds is how many rate rounds each path gets, alternating.
	rbRounds = 5
	// rbWarmup logins per path come before any timing.
	rbWarmup = 20
)

// BenchmarkRADIUSLogin measures, against a FreeRADIUS of its own:
//
//   - latency: one PAP login (bob) with the gateway's radius.Authenticator,
//     and the same Access-Request sent by a bare layeh.com/radius client
//     that signs it but checks nothing beyond the Response Authenticator,
//     interleaved, SPT_BENCH_RADIUS_LOGINS (2000) each: p50 and p99;
//   - ssh-latency: a whole login through the gateway with an x/crypto/ssh
//     client (connect, key exchange, keyboard-interactive password, the
//     gateway's credential checkout; until NewClientConn returns), to a
//     gateway with `auth: radius` and to one with local users (argon2id),
//     interleaved, SPT_BENCH_RADIUS_SSH_LOGINS (300) each;
//   - rate: logins per second with SPT_BENCH_RADIUS_CONCURRENCY (8) in
//     flight, in alternating rounds: SPT_BENCH_RADIUS_RATE_LOGINS (12000)
//     bare requests (what FreeRADIUS can do here) against as many with
//     radius.Authenticator; then rounds of SPT_BENCH_RADIUS_SECONDS (4) of
//     whole SSH logins through the RADIUS gateway against the local one;
//     each with the CPU time every process spent per login.
//
// FreeRADIUS remembers every request for cleanup_delay (5 s) after it
// answered, to recognise retransmissions, and drops new requests while it
// remembers max_requests (16384). That caps it at max_requests /
// cleanup_delay requests per second sustained (3277 as packaged), far below
// what it can answer, so each RADIUS rate round starts after cleanup_delay
// without requests and sends fewer than max_requests: it measures how fast
// FreeRADIUS and the client answer, and the summary states the cap.
//
// Both gateways are started for this benchmark with the same settings but
// for auth, and their secret points at a listener that closes every
// connection at once: the gateway's own login to the target, which follows
// every user login, then fails in a moment instead of costing a second SSH
// handshake and a PAM check that would compete for the same two CPUs (its
// cost is in BenchmarkSetupLatency). The logins measured here end before
// it starts.
func BenchmarkRADIUSLogin(b *testing.B) {
	logins := int(envInt(b, "SPT_BENCH_RADIUS_LOGINS", 2000))
	sshLogins := int(envInt(b, "SPT_BENCH_RADIUS_SSH_LOGINS", 300))
	conc := int(envInt(b, "SPT_BENCH_RADIUS_CONCURRENCY", 8))
	rateLogins := int(envInt(b, "SPT_BENCH_RADIUS_RATE_LOGINS", 12000))
	roundLen := time.Duration(envInt(b, "SPT_BENCH_RADIUS_SECONDS", 4)) * time.Second

	fr := startTestFreeRADIUS(b)
	frPID := fr.cmd.Process.Pid
	maxRequests, cleanupDelay, err := fr.requestTable()
	if err != nil {
		b.Fatal(err)
	}
	if rateLogins > maxRequests*3/4 {
		b.Fatalf("SPT_BENCH_RADIUS_RATE_LOGINS=%d: FreeRADIUS drops requests beyond max_requests=%d in %v; use at most %d",
			rateLogins, maxRequests, cleanupDelay, maxRequests*3/4)
	}
	// Long enough for FreeRADIUS to forget every request it answered.
	settle := cleanupDelay + time.Second
	rc, err := radius.New(radius.Config{
		Servers:       []radius.Server{{Addr: fr.Addr, Secret: []byte(frSecret)}},
		Timeout:       rbTimeout,
		Retries:       rbRetries,
		NASIdentifier: rbNAS,
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	ours, err := radius.NewAuthenticator(rc, radius.AuthConfig{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	src := netip.MustParseAddrPort(rbCallingStation)
	oursLogin := func(ctx context.Context) error {
		id, err := ours.Authenticate(ctx, radius.Login{User: rbUser, Source: src, Password: []byte(rbPassword)}, nil)
		if err == nil && id.User != rbUser {
			err = fmt.Errorf("accepted as %q", id.User)
		}
		return err
	}
	bareLogin := func(ctx context.Context) error { return bareAccessRequest(ctx, fr.Addr, []byte(frSecret)) }

	rg, lg := startBenchGateways(b, fr.Addr)
	self := os.Getpid()
	noteBackground(b)

	var exchangeP50, exchangeP99 time.Duration // radius.Authenticator's, from "latency"
	b.Run("latency", func(b *testing.B) {
		paths := []*rbPath{{name: "radius.Authenticator", op: oursLogin}, {name: "bare layeh", op: bareLogin}}
		if err := interleave(paths, logins); err != nil {
			b.Fatalf("%v\nFreeRADIUS log tail:\n%s", err, fr.LogTail(20))
		}
		o, r := paths[0].d, paths[1].d
		exchangeP50, exchangeP99 = percentile(o, 50), percentile(o, 99)
		b.ReportMetric(usec(percentile(o, 50)), "ours_p50_us")
		b.ReportMetric(usec(percentile(o, 99)), "ours_p99_us")
		b.ReportMetric(usec(percentile(r, 50)), "bare_p50_us")
		b.ReportMetric(usec(percentile(r, 99)), "bare_p99_us")
		b.ReportMetric(float64(percentile(o, 50))/float64(percentile(r, 50)), "ours/bare_p50")
		b.ReportMetric(0, "ns/op")
		summarize(b, "radius     PAP login (bob) against FreeRADIUS 3.2 on loopback, %d each, interleaved: radius.Authenticator p50 %.0f µs p99 %.0f µs; bare layeh client p50 %.0f µs p99 %.0f µs; ours/bare p50 %.2f p99 %.2f",
			logins, usec(percentile(o, 50)), usec(percentile(o, 99)), usec(percentile(r, 50)), usec(percentile(r, 99)),
			float64(percentile(o, 50))/float64(percentile(r, 50)), float64(percentile(o, 99))/float64(percentile(r, 99)))
	})

	b.Run("ssh-latency", func(b *testing.B) {
		paths := []*rbPath{{name: "auth: radius", op: rg.login}, {name: "auth: local", op: lg.login}}
		if err := interleave(paths, sshLogins); err != nil {
			b.Fatalf("%v\nRADIUS gateway log tail:\n%s\nlocal gateway log tail:\n%s", err, rg.g.LogTail(10), lg.g.LogTail(10))
		}
		r, l := paths[0].d, paths[1].d
		b.ReportMetric(ms(percentile(r, 50)), "radius_p50_ms")
		b.ReportMetric(ms(percentile(r, 99)), "radius_p99_ms")
		b.ReportMetric(ms(percentile(l, 50)), "local_p50_ms")
		b.ReportMetric(ms(percentile(l, 99)), "local_p99_ms")
		b.ReportMetric(ms(percentile(r, 50)-percentile(l, 50)), "radius-local_p50_ms")
		b.ReportMetric(0, "ns/op")
		summarize(b, "radius     SSH login through the gateway (x/crypto/ssh, %s, %s, keyboard-interactive, until authenticated), %d each, interleaved: auth: radius p50 %.1f ms p99 %.1f ms; auth: local (argon2id) p50 %.1f ms p99 %.1f ms; radius - local p50 %+.1f ms",
			gossh.KeyExchangeCurve25519, gossh.CipherAES128GCM, sshLogins,
			ms(percentile(r, 50)), ms(percentile(r, 99)), ms(percentile(l, 50)), ms(percentile(l, 99)), ms(percentile(r, 50)-percentile(l, 50)))
		if exchangeP50 > 0 {
			summarize(b, "radius     of which RADIUS (the gateway's exchange with FreeRADIUS, measured above): p50 %.2f ms (%.0f%% of the login's p50), p99 %.2f ms",
				ms(exchangeP50), 100*float64(exchangeP50)/float64(percentile(r, 50)), ms(exchangeP99))
		}
	})

	b.Run("rate", func(b *testing.B) {
		frPIDs := []int{frPID, self}
		bare := &rbPath{name: "bare layeh", op: bareLogin}
		own := &rbPath{name: "radius.Authenticator", op: oursLogin}
		bareR, ownR, err := alternateRates(bare, own, rbRound{conc: conc, count: rateLogins, settle: settle}, frPIDs)
		if err != nil {
			b.Fatalf("%v\nFreeRADIUS log tail:\n%s", err, fr.LogTail(20))
		}
		time.Sleep(settle)
		sshR := &rbPath{name: "SSH, auth: radius", op: rg.login}
		sshL := &rbPath{name: "SSH, auth: local", op: lg.login}
		radR, locR, err := alternateRates(sshR, sshL, rbRound{conc: conc, d: roundLen}, []int{frPID, self, rg.pid(), lg.pid()})
		if err != nil {
			b.Fatalf("%v\nRADIUS gateway log tail:\n%s\nlocal gateway log tail:\n%s", err, rg.g.LogTail(10), lg.g.LogTail(10))
		}
		// One line per path: testing keeps only the first lines a benchmark logs.
		for _, r := range [][]rbRate{bareR, ownR, radR, locR} {
			var rounds []string
			for _, x := range r {
				rounds = append(rounds, fmt.Sprintf("%.1f/s (%d in %.2fs, %d failed%s; %.2f CPUs busy; CPU ms per login: %s)",
					x.rate(), x.ok, x.elapsed.Seconds(), x.failed, x.errNote(), x.busyCPUs(), x.cpuNote([]string{"FreeRADIUS", "bench", "RADIUS gateway", "local gateway"})))
			}
			b.Logf("%s, rounds in order: %s", r[0].name, strings.Join(rounds, "; "))
		}
		bm, om := medianRate(bareR), medianRate(ownR)
		rm, lm := medianRate(radR), medianRate(locR)
		b.ReportMetric(bm.rate(), "bare_logins/s")
		b.ReportMetric(om.rate(), "ours_logins/s")
		b.ReportMetric(om.rate()/bm.rate(), "ours/bare")
		b.ReportMetric(rm.rate(), "ssh_radius_logins/s")
		b.ReportMetric(lm.rate(), "ssh_local_logins/s")
		b.ReportMetric(rm.rate()/lm.rate(), "ssh_radius/local")
		b.ReportMetric(rm.cpuPerLogin(2), "radius_gateway_CPU_ms/login")
		b.ReportMetric(lm.cpuPerLogin(3), "local_gateway_CPU_ms/login")
		b.ReportMetric(0, "ns/op")
		failed := 0
		for _, r := range [][]rbRate{bareR, ownR, radR, locR} {
			for _, x := range r {
				failed += x.failed
			}
		}
		summarize(b, "radius     logins/s, %d in flight, median of %d rounds of %d, alternating: FreeRADIUS with bare requests %.0f/s, radius.Authenticator %.0f/s, ours/bare %.2f (goal ~1; median of the rounds' pairs %.2f); %d failed",
			conc, rbRounds, rateLogins, bm.rate(), om.rate(), om.rate()/bm.rate(), pairedRatio(ownR, bareR), failed)
		summarize(b, "radius     FreeRADIUS's own cap: max_requests %d / cleanup_delay %v = %.0f requests/s sustained; the rounds above start with no request remembered",
			maxRequests, cleanupDelay, float64(maxRequests)/cleanupDelay.Seconds())
		summarize(b, "radius     CPU ms per RADIUS login: bare: FreeRADIUS %.3f, client process %.3f, machine %.3f (%.2f CPUs busy, other processes %.3f); ours: FreeRADIUS %.3f, client process %.3f, machine %.3f (%.2f CPUs busy, other processes %.3f)",
			bm.cpuPerLogin(0), bm.cpuPerLogin(1), bm.boxPerLogin(), bm.busyCPUs(), bm.otherPerLogin(),
			om.cpuPerLogin(0), om.cpuPerLogin(1), om.boxPerLogin(), om.busyCPUs(), om.otherPerLogin())
		summarize(b, "radius     SSH logins/s through the gateway, %d in flight, median of %d rounds of %v, alternating: auth: radius %.1f/s, auth: local %.1f/s, radius/local %.2f (median of the rounds' pairs %.2f)",
			conc, rbRounds, roundLen, rm.rate(), lm.rate(), rm.rate()/lm.rate(), pairedRatio(radR, locR))
		summarize(b, "radius     CPU ms per SSH login: auth: radius: gateway %.2f, FreeRADIUS %.2f, clients %.2f, machine %.2f (%.2f CPUs busy, other processes %.2f); auth: local: gateway %.2f, clients %.2f, machine %.2f (%.2f CPUs busy, other processes %.2f)",
			rm.cpuPerLogin(2), rm.cpuPerLogin(0), rm.cpuPerLogin(1), rm.boxPerLogin(), rm.busyCPUs(), rm.otherPerLogin(),
			lm.cpuPerLogin(3), lm.cpuPerLogin(1), lm.boxPerLogin(), lm.busyCPUs(), lm.otherPerLogin())
	})
	if n := fr.LogCount("too many"); n > 0 {
		summarize(b, "radius     FreeRADIUS logged %d lines with \"too many\": it dropped requests (max_requests)", n)
	}
}

func usec(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// bareAccessRequest is the reference client: an Access-Request with the
// attributes radius.Authenticator sends (Message-Authenticator first,
// User-Name, User-Password, NAS-Identifier, Calling-Station-Id), built and
// signed by hand and sent with layeh.Exchange, which checks the reply's
// Response Authenticator and nothing else.
func bareAccessRequest(ctx context.Context, addr string, secret []byte) error {
	p := layeh.New(layeh.CodeAccessRequest, secret)
	p.Add(rfc2869.MessageAuthenticator_Type, make(layeh.Attribute, 16))
	err := errors.Join(
		rfc2865.UserName_SetString(p, rbUser),
		rfc2865.UserPassword_SetString(p, rbPassword),
		rfc2865.NASIdentifier_SetString(p, rbNAS),
		rfc2865.CallingStationID_SetString(p, rbCallingStation))
	if err != nil {
		return err
	}
	wire, err := p.Encode()
	if err != nil {
		return err
	}
	mac := hmac.New(md5.New, secret)
	mac.Write(wire)
	if err := rfc2869.MessageAuthenticator_Set(p, mac.Sum(nil)); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(rbRetries+1)*rbTimeout)
	defer cancel()
	resp, err := layeh.Exchange(ctx, p, addr)
	if err != nil {
		return err
	}
	if resp.Code != layeh.CodeAccessAccept {
		return fmt.Errorf("bare request: %v, want Access-Accept", resp.Code)
	}
	return nil
}

// LogCount counts how often substr occurs in FreeRADIUS's log.
func (f *freeRADIUS) LogCount(substr string) int {
	b, _ := os.ReadFile(f.log)
	return strings.Count(string(b), substr)
}

// requestTable returns FreeRADIUS's max_requests and cleanup_delay from
// the configuration it runs with.
func (f *freeRADIUS) requestTable() (maxRequests int, cleanupDelay time.Duration, err error) {
	b, err := os.ReadFile(filepath.Join(f.dir, "raddb", "radiusd.conf"))
	if err != nil {
		return 0, 0, err
	}
	get := func(key string) (int, error) {
		m := regexp.MustCompile(`(?m)^` + key + `\s*=\s*(\d+)\s*$`).FindSubmatch(b)
		if m == nil {
			return 0, fmt.Errorf("radiusd.conf sets no %s", key)
		}
		return strconv.Atoi(string(m[1]))
	}
	n, err1 := get("max_requests")
	d, err2 := get("cleanup_delay")
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return n, time.Duration(d) * time.Second, nil
}

// --- the two gateways ------------------------------------------------------

// benchGateway is a gateway of the benchmark's own with a user who may use
// one secret, and an x/crypto/ssh client configuration that logs in as that
// user onto the secret.
type benchGateway struct {
	g    *gateway
	cfg  *gossh.ClientConfig
	addr string
}

func (bg *benchGateway) pid() int { return bg.g.cmd.Process.Pid }

// startBenchGateways starts a gateway with `auth: radius` against the
// FreeRADIUS at frAddr (user bob) and one with local users (a fresh user
// with an argon2id password), the same in everything else, each with one
// secret whose target closes every connection at once.
func startBenchGateways(b *testing.B, frAddr string) (rg, lg *benchGateway) {
	b.Helper()
	sinkPort := startSink(b)
	rdir := b.TempDir()
	writeSecretFile(b, rdir, "radius.secret", frSecret)
	rg = &benchGateway{g: startConfiguredGateway(b, rdir, fmt.Sprintf(`auth: radius
radius:
  servers:
    - {address: %q, secret_file: radius.secret}
  timeout: %v
  retries: %d
  nas_identifier: %s
`, frAddr, rbTimeout, rbRetries, rbNAS))}
	rg.sinkSecret(b, sinkPort, rbUser, rbPassword)
	return rg, startLocalBenchGateway(b, sinkPort)
}

// startLocalBenchGateway starts a gateway with local users and one fresh
// user who may use one secret whose target, at sinkPort, closes every
// connection at once.
func startLocalBenchGateway(b *testing.B, sinkPort int) *benchGateway {
	b.Helper()
	lg := &benchGateway{g: startConfiguredGateway(b, b.TempDir(), "auth: local\n")}
	local, err := lg.g.addUser(gatewayUser{Name: lg.g.Name("bench"), Password: newGatewayPassword()}, false)
	if err != nil {
		b.Fatal(err)
	}
	lg.sinkSecret(b, sinkPort, local.Name, local.Password)
	return lg
}

// startSink listens on a loopback port whose every connection is closed at
// once, until the benchmark ends, and returns the port.
func startSink(b *testing.B) int {
	b.Helper()
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// Registered before the gateways start, so it runs after their
	// cleanups stopped them.
	b.Cleanup(func() { sink.Close(); wg.Wait() })
	return sink.Addr().(*net.TCPAddr).Port
}

// sinkSecret adds a secret for the sink at port that user may use, and the
// client configuration that logs in as user onto it.
func (bg *benchGateway) sinkSecret(b *testing.B, port int, user, password string) {
	b.Helper()
	secret := bg.g.Name("sink")
	bg.g.MustCtl(b, "Sink-"+randString(alnum, 24)+"\n", "secret", "add", secret,
		"--host", "127.0.0.1", "--port", strconv.Itoa(port), "--username", "nobody",
		"--password-stdin", "--host-key", env.Target(b).HostKeyPub, "--allow", user)
	cfg, err := bg.g.kiClientConfig(user+"@"+secret, password)
	if err != nil {
		b.Fatal(err)
	}
	bg.cfg = cfg
	bg.addr = "127.0.0.1:" + strconv.Itoa(bg.g.SSHPort)
}

// kiClientConfig logs in as login, answering the password prompt, with the
// key exchange and cipher the other benchmarks use on the user's hop.
func (g *gateway) kiClientConfig(login, password string) (*gossh.ClientConfig, error) {
	pub, err := os.ReadFile(filepath.Join(g.dataDir, "ssh_host_key.pub"))
	if err != nil {
		return nil, err
	}
	hk, _, _, _, err := gossh.ParseAuthorizedKey(pub)
	if err != nil {
		return nil, err
	}
	return &gossh.ClientConfig{
		Config: gossh.Config{
			KeyExchanges: []string{gossh.KeyExchangeCurve25519},
			Ciphers:      []string{gossh.CipherAES128GCM},
		},
		User: login,
		Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
			a := make([]string, len(qs))
			for i, q := range qs {
				if !strings.Contains(q, "assword") {
					return nil, fmt.Errorf("unexpected prompt %q", q)
				}
				a[i] = password
			}
			return a, nil
		})},
		HostKeyCallback: gossh.FixedHostKey(hk),
		Timeout:         10 * time.Second,
	}, nil
}

// login connects, logs in and hangs up. It leaves the source address and
// port to connect(2): the thousands of connections a rate round closes sit
// in TIME_WAIT on this side, and with a source address bound first the
// kernel's search for a free port grew slow enough to show in the client's
// CPU time; connect(2) may reuse those ports on loopback.
func (bg *benchGateway) login(context.Context) error {
	d := net.Dialer{Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", bg.addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	sc, _, _, err := gossh.NewClientConn(nc, bg.addr, bg.cfg)
	if err != nil {
		return err
	}
	return sc.Close()
}

// --- timing --------------------------------------------------------------

// rbPath is one way of logging in and the latencies measured along it.
type rbPath struct {
	name string
	op   func(context.Context) error
	d    []time.Duration
}

// interleave runs each path's op rbWarmup times untimed, then n times timed,
// the paths taking turns in a rotating order.
func interleave(paths []*rbPath, n int) error {
	ctx := context.Background()
	for i := range rbWarmup + n {
		for j := range paths {
			p := paths[(i+j)%len(paths)]
			start := time.Now()
			err := p.op(ctx)
			d := time.Since(start)
			if err != nil {
				return fmt.Errorf("%s, login %d: %w", p.name, i+1, err)
			}
			if i >= rbWarmup {
				p.d = append(p.d, d)
			}
		}
	}
	return nil
}

// rbRate is one round of logins with several in flight.
type rbRate struct {
	name       string
	ok, failed int
	firstErr   error
	elapsed    time.Duration
	cpu        []time.Duration // per process asked for, over the round
	box        time.Duration   // CPU time the whole machine was busy
}

func (r rbRate) rate() float64 { return float64(r.ok) / r.elapsed.Seconds() }

func (r rbRate) busyCPUs() float64 { return r.box.Seconds() / r.elapsed.Seconds() }

// cpuPerLogin is the CPU milliseconds process i spent per login.
func (r rbRate) cpuPerLogin(i int) float64 {
	if i >= len(r.cpu) || r.ok == 0 {
		return 0
	}
	return ms(r.cpu[i]) / float64(r.ok)
}

func (r rbRate) boxPerLogin() float64 { return ms(r.box) / float64(max(r.ok, 1)) }

// otherPerLogin is the CPU milliseconds per login the machine was busy
// outside the processes measured: near zero unless something else ran.
func (r rbRate) otherPerLogin() float64 {
	other := r.box
	for _, c := range r.cpu {
		other -= c
	}
	return ms(other) / float64(max(r.ok, 1))
}

func (r rbRate) errNote() string {
	if r.firstErr == nil {
		return ""
	}
	return "; first: " + r.firstErr.Error()
}

func (r rbRate) cpuNote(names []string) string {
	var parts []string
	for i := range r.cpu {
		parts = append(parts, fmt.Sprintf("%s %.3f", names[i], r.cpuPerLogin(i)))
	}
	return strings.Join(parts, ", ") + fmt.Sprintf(", machine %.3f (other processes %.3f)", r.boxPerLogin(), r.otherPerLogin())
}

// cpuTimes returns the CPU time (user + system) each of pids has used.
func cpuTimes(pids []int) ([]time.Duration, error) {
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		u, s, err := procCPU(pid)
		if err != nil {
			return nil, err
		}
		out[i] = u + s
	}
	return out, nil
}

// rbRound says how long one rate round lasts: count logins, or, when
// count is zero, as many as start within d. settle is a pause before it.
type rbRound struct {
	conc   int
	count  int
	d      time.Duration
	settle time.Duration
}

// measureRate runs p.op with rd.conc in flight for one round, and returns
// how many logins succeeded and what they cost pids and the whole machine in
// CPU time.
func measureRate(p *rbPath, rd rbRound, pids []int) (rbRate, error) {
	r := rbRate{name: p.name}
	cpu0, err := cpuTimes(pids)
	if err != nil {
		return r, err
	}
	box0, err := machineBusy()
	if err != nil {
		return r, err
	}
	var ok, failed, started atomic.Int64
	var mu sync.Mutex
	ctx := context.Background()
	start := time.Now()
	deadline := start.Add(rd.d)
	more := func() bool {
		if rd.count > 0 {
			return started.Add(1) <= int64(rd.count)
		}
		return time.Now().Before(deadline)
	}
	var wg sync.WaitGroup
	for range rd.conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for more() {
				if err := p.op(ctx); err != nil {
					failed.Add(1)
					mu.Lock()
					if r.firstErr == nil {
						r.firstErr = err
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	box1, err := machineBusy()
	if err != nil {
		return r, err
	}
	cpu1, err := cpuTimes(pids)
	if err != nil {
		return r, err
	}
	r.box = box1 - box0
	for i := range cpu1 {
		r.cpu = append(r.cpu, cpu1[i]-cpu0[i])
	}
	r.ok, r.failed = int(ok.Load()), int(failed.Load())
	if r.ok == 0 {
		return r, fmt.Errorf("%s: no login succeeded; first error: %v", p.name, r.firstErr)
	}
	return r, nil
}

// alternateRates measures a and b for rbRounds rounds each, taking turns
// and swapping which goes first every round.
func alternateRates(a, b *rbPath, rd rbRound, pids []int) (ra, rb []rbRate, err error) {
	for i := range rbRounds {
		order := []*rbPath{a, b}
		if i%2 == 1 {
			order = []*rbPath{b, a}
		}
		for _, p := range order {
			time.Sleep(rd.settle)
			r, err := measureRate(p, rd, pids)
			if err != nil {
				return nil, nil, err
			}
			if p == a {
				ra = append(ra, r)
			} else {
				rb = append(rb, r)
			}
		}
	}
	return ra, rb, nil
}

// medianRate returns the round with the median rate (the lower middle one
// for an even count).
func medianRate(rs []rbRate) rbRate {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(x, y rbRate) int { return cmp.Compare(x.rate(), y.rate()) })
	return s[(len(s)-1)/2]
}

// pairedRatio is the median over rounds of a's rate over b's in the same
// round: a drift in the machine's load moves both of a pair.
func pairedRatio(a, b []rbRate) float64 {
	var rs []float64
	for i := range min(len(a), len(b)) {
		rs = append(rs, a[i].rate()/b[i].rate())
	}
	return median(rs)
}
