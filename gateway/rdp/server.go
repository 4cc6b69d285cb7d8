package rdp

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/gateway/rdp/credssp"
	sshgw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/workitem"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("rdp gateway: server closed")

// Defaults for the zero values of Config's timeouts.
const (
	// DefaultHandshakeTimeout bounds everything before the relay: the
	// client's negotiation, TLS (a person may be asked to accept the
	// gateway's certificate), NLA, the target's login and the connection
	// sequence up to the Client Info PDU.
	DefaultHandshakeTimeout = time.Minute
	DefaultIdleTimeout      = 30 * time.Minute
	DefaultMaxSessionTime   = 12 * time.Hour
	DefaultDialTimeout      = 10 * time.Second
	// DefaultTargetName is the NTLM target name the gateway announces.
	DefaultTargetName = "SALLYPORT"
)

// CredentialSource hands out target credentials: the engine's client for
// the vault, the same one the SSH gateway uses.
type CredentialSource interface {
	// Checkout returns the credential for secret if id may use it, or
	// sshgw.ErrDenied. The caller wipes it when done.
	Checkout(ctx context.Context, id sshgw.Identity, source netip.AddrPort, secret string) (*workitem.Credential, error)
	// PinHostKey records the SHA-256 of the target's certificate on
	// first use. It fails if another one is already pinned.
	PinHostKey(ctx context.Context, id sshgw.Identity, source netip.AddrPort, secret string, key []byte) error
}

// Config configures a Server. Zero durations take the defaults above;
// Certificate, Tokens and Credentials are required.
type Config struct {
	// Certificate is the gateway's TLS certificate for clients (see
	// LoadOrCreateCertificate).
	Certificate tls.Certificate
	// Tokens are the one-time tokens the SSH gateway issues.
	Tokens *Tokens
	// Credentials hands out target credentials. If it also implements
	// sshgw.RejectionReporter, a target refusing a credential is reported
	// so that the vault checks it at once.
	Credentials CredentialSource

	Log     *slog.Logger // nil: discard
	Audit   audit.Sink   // nil: the log
	Metrics *Metrics     // nil: none

	HandshakeTimeout time.Duration
	// IdleTimeout closes a session with nothing relayed for this long.
	IdleTimeout time.Duration
	// MaxSessionTime closes a session this long after it started.
	MaxSessionTime time.Duration
	// DialTimeout bounds connecting to and logging in to a target.
	DialTimeout time.Duration
	// Admission shares the connections not yet authenticated fairly among
	// source addresses (see package admit). Name and Log are set by the
	// server; Timeout defaults to HandshakeTimeout plus a margin.
	Admission admit.Config
	// Logins is the failed-login limiter's configuration, as for SSH.
	Logins admit.LoginConfig
	// SharedLogins, when set, is the limiter itself, shared with the SSH
	// gateway, so that one budget covers every way in; Logins is then
	// unused.
	SharedLogins *admit.Logins

	// Grants, when set, is asked every RecheckEvery whether each live
	// session's user may still use its secret; sessions that may not are
	// ended. nil: no re-checks.
	Grants sshgw.GrantChecker
	// RecheckEvery is the re-check interval. Default 2 s.
	RecheckEvery time.Duration

	// TargetName is the NTLM target name announced to clients.
	TargetName string
	// Now is the clock and Rand the randomness (tests); nil: the real ones.
	Now  func() time.Time
	Rand io.Reader
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
	def(&c.RecheckEvery, sshgw.DefaultRecheckEvery)
	if c.TargetName == "" {
		c.TargetName = DefaultTargetName
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Admission.Timeout <= 0 {
		c.Admission.Timeout = c.HandshakeTimeout + 10*time.Second
	}
	if c.Admission.IPv4Bits == 0 {
		c.Admission.IPv4Bits = admit.DefaultIPv4Bits
	}
	if c.Admission.IPv6Bits == 0 {
		c.Admission.IPv6Bits = admit.DefaultIPv6Bits
	}
	c.Admission.Name = "rdp"
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
	case len(c.Certificate.Certificate) == 0 || c.Certificate.PrivateKey == nil:
		return errors.New("rdp gateway: no TLS certificate")
	case c.Tokens == nil:
		return errors.New("rdp gateway: no token store")
	case c.Credentials == nil:
		return errors.New("rdp gateway: no credential source")
	}
	if err := c.Admission.Validate(); err != nil {
		return fmt.Errorf("rdp gateway: %w", err)
	}
	if err := c.Logins.Validate(); err != nil {
		return fmt.Errorf("rdp gateway: %w", err)
	}
	return nil
}

// Server is the RDP proxy. Create it with NewServer, run it with Serve,
// and stop it with Shutdown (drain) or Close (now).
type Server struct {
	cfg       Config
	tls       *tls.Config
	publicKey []byte // the certificate's SubjectPublicKey, which NLA binds
	logins    *admit.Logins
	unchecked *admit.Tally

	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup
	janitorOn bool
}

// NewServer validates cfg and returns a server ready to Serve.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	leaf, err := x509.ParseCertificate(cfg.Certificate.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("rdp gateway: certificate: %w", err)
	}
	pub, err := credssp.SubjectPublicKey(leaf.RawSubjectPublicKeyInfo)
	if err != nil {
		return nil, fmt.Errorf("rdp gateway: certificate: %w", err)
	}
	logins := cfg.SharedLogins
	if logins == nil {
		if logins, err = admit.NewLogins(cfg.Logins); err != nil {
			return nil, fmt.Errorf("rdp gateway: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg: cfg,
		tls: &tls.Config{
			Certificates: []tls.Certificate{cfg.Certificate},
			MinVersion:   tls.VersionTLS12,
		},
		publicKey: pub,
		logins:    logins,
		unchecked: admit.NewTally(cfg.Log, "logins refused without checking", slog.String("listener", "rdp")),
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}, nil
}

// Serve accepts connections on l until Shutdown or Close; it always
// returns a non-nil error, ErrServerClosed after a shutdown. Unless l
// already is an *admit.Listener, Serve wraps it in one configured by
// cfg.Admission.
func (s *Server) Serve(l net.Listener) error {
	if _, ok := l.(*admit.Listener); !ok {
		al, err := admit.NewListener(l, s.cfg.Admission)
		if err != nil {
			return fmt.Errorf("rdp gateway: %w", err)
		}
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
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.cfg.Log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("rdp gateway: accept: %w", err)
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
	c := &conn{srv: s, nc: nc, ac: admit.Unwrap(nc), ctx: ctx, cancel: cancel, started: s.cfg.Now()}
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

// Shutdown stops accepting, closes connections not yet relaying, and waits
// for sessions to end by themselves. If ctx ends first it closes them too
// and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		_ = l.Close()
	}
	for c := range s.conns {
		if !c.established.Load() {
			_ = c.nc.Close()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		for {
			s.mu.Lock()
			n := len(s.conns)
			s.mu.Unlock()
			if n == 0 {
				close(done)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
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

// Close closes the listeners and every connection now, and waits for
// their handlers to return.
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

// janitor ends sessions past their idle or maximum time, sweeps expired
// tokens and writes the tally of unchecked refusals.
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
		s.cfg.Tokens.Sweep()
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

// recheck runs one round: one question per live session (RDP sessions
// are few per engine; no grouping needed). An error leaves the sessions
// running until the next round.
func (s *Server) recheck() {
	s.mu.Lock()
	var conns []*conn
	var grants []sshgw.Grant
	for c := range s.conns {
		if c.established.Load() && c.endCause.Load() == nil {
			conns = append(conns, c)
			grants = append(grants, sshgw.Grant{Identity: c.id, Source: c.src, Secret: c.secret})
		}
	}
	s.mu.Unlock()
	if len(grants) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, max(s.cfg.RecheckEvery, 10*time.Second))
	defer cancel()
	ok, err := s.cfg.Grants.StillAllowed(ctx, grants)
	if err != nil || len(ok) != len(grants) {
		if s.ctx.Err() == nil {
			s.cfg.Log.Debug("re-checking live RDP sessions failed; they go on until the next check", "err", err)
		}
		return
	}
	for i, c := range conns {
		if !ok[i] {
			s.cfg.Log.Warn("ending session: its grant no longer holds", "source", c.src.String(), "user", c.id.User, "secret", c.secret)
			c.endCause.CompareAndSwap(nil, &causeRevoked)
			_ = c.nc.Close()
		}
	}
}

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
	source  netip.Prefix
	ctx     context.Context
	cancel  context.CancelFunc
	started time.Time

	established atomic.Bool  // relaying
	lastActive  atomic.Int64 // unix nanoseconds of the last relayed byte
	endCause    atomic.Pointer[string]

	// Set while the client authenticates (one goroutine).
	user      string // the login's user part, for logs before the token is taken
	cand      *candidate
	id        sshgw.Identity
	secret    string
	cred      *workitem.Credential
	target    *targetConn
	requested uint32 // the client's requested protocols
	selected  uint32 // the protocol chosen for the client leg
}

func (c *conn) touch() { c.lastActive.Store(c.srv.cfg.Now().UnixNano()) }

func (c *conn) log() *slog.Logger {
	return c.srv.cfg.Log.With("source", c.src.String())
}
