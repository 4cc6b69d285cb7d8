package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// BenchmarkLoginsUnderFlood measures successful logins per second from one
// source while four other sources attack the gateway before login: 1,000
// idle connections held from one, 1,000 that send a banner and stall from
// another, and two that guess passwords as fast as they can (one at
// alice's, one spraying many user names). The same logins with no flood,
// in alternating rounds, are the baseline; the goal is a ratio of at least
// 0.8. A login is the x/crypto/ssh client's handshake and keyboard-
// interactive authentication (argon2id) through to the credential checkout;
// the target closes at once, so sshd's cost does not enter.
//
// SPT_BENCH_FLOOD_ROUNDS (default 5) rounds of SPT_BENCH_FLOOD_LOGINS
// (default 40) logins per condition.
func BenchmarkLoginsUnderFlood(b *testing.B) {
	rounds := int(envInt(b, "SPT_BENCH_FLOOD_ROUNDS", 5))
	logins := int(envInt(b, "SPT_BENCH_FLOOD_LOGINS", 40))
	noteBackground(b)
	lg := startLocalBenchGateway(b, startSink(b))
	g := lg.g
	pid := lg.pid()

	type sample struct {
		rate      float64 // logins per second
		cpu       time.Duration
		ok        int
		clientCPU float64 // CPUs this process (the user and the attackers) kept busy
	}
	self := os.Getpid()
	measure := func() (sample, error) {
		u0, s0, err := procCPU(pid)
		if err != nil {
			return sample{}, err
		}
		tu0, ts0, err := procCPU(self)
		if err != nil {
			return sample{}, err
		}
		start := time.Now()
		for range logins {
			if err := lg.login(context.Background()); err != nil {
				return sample{}, fmt.Errorf("legitimate login: %w", err)
			}
		}
		el := time.Since(start)
		u1, s1, err := procCPU(pid)
		if err != nil {
			return sample{}, err
		}
		tu1, ts1, err := procCPU(self)
		if err != nil {
			return sample{}, err
		}
		return sample{rate: float64(logins) / el.Seconds(), cpu: (u1 - u0) + (s1 - s0), ok: logins,
			clientCPU: float64((tu1-tu0)+(ts1-ts0)) / float64(el)}, nil
	}
	// Warm up.
	if _, err := measure(); err != nil {
		b.Fatal(err)
	}
	var quiet, flooded []sample
	var attackStats []string
	for r := range rounds {
		q, err := measure()
		if err != nil {
			b.Fatal(err)
		}
		quiet = append(quiet, q)

		ctx, cancel := context.WithCancel(context.Background())
		idle := startFlood(ctx, "127.0.0.2", g.SSHPort, 1000, "")
		stall := startFlood(ctx, "127.0.0.3", g.SSHPort, 1000, "SSH-2.0-OpenSSH_9.6\r\n")
		guess := startGuessing(ctx, "127.0.0.4", g.SSHPort, 8, func(int) string { return "alice@web01" })
		spray := startGuessing(ctx, "127.0.0.5", g.SSHPort, 8, func(i int) string { return "user" + strconv.Itoa(i) + "@web01" })
		time.Sleep(time.Second) // let the flood reach its full weight
		f, err := measure()
		cancel()
		for _, w := range []*sync.WaitGroup{&idle.wg, &stall.wg, &guess.wg, &spray.wg} {
			w.Wait()
		}
		if err != nil {
			b.Fatalf("round %d under flood: %v\ngateway log tail:\n%s", r, err, g.LogTail(20))
		}
		flooded = append(flooded, f)
		attackStats = append(attackStats, fmt.Sprintf("round %d: %d idle and %d stalling connections opened, %d guesses answered, %d sprays answered",
			r+1, idle.opened.Load(), stall.opened.Load(), guess.answered.Load(), spray.answered.Load()))
	}
	rates := func(ss []sample) []float64 {
		out := make([]float64, len(ss))
		for i, s := range ss {
			out[i] = s.rate
		}
		return out
	}
	cpuPer := func(ss []sample) float64 {
		var cpu time.Duration
		n := 0
		for _, s := range ss {
			cpu += s.cpu
			n += s.ok
		}
		return ms(cpu) / float64(n)
	}
	qr, fr := median(rates(quiet)), median(rates(flooded))
	b.ReportMetric(qr, "logins/s_quiet")
	b.ReportMetric(fr, "logins/s_flood")
	b.ReportMetric(fr/qr, "flood_ratio")
	b.ReportMetric(0, "ns/op")
	clientCPU := func(ss []sample) float64 {
		out := make([]float64, len(ss))
		for i, s := range ss {
			out[i] = s.clientCPU
		}
		return median(out)
	}
	summarize(b, "flood      logins/s from one source, median of %d rounds of %d: quiet %.1f, while 4 sources flood (1000 idle + 1000 stalled connections, 2 x 8 password guessers) %.1f: ratio %.2f (goal >= 0.8); gateway CPU per login %.1f ms quiet, %.1f ms under flood (the flood's own cost included); the client and attackers (this process) kept %.2f CPUs busy quiet, %.2f under flood",
		rounds, logins, qr, fr, fr/qr, cpuPer(quiet), cpuPer(flooded), clientCPU(quiet), clientCPU(flooded))
	for _, s := range attackStats {
		b.Log(s)
	}
	if text, err := g.metricsTextClient(); err == nil {
		if body, err := text(); err == nil {
			b.Logf("refusals:\n%s", grepLines(body, "sallyport_ssh_connections_refused_total{", "sallyport_ssh_logins_refused_unchecked_total{"))
		}
	}
}

// resetPause is how long a guesser waits after the gateway reset its
// connection before any SSH was spoken.
const resetPause = 20 * time.Millisecond

// guesser logs in as fast as it can with wrong passwords, with conc
// connections at a time, until ctx ends.
type guesser struct {
	answered atomic.Int64 // attempts the gateway answered (refused) at the SSH level
	wg       sync.WaitGroup
}

func startGuessing(ctx context.Context, src string, port, conc int, login func(i int) string) *guesser {
	g := &guesser{}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var seq atomic.Int64
	for range conc {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
			for ctx.Err() == nil {
				i := int(seq.Add(1))
				cfg := &gossh.ClientConfig{
					User:            login(i),
					HostKeyCallback: gossh.InsecureIgnoreHostKey(), // #nosec G106 -- attack traffic
					Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
						out := make([]string, len(qs))
						for k := range out {
							out[k] = "guess-" + strconv.Itoa(i)
						}
						return out, nil
					})},
				}
				nc, err := d.DialContext(ctx, "tcp", addr)
				if err == nil {
					stop := context.AfterFunc(ctx, func() { nc.Close() })
					_, _, _, err = gossh.NewClientConn(nc, addr, cfg)
					stop()
					nc.Close()
				}
				var oe *net.OpError
				if err == nil || !errors.As(err, &oe) {
					g.answered.Add(1)
					continue
				}
				// Reset before any SSH was spoken (the source's connection
				// rate): like any scanner, wait a moment before the next
				// try rather than spin on resets.
				select {
				case <-ctx.Done():
				case <-time.After(resetPause):
				}
			}
		}()
	}
	return g
}

// grepLines returns the lines of text that start with one of the prefixes.
func grepLines(text string, prefixes ...string) string {
	var out []byte
	start := 0
	for i := 0; i <= len(text); i++ {
		if i == len(text) || text[i] == '\n' {
			line := text[start:i]
			for _, p := range prefixes {
				if len(line) >= len(p) && line[:len(p)] == p {
					out = append(append(out, line...), '\n')
					break
				}
			}
			start = i + 1
		}
	}
	return string(out)
}
