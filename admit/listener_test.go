package admit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeListener hands out in-memory connections whose remote address the
// test chooses, so that many sources can be tried without many addresses.
type fakeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newFakeListener() *fakeListener {
	return &fakeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (f *fakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	case <-f.closed:
		return nil, net.ErrClosed
	}
}
func (f *fakeListener) Close() error   { f.once.Do(func() { close(f.closed) }); return nil }
func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// peer is one end of a pipe whose other end the listener sees as coming
// from addr; closed reports when the listener's side was closed.
type peer struct {
	client net.Conn
	closed chan struct{}
}

type addrConn struct {
	net.Conn
	remote  net.Addr
	onClose func()
	once    sync.Once
}

func (c *addrConn) RemoteAddr() net.Addr { return c.remote }
func (c *addrConn) Close() error {
	c.once.Do(c.onClose)
	return c.Conn.Close()
}

// harness runs a Listener over a fakeListener and accepts everything into
// a channel.
type harness struct {
	t   *testing.T
	f   *fakeListener
	l   *Listener
	acc chan *Conn
	log *bytes.Buffer
	mu  *sync.Mutex
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, f: newFakeListener(), acc: make(chan *Conn, 1024), log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cfg.Log = slog.New(slog.NewTextHandler(lockedWriter{h.mu, h.log}, nil))
	l, err := NewListener(h.f, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.l = l
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.acc <- c.(*Conn)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return h
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// connect offers one connection from ip and returns the peer and the
// accepted *Conn, or nil if the listener refused it.
func (h *harness) connect(ip string) (*peer, *Conn) {
	h.t.Helper()
	a, b := net.Pipe()
	p := &peer{client: a, closed: make(chan struct{})}
	c := &addrConn{Conn: b, remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}, onClose: func() { close(p.closed) }}
	h.f.conns <- c
	select {
	case got := <-h.acc:
		return p, got
	case <-p.closed:
		return p, nil
	case <-time.After(5 * time.Second):
		h.t.Fatal("listener neither accepted nor refused a connection")
		return nil, nil
	}
}

func isClosed(p *peer) bool {
	select {
	case <-p.closed:
		return true
	case <-time.After(2 * time.Second):
		return false
	}
}

func TestPerSourceCap(t *testing.T) {
	h := newHarness(t, Config{MaxPending: 100, MaxPerSource: 3, EarlyDrop: 100})
	var held []*Conn
	for i := range 3 {
		if _, c := h.connect("192.0.2.1"); c == nil {
			t.Fatalf("connection %d refused under the cap", i)
		} else {
			held = append(held, c)
		}
	}
	if _, c := h.connect("192.0.2.1"); c != nil {
		t.Fatal("a fourth pending connection from one source was accepted")
	}
	if _, c := h.connect("192.0.2.2"); c == nil {
		t.Fatal("another source was refused")
	}
	// Authenticating frees the slot.
	held[0].Admit()
	if _, c := h.connect("192.0.2.1"); c == nil {
		t.Fatal("slot not released by Admit")
	}
	// So does closing.
	held[1].Close()
	if _, c := h.connect("192.0.2.1"); c == nil {
		t.Fatal("slot not released by Close")
	}
}

func TestIPv6PrefixIsOneSource(t *testing.T) {
	h := newHarness(t, Config{MaxPending: 100, MaxPerSource: 2, EarlyDrop: 100})
	h.connect("2001:db8:1:2::1")
	h.connect("2001:db8:1:2::ffff")
	if _, c := h.connect("2001:db8:1:2:abcd::9"); c != nil {
		t.Fatal("a third address in the same /64 was accepted")
	}
	if _, c := h.connect("2001:db8:1:3::1"); c == nil {
		t.Fatal("the next /64 was refused")
	}
	if got := SourceOf(netip.MustParseAddr("::ffff:192.0.2.8"), 32, 64); got != netip.MustParsePrefix("192.0.2.8/32") {
		t.Fatalf("IPv4-mapped address counted as %v", got)
	}
}

// TestEvictionKeepsFreshSourcesIn: with the table full of one attacker's
// connections (spread over a few sources), a newcomer from a new source
// evicts the oldest connection of the source holding most, preferring one
// still in its machine phase.
func TestEvictionKeepsFreshSourcesIn(t *testing.T) {
	h := newHarness(t, Config{MaxPending: 6, MaxPerSource: 4, EarlyDrop: 6})
	var a []*peer
	var ac []*Conn
	for range 4 {
		p, c := h.connect("192.0.2.66")
		a, ac = append(a, p), append(ac, c)
	}
	ac[0].Handshaken() // a person may be typing on this one
	for range 2 {
		h.connect("192.0.2.67")
	}
	// Full. A fresh source gets in; 192.0.2.66's oldest raw connection goes.
	if _, c := h.connect("198.51.100.1"); c == nil {
		t.Fatal("newcomer refused while one source held 4 of 6 slots")
	}
	if !isClosed(a[1]) {
		t.Fatal("the oldest connection still in its machine phase was not evicted")
	}
	select {
	case <-a[0].closed:
		t.Fatal("the handshaken connection was evicted before a raw one")
	default:
	}
	// Now 3, 2, 1: the third source's second connection cannot evict.
	if _, c := h.connect("198.51.100.1"); c == nil {
		t.Fatal("a second connection from a source holding 1 against one holding 3 was refused")
	}
	if _, c := h.connect("198.51.100.1"); c != nil {
		t.Fatal("evicted for a source that would then hold more than the victim")
	}
}

func TestEarlyDrop(t *testing.T) {
	draws := 0
	h := newHarness(t, Config{MaxPending: 10, MaxPerSource: 10, EarlyDrop: 2, Intn: func(n int) int { draws++; return n - 1 }})
	h.connect("192.0.2.1")
	h.connect("192.0.2.1")
	// pending 2 = EarlyDrop: a source that holds one is subject to the draw
	// (our draw is the luckiest possible, so it passes until certainty).
	for i := 0; i < 6; i++ {
		if _, c := h.connect("192.0.2.1"); c == nil {
			t.Fatalf("dropped at pending %d with the luckiest draw", 2+i)
		}
	}
	if draws == 0 {
		t.Fatal("early drop never drew")
	}
	// A source's first connection is never dropped early.
	if _, c := h.connect("192.0.2.2"); c == nil {
		t.Fatal("a new source's first connection was dropped early")
	}
	// Just below the cap (9 pending) the drop is certain for a source
	// that holds one.
	if _, c := h.connect("192.0.2.1"); c != nil {
		t.Fatal("accepted just below the cap from a source that holds one")
	}
}

func TestRate(t *testing.T) {
	clk := newClock()
	h := newHarness(t, Config{Rate: 1, Burst: 3, Now: clk.now})
	for i := range 3 {
		p, c := h.connect("192.0.2.5")
		if c == nil {
			t.Fatalf("connection %d within the burst refused", i)
		}
		c.Admit()
		p.client.Close()
	}
	if _, c := h.connect("192.0.2.5"); c != nil {
		t.Fatal("a fourth connection within the same instant was accepted")
	}
	clk.add(time.Second)
	if _, c := h.connect("192.0.2.5"); c == nil {
		t.Fatal("the rate did not refill")
	}
}

func TestTimeoutClosesPending(t *testing.T) {
	h := newHarness(t, Config{Timeout: 50 * time.Millisecond})
	p, _ := h.connect("192.0.2.1")
	if !isClosed(p) {
		t.Fatal("a pending connection outlived Timeout")
	}
	p2, c := h.connect("192.0.2.1")
	c.Admit()
	select {
	case <-p2.closed:
		t.Fatal("an admitted connection was closed by the pending timeout")
	case <-time.After(200 * time.Millisecond):
	}
	if all, _ := h.l.Pending(netip.Prefix{}); all != 0 {
		t.Fatalf("%d still pending", all)
	}
}

// TestTallyBoundsTheLog: thousands of refusals from hundreds of sources
// become at most tallyLines+1 lines per flush.
func TestTallyBoundsTheLog(t *testing.T) {
	var buf bytes.Buffer
	tl := NewTally(slog.New(slog.NewTextHandler(&buf, nil)), "refused", slog.String("listener", "test"))
	for i := range 10_000 {
		tl.Add(pfx(fmt.Sprintf("10.0.%d.%d", i%1000/250, i%250)), ReasonPerSource)
		if i%3 == 0 {
			tl.Add(pfx("192.0.2.1"), ReasonRate)
		}
	}
	tl.Flush()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) > tallyLines+1 {
		t.Fatalf("%d lines for one flush, bound %d:\n%s", len(lines), tallyLines+1, buf.String())
	}
	if !strings.Contains(lines[0], "source=192.0.2.1") || !strings.Contains(lines[0], "rate=3334") {
		t.Fatalf("busiest source not first with its count: %s", lines[0])
	}
	last := lines[len(lines)-1]
	if !strings.Contains(last, "source=others") {
		t.Fatalf("no summary line: %s", last)
	}
	buf.Reset()
	tl.Flush()
	if buf.Len() != 0 {
		t.Fatalf("an empty interval logged: %s", buf.String())
	}
}

func TestWithConnAdmitted(t *testing.T) {
	h := newHarness(t, Config{MaxPerSource: 1})
	_, c := h.connect("192.0.2.1")
	ctx := WithConn(context.Background(), wrapped{c})
	Admitted(ctx)
	if _, c := h.connect("192.0.2.1"); c == nil {
		t.Fatal("Admitted through the context did not release the slot")
	}
	Admitted(context.Background()) // no connection: nothing happens
}

type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{MaxPending: 2, MaxPerSource: 3}, {IPv6Bits: 129}, {Rate: -1}} {
		if _, err := NewListener(newFakeListener(), c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// TestRealTCP runs the listener on loopback and checks that a refused
// connection is reset.
func TestRealTCP(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewListener(inner, Config{MaxPerSource: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			if _, err := l.Accept(); err != nil {
				return
			}
		}
	}()
	first, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		if strings.Contains(err.Error(), "reset") {
			return // the reset came before connect(2) returned
		}
		t.Fatal(err)
	}
	defer second.Close()
	_ = second.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = second.Read(make([]byte, 1))
	if err == nil || !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("second connection from the same source: read gave %v, want a reset", err)
	}
}

func TestRefusedCountsAgainstTheSource(t *testing.T) {
	var reasons []string
	var mu sync.Mutex
	h := newHarness(t, Config{OnRefuse: func(r string) { mu.Lock(); reasons = append(reasons, r); mu.Unlock() }})
	_, c := h.connect("192.0.2.1")
	ctx := WithConn(context.Background(), c)
	if !Counting(ctx) || Counting(context.Background()) {
		t.Fatal("Counting")
	}
	Refused(ctx, ReasonAuth)
	Refused(context.Background(), ReasonAuth) // no connection: nothing
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) != 1 || reasons[0] != ReasonAuth {
		t.Fatalf("refusals %v", reasons)
	}
}
