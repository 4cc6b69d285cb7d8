package ssh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/workitem"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("ssh gateway: server closed")

// Defaults for the zero values of Config's timeouts and limits.
const (
	DefaultHandshakeTimeout = 2 * time.Minute // includes people typing passwords and codes
	DefaultIdleTimeout      = 30 * time.Minute
	DefaultMaxSessionTime   = 12 * time.Hour
	DefaultDialTimeout      = 10 * time.Second
	DefaultMaxHandshakes    = 256
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

	// HandshakeTimeout bounds the SSH handshake and authentication.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection with no data relayed for this long.
	IdleTimeout time.Duration
	// MaxSessionTime closes a connection this long after it authenticated.
	MaxSessionTime time.Duration
	// DialTimeout bounds connecting to and logging in to a target.
	DialTimeout time.Duration
	// MaxHandshakes bounds connections not yet authenticated; more are
	// dropped at once (like OpenSSH's MaxStartups).
	MaxHandshakes int
	// FailedLoginBurst and FailedLoginEvery rate-limit failed logins per
	// source address and per user name: Burst failures, then one more
	// allowed per Every. Default: 10 each (an OpenSSH client that falls back from keyboard-interactive to password spends two per connection), one back
	// every 30 s.
	FailedLoginBurst int
	FailedLoginEvery time.Duration

	// Ready, when set, is asked before each new connection's handshake;
	// an error (the key provider holding the host key is unavailable)
	// closes the connection at once. It should answer from a cache.
	Ready func(ctx context.Context) error

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
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.MaxSessionTime, DefaultMaxSessionTime)
	def(&c.DialTimeout, DefaultDialTimeout)
	def(&c.FailedLoginEvery, 30*time.Second)
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = DefaultMaxHandshakes
	}
	if c.FailedLoginBurst <= 0 {
		c.FailedLoginBurst = 10
	}
	if c.Now == nil {
		c.Now = time.Now
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
	return nil
}

// Server is the SSH proxy. Create it with NewServer, run it with Serve, and
// stop it with Shutdown (drain) or Close (now).
type Server struct {
	cfg       Config
	srcLimit  *limiter
	userLimit *limiter
	handshake chan struct{} // semaphore of MaxHandshakes

	lastNotReady atomic.Int64 // unix ns of the last "not ready" log line

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
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		srcLimit:  newLimiter(cfg.FailedLoginBurst, cfg.FailedLoginEvery, 100_000, cfg.Now),
		userLimit: newLimiter(cfg.FailedLoginBurst, cfg.FailedLoginEvery, 100_000, cfg.Now),
		handshake: make(chan struct{}, cfg.MaxHandshakes),
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}, nil
}

// Serve accepts connections on l until Shutdown or Close; it always returns
// a non-nil error, ErrServerClosed after a shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	if !s.janitorOn {
		s.janitorOn = true
		s.wg.Add(1)
		go s.janitor()
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
		select {
		case s.handshake <- struct{}{}:
		default:
			s.cfg.Log.Warn("too many connections in handshake; dropping", "source", nc.RemoteAddr().String())
			_ = nc.Close()
			continue
		}
		c := s.newConn(withQuickAck(nc))
		if c == nil {
			<-s.handshake
			_ = nc.Close()
			return ErrServerClosed
		}
		go c.serve()
	}
}

// notReady logs that connections are being closed because Ready failed,
// at most once every 10 seconds.
func (s *Server) notReady(err error) {
	now := s.cfg.Now().UnixNano()
	last := s.lastNotReady.Load()
	if now-last < int64(10*time.Second) || !s.lastNotReady.CompareAndSwap(last, now) {
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
	c := &conn{srv: s, nc: nc, ctx: ctx, cancel: cancel, started: s.cfg.Now()}
	c.src = addrPort(nc.RemoteAddr())
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

// janitor closes connections past their idle or maximum time. One goroutine
// for the whole server keeps per-connection cost down.
func (s *Server) janitor() {
	defer s.wg.Done()
	every := min(s.cfg.IdleTimeout/4, s.cfg.MaxSessionTime/4, 5*time.Second)
	t := time.NewTicker(max(every, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
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

var errTooManyFiles = syscall.EMFILE

var (
	causeIdle    = "idle timeout"
	causeMaxTime = "maximum session time reached"
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
	src     netip.AddrPort
	ctx     context.Context
	cancel  context.CancelFunc
	started time.Time

	authenticated atomic.Bool  // past the SSH handshake and login
	established   atomic.Bool  // and put through to the target
	lastActive    atomic.Int64 // unix nanoseconds of the last relayed byte
	endCause      atomic.Pointer[string]

	// Set by a successful authentication, read after the handshake.
	login  string
	id     Identity
	secret string
	cred   *workitem.Credential
}

func (c *conn) touch() { c.lastActive.Store(c.srv.cfg.Now().UnixNano()) }

func (c *conn) log() *slog.Logger {
	return c.srv.cfg.Log.With("source", c.src.String())
}
