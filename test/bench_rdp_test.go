package e2e

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/rdptest"
)

// BenchmarkRDP measures the RDP gateway with the real xfreerdp and
// freerdp-shadow: the time of an NLA login (`+auth-only`, the client's
// whole run) through the gateway and straight to the target, taking
// turns, and the gateway's resident memory per idle full session. The
// relay's throughput after login is gateway/rdp's BenchmarkRelay.
func BenchmarkRDP(b *testing.B) {
	g := env.RDPGateway(b)
	d := env.rdp.Display(b)
	sh := env.rdp.Shadow(b)
	sum := sh.CertSHA256()
	addRDPSecret(b, g, "bench-win", sh.Addr(), sh.User, sh.Password, sum[:])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	gwArgs := []string{"/v:127.0.0.1:" + strconv.Itoa(g.RDPPort), "/u:alice@bench-win", "/cert:ignore", "/sec:nla"}
	directArgs := []string{"/v:" + sh.Addr(), "/u:" + sh.User, "/cert:ignore", "/sec:nla"}

	const pairs = 7
	var viaGW, direct []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for p := range pairs {
			for turn := range 2 {
				gateway := (p+turn)%2 == 0
				args, pw := directArgs, sh.Password
				if gateway {
					tok := rdpToken(b, g, "bench-win")
					args, pw = gwArgs, []byte(tok)
				}
				start := time.Now()
				code, out, err := rdptest.RunClientPassword(ctx, d, pw, append(args, "+auth-only")...)
				ms := float64(time.Since(start).Microseconds()) / 1e3
				if err != nil || code != rdptest.ExitSuccess {
					b.Fatalf("xfreerdp (gateway %v): exit %d, %v\n%s", gateway, code, err, out)
				}
				if gateway {
					viaGW = append(viaGW, ms)
				} else {
					direct = append(direct, ms)
				}
			}
		}
	}
	b.StopTimer()
	gm, dm := median(viaGW), median(direct)
	b.ReportMetric(gm, "gateway-login-ms")
	b.ReportMetric(dm, "direct-login-ms")
	summarize(b, "rdp        NLA login (xfreerdp +auth-only, whole run), median of %d: through the gateway %.0f ms, straight to freerdp-shadow %.0f ms: +%.0f ms (goal <= +50)",
		len(viaGW), gm, dm, gm-dm)

	// Idle full sessions: the gateway's VmRSS before and after.
	const sessions = 4
	pid := g.cmd.Process.Pid
	metrics, err := g.metricsClient()
	if err != nil {
		b.Fatal(err)
	}
	// Both readings follow a collection in the gateway and an idle wait
	// (see sampleIdle): the garbage of logins and screen updates would
	// otherwise count as memory held.
	base, err := sampleIdle(pid, metrics)
	if err != nil {
		b.Fatal(err)
	}
	before := base.rss
	up0 := sh.Sessions()
	var clients []*rdptest.Client
	defer func() {
		for _, c := range clients {
			_, _, _ = c.Stop()
		}
	}()
	for i := range sessions {
		// One token at a time: a new one replaces the last.
		c, err := rdptest.StartClient(d, []byte(rdpToken(b, g, "bench-win")), gwArgs...)
		if err != nil {
			b.Fatal(err)
		}
		clients = append(clients, c)
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
		err = sh.WaitSessions(wctx, up0+i+1)
		wcancel()
		if err != nil {
			b.Fatalf("session %d did not come up: %v\n%s", i+1, err, sh.LogTail(20))
		}
	}
	idle, err := sampleIdle(pid, metrics)
	if err != nil {
		b.Fatal(err)
	}
	after := idle.rss
	per := float64(after-before) / sessions
	heap := (idle.m["go_memstats_heap_inuse_bytes"] + idle.m["go_memstats_stack_inuse_bytes"] -
		base.m["go_memstats_heap_inuse_bytes"] - base.m["go_memstats_stack_inuse_bytes"]) / 1024 / sessions
	b.ReportMetric(per, "KiB/idle-session")
	summarize(b, "rdp        %d idle full sessions (xfreerdp to freerdp-shadow) through the gateway: its VmRSS, each after a collection and %v idle, %d -> %d KiB = %.0f KiB/session (Go heap and stacks in use: %.0f KiB/session)",
		sessions, idleWait, before, after, per, heap)
}
