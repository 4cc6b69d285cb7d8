package radius

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2869"
)

const (
	// DefaultTimeout is the per-transmission wait when Config.Timeout is zero.
	DefaultTimeout = 3 * time.Second
	// DefaultHoldDown is how long a silent server is skipped when
	// Config.HoldDown is zero.
	DefaultHoldDown = 30 * time.Second
	// MaxRetries bounds Config.Retries so that a misconfiguration cannot
	// keep a login waiting for minutes.
	MaxRetries = 10
)

// ErrDenied is returned by Authenticator for every refusal: an
// Access-Reject, an unanswered challenge or too many challenge rounds.
var ErrDenied = errors.New("access denied")

// ErrUnavailable means no RADIUS server gave a valid reply in time.
var ErrUnavailable = errors.New("RADIUS service unavailable")

// Server is one RADIUS server and the secret shared with it.
type Server struct {
	// Addr is host:port; the port is required (FreeRADIUS and NPS use 1812
	// for UDP, RadSec servers 2083).
	Addr string
	// Secret is the shared secret. It is never printed or logged. Over TLS
	// (Config.TLS set) an empty Secret means DefaultRadSecSecret.
	Secret []byte
}

// String describes s without its secret.
func (s Server) String() string {
	return "radius.Server{Addr: " + strconv.Quote(s.Addr) + ", Secret: [REDACTED]}"
}

// GoString describes s without its secret, for %#v.
func (s Server) GoString() string { return s.String() }

// LogValue keeps the secret out of slog output.
func (s Server) LogValue() slog.Value {
	return slog.GroupValue(slog.String("addr", s.Addr), slog.String("secret", "[REDACTED]"))
}

// MarshalJSON keeps the secret out of encoding/json (and so out of a Config
// logged by slog's JSON handler); no protocol carries a Server.
func (s Server) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// Config configures a Client. The zero value of each optional field is
// documented; a Config must pass Validate.
type Config struct {
	// Servers are tried in order; a server that timed out is skipped for
	// HoldDown unless every server is held down. At least one is required.
	Servers []Server
	// Timeout is how long to wait for a reply to one transmission.
	// Over TLS it also bounds setting up a connection (TCP and the TLS
	// handshake). Zero means DefaultTimeout.
	Timeout time.Duration
	// Retries is how many times a request is sent again to the same server
	// (same identifier and authenticator) before failing over. Zero means
	// one transmission per server. At most MaxRetries.
	//
	// Over TLS Retries is ignored: a reliable transport must not be
	// retransmitted on (RFC 6614 §2.5), so each server gets one request and
	// one Timeout, after which the client fails over to the next server and
	// holds the silent one down as over UDP.
	Retries int
	// HoldDown is how long a server that did not answer is skipped.
	// Zero means DefaultHoldDown.
	HoldDown time.Duration
	// NASIdentifier is sent as NAS-Identifier. RFC 2865 requires
	// NASIdentifier or NASIPAddress; at least one must be set.
	NASIdentifier string
	// NASIPAddress is sent as NAS-IP-Address when valid. It must be IPv4.
	NASIPAddress netip.Addr
	// TLS, when not nil, makes every server in Servers a RadSec server
	// (RADIUS over TLS, RFC 6614): requests go over one persistent TCP+TLS
	// connection per server instead of UDP. The client uses its own copy
	// with MinVersion raised to TLS 1.2 and, when ServerName is empty, the
	// host part of each server's Addr as the name its certificate must carry.
	// Set RootCAs to the CA that issued the servers' certificates and
	// Certificates to the client certificate the servers require.
	// InsecureSkipVerify is refused.
	TLS *tls.Config
	// Observe, when not nil, is called once for every server a request was
	// sent to, with how long that server took and the outcome: "accept",
	// "reject", "challenge", "other" (another valid reply), "no_answer"
	// (nothing valid in time, or the connection failed), "canceled" (the
	// caller gave up) or "error". It must be fast and safe for concurrent
	// use; the gateway feeds its metrics with it.
	Observe func(server, result string, d time.Duration)
}

// Validate reports the first problem with c, if any. Error messages never
// contain secrets.
func (c Config) Validate() error {
	if len(c.Servers) == 0 {
		return errors.New("radius: no servers configured")
	}
	seen := make(map[string]bool, len(c.Servers))
	for i, s := range c.Servers {
		host, port, err := net.SplitHostPort(s.Addr)
		if err != nil || host == "" {
			return fmt.Errorf("radius: server %d: address %q is not host:port", i, s.Addr)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return fmt.Errorf("radius: server %d: address %q has an invalid port", i, s.Addr)
		}
		if seen[s.Addr] {
			return fmt.Errorf("radius: server %d: address %q listed twice", i, s.Addr)
		}
		seen[s.Addr] = true
		if len(s.Secret) == 0 && c.TLS == nil {
			return fmt.Errorf("radius: server %d (%s): empty shared secret", i, s.Addr)
		}
	}
	if c.TLS != nil {
		if c.TLS.InsecureSkipVerify {
			return errors.New("radius: TLS: InsecureSkipVerify is not allowed: RadSec servers' certificates must be verified")
		}
		if c.TLS.MaxVersion != 0 && c.TLS.MaxVersion < tls.VersionTLS12 {
			return errors.New("radius: TLS: MaxVersion is below TLS 1.2, the lowest version RadSec may use")
		}
	}
	if c.Timeout < 0 {
		return errors.New("radius: negative timeout")
	}
	if c.Retries < 0 || c.Retries > MaxRetries {
		return fmt.Errorf("radius: retries must be between 0 and %d", MaxRetries)
	}
	if c.HoldDown < 0 {
		return errors.New("radius: negative hold-down")
	}
	if c.NASIdentifier == "" && !c.NASIPAddress.IsValid() {
		return errors.New("radius: NASIdentifier or NASIPAddress is required")
	}
	if len(c.NASIdentifier) > 253 {
		return errors.New("radius: NASIdentifier longer than 253 bytes")
	}
	if c.NASIPAddress.IsValid() && !c.NASIPAddress.Unmap().Is4() {
		return errors.New("radius: NASIPAddress must be IPv4")
	}
	return nil
}

// Client sends RADIUS requests over UDP with retransmission, or over TLS
// (RadSec) on persistent connections, with failover and hold-down of dead
// servers. It is safe for concurrent use. Close releases its connections.
type Client struct {
	cfg    Config
	logger *slog.Logger
	now    func() time.Time

	mu       sync.Mutex
	deadTill map[string]time.Time // by Server.Addr

	// RadSec only: one peer per server, and what Close needs to stop them.
	peers     map[string]*radsecPeer // by Server.Addr
	ctx       context.Context        // ends when Close is called
	cancel    context.CancelFunc
	wg        sync.WaitGroup // dials and connection readers
	closeOnce sync.Once
}

// New returns a Client for cfg, which it copies. A nil logger discards.
func New(cfg Config, logger *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.HoldDown == 0 {
		cfg.HoldDown = DefaultHoldDown
	}
	servers := make([]Server, len(cfg.Servers))
	for i, s := range cfg.Servers {
		servers[i] = Server{Addr: s.Addr, Secret: append([]byte(nil), s.Secret...)}
		if cfg.TLS != nil && len(s.Secret) == 0 {
			servers[i].Secret = []byte(DefaultRadSecSecret)
		}
	}
	cfg.Servers = servers
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, logger: logger, now: time.Now, deadTill: make(map[string]time.Time)}
	if cfg.TLS != nil {
		c.initRadSec()
	}
	return c, nil
}

// Close closes the client's RadSec connections and waits for the
// goroutines that serve them. Requests under way, and every later request,
// end with an error wrapping ErrUnavailable. For a UDP client Close does
// nothing. It always returns nil.
func (c *Client) Close() error {
	c.closeOnce.Do(c.closeRadSec)
	return nil
}

// errNoAnswer means one server gave no valid reply; the client fails over.
var errNoAnswer = errors.New("no valid reply")

// Exchange sends req and returns the first verified reply.
//
// req supplies the code (Access-Request or Status-Server) and attributes
// only: Exchange chooses a fresh identifier and authenticator per server,
// puts a Message-Authenticator first, and encrypts a User-Password attribute
// with each server's own secret. A User-Password in req must therefore hold
// the PLAINTEXT password, not layeh's encrypted form; the caller owns and
// wipes it. Any Message-Authenticator in req is replaced.
//
// Exchange returns an error wrapping ErrUnavailable when no server gave a
// valid reply, or ctx's error if ctx ended first. It never blocks past ctx.
func (c *Client) Exchange(ctx context.Context, req *layeh.Packet) (*layeh.Packet, error) {
	resp, _, err := c.exchange(ctx, req, "")
	return resp, err
}

// exchange is Exchange that also reports which server answered. A non-empty
// pin restricts it to that server, hold-down or not: the State of an
// Access-Challenge means nothing to any other server.
func (c *Client) exchange(ctx context.Context, req *layeh.Packet, pin string) (*layeh.Packet, string, error) {
	switch req.Code {
	case layeh.CodeAccessRequest, layeh.CodeStatusServer:
	default:
		return nil, "", fmt.Errorf("radius: cannot send %v", req.Code)
	}
	servers := c.order()
	if pin != "" {
		servers = nil
		for _, s := range c.cfg.Servers {
			if s.Addr == pin {
				servers = append(servers, s)
			}
		}
	}
	var last error // why the last server tried gave no answer
	for _, s := range servers {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		var resp *layeh.Packet
		var err error
		start := c.now()
		if c.cfg.TLS != nil {
			resp, err = c.exchangeTLS(ctx, s, req)
		} else {
			resp, err = c.exchangeOne(ctx, s, req)
		}
		c.observe(ctx, s.Addr, resp, err, c.now().Sub(start))
		switch {
		case err == nil:
			c.setDead(s.Addr, time.Time{})
			return resp, s.Addr, nil
		case ctx.Err() != nil:
			return nil, "", ctx.Err()
		case errors.Is(err, errNoAnswer):
			// Before the deadline case: the cause of a server's silence
			// can match context.DeadlineExceeded (a resolver timeout)
			// without being the caller's deadline.
			c.logger.Warn("radius server did not answer; holding it down",
				"server", s.Addr, "hold_down", c.cfg.HoldDown, "error", err)
			c.setDead(s.Addr, c.now().Add(c.cfg.HoldDown))
			last = err
		case errors.Is(err, context.DeadlineExceeded):
			return nil, "", err
		default:
			return nil, "", err
		}
	}
	if last == nil {
		return nil, "", fmt.Errorf("radius: %w: no server answered", ErrUnavailable)
	}
	// Only the text of last: it must not make the result look like a
	// deadline or cancellation of the caller's ctx.
	return nil, "", fmt.Errorf("radius: %w: no server answered (last: %v)", ErrUnavailable, last)
}

// observe reports one server's exchange to Config.Observe.
func (c *Client) observe(ctx context.Context, server string, resp *layeh.Packet, err error, d time.Duration) {
	if c.cfg.Observe == nil {
		return
	}
	result := "error"
	switch {
	case err == nil:
		switch resp.Code {
		case layeh.CodeAccessAccept:
			result = "accept"
		case layeh.CodeAccessReject:
			result = "reject"
		case layeh.CodeAccessChallenge:
			result = "challenge"
		default:
			result = "other"
		}
	case ctx.Err() != nil:
		result = "canceled"
	case errors.Is(err, errNoAnswer):
		result = "no_answer"
	}
	c.cfg.Observe(server, result, d)
}

// order returns the servers to try: those not held down, in configured
// order, or every server if all are held down.
func (c *Client) order() []Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	live := make([]Server, 0, len(c.cfg.Servers))
	for _, s := range c.cfg.Servers {
		if !now.Before(c.deadTill[s.Addr]) {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		return c.cfg.Servers
	}
	return live
}

func (c *Client) setDead(addr string, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if until.IsZero() {
		delete(c.deadTill, addr)
		return
	}
	c.deadTill[addr] = until
}

// encode builds the wire form of req for server s.
func encode(req *layeh.Packet, s Server) ([]byte, error) {
	var r [1 + 16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, fmt.Errorf("radius: random authenticator: %w", err)
	}
	p := &layeh.Packet{Code: req.Code, Identifier: r[0], Secret: s.Secret}
	copy(p.Authenticator[:], r[1:])
	p.Attributes = make(layeh.Attributes, 0, len(req.Attributes)+1)
	// First attribute, so that its value sits at msgAuthOffset.
	p.Add(rfc2869.MessageAuthenticator_Type, make(layeh.Attribute, msgAuthLen))
	for _, avp := range req.Attributes {
		switch avp.Type {
		case rfc2869.MessageAuthenticator_Type:
			continue
		case rfc2865.UserPassword_Type:
			enc, err := layeh.NewUserPassword(avp.Attribute, s.Secret, p.Authenticator[:])
			if err != nil {
				return nil, errors.New("radius: User-Password cannot be encoded (longer than 128 bytes?)")
			}
			p.Add(avp.Type, enc)
		default:
			p.Add(avp.Type, avp.Attribute)
		}
	}
	b, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("radius: encode request: %w", err)
	}
	signRequest(b, s.Secret)
	return b, nil
}

// exchangeOne sends req to s, retransmitting the same bytes on each per-try
// timeout, and returns the first verified reply. Unverifiable replies are
// logged and dropped while waiting goes on.
func (c *Client) exchangeOne(ctx context.Context, s Server, req *layeh.Packet) (*layeh.Packet, error) {
	wire, err := encode(req, s)
	if err != nil {
		return nil, err
	}
	defer clear(wire) // it holds the encrypted User-Password
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", s.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %w", errNoAnswer, s.Addr, err)
	}
	conn, ok := nc.(*net.UDPConn)
	if !ok {
		_ = nc.Close()
		return nil, fmt.Errorf("radius: dial %s: not a UDP socket", s.Addr)
	}
	defer func() { _ = conn.Close() }()
	// Wake a blocked read as soon as ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	peer := conn.RemoteAddr().(*net.UDPAddr).AddrPort()
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())

	buf := make([]byte, maxPacketLen+1)
	for try := 0; try <= c.cfg.Retries; try++ {
		if _, err := conn.Write(wire); err != nil {
			return nil, fmt.Errorf("%w: send to %s: %w", errNoAnswer, s.Addr, err)
		}
		deadline := c.now().Add(c.cfg.Timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err := conn.SetReadDeadline(deadline); err != nil {
			return nil, fmt.Errorf("radius: set deadline: %w", err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					// The read deadline may be ctx's own, which can pass a
					// moment before ctx reports it.
					if d, ok := ctx.Deadline(); ok && !c.now().Before(d) {
						return nil, context.DeadlineExceeded
					}
					break // retransmit
				}
				// ICMP port unreachable and the like: this server is down.
				return nil, fmt.Errorf("%w: read from %s: %w", errNoAnswer, s.Addr, err)
			}
			if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != peer {
				c.logger.Warn("radius reply dropped", "server", s.Addr, "reason", "unexpected source address", "source", from.String())
				continue
			}
			if n > maxPacketLen {
				c.logger.Warn("radius reply dropped", "server", s.Addr, "reason", "datagram longer than 4096 bytes")
				continue
			}
			resp, err := verifyReply(buf[:n], wire, s.Secret)
			if err != nil {
				c.logger.Warn("radius reply dropped", "server", s.Addr, "reason", err.Error())
				continue
			}
			return resp, nil
		}
	}
	return nil, fmt.Errorf("%w from %s after %d transmissions", errNoAnswer, s.Addr, c.cfg.Retries+1)
}
