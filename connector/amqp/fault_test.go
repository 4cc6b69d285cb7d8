package amqp

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
)

// TestBrokerRestart stops RabbitMQ and starts it again on the same data
// while a producer publishes a numbered sequence and a consumer acks it.
// Both Conns reconnect by themselves; every number published is received
// at least once; a number received twice is either a redelivery
// (Redelivered set) or a publish sent again because its confirm was lost
// with the connection, and there are no more of those than the producer
// counted.
func TestBrokerRestart(t *testing.T) {
	for _, qt := range []string{QueueClassic, QueueQuorum} {
		t.Run(qt, func(t *testing.T) { brokerRestart(t, qt) })
	}
}

func brokerRestart(t *testing.T, queueType string) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var logs syncBuffer
	cfg := tb.config()
	cfg.QueueType = queueType
	cfg.Log = slogTo(&logs)
	cfg.BackoffMin, cfg.BackoffMax = 50*time.Millisecond, time.Second
	prod := dial(t, cfg)
	cons := dial(t, cfg)
	q := uniqueQueue(t)
	if err := prod.Declare(ctx, q, connector.Shared); err != nil {
		t.Fatal(err)
	}

	const most = 1 << 20
	published := make([]atomic.Bool, most)
	var (
		mu          sync.Mutex
		received    = map[int]int{}
		redelivered int // second and later deliveries with Redelivered set
		fresh       int // second and later deliveries without it: a publish sent again
		total       atomic.Int64
	)
	cctx, stopConsumer := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- cons.Consume(cctx, q, 32, func(_ context.Context, d connector.Delivery) {
			n, err := strconv.Atoi(string(d.Body()))
			if err != nil {
				t.Errorf("body %q", d.Body())
			}
			mu.Lock()
			if received[n] > 0 {
				if d.Redelivered() {
					redelivered++
				} else {
					fresh++
				}
			}
			received[n]++
			mu.Unlock()
			total.Add(1)
			_ = d.Ack() // ErrSettled across the restart: it comes again
		})
	}()

	var next atomic.Int64
	var stopProducing atomic.Bool
	var producers sync.WaitGroup
	for range 4 {
		producers.Add(1)
		go func() {
			defer producers.Done()
			for !stopProducing.Load() {
				n := int(next.Add(1) - 1)
				if n >= most {
					return
				}
				if err := prod.Publish(ctx, q, []byte(strconv.Itoa(n)), 10*time.Minute); err != nil {
					t.Errorf("publish %d: %v", n, err)
					return
				}
				published[n].Store(true)
			}
		}()
	}
	waitFor := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) || t.Failed() {
				t.Fatalf("waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("the first 1000 messages", time.Minute, func() bool { return total.Load() >= 1000 })

	down := time.Now()
	if err := tb.stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if err := tb.start(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	waitFor("both Conns to reconnect", time.Minute, func() bool { return prod.reconnects.Load() > 0 && cons.reconnects.Load() > 0 })
	t.Logf("%s: broker stop %v, start %v; both Conns reconnected %v after it took logins again (%v after the stop began)",
		queueType, stopped.Sub(down).Round(time.Millisecond), up.Sub(stopped).Round(time.Millisecond),
		time.Since(up).Round(time.Millisecond), time.Since(down).Round(time.Millisecond))

	after := total.Load()
	waitFor("1000 more messages after the restart", time.Minute, func() bool { return total.Load() >= after+1000 })
	stopProducing.Store(true)
	producers.Wait()
	last := int(next.Load())
	waitFor("every published number", time.Minute, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for n := range last {
			if published[n].Load() && received[n] == 0 {
				return false
			}
		}
		return true
	})
	stopConsumer()
	if err := <-consumed; err != nil {
		t.Fatalf("Consume: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	count := 0
	for n := range last {
		if published[n].Load() {
			count++
		}
	}
	republished := prod.republished.Load()
	t.Logf("%s: %d published, %d deliveries, %d redelivered duplicates, %d duplicates from %d publishes sent again",
		queueType, count, total.Load(), redelivered, fresh, republished)
	if int64(fresh) > republished {
		t.Errorf("%d duplicates without Redelivered, but only %d publishes were sent again", fresh, republished)
	}
	l := logs.String()
	if n := strings.Count(l, "amqp connection lost"); n != 2 {
		t.Errorf("%d 'connection lost' lines for two Conns:\n%s", n, l)
	}
	if n := strings.Count(l, "amqp connection re-established"); n != 2 {
		t.Errorf("%d 're-established' lines for two Conns:\n%s", n, l)
	}
	if strings.Contains(l, string(tb.pass)) {
		t.Error("the password is in the log")
	}
}
