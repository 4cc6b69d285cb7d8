package ssh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/workitem"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("ssh gateway: server closed")

// Defaults for the zero values of Config's timeouts and limits.
const (
	DefaultKeyExchangeTimeout = 10 * time.Second // banner and key exchange: machines, not people
	DefaultHandshakeTimeout   = 2 * time.Minute  // includes people typing passwords and codes
	DefaultIdleTimeout        = 30 * time.Minute
	DefaultMaxSessionTime     = 12 * time.Hour
	DefaultDialTimeout        = 10 * time.Second
	DefaultMaxHandshakes      = admit.DefaultMaxPending
	DefaultRecheckEvery       = 2 * time.Second
)

// Config configures a Server. Zero durations and limits take the defaults
// above; the three interfaces and at least one host key are required.
type Config struct {
	// HostSigners are the gateway's host keys (from the key provider).
	HostSigners []gossh.Signer
	// Auth proves who the user is.
	Auth Authenticator
	// Credentials hands out target credentials.
	Credentials CredentialSource

	Log     *slog.Logger // nil: discard
	Audit   audit.Sink   // nil: the log
	Metrics *Metrics     // nil: none

	// KeyExchangeTimeout bounds the client's version banner and the key
	// exchange, counted from the connection's arrival: a machine's part of
	// the handshake, which takes milliseconds, so a connection that stalls
	// in it is dropped in seconds.
	KeyExchangeTimeout time.Duration
	// HandshakeTimeout bounds the whole handshake, authentication included
	// (a person typing a password and a code), from the connection's
	// arrival.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection with no data relayed for this long.
	IdleTimeout time.Duration
	// MaxSessionTime closes a connection this long after it authenticated.
	MaxSessionTime time.Duration
	// DialTimeout bounds connecting to and logging in to a target.
	DialTimeout time.Duration
	// Admission shares the connections not yet authenticated fairly among
	// source addresses (see package admit): per-source and total caps,
	// early drop, eviction, a per-source connection rate. Its Timeout
	// defaults to HandshakeTimeout plus a margin; Name and Log are set by
	// the server.
	Admission admit.Config
	// Logins is the failed-login limiter's configuration (see package
	// admit): per (user, source), per source and per user budgets.
	Logins admit.LoginConfig
	// SharedLogins, when set, is the limiter itself, shared with the
	// engine's other gateways (RDP), so that one budget covers every way
	// in; Logins is then unused.
	SharedLogins *admit.Logins

	// Grants, when set, is asked every RecheckEvery whether each live
	// session's user may still use its secret; sessions that may not are
	// ended with a message to the user. nil: no re-checks.
	Grants GrantChecker
	// RecheckEvery is the re-check interval. Default 2 s.
	RecheckEvery time.Duration

	// Ready, when set, is asked before each new connection's handshake;
	// an error (the key provider holding the host key is unavailable)
	// closes the connection at once. It should answer from a cache.
	Ready func(ctx context.Context) error

	// RDPTokens, when set, issues RDP tokens to logins of the form
	// USER@rdp:SECRET; nil refuses them.
	RDPTokens RDPTokenIssuer
	// RDPAddr is the RDP gateway's address as clients reach it, shown
	// with a token and written in .rdp files.
	RDPAddr string

	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Audit == nil {
		c.Audit = audit.Log{L: c.Log}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.KeyExchangeTimeout, DefaultKeyExchangeTimeout)
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	c.KeyExchangeTimeout = min(c.KeyExchangeTimeout, c.HandshakeTimeout)
	def(&c.RecheckEvery, DefaultRecheckEvery)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.MaxSessionTime, DefaultMaxSessionTime)
	def(&c.DialTimeout, DefaultDialTimeout)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Admission.Timeout <= 0 {
		// The server's own deadlines close stalled handshakes first; this
		// backstop only catches one that somehow outlives them.
		c.Admission.Timeout = c.HandshakeTimeout + 10*time.Second
	}
	if c.Admission.IPv4Bits == 0 {
		c.Admission.IPv4Bits = admit.DefaultIPv4Bits
	}
	if c.Admission.IPv6Bits == 0 {
		c.Admission.IPv6Bits = admit.DefaultIPv6Bits
	}
	c.Admission.Name = "ssh"
	c.Admission.Log = c.Log
	if c.Admission.OnRefuse == nil {
		c.Admission.OnRefuse = c.Metrics.refusedConn
	}
	if c.Logins.Now == nil {
		c.Logins.Now = c.Now
	}
}

// Validate reports a missing required field.
func (c *Config) Validate() error {
	switch {
	case len(c.HostSigners) == 0:
		return errors.New("ssh gateway: no host key")
	case c.Auth == nil:
		return errors.New("ssh gateway: no authenticator")
	case c.Credentials == nil:
		return errors.New("ssh gateway: no credential source")
	}
	if err := c.Admission.Validate(); err != nil {
		return fmt.Errorf("ssh gateway: %w", err)
	}
	if err := c.Logins.Validate(); err != nil {
		return fmt.Errorf("ssh gateway: %w", err)
	}
	return nil
}

// Server is the SSH proxy. Create it with NewServer, run it with Serve, and
// stop it with Shutdown (drain) or Close (now).
type Server struct {
	cfg    Config
	logins *admit.Logins
	// unchecked tallies logins refused before any credential was checked
	// (over-long or malformed names, spent budgets): attack traffic,
	// reported as counts per source rather than a line each.
	unchecked *admit.Tally

	lastNotReady   atomic.Int64 // unix ns of the last "not ready" log line
	lastRecheckErr atomic.Int64 // and of the last failed re-check

	ctx    context.Context // parent of every connection's context
	cancel context.CancelFunc

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // connection handlers and the janitor
	janitorOn bool
}

// NewServer validates cfg and returns a server ready to Serve.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	logins := cfg.SharedLogins
	var err error
	if logins == nil {
		logins, err = admit.NewLogins(cfg.Logins)
	}
	if err != nil {
		return nil, fmt.Errorf("ssh gateway: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		logins:    logins,
		unchecked: admit.NewTally(cfg.Log, "logins refused without checking", slog.String("listener", "ssh")),
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}, nil
}

// Serve accepts connections on l until Shutdown or Close; it always returns
// a non-nil error, ErrServerClosed after a shutdown. Unless l already is an
// *admit.Listener, Serve wraps it in one configured by cfg.Admission, so
// no listener serves without a fair pre-authentication share.
func (s *Server) Serve(l net.Listener) error {
	if _, ok := l.(*admit.Listener); !ok {
		al, err := admit.NewListener(l, s.cfg.Admission)
		if err != nil {
			return fmt.Errorf("ssh gateway: %w", err)
		}
		// Ours to close, also when accepting fails for good: it stops the
		// tally's goroutine.
		defer al.Close()
		l = al
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	if !s.janitorOn {
		s.janitorOn = true
		s.wg.Add(2)
		go s.janitor()
		go s.recheckLoop()
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.cfg.Log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("ssh gateway: accept: %w", err)
		}
		backoff = 0
		c := s.newConn(nc)
		if c == nil {
			_ = nc.Close()
			return ErrServerClosed
		}
		go c.serve()
	}
}

// notReady logs that connections are being closed because Ready failed,
// at most once every 10 seconds.
func (s *Server) notReady(err error) {
	if !s.throttle(&s.lastNotReady) {
		return
	}
	s.cfg.Log.Error("not ready: closing new connections until the key provider is back", "err", err)
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// newConn registers a connection, or returns nil when the server is closing.
func (s *Server) newConn(nc net.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	c := &conn{srv: s, nc: withQuickAck(nc), ac: admit.Unwrap(nc), ctx: ctx, cancel: cancel, started: s.cfg.Now()}
	c.src = addrPort(nc.RemoteAddr())
	c.source = admit.SourceOf(c.src.Addr(), s.cfg.Admission.IPv4Bits, s.cfg.Admission.IPv6Bits)
	c.touch()
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return c
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops accepting, closes connections still authenticating, and
// waits for established sessions to end by themselves. If ctx ends first it
// closes them too and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		_ = l.Close()
	}
	for c := range s.conns {
		if !c.authenticated.Load() {
			_ = c.nc.Close()
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wgWaitSessions()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		s.wg.Wait()
		return nil
	case <-ctx.Done():
		_ = s.Close()
		<-done
		return ctx.Err()
	}
}

// wgWaitSessions waits until no connection is left.
func (s *Server) wgWaitSessions() {
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close closes the listeners and every connection now, and waits for their
// handlers to return.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		_ = l.Close()
	}
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// janitor closes connections past their idle or maximum time, and writes
// the tally of unchecked login refusals. One goroutine for the whole
// server keeps per-connection cost down.
func (s *Server) janitor() {
	defer s.wg.Done()
	every := min(s.cfg.IdleTimeout/4, s.cfg.MaxSessionTime/4, 5*time.Second)
	t := time.NewTicker(max(every, 10*time.Millisecond))
	defer t.Stop()
	lastFlush := time.Now()
	for {
		select {
		case <-s.ctx.Done():
			s.unchecked.Flush()
			return
		case <-t.C:
		}
		if time.Since(lastFlush) >= admit.DefaultLogEvery {
			s.unchecked.Flush()
			lastFlush = time.Now()
		}
		now := s.cfg.Now()
		s.mu.Lock()
		for c := range s.conns {
			if !c.established.Load() {
				continue // the handshake deadline covers these
			}
			idle := now.Sub(time.Unix(0, c.lastActive.Load()))
			switch {
			case idle > s.cfg.IdleTimeout:
				c.endCause.CompareAndSwap(nil, &causeIdle)
				_ = c.nc.Close()
			case now.Sub(c.started) > s.cfg.MaxSessionTime:
				c.endCause.CompareAndSwap(nil, &causeMaxTime)
				_ = c.nc.Close()
			}
		}
		s.mu.Unlock()
	}
}

// recheckLoop asks cfg.Grants every RecheckEvery whether the live
// sessions' grants still hold, and ends those that do not.
func (s *Server) recheckLoop() {
	defer s.wg.Done()
	if s.cfg.Grants == nil {
		return
	}
	t := time.NewTicker(s.cfg.RecheckEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.recheck()
	}
}

// recheck runs one round: one question per distinct grant, however many
// sessions share it.
func (s *Server) recheck() {
	s.mu.Lock()
	groups := map[string][]*conn{}
	var grants []Grant
	for c := range s.conns {
		if !c.established.Load() || c.endCause.Load() != nil {
			continue
		}
		g := Grant{Identity: c.id, Source: c.src, Secret: c.secret}
		k := grantKey(g)
		if _, ok := groups[k]; !ok {
			grants = append(grants, g)
		}
		groups[k] = append(groups[k], c)
	}
	s.mu.Unlock()
	if len(grants) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, max(s.cfg.RecheckEvery, 10*time.Second))
	defer cancel()
	ok, err := s.cfg.Grants.StillAllowed(ctx, grants)
	if err == nil && len(ok) != len(grants) {
		err = fmt.Errorf("%d answers to %d grants", len(ok), len(grants))
	}
	if err != nil {
		if s.ctx.Err() == nil && s.throttle(&s.lastRecheckErr) {
			s.cfg.Log.Warn("re-checking live sessions failed; they go on until the next check", "err", err)
		}
		return
	}
	for i, g := range grants {
		if ok[i] {
			continue
		}
		for _, c := range groups[grantKey(g)] {
			s.cfg.Log.Warn("ending session: its grant no longer holds", "source", c.src.String(), "user", c.id.User, "secret", c.secret)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				c.revoke(fmt.Sprintf("access to %s has been revoked; closing the session.", c.secret))
			}()
		}
	}
}

// grantKey identifies a grant for grouping sessions.
func grantKey(g Grant) string {
	var b strings.Builder
	b.WriteString(g.Identity.User)
	for _, gr := range g.Identity.Groups {
		b.WriteByte(0)
		b.WriteString(gr)
	}
	fmt.Fprintf(&b, "\x00%t\x00%s\x00%s", g.Identity.Local, g.Source.Addr(), g.Secret)
	return b.String()
}

// throttle reports whether a rate-limited log line may be written now (at
// most one per 10 s per *last).
func (s *Server) throttle(last *atomic.Int64) bool {
	now := s.cfg.Now().UnixNano()
	l := last.Load()
	return now-l >= int64(10*time.Second) && last.CompareAndSwap(l, now)
}

var errTooManyFiles = syscall.EMFILE

var (
	causeIdle    = "idle timeout"
	causeMaxTime = "maximum session time reached"
	causeRevoked = "access revoked"
)

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// conn is one client connection from accept to close.
type conn struct {
	srv     *Server
	nc      net.Conn
	ac      *admit.Conn // nc's pending slot; nil only in tests that bypass Serve
	src     netip.AddrPort
	source  netip.Prefix // src as the limiters count it
	ctx     context.Context
	cancel  context.CancelFunc
	started time.Time

	authenticated atomic.Bool  // past the SSH handshake and login
	established   atomic.Bool  // and put through to the target
	lastActive    atomic.Int64 // unix nanoseconds of the last relayed byte
	endCause      atomic.Pointer[string]
	warnings      atomic.Int64 // refusals of an authenticated user's requests, for warn

	chMu  sync.Mutex
	chans map[gossh.Channel]struct{} // the client's open session channels

	// Set by a successful authentication, read after the handshake.
	id     Identity
	secret string
	cred   *workitem.Credential
	// rdp: the login asks for an RDP token (USER@rdp:SECRET); the token
	// issued, printed by the session.
	rdp        bool
	rdpToken   []byte
	rdpExpires time.Time
}

func (c *conn) touch() { c.lastActive.Store(c.srv.cfg.Now().UnixNano()) }

func (c *conn) log() *slog.Logger {
	return c.srv.cfg.Log.With("source", c.src.String())
}
