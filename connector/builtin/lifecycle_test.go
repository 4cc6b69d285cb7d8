package builtin

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
)

func TestDisconnect(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	victim, peer := newEngine(t, "alpha"), newEngine(t, "alpha")
	auth := newAuth(victim, peer)
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: auth})
	work := names.WorkQueue("alpha")
	ctx := testCtx(t)

	// The victim takes the only message and sits on it.
	cv := dial(t, p, ts.url, victim)
	got := make(chan struct{})
	release := make(chan struct{})
	ackErr := make(chan error, 1)
	consumeErr := make(chan error, 1)
	go func() {
		consumeErr <- cv.Consume(ctx, work, 1, func(_ context.Context, d connector.Delivery) {
			close(got)
			<-release
			ackErr <- d.Ack()
		})
	}()
	if err := m.Publish(ctx, work, []byte("job"), time.Minute); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the victim got nothing")
	}

	// A peer waits on the same queue.
	cp := dial(t, p, ts.url, peer)
	redelivered := make(chan bool, 1)
	go func() {
		_ = cp.Consume(ctx, work, 1, func(_ context.Context, d connector.Delivery) {
			redelivered <- d.Redelivered()
			_ = d.Ack()
		})
	}()
	eventually(t, "two sessions", func() bool { return ts.Sessions() == 2 })

	// Revoke, then cut.
	start := time.Now()
	auth.revoke(victim.id)
	ts.Disconnect(victim.id)
	select {
	case r := <-redelivered:
		if !r {
			t.Fatal("the message came to the peer without Redelivered")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the victim's unsettled message did not come back")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the cut took %v", d)
	}
	if n := ts.Sessions(); n != 1 {
		t.Fatalf("%d sessions after Disconnect, want 1", n)
	}
	close(release)
	if err := <-ackErr; !errors.Is(err, connector.ErrSettled) {
		t.Fatalf("Ack after the cut: %v, want ErrSettled", err)
	}
	select {
	case err := <-consumeErr:
		if !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("the victim's Consume: %v, want ErrUnauthorized", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the victim's Consume kept going after its revocation")
	}
	if err := cv.Publish(ctx, names.RequestQueue("alpha"), []byte("x"), time.Minute); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("the victim's Publish: %v, want ErrUnauthorized", err)
	}
	if n := ts.Sessions(); n != 1 {
		t.Fatalf("%d sessions, want the peer's only", n)
	}
}

func TestServerRestart(t *testing.T) {
	for _, sameMemory := range []bool{true, false} {
		name := "new memory"
		if sameMemory {
			name = "same memory"
		}
		t.Run(name, func(t *testing.T) { serverRestart(t, sameMemory) })
	}
}

func serverRestart(t *testing.T, sameMemory bool) {
	p := newPKI(t)
	m1 := connector.NewMemory(0)
	defer m1.Close()
	e := newEngine(t, "alpha")
	auth := newAuth(e)
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m1, Auth: auth})
	c := dial(t, p, ts.url, e)
	ctx := testCtx(t)
	reply := names.ReplyQueue("alpha", e.id)
	if err := c.Declare(ctx, reply, connector.Private); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 8)
	go func() {
		_ = c.Consume(ctx, reply, 2, func(_ context.Context, d connector.Delivery) {
			// Ack returns once the vault has it: a restart after this
			// point does not bring the message back.
			if err := d.Ack(); err != nil {
				got <- "ack: " + err.Error()
				return
			}
			got <- string(d.Body())
		})
	}()
	recv := func(want string) {
		t.Helper()
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("got %q, want %q", s, want)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no %q", want)
		}
	}
	if err := m1.Publish(ctx, reply, []byte("before"), time.Minute); err != nil {
		t.Fatal(err)
	}
	recv("before")

	ts.stop()
	published := make(chan error, 1)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		published <- c.Publish(pctx, names.ResultQueue("alpha"), []byte("during"), time.Minute)
	}()
	select {
	case err := <-published:
		t.Fatalf("Publish returned while the vault was down: %v", err)
	case <-time.After(300 * time.Millisecond):
	}

	m2 := m1
	if !sameMemory {
		m2 = connector.NewMemory(0)
		defer m2.Close()
	}
	ts2 := startServer(t, p, ts.addr, ServerConfig{Queues: m2, Auth: auth})
	select {
	case err := <-published:
		if err != nil {
			t.Fatalf("Publish across the restart: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Publish did not complete once the vault was back")
	}
	if n := m2.Depth(names.ResultQueue("alpha")); n != 1 {
		t.Fatalf("%d results on the new server, want 1", n)
	}
	eventually(t, "the consumer is back", func() bool { return ts2.Sessions() == 1 })
	if err := m2.Publish(ctx, reply, []byte("after"), time.Minute); err != nil {
		t.Fatal(err)
	}
	recv("after")
}

// TestShutdownLeavesNothing runs a busy server and clients, and checks
// that Close and Shutdown leave no goroutine of theirs behind.
func TestShutdownLeavesNothing(t *testing.T) {
	if left := waitGoroutines(5 * time.Second); left != "" {
		t.Fatalf("goroutines left by earlier tests:\n%s", left)
	}
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	e1, e2 := newEngine(t, "alpha"), newEngine(t, "alpha")
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: newAuth(e1, e2)})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var handled atomic.Int32
	var clients []*Client
	var done []chan error
	for _, e := range []*engine{e1, e2} {
		c := dial(t, p, ts.url, e)
		clients = append(clients, c)
		ch := make(chan error, 1)
		done = append(done, ch)
		go func() {
			ch <- c.Consume(ctx, names.WorkQueue("alpha"), 4, func(_ context.Context, d connector.Delivery) {
				if handled.Add(1)%2 == 0 {
					_ = d.Ack()
				} // the others are left to be put back
			})
		}()
		if err := c.Publish(ctx, names.RequestQueue("alpha"), []byte("r"), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	for range 50 {
		if err := m.Publish(ctx, names.WorkQueue("alpha"), []byte("w"), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "work handled", func() bool { return handled.Load() >= 50 })
	// The server goes first, with consumers busy: the clients start
	// reconnecting, and must stop doing so at Close.
	ts.stop()
	if n := ts.Sessions(); n != 0 {
		t.Fatalf("%d sessions after Shutdown", n)
	}
	time.Sleep(100 * time.Millisecond)
	for _, c := range clients {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range done {
		if err := <-ch; !errors.Is(err, connector.ErrClosed) {
			t.Fatalf("Consume after Close: %v, want ErrClosed", err)
		}
	}
	if left := waitGoroutines(5 * time.Second); left != "" {
		t.Fatalf("goroutines left after Close and Shutdown:\n%s", left)
	}
}

// gateAuth holds its first call until released: a revocation can land
// between the check and the session's start.
type gateAuth struct {
	*fakeAuth
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (a *gateAuth) Authorize(ctx context.Context, engineID string, message, signature []byte) (string, error) {
	site, err := a.fakeAuth.Authorize(ctx, engineID, message, signature)
	first := false
	a.once.Do(func() { first = true })
	if first {
		close(a.entered)
		<-a.release
	}
	return site, err
}

func TestDisconnectDuringHandshake(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	e := newEngine(t, "alpha")
	auth := &gateAuth{fakeAuth: newAuth(e), entered: make(chan struct{}), release: make(chan struct{})}
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: auth})
	dialed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Dial(ctx, clientConfig(t, p, ts.url, e))
		if err == nil {
			_ = c.Close()
		}
		dialed <- err
	}()
	<-auth.entered // authorized, not yet registered
	auth.revoke(e.id)
	ts.Disconnect(e.id)
	close(auth.release)
	if err := <-dialed; !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("Dial across a revocation: %v, want ErrUnauthorized", err)
	}
	if n := ts.Sessions(); n != 0 {
		t.Fatalf("%d sessions", n)
	}
}
