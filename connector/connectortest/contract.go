// Package connectortest is the contract every connector.Connector must
// meet: one set of tests run against the memory queue, the built-in
// connector and RabbitMQ alike, so that code written against one behaves
// the same over the others.
package connectortest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
)

// Options describe what the connector under test can be asked to do.
type Options struct {
	// New returns a fresh connector; queue names are unique per call of a
	// subtest, so connectors may share a broker.
	New func(t *testing.T) connector.Connector
	// MaxLength is the queue bound the connector was configured with, or 0
	// to skip the full-queue test (it would need too many messages).
	MaxLength int
}

var seq atomic.Int64

// queueName returns a queue name no other subtest uses.
func queueName(t *testing.T) string {
	return fmt.Sprintf("contract.%d.%d", time.Now().UnixNano()%1_000_000, seq.Add(1))
}

// Run runs the contract.
func Run(t *testing.T, o Options) {
	t.Run("publish consume ack", func(t *testing.T) { publishConsumeAck(t, o) })
	t.Run("unsettled is redelivered", func(t *testing.T) { unsettledRedelivered(t, o) })
	t.Run("reject requeue and drop", func(t *testing.T) { rejectRequeueDrop(t, o) })
	t.Run("expired never delivered", func(t *testing.T) { expired(t, o) })
	t.Run("prefetch bounds concurrency", func(t *testing.T) { prefetch(t, o) })
	t.Run("competing consumers", func(t *testing.T) { competing(t, o) })
	t.Run("double settle", func(t *testing.T) { doubleSettle(t, o) })
	t.Run("close ends consume", func(t *testing.T) { closeEnds(t, o) })
	if o.MaxLength > 0 {
		t.Run("full queue refuses", func(t *testing.T) { full(t, o) })
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// consume runs Consume in the background until the returned stop is called;
// stop returns Consume's error.
func consume(ctx context.Context, c connector.Connector, q string, prefetch int, h func(context.Context, connector.Delivery)) (stop func() error) {
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Consume(cctx, q, prefetch, h) }()
	return func() error { cancel(); return <-done }
}

func publish(t *testing.T, ctx context.Context, c connector.Connector, q string, bodies ...string) {
	t.Helper()
	for _, b := range bodies {
		if err := c.Publish(ctx, q, []byte(b), time.Minute); err != nil {
			t.Fatalf("publish %q: %v", b, err)
		}
	}
}

func recv(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(20 * time.Second):
		t.Fatalf("no delivery: %s", what)
		return ""
	}
}

func publishConsumeAck(t *testing.T, o Options) {
	ctx := ctxFor(t)
	c := o.New(t)
	q := queueName(t)
	if err := c.Declare(ctx, q, connector.Shared); err != nil {
		t.Fatal(err)
	}
	body := []byte("first")
	if err := c.Publish(ctx, q, body, time.Minute); err != nil {
		t.Fatal(err)
	}
	copy(body, "XXXXX") // the connector must have copied it
	publish(t, ctx, c, q, "second")
	got := make(chan string, 4)
	stop := consume(ctx, c, q, 1, func(_ context.Context, d connector.Delivery) {
		if d.Redelivered() {
			got <- "redelivered:" + string(d.Body())
		} else {
			got <- string(d.Body())
		}
		if err := d.Ack(); err != nil {
			got <- "ack error: " + err.Error()
		}
	})
	if a, b := recv(t, got, "first"), recv(t, got, "second"); a != "first" || b != "second" {
		t.Fatalf("got %q, %q; want first, second in order", a, b)
	}
	if err := stop(); err != nil {
		t.Fatalf("Consume after its context ended: %v", err)
	}
	// Acknowledged messages are gone.
	stop = consume(ctx, c, q, 1, func(_ context.Context, d connector.Delivery) { got <- string(d.Body()); _ = d.Ack() })
	select {
	case s := <-got:
		t.Fatalf("an acknowledged message came back: %q", s)
	case <-time.After(300 * time.Millisecond):
	}
	_ = stop()
}

func unsettledRedelivered(t *testing.T, o Options) {
	ctx := ctxFor(t)
	c := o.New(t)
	q := queueName(t)
	publish(t, ctx, c, q, "job")
	first := make(chan bool, 1)
	stop := consume(ctx, c, q, 1, func(_ context.Context, d connector.Delivery) {
		// Return without settling. The message may come straight back to
		// this consumer before it stops: record only the first delivery.
		select {
		case first <- d.Redelivered():
		default:
		}
	})
	if <-first {
		t.Fatal("a first delivery was marked redelivered")
	}
	_ = stop()
	again := make(chan bool, 1)
	stop = consume(ctx, c, q, 1, func(_ context.Context, d connector.Delivery) {
		again <- d.Redelivered()
		_ = d.Ack()
	})
	defer stop()
	select {
	case r := <-again:
		if !r {
			t.Fatal("a message left unsettled came back without Redelivered")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a message left unsettled was lost")
	}
}

func rejectRequeueDrop(t *testing.T, o Options) {
	ctx := ctxFor(t)
	c := o.New(t)
	q := queueName(t)
	publish(t, ctx, c, q, "requeue-me", "drop-me")
	got := make(chan string, 8)
	var tries sync.Map
	stop := consume(ctx, c, q, 1, func(_ context.Context, d connector.Delivery) {
		b := string(d.Body())
		n, _ := tries.LoadOrStore(b, new(atomic.Int32))
		k := n.(*atomic.Int32).Add(1)
		got <- fmt.Sprintf("%s#%d", b, k)
		switch {
		case b == "requeue-me" && k == 1:
			_ = d.Reject(true)
		case b == "drop-me":
			_ = d.Reject(false)
		default:
			_ = d.Ack()
		}
	})
	defer stop()
	seen := map[string]bool{}
	for range 3 {
		seen[recv(t, got, "requeue and drop")] = true
	}
	if !seen["requeue-me#1"] || !seen["requeue-me#2"] || !seen["drop-me#1"] {
		t.Fatalf("deliveries %v; want requeue-me twice and drop-me once", seen)
	}
	select {
	case s := <-got:
		t.Fatalf("a rejected message came back: %s", s)
	case <-time.After(300 * time.Millisecond):
	}
}

func expired(t *testing.T, o Options) {
	ctx := ctxFor(t)
	c := o.New(t)
	q := queueName(t)
	if err := c.Publish(ctx, q, []byte("stale"), 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	publish(t, ctx, c, q, "fresh")
	time.Sleep(400 * time.Millisecond)
	got := make(chan string, 4)
	stop := consume(ctx, c, q, 2, func(_ context.Context, d connector.Delivery) { got <- string(d.Body()); _ = d.Ack() })
	defer stop()
	if s := recv(t, got, "fresh"); s != "fresh" {
		t.Fatalf("an expired message was delivered: %q", s)
	}
	select {
	case s := <-got:
		t.Fatalf("an expired message was delivered: %q", s)
	case <-time.After(300 * time.Millisecond):
	}
}

func prefetch(t *testing.T, o Options) {
	ctx := ctxFor(t)
	c := o.New(t)
	q := queueName(t)
	for i := range 12 {
		publish(t, ctx, c, q, fmt.Sprint("m", i))
	}
	var inFlight, most atomic.Int32
	var done atomic.Int32
	release := make(chan struct{})
	all := make(chan struct{})
	stop := consume(ctx, c, q, 3, func(_ context.Context, d connector.Delivery) {
		n := inFlight.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		inFlight.Add(-1)
		_ = d.Ack()
		if done.Add(1) == 12 {
			close(all)
		}
	})
	defer stop()
	deadline := time.Now().Add(20 * time.Second)
	for inFlight.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a fourth would show up now
	if n := inFlight.Load(); n != 3 {
		t.Fatalf("%d handlers at once with prefetch 3", n)
	}
	close(release)
	select {
	case <-all:
	case <-time.After(20 * time.Second):
		t.Fatalf("only %d of 12 handled", done.Load())
	}
	if most.Load() > 3 {
		t.Fatalf("%d handlers ran at once with prefetch 3", most.Load())
	}
}

func competing(t *testing.T, o Options) {
	ctx := ctxFor(t)
	a, b := o.New(t), o.New(t)
	q := queueName(t)
	if err := a.Declare(ctx, q, connector.Shared); err != nil {
		t.Fatal(err)
	}
	const n = 40
	var mu sync.Mutex
	byConsumer := map[string]int{}
	seen := map[string]int{}
	all := make(chan struct{})
	total := 0
	handler := func(name string) func(context.Context, connector.Delivery) {
		return func(_ context.Context, d connector.Delivery) {
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			byConsumer[name]++
			seen[string(d.Body())]++
			total++
			if total == n {
				close(all)
			}
			mu.Unlock()
			_ = d.Ack()
		}
	}
	stopA := consume(ctx, a, q, 2, handler("a"))
	stopB := consume(ctx, b, q, 2, handler("b"))
	defer stopA()
	defer stopB()
	time.Sleep(200 * time.Millisecond) // both consumers subscribed
	for i := range n {
		publish(t, ctx, a, q, fmt.Sprint("w", i))
	}
	select {
	case <-all:
	case <-time.After(20 * time.Second):
		t.Fatalf("handled %d of %d", total, n)
	}
	mu.Lock()
	defer mu.Unlock()
	for k, v := range seen {
		if v != 1 {
			t.Fatalf("%s handled %d times", k, v)
		}
	}
	if byConsumer["a"] == 0 || byConsumer["b"] == 0 {
		t.Fatalf("one consumer took everything: %v", byConsumer)
	}
}

func doubleSettle(t *testing.T, o Options) {
	ctx := ctxFor(t)
	c := o.New(t)
	q := queueName(t)
	publish(t, ctx, c, q, "once")
	errs := make(chan error, 2)
	stop := consume(ctx, c, q, 1, func(_ context.Context, d connector.Delivery) {
		errs <- d.Ack()
		errs <- d.Reject(true)
	})
	defer stop()
	if err := <-errs; err != nil {
		t.Fatalf("first Ack: %v", err)
	}
	if err := <-errs; !errors.Is(err, connector.ErrSettled) {
		t.Fatalf("second settle: %v, want ErrSettled", err)
	}
}

func closeEnds(t *testing.T, o Options) {
	ctx := ctxFor(t)
	c := o.New(t)
	q := queueName(t)
	if err := c.Declare(ctx, q, connector.Shared); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Consume(ctx, q, 1, func(context.Context, connector.Delivery) {}) }()
	time.Sleep(100 * time.Millisecond)
	_ = c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, connector.ErrClosed) {
			t.Fatalf("Consume after Close: %v, want ErrClosed", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Consume did not return after Close")
	}
	if err := c.Publish(ctx, q, []byte("x"), time.Minute); !errors.Is(err, connector.ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
}

func full(t *testing.T, o Options) {
	ctx := ctxFor(t)
	c := o.New(t)
	q := queueName(t)
	if err := c.Declare(ctx, q, connector.Shared); err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("f"), 16)
	for i := range o.MaxLength {
		if err := c.Publish(ctx, q, body, time.Minute); err != nil {
			t.Fatalf("publish %d of %d: %v", i+1, o.MaxLength, err)
		}
	}
	if err := c.Publish(ctx, q, body, time.Minute); !errors.Is(err, connector.ErrFull) {
		t.Fatalf("publish to a full queue: %v, want ErrFull", err)
	}
}
