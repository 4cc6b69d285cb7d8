package builtin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
)

func TestLimits(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	e := newEngine(t, "alpha")
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{
		Queues: m, Auth: newAuth(e), MaxSessionsPerEngine: 1, MaxConsumers: 1,
		MaxFrameSize: 64 << 10, HandshakeTimeout: 300 * time.Millisecond,
	})
	c := dial(t, p, ts.url, e)
	ctx := testCtx(t)

	t.Run("sessions per engine", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if c2, err := Dial(dctx, clientConfig(t, p, ts.url, e)); err == nil {
			_ = c2.Close()
			t.Fatal("a second session of the engine was let in")
		}
		if n := ts.Sessions(); n != 1 {
			t.Fatalf("%d sessions", n)
		}
	})
	t.Run("consumers per session", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		first := make(chan error, 1)
		go func() {
			first <- c.Consume(cctx, names.WorkQueue("alpha"), 1, func(context.Context, connector.Delivery) {})
		}()
		time.Sleep(100 * time.Millisecond)
		err := c.Consume(ctx, names.ReplyQueue("alpha", e.id), 1, func(context.Context, connector.Delivery) {})
		if err == nil || !strings.Contains(err.Error(), "too many") {
			t.Fatalf("a second consumer: %v", err)
		}
		cancel()
		if err := <-first; err != nil {
			t.Fatalf("the first consumer: %v", err)
		}
	})
	t.Run("message over the vault's frame size", func(t *testing.T) {
		err := c.Publish(ctx, names.RequestQueue("alpha"), make([]byte, 100<<10), time.Minute)
		if err == nil || !strings.Contains(err.Error(), "limit") {
			t.Fatalf("publish of 100 KiB to a 64 KiB server: %v", err)
		}
		if err := c.Publish(ctx, names.RequestQueue("alpha"), make([]byte, 60<<10), time.Minute); err != nil {
			t.Fatalf("publish of 60 KiB: %v", err)
		}
	})
	t.Run("silent client dropped after the handshake timeout", func(t *testing.T) {
		rc := rawDial(t, p, ts.url)
		start := time.Now()
		if _, _, err := rc.ws.Read(ctx); err == nil {
			t.Fatal("the server sent a second frame before hello")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("dropped after %v", d)
		}
	})
	t.Run("oversized hello", func(t *testing.T) {
		rc := rawDial(t, p, ts.url)
		_ = rc.ws.Write(ctx, websocket.MessageBinary, make([]byte, 4096))
		if _, _, err := rc.ws.Read(ctx); err == nil {
			t.Fatal("the server answered an oversized hello")
		}
	})
}

func TestMaxBodyRoundTrip(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	e := newEngine(t, "alpha")
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: newAuth(e), allowAnyQueue: true})
	c := dial(t, p, ts.url, e)
	ctx := testCtx(t)
	body := bytes.Repeat([]byte{0x42}, MaxBody)
	if err := c.Publish(ctx, "big", body, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, "big", append(body, 0), time.Minute); err == nil {
		t.Fatal("a body over MaxBody was sent")
	}
	got := make(chan []byte, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_ = c.Consume(cctx, "big", 1, func(_ context.Context, d connector.Delivery) {
			got <- bytes.Clone(d.Body())
			_ = d.Ack()
		})
	}()
	select {
	case b := <-got:
		if !bytes.Equal(b, body) {
			t.Fatal("the body changed on the way")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery")
	}
}

func TestProtocolViolation(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	e := newEngine(t, "alpha")
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: newAuth(e)})
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		typ  websocket.MessageType
		b    []byte
	}{
		{"unknown op", websocket.MessageBinary, []byte{0xff, 0, 0, 0, 0, 1}},
		{"truncated", websocket.MessageBinary, []byte{byte(opPublish), 0, 0, 0, 0, 1, 200, 'x'}},
		{"server op", websocket.MessageBinary, []byte{byte(opOK), 0, 0, 0, 0, 1}},
		{"second hello", websocket.MessageBinary, []byte{byte(opHello), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"text", websocket.MessageText, []byte("hello")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := rawDial(t, p, ts.url)
			if f := rc.hello(t, e.id, sign(t, e.key, tr(t, rc.nonce, e.id, rc.binding))); f.op != opWelcome {
				t.Fatalf("hello: %v", f.op)
			}
			if err := rc.ws.Write(ctx, tc.typ, tc.b); err != nil {
				t.Fatal(err)
			}
			if _, _, err := rc.ws.Read(ctx); err == nil {
				t.Fatal("the session survived a protocol violation")
			}
			eventually(t, "the session is gone", func() bool { return ts.Sessions() == 0 })
		})
	}
	// The server still serves.
	c := dial(t, p, ts.url, e)
	if err := c.Publish(ctx, names.RequestQueue("alpha"), []byte("x"), time.Minute); err != nil {
		t.Fatal(err)
	}
}

// freezer is a TCP proxy whose connections can be frozen: a network that
// drops everything without closing anything.
type freezer struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	frozen chan struct{}
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target, frozen: make(chan struct{})}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			_ = c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *freezer) accept() {
	defer f.wg.Done()
	for {
		in, err := f.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", f.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, in, out)
		frozen := f.frozen
		f.mu.Unlock()
		for _, pair := range [][2]net.Conn{{in, out}, {out, in}} {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := pair[0].Read(buf)
					if n > 0 {
						select {
						case <-frozen: // dropped on the floor
						default:
							if _, err := pair[1].Write(buf[:n]); err != nil {
								return
							}
						}
					}
					if err != nil {
						if !errors.Is(err, io.EOF) {
							return
						}
						_ = pair[1].Close()
						return
					}
				}
			}()
		}
	}
}

// freeze silences every connection made so far; new ones pass.
func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.frozen)
	f.frozen = make(chan struct{})
}

func TestNetworkPartition(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	e := newEngine(t, "alpha")
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: newAuth(e), PingInterval: 200 * time.Millisecond})
	fz := newFreezer(t, ts.addr)
	cfg := clientConfig(t, p, "wss://"+fz.ln.Addr().String()+"/v1/connector", e)
	cfg.ServerName = "127.0.0.1"
	cfg.PingInterval = 200 * time.Millisecond
	ctx := testCtx(t)
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	work := names.WorkQueue("alpha")
	got := make(chan bool, 4)
	hold := make(chan struct{})
	heldAck := make(chan error, 1)
	go func() {
		_ = c.Consume(ctx, work, 2, func(_ context.Context, d connector.Delivery) {
			got <- d.Redelivered()
			if !d.Redelivered() { // held across the partition
				<-hold
				heldAck <- d.Ack()
				return
			}
			_ = d.Ack()
		})
	}()
	if err := m.Publish(ctx, work, []byte("job"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r {
		t.Fatal("first delivery marked redelivered")
	}
	fz.freeze()
	// Both ends notice by their pings; the vault puts the message back,
	// and the client, reconnected, gets it again.
	select {
	case r := <-got:
		if !r {
			t.Fatal("the message came back without Redelivered")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no redelivery after the partition")
	}
	close(hold)
	if err := <-heldAck; !errors.Is(err, connector.ErrSettled) {
		t.Fatalf("Ack over the dead connection: %v, want ErrSettled", err)
	}
}
