package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkClusterSetupLatency times OpenSSH logins to a first command
// (`ssh ... true`, wall time) through a separate `sallyport engine` of a
// `sallyport vault` cluster, each an OS process of its own, against the
// same logins through `sallyport dev` (everything in one process, the
// credential checkout over the in-process queue). The cluster has two
// sites: one on the vault's built-in connector (TLS WebSocket), one on
// the suite's RabbitMQ node; each has an approved engine and a secret on
// the shared sshd target. The three paths take turns, SPT_BENCH_LOGINS
// (30) logins each, with the same user (alice, a local user: her password
// is checked with argon2id in the vault, which for an engine is a login
// request over its connector), the same cipher and the same askpass
// script. It reports p50 and p90 per path and the p50 difference to dev,
// and the phases of a login from ssh's debug output (median of 5).
func BenchmarkClusterSetupLatency(b *testing.B) {
	logins := int(envInt(b, "SPT_BENCH_LOGINS", 30))
	dev := newBenchPaths(b)
	rb := env.Rabbit(b)
	c := startCluster(b)
	c.admin.AddNeedle("the RabbitMQ password", rb.Password)
	pass := filepath.Join(b.TempDir(), "rabbit.pass")
	if err := os.WriteFile(pass, append(bytes.Clone(rb.Password), '\n'), 0o600); err != nil {
		b.Fatal(err)
	}
	c.Ctl(b, "site", "add", "bench-builtin")
	c.Ctl(b, "site", "add", "bench-rabbit", "--connector", rb.URL(), "--connector-secret-file", pass)
	viaBuiltin := c.StartEngine(b, "bench-builtin")
	viaRabbit := c.StartEngine(b, "bench-rabbit")
	c.Approve(b, viaBuiltin)
	c.Approve(b, viaRabbit)

	type path struct {
		name string
		p    *benchPaths
		d    []time.Duration
	}
	paths := []*path{
		{name: "dev", p: dev},
		{name: "engine-builtin", p: clusterBenchPaths(b, c, viaBuiltin)},
		{name: "engine-rabbitmq", p: clusterBenchPaths(b, c, viaRabbit)},
	}
	runOnce := func(pa *path) time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := pa.p.command(ctx, true, "true")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		d := time.Since(start)
		if err != nil {
			b.Fatalf("%s ssh ... true: %v\n%s\nlog tail:\n%s", pa.name, err, out.String(), pa.p.g.LogTail(20))
		}
		return d
	}
	// Warm up: page cache, first-use paths, the engines' connections.
	for range 2 {
		for _, pa := range paths {
			runOnce(pa)
		}
	}
	noteBackground(b)
	for i := range logins {
		for j := range paths {
			pa := paths[(i+j)%len(paths)]
			pa.d = append(pa.d, runOnce(pa))
		}
	}
	ref := percentile(paths[0].d, 50)
	for _, pa := range paths {
		p50, p90 := percentile(pa.d, 50), percentile(pa.d, 90)
		b.ReportMetric(ms(p50), pa.name+"_p50_ms")
		b.ReportMetric(ms(p90), pa.name+"_p90_ms")
		extra := ""
		if pa != paths[0] {
			b.ReportMetric(ms(p50-ref), pa.name+"_p50_extra_ms")
			extra = fmt.Sprintf("; p50 %+.1f ms vs dev (goal <= +10 ms)", ms(p50-ref))
		}
		summarize(b, "cluster    `ssh ... true` x %d via %-15s p50 %.1f ms, p90 %.1f ms%s", len(pa.d), pa.name, ms(p50), ms(p90), extra)
	}

	const traced = 5
	phaseNames := []string{"key exchange", "service request", "authentication", "session open", "command and close"}
	for _, pa := range paths {
		var phases [][]time.Duration
		for range traced {
			ph, err := pa.p.tracePhases(true, nil)
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
		summarize(b, "cluster    %-15s phases from ssh -o LogLevel=DEBUG2, median of %d, ms: %s", pa.name, traced, strings.Join(parts, ", "))
	}
	b.ReportMetric(0, "ns/op")
}

// clusterBenchPaths adds a secret on e's site for alice and returns the
// ssh runs through e (the "proxy" path of benchPaths).
func clusterBenchPaths(b *testing.B, c *cluster, e *engineProc) *benchPaths {
	b.Helper()
	p := &benchPaths{g: e.gw, tgt: c.target, secret: c.admin.Name("bench"), ssh: clientTool(b, "ssh"), source: e.gw.nextSource()}
	c.admin.AddSecret(b, secretSpec{Name: p.secret, Allow: []string{c.Alice.Name}, Site: e.Site})
	var err error
	if p.proxyAsk, err = writeAnswers(c.Alice.Answers()); err != nil {
		b.Fatal(err)
	}
	if p.directAsk, err = writeAnswers(answers{Password: c.target.Password}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(p.proxyAsk); os.RemoveAll(p.directAsk) })
	return p
}
