package builtin

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
)

// BenchmarkRoundTrip measures 1 KiB publish + consume + ack round trips,
// one at a time, over the built-in connector (TLS WebSocket on loopback)
// and over its Memory directly. The ratio is the cost of the wire.
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		m := connector.NewMemory(0)
		defer m.Close()
		roundTrips(b, m.Session())
	})
	b.Run("builtin", func(b *testing.B) {
		p := newPKI(b)
		m := connector.NewMemory(0)
		defer m.Close()
		e := newEngine(b, "bench")
		ts := startServer(b, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: newAuth(e), allowAnyQueue: true})
		roundTrips(b, dial(b, p, ts.url, e))
	})
}

// BenchmarkPipelined measures the same work with 16 publishers and a
// consumer of prefetch 64: throughput rather than latency.
func BenchmarkPipelined(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		m := connector.NewMemory(0)
		defer m.Close()
		pipelined(b, m.Session())
	})
	b.Run("builtin", func(b *testing.B) {
		p := newPKI(b)
		m := connector.NewMemory(0)
		defer m.Close()
		e := newEngine(b, "bench")
		ts := startServer(b, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: newAuth(e), allowAnyQueue: true})
		pipelined(b, dial(b, p, ts.url, e))
	})
}

func pipelined(b *testing.B, c connector.Connector) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const q = "bench.pipelined"
	body := bytes.Repeat([]byte{0xa5}, 1024)
	acked := make(chan struct{}, 1024)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(ctx, q, 64, func(_ context.Context, d connector.Delivery) {
			if d.Ack() == nil {
				acked <- struct{}{}
			}
		})
	}()
	b.SetBytes(int64(len(body)))
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	failed := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				err := c.Publish(ctx, q, body, time.Minute)
				for errors.Is(err, connector.ErrFull) { // the publishers outran the consumer
					time.Sleep(time.Millisecond)
					err = c.Publish(ctx, q, body, time.Minute)
				}
				if err != nil {
					failed <- err
					return
				}
			}
		})
	}
	for range b.N {
		select {
		case <-acked:
		case err := <-failed:
			cancel()
			wg.Wait()
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "roundtrips/s")
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func roundTrips(b *testing.B, c connector.Connector) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const q = "bench.roundtrip"
	body := bytes.Repeat([]byte{0xa5}, 1024)
	acked := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(ctx, q, 1, func(_ context.Context, d connector.Delivery) { acked <- d.Ack() })
	}()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		if err := c.Publish(ctx, q, body, time.Minute); err != nil {
			b.Fatal(err)
		}
		if err := <-acked; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "roundtrips/s")
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
