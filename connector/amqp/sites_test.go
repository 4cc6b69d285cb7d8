package amqp

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/internal/rabbitmqtest"
	"github.com/sallyport/sallyport/names"
)

// siteCost is what declaring a number of sites (three Shared queues
// each: requests, work, results) cost a node.
type siteCost struct {
	sites    int // asked for
	done     int // declared (fewer when the time ran out)
	took     time.Duration
	before   rabbitmqtest.Memory
	after    rabbitmqtest.Memory
	declared int // queues
}

func (c siteCost) String() string {
	perSite := func(a, b int64) string {
		if a < 0 || b < 0 || c.done == 0 {
			return "?"
		}
		return fmt.Sprintf("%.1f KiB", float64(b-a)/float64(c.done)/1024)
	}
	s := fmt.Sprintf("%d sites (%d queues) in %v (%.0f queues/s); Erlang memory %d -> %d MiB (%s per site), RSS %d -> %d MiB (%s per site)",
		c.done, c.declared, c.took.Round(time.Millisecond), float64(c.declared)/c.took.Seconds(),
		c.before.Erlang>>20, c.after.Erlang>>20, perSite(c.before.Erlang, c.after.Erlang),
		c.before.RSS>>20, c.after.RSS>>20, perSite(c.before.RSS, c.after.RSS))
	if c.done < c.sites {
		s = fmt.Sprintf("STOPPED after %d of %d sites: ", c.done, c.sites) + s
	}
	return s
}

// declareSites declares sites sites' Shared queues of queueType on b,
// over parallel Conns, for at most limit, and measures the node's memory
// before and after.
func declareSites(tb testing.TB, b *broker, queueType, prefix string, sites, parallel int, limit time.Duration) siteCost {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cfg := b.config()
	cfg.QueueType = queueType
	conns := make([]*Conn, parallel)
	for i := range conns {
		c, err := Dial(ctx, cfg)
		if err != nil {
			tb.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	before, err := b.memory()
	if err != nil {
		tb.Fatal(err)
	}
	var next, declared, done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, parallel)
	start := time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(sites) {
					return
				}
				site := fmt.Sprintf("%s%d", prefix, i)
				for _, q := range []string{names.RequestQueue(site), names.WorkQueue(site), names.ResultQueue(site)} {
					if err := c.Declare(ctx, q, connector.Shared); err != nil {
						if ctx.Err() == nil {
							errs <- err
						}
						return
					}
					declared.Add(1)
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
	// Let queue processes finish starting and the VM settle.
	time.Sleep(2 * time.Second)
	after, err := b.memory()
	if err != nil {
		tb.Fatal(err)
	}
	return siteCost{sites: sites, done: int(done.Load()), took: took, before: before, after: after, declared: int(declared.Load())}
}

// deleteSites removes what declareSites made.
func deleteSites(tb testing.TB, b *broker, prefix string, sites int) {
	tb.Helper()
	conn, err := b.rawDial()
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatal(err)
	}
	for i := range sites {
		site := fmt.Sprintf("%s%d", prefix, i)
		for _, q := range []string{names.RequestQueue(site), names.WorkQueue(site), names.ResultQueue(site)} {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

// TestSitesMemory measures 200 sites of each queue type on the shared
// node (the 10,000-site figures come from BenchmarkSitesAtScale). It
// asserts nothing about time or memory: it logs them.
func TestSitesMemory(t *testing.T) {
	const sites = 200
	for _, qt := range []string{QueueClassic, QueueQuorum} {
		t.Run(qt, func(t *testing.T) {
			prefix := fmt.Sprintf("m%s%d-", qt[:1], time.Now().UnixNano()%1e6)
			cost := declareSites(t, tb, qt, prefix, sites, 4, 5*time.Minute)
			t.Logf("%s: %v", qt, cost)
			deleteSites(t, tb, prefix, sites)
		})
	}
}

// BenchmarkSitesAtScale declares 200 and then 10,000 sites on a fresh
// node per queue type and reports time and memory per site; a step that
// does not finish in 15 minutes is reported as far as it got. It is long:
//
//	go test -run '^$' -bench SitesAtScale -benchtime 1x -timeout 2h ./connector/amqp/
func BenchmarkSitesAtScale(b *testing.B) {
	for _, qt := range []string{QueueClassic, QueueQuorum} {
		b.Run(qt, func(b *testing.B) {
			node, err := startBroker()
			if err != nil {
				b.Fatal(err)
			}
			defer func() {
				// A node overwhelmed by queues may have to be killed.
				if err := node.shutdown(); err != nil {
					b.Logf("stopping the node: %v", err)
				}
			}()
			total := 0
			for _, sites := range []int{200, 10_000} {
				cost := declareSites(b, node, qt, fmt.Sprintf("s%d-", sites), sites, 8, 15*time.Minute)
				total += cost.done
				b.Logf("%s: %v; node total %d sites", qt, cost, total)
				if cost.done == 0 {
					break
				}
				b.ReportMetric(float64(cost.took.Nanoseconds())/float64(cost.done), fmt.Sprintf("ns/site@%d", sites))
				b.ReportMetric(float64(cost.after.RSS-cost.before.RSS)/float64(cost.done), fmt.Sprintf("rss_B/site@%d", sites))
				if cost.done < sites {
					break // the node is overwhelmed
				}
			}
		})
	}
}
