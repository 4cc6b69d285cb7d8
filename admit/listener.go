package admit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Reasons a connection was refused or closed before it authenticated. They
// name the counts in tallied log lines.
const (
	ReasonRate      = "rate"           // the source opened connections faster than Rate
	ReasonPerSource = "per_source_cap" // the source already held MaxPerSource
	ReasonEarlyDrop = "early_drop"     // near the cap, from a source already holding one
	ReasonFull      = "full"           // at the cap, and no source held more than this one
	ReasonEvicted   = "evicted"        // closed to make room for a source holding fewer
	ReasonTimeout   = "timeout"        // not authenticated within Timeout
	ReasonAuth      = "unauthorized"   // a request without valid credentials (see Refused)
)

// Defaults for the zero values of Config.
const (
	DefaultMaxPending   = 256
	DefaultMaxPerSource = 10
	DefaultRate         = 50 // new connections per second per source: automation through one NAT stays under it
	DefaultBurst        = 100
	DefaultIPv4Bits     = 32
	DefaultIPv6Bits     = 64
	DefaultTimeout      = 2 * time.Minute
	DefaultLogEvery     = 10 * time.Second
	DefaultSources      = 65536
)

// Config configures a Listener. Zero values take the defaults above.
type Config struct {
	// Name labels the listener in log lines ("ssh", "api").
	Name string
	// MaxPending caps the connections accepted but not yet authenticated,
	// all sources together.
	MaxPending int
	// MaxPerSource caps them per source.
	MaxPerSource int
	// EarlyDrop is where random early drop starts: with this many pending,
	// a new connection from a source that already holds one is dropped
	// with a probability rising linearly to 1 just below MaxPending. A
	// source's first connection is never dropped early, and at the cap
	// eviction decides instead. Default MaxPending/2; set it to MaxPending
	// or more to turn early drop off.
	EarlyDrop int
	// Rate and Burst bound how fast one source may open connections (a
	// token bucket): excess connections are reset before any handshake.
	Rate  float64
	Burst int
	// IPv4Bits and IPv6Bits say how much of an address is one source:
	// one IPv6 host usually owns a whole /64.
	IPv4Bits, IPv6Bits int
	// Timeout closes a connection that has not authenticated by then, a
	// backstop behind the server's own deadlines.
	Timeout time.Duration
	// Log receives the tallied refusals every LogEvery. nil: discard.
	Log      *slog.Logger
	LogEvery time.Duration
	// Sources bounds the rate table (sources remembered).
	Sources int
	// Now and Intn replace the clock and the randomness of early drop in
	// tests.
	Now  func() time.Time
	Intn func(n int) int
	// OnRefuse, if set, is called once per refused or evicted connection
	// with its reason (for metrics).
	OnRefuse func(reason string)
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxPending, DefaultMaxPending)
	def(&c.MaxPerSource, DefaultMaxPerSource)
	def(&c.EarlyDrop, c.MaxPending/2)
	def(&c.Burst, DefaultBurst)
	def(&c.IPv4Bits, DefaultIPv4Bits)
	def(&c.IPv6Bits, DefaultIPv6Bits)
	def(&c.Sources, DefaultSources)
	if c.Rate <= 0 {
		c.Rate = DefaultRate
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.LogEvery <= 0 {
		c.LogEvery = DefaultLogEvery
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Intn == nil {
		c.Intn = rand.IntN // #nosec G404 -- fairness, not secrecy: an attacker gains nothing by predicting it
	}
	if c.Name == "" {
		c.Name = "listener"
	}
}

// Validate reports settings that make no sense together. Zero values are
// fine: they take defaults.
func (c Config) Validate() error {
	switch {
	case c.MaxPending < 0 || c.MaxPerSource < 0 || c.EarlyDrop < 0 || c.Burst < 0 || c.Sources < 0:
		return errors.New("admit: limits must not be negative")
	case c.MaxPending > 0 && c.MaxPerSource > c.MaxPending:
		return fmt.Errorf("admit: the per-source cap (%d) exceeds the total cap (%d)", c.MaxPerSource, c.MaxPending)
	case c.IPv4Bits < 0 || c.IPv4Bits > 32:
		return errors.New("admit: IPv4 prefix length must be 0..32")
	case c.IPv6Bits < 0 || c.IPv6Bits > 128:
		return errors.New("admit: IPv6 prefix length must be 0..128")
	case c.Rate < 0 || c.Timeout < 0 || c.LogEvery < 0:
		return errors.New("admit: rate and durations must not be negative")
	}
	return nil
}

// Source returns the source that addr counts as under c: its IPv4 address
// (IPv4-mapped IPv6 included) masked to IPv4Bits, or its IPv6 address
// masked to IPv6Bits. An address that is not IP (a Unix socket) is the
// zero Prefix: all such peers are one source.
func (c Config) Source(addr net.Addr) netip.Prefix {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if addr != nil {
			if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
				ip = ap.Addr()
			}
		}
	}
	return SourceOf(ip, c.IPv4Bits, c.IPv6Bits)
}

// SourceOf masks ip to v4 or v6 bits (zone dropped, IPv4-mapped IPv6
// unmapped). An invalid ip gives the zero Prefix.
func SourceOf(ip netip.Addr, v4, v6 int) netip.Prefix {
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	ip = ip.Unmap().WithZone("")
	bits := v6
	if ip.Is4() {
		bits = v4
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// Listener admits connections as the package doc describes. Accepted
// connections are *Conn; the server calls Handshaken and Admit on them.
type Listener struct {
	inner net.Listener
	cfg   Config
	tally *Tally
	keys  hasher

	mu      sync.Mutex
	pending int
	sources map[netip.Prefix][]*Conn // pending connections, oldest first
	rate    *buckets

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// NewListener wraps l. Close the Listener (not l) to stop it.
func NewListener(l net.Listener, cfg Config) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	al := &Listener{
		inner:   l,
		cfg:     cfg,
		tally:   NewTally(cfg.Log, "connections refused before login", slog.String("listener", cfg.Name)),
		keys:    newHasher(),
		sources: map[netip.Prefix][]*Conn{},
		rate:    newBuckets(cfg.Burst, time.Duration(float64(time.Second)/cfg.Rate), 0, cfg.Sources),
		stop:    make(chan struct{}),
	}
	al.wg.Add(1)
	go al.flusher()
	return al, nil
}

// flusher writes the tally every LogEvery until Close.
func (l *Listener) flusher() {
	defer l.wg.Done()
	t := time.NewTicker(l.cfg.LogEvery)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			l.tally.Flush()
			return
		case <-t.C:
			l.tally.Flush()
		}
	}
}

// Accept returns the next connection admitted. Refused ones are reset and
// tallied without returning.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		if c := l.admit(nc); c != nil {
			return c, nil
		}
	}
}

// Close closes the inner listener and stops the tally; connections already
// accepted stay open.
func (l *Listener) Close() error {
	err := l.inner.Close()
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
	return err
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Pending returns the connections not yet authenticated, in all and from src.
func (l *Listener) Pending(src netip.Prefix) (all, fromSrc int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pending, len(l.sources[src])
}

func (l *Listener) admit(nc net.Conn) *Conn {
	src := l.cfg.Source(nc.RemoteAddr())
	now := l.cfg.Now()
	var victim *Conn
	reason := ""

	l.mu.Lock()
	held := len(l.sources[src])
	switch {
	case !l.rate.take(l.keys.key(domainSource, "", src), now):
		reason = ReasonRate
	case held >= l.cfg.MaxPerSource:
		reason = ReasonPerSource
	case l.pending >= l.cfg.MaxPending:
		if victim = l.victimLocked(held); victim == nil {
			reason = ReasonFull
		} else {
			l.removeLocked(victim)
		}
	case held > 0 && l.pending >= l.cfg.EarlyDrop && l.dropEarly():
		reason = ReasonEarlyDrop
	}
	var c *Conn
	if reason == "" {
		c = &Conn{Conn: nc, l: l, src: src}
		l.sources[src] = append(l.sources[src], c)
		l.pending++
		// The timer is set under the lock so that a racing release sees it.
		c.timer = time.AfterFunc(l.cfg.Timeout, c.expire)
	}
	l.mu.Unlock()

	if victim != nil {
		victim.timer.Stop()
		reset(victim.Conn)
		l.refused(victim.src, ReasonEvicted)
	}
	if reason != "" {
		reset(nc)
		l.refused(src, reason)
		return nil
	}
	return c
}

func (l *Listener) refused(src netip.Prefix, reason string) {
	l.tally.Add(src, reason)
	if l.cfg.OnRefuse != nil {
		l.cfg.OnRefuse(reason)
	}
}

// dropEarly draws the random early drop below the cap; callers hold l.mu.
// The probability rises linearly from 1/span at EarlyDrop pending to 1 just
// below the cap. At the cap eviction decides instead, which is fair to the
// sources that hold least.
func (l *Listener) dropEarly() bool {
	span := l.cfg.MaxPending - l.cfg.EarlyDrop
	over := l.pending - l.cfg.EarlyDrop + 1
	if span <= 0 || over >= span {
		return true
	}
	return l.cfg.Intn(span) < over
}

// victimLocked picks the connection to evict for a newcomer whose source
// holds held: the oldest of the source holding the most (more pending in
// the machine phase breaks ties), preferring one not yet past its key
// exchange; nil if no source holds at least two more than the newcomer's,
// which would make the newcomer's source the larger after the swap.
func (l *Listener) victimLocked(held int) *Conn {
	var top []*Conn
	topRaw := -1
	for _, cs := range l.sources {
		raw := 0
		for _, c := range cs {
			if !c.handshaken {
				raw++
			}
		}
		if len(cs) > len(top) || len(cs) == len(top) && raw > topRaw {
			top, topRaw = cs, raw
		}
	}
	if len(top) < held+2 {
		return nil
	}
	for _, c := range top {
		if !c.handshaken {
			return c
		}
	}
	return top[0]
}

// removeLocked takes c out of the pending set; it reports whether c was in
// it. Callers hold l.mu.
func (l *Listener) removeLocked(c *Conn) bool {
	cs := l.sources[c.src]
	for i, x := range cs {
		if x == c {
			cs = append(cs[:i:i], cs[i+1:]...)
			if len(cs) == 0 {
				delete(l.sources, c.src)
			} else {
				l.sources[c.src] = cs
			}
			l.pending--
			return true
		}
	}
	return false
}

// reset closes nc with a TCP reset: a refused connection leaves no
// TIME_WAIT state behind on our side.
func reset(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = nc.Close()
}

// Conn is a connection accepted by a Listener. Until Admit is called it
// holds one of its source's pending slots.
type Conn struct {
	net.Conn
	l   *Listener
	src netip.Prefix

	// Guarded by l.mu.
	timer      *time.Timer
	handshaken bool
}

// Source is the source the connection counts against.
func (c *Conn) Source() netip.Prefix { return c.src }

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Handshaken marks the connection past its machine phase (banner and key
// exchange): from now on a person may be typing, so eviction spares it
// while connections still in their machine phase remain.
func (c *Conn) Handshaken() {
	c.l.mu.Lock()
	c.handshaken = true
	c.l.mu.Unlock()
}

// Admit releases the connection's pending slot: its peer authenticated.
// It also turns on TCP keepalive, which Listen leaves off until then.
// Calling it more than once is harmless.
func (c *Conn) Admit() {
	if !c.release() {
		return
	}
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9})
	}
}

// Listen is net.Listen for a Listener to wrap, without TCP keepalive set
// up on every accepted connection: Admit turns it on for the ones let in,
// so a refused connection costs four system calls fewer (a flood is made
// of refused connections).
func Listen(network, address string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), network, address)
}

// Close releases the slot (if still held) and closes the connection.
func (c *Conn) Close() error {
	c.release()
	return c.Conn.Close()
}

func (c *Conn) release() bool {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
	}
	return c.l.removeLocked(c)
}

// expire closes a connection that did not authenticate within Timeout.
func (c *Conn) expire() {
	if c.release() {
		reset(c.Conn)
		c.l.refused(c.src, ReasonTimeout)
	}
}

type ctxKey struct{}

// WithConn returns ctx carrying the *Conn under nc (found through NetConn
// methods, as *tls.Conn has), for http.Server.ConnContext. A connection
// that is not a *Conn leaves ctx unchanged.
func WithConn(ctx context.Context, nc net.Conn) context.Context {
	if c := Unwrap(nc); c != nil {
		return context.WithValue(ctx, ctxKey{}, c)
	}
	return ctx
}

// Admitted marks the connection carried by ctx (see WithConn) as
// authenticated. It does nothing if ctx carries none.
func Admitted(ctx context.Context) {
	if c, ok := ctx.Value(ctxKey{}).(*Conn); ok {
		c.Admit()
	}
}

// Counting reports whether ctx carries a connection of a Listener, whose
// refusals Refused counts.
func Counting(ctx context.Context) bool {
	_, ok := ctx.Value(ctxKey{}).(*Conn)
	return ok
}

// Refused counts a refusal on the connection carried by ctx (see WithConn)
// against its source, in the listener's tally and metrics, for refusals a
// server decides after accepting: an admin API request with a wrong token.
// It does nothing if ctx carries none.
func Refused(ctx context.Context, reason string) {
	if c, ok := ctx.Value(ctxKey{}).(*Conn); ok {
		c.l.refused(c.src, reason)
	}
}

// Unwrap finds the *Conn under nc, or nil.
func Unwrap(nc net.Conn) *Conn {
	for range 8 {
		switch x := nc.(type) {
		case *Conn:
			return x
		case interface{ NetConn() net.Conn }:
			nc = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}
