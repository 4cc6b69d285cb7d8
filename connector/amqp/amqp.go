// Package amqp is the RabbitMQ site connector: a connector.Connector over
// AMQP 0-9-1 (github.com/rabbitmq/amqp091-go), with the semantics the
// connector package describes.
//
// What it does on the broker:
//
//   - Every queue Q has a direct exchange also named Q, bound to Q with
//     the routing key Q, and Publish sends there: RabbitMQ checks only the
//     exchange for a publisher's write permission, so through the default
//     exchange any user could write to any queue. This way a site's user
//     needs permissions on its own prefix and nothing else:
//     configure, write and read all "^sallyport\.SITE\." (names.QueuePrefix).
//   - Publish sends a persistent message (delivery mode 2) with the TTL as
//     the per-message expiration, mandatory (a message for a queue that
//     was deleted comes back, and is sent again once the queue is
//     declared again), and returns only once the broker confirms it
//     (publisher confirms). A queue at Config.MaxLength refuses it
//     (x-overflow reject-publish), the broker nacks it and Publish returns
//     connector.ErrFull. Publishes are pipelined over a few confirm-mode
//     channels: many goroutines may publish at once without waiting for
//     each other's confirms.
//   - Consume opens a channel per call with basic.qos(prefetch) and manual
//     acknowledgements; Ack and Reject are basic.ack and basic.reject.
//   - A Shared queue is durable, of Config.QueueType (classic or quorum),
//     bounded by x-max-length with x-overflow reject-publish, and with
//     Config.DeadLetter its expired and rejected messages go to
//     "<queue>.dead" (its own exchange is the dead-letter exchange). A
//     quorum queue's bound is looser: it takes one message beyond it (and
//     whatever was in flight) before it refuses. A Private queue is
//     classic, not durable, and removed by the broker (its exchange with
//     it) once unused for Config.PrivateExpires (x-expires).
//   - A queue that Publish or Consume meets without a Declare is looked up
//     (a passive declare) and, if missing, declared: Private for an
//     engine's reply queue (names.ReplyQueue), Shared otherwise. A queue
//     that exists already is used as it is, whatever its arguments, and so
//     is one Declare finds with other arguments (with a warning).
//
// A lost connection (a broker restart, a network cut) is re-established in
// the background with capped, jittered exponential backoff; Publish and
// Declare wait for it (bounded by their context) and Consume resumes
// under the same call, re-declaring what it needs. Deliveries that were
// unsettled when the connection went are redelivered by the broker with
// Redelivered set; settling them afterwards returns connector.ErrSettled.
// A publish whose confirm was lost with the connection is sent again on
// the next one: the message may then be there twice, as the at-least-once
// contract allows (consumers de-duplicate by item id).
//
// Everything read from the broker is bounded: frames by FrameSize, and a
// message's body by Config.MaxMessageSize (default workitem.MaxSealed),
// checked in the content header before the body is read, so a broker
// cannot make the client buffer more.
//
// The password is never part of the URL: it is given as Config.Password,
// read by the caller from a file. The connection keeps its own copy for
// reconnecting and wipes it at Close; it appears in no error or log line.
package amqp

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/workitem"
)

// Queue types for Config.QueueType.
const (
	// QueueClassic is RabbitMQ's classic queue: one copy on one node,
	// cheap per queue. The default: see DefaultQueueType.
	QueueClassic = "classic"
	// QueueQuorum is a Raft-replicated queue: it survives losing a
	// minority of a cluster's nodes, and costs much more per queue.
	QueueQuorum = "quorum"
)

// Defaults for the zero values of Config.
const (
	// DefaultQueueType is classic. On one node a quorum queue buys no
	// safety, and on a 2-core node it does not scale to the sites a vault
	// serves: measured (BenchmarkSitesAtScale), 10,000 sites of classic
	// queues took two and a half minutes and 110-125 KiB of broker memory
	// per site, while quorum queues cost three to five times the memory
	// per site and the node stalled (declarations timing out, CLI and
	// heartbeats unanswered) near 6,000 sites. A quorum queue's length
	// bound is also looser (see the package doc). Choose quorum for a
	// cluster of three or more nodes with few sites.
	DefaultQueueType = QueueClassic
	// DefaultMaxLength bounds every queue, as the memory connector does.
	DefaultMaxLength = connector.DefaultMaxLength
	// DefaultPrivateExpires is how long an unused Private queue lives.
	DefaultPrivateExpires = 10 * time.Minute
	// DefaultHeartbeat is the AMQP heartbeat interval: a silent broker is
	// taken for dead after one and a half times this.
	DefaultHeartbeat = 10 * time.Second
	// DefaultDialTimeout bounds one connection attempt: TCP, TLS and the
	// AMQP handshake.
	DefaultDialTimeout = 15 * time.Second
	// DefaultBackoffMin and DefaultBackoffMax bound the wait between
	// reconnection attempts, which doubles from the first to the second.
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 15 * time.Second
	// DefaultPublishChannels is how many confirm-mode channels publishes
	// are spread over.
	DefaultPublishChannels = 4
	// FrameSize is the largest AMQP frame the client accepts (RabbitMQ's
	// own default): a message body spans as many frames as it needs.
	FrameSize = 128 << 10
)

// Config describes the broker and how to use it. Only URL and Password
// are required; every other zero value has a documented default.
type Config struct {
	// URL is amqp://[user@]host[:port][/vhost] or amqps://… . It holds no
	// password (one is refused) nor query parameters.
	URL string
	// Password is the user's password, read by the caller from a file.
	// Dial copies it; the caller may wipe its own copy after Dial returns.
	Password []byte
	// TLS is required for amqps: it must pin the broker's CA (RootCAs)
	// and may not skip verification. A client certificate in it is
	// presented to the broker. ServerName defaults to the URL's host.
	TLS *tls.Config
	// QueueType is the type of Shared queues, QueueQuorum or QueueClassic
	// (default DefaultQueueType). Existing queues keep their type (Declare
	// warns): changing it means moving them.
	QueueType string
	// MaxLength bounds every queue (x-max-length); a publish beyond it is
	// refused with connector.ErrFull (by a quorum queue, after one more).
	// Default DefaultMaxLength.
	MaxLength int
	// DeadLetter sends the expired and rejected messages of Shared queues
	// to "<queue>.dead" to be inspected, instead of dropping them.
	DeadLetter bool
	// DeadLetterMaxLength bounds each "<queue>.dead" (the oldest is
	// dropped beyond it). Default MaxLength.
	DeadLetterMaxLength int
	// PrivateExpires removes a Private queue unused this long (x-expires).
	// Default DefaultPrivateExpires.
	PrivateExpires time.Duration
	// MaxMessageSize bounds a message's body both ways: Publish refuses a
	// larger one, and a larger delivery ends the connection before its
	// body is read. Default workitem.MaxSealed.
	MaxMessageSize int
	// Heartbeat is the AMQP heartbeat interval. Default DefaultHeartbeat.
	Heartbeat time.Duration
	// DialTimeout bounds one connection attempt. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// BackoffMin and BackoffMax bound the jittered, doubling wait between
	// reconnection attempts. Defaults DefaultBackoffMin, DefaultBackoffMax.
	BackoffMin, BackoffMax time.Duration
	// PublishChannels is how many confirm-mode channels carry publishes.
	// Default DefaultPublishChannels.
	PublishChannels int
	// Log receives connection events (lost, re-established), never a
	// message body or the password. Default slog.Default().
	Log *slog.Logger
}

// String describes c without its password.
func (c Config) String() string {
	return fmt.Sprintf("amqp.Config{URL: %q, Password: [REDACTED], QueueType: %q, MaxLength: %d}", c.URL, c.QueueType, c.MaxLength)
}

// GoString describes c without its password.
func (c Config) GoString() string { return c.String() }

// LogValue logs c without its password.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("url", c.URL), slog.String("queue_type", c.QueueType), slog.Int("max_length", c.MaxLength))
}

// endpoint is what Config.URL says, checked.
type endpoint struct {
	addr  string // host:port
	host  string
	user  string
	vhost string
	tls   bool
}

// withDefaults returns c with its zero values filled in.
func (c Config) withDefaults() Config {
	if c.QueueType == "" {
		c.QueueType = DefaultQueueType
	}
	if c.MaxLength <= 0 {
		c.MaxLength = DefaultMaxLength
	}
	if c.DeadLetterMaxLength <= 0 {
		c.DeadLetterMaxLength = c.MaxLength
	}
	if c.PrivateExpires <= 0 {
		c.PrivateExpires = DefaultPrivateExpires
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = workitem.MaxSealed
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.PublishChannels <= 0 {
		c.PublishChannels = DefaultPublishChannels
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}

// Validate reports what is wrong with c, without ever quoting the
// password (nor a URL that holds one).
func (c Config) Validate() error {
	_, err := c.withDefaults().endpoint()
	return err
}

func (c Config) endpoint() (endpoint, error) {
	u, err := url.Parse(c.URL)
	if err != nil {
		// url's errors quote the URL, which might hold a password.
		return endpoint{}, errors.New("amqp: the broker URL does not parse")
	}
	if _, has := u.User.Password(); has {
		return endpoint{}, errors.New("amqp: the broker URL holds a password; give it in Config.Password (read from a file) instead")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return endpoint{}, fmt.Errorf("amqp: broker URL %s: query parameters are not supported; use Config's fields", u.Redacted())
	}
	var ep endpoint
	switch u.Scheme {
	case "amqp":
		if c.TLS != nil {
			return endpoint{}, fmt.Errorf("amqp: broker URL %s is amqp:// but Config.TLS is set; use amqps://", u.Redacted())
		}
	case "amqps":
		ep.tls = true
		switch {
		case c.TLS == nil:
			return endpoint{}, fmt.Errorf("amqp: broker URL %s is amqps:// but Config.TLS is nil; pin the broker's CA in TLS.RootCAs", u.Redacted())
		case c.TLS.InsecureSkipVerify:
			return endpoint{}, errors.New("amqp: Config.TLS.InsecureSkipVerify is refused: the broker's certificate must be verified")
		case c.TLS.RootCAs == nil:
			return endpoint{}, errors.New("amqp: Config.TLS.RootCAs is nil: pin the broker's CA instead of trusting the system's")
		}
	default:
		return endpoint{}, fmt.Errorf("amqp: broker URL scheme %q: want amqp or amqps", u.Scheme)
	}
	uri, err := amqp091.ParseURI(c.URL)
	if err != nil {
		return endpoint{}, fmt.Errorf("amqp: broker URL %s: %w", u.Redacted(), err)
	}
	ep.host, ep.vhost = uri.Host, uri.Vhost
	ep.addr = net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	if u.User != nil {
		ep.user = u.User.Username()
	}
	if ep.user == "" {
		return endpoint{}, fmt.Errorf("amqp: broker URL %s names no user", u.Redacted())
	}
	if len(c.Password) == 0 {
		return endpoint{}, errors.New("amqp: Config.Password is empty")
	}
	switch c.QueueType {
	case QueueClassic, QueueQuorum:
	default:
		return endpoint{}, fmt.Errorf("amqp: queue type %q: want %q or %q", c.QueueType, QueueQuorum, QueueClassic)
	}
	return ep, nil
}

// Conn is a connection to a RabbitMQ broker that re-establishes itself;
// it implements connector.Connector and is safe for concurrent use.
type Conn struct {
	cfg  Config // with defaults; Password is Conn's own copy
	ep   endpoint
	tls  *tls.Config
	log  *slog.Logger
	ctx  context.Context // ends at Close
	stop context.CancelFunc
	wg   sync.WaitGroup // the supervisor

	mu      sync.Mutex
	cur     *session      // nil while reconnecting or after Close
	changed chan struct{} // closed (and replaced) whenever cur changes
	closed  bool
	kinds   map[string]connector.QueueKind // queues declared by Declare

	msgIDs      atomic.Uint64 // message ids, to match returns with publishes
	consumerIDs atomic.Uint64
	// republished counts publishes sent again because the connection
	// (or channel) went before their confirm: each may be a duplicate.
	republished atomic.Int64
	reconnects  atomic.Int64
}

var _ connector.Connector = (*Conn)(nil)

// Dial connects to the broker cfg names. The first connection is made
// before Dial returns (a wrong password or an unreachable broker is an
// error then); later losses are repaired in the background until Close.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	cfg = cfg.withDefaults()
	ep, err := cfg.endpoint()
	if err != nil {
		return nil, err
	}
	cfg.Password = bytes.Clone(cfg.Password)
	c := &Conn{cfg: cfg, ep: ep, log: cfg.Log, changed: make(chan struct{}), kinds: map[string]connector.QueueKind{}}
	if ep.tls {
		c.tls = cfg.TLS.Clone()
		if c.tls.ServerName == "" {
			c.tls.ServerName = ep.host
		}
		if c.tls.MinVersion < tls.VersionTLS12 {
			c.tls.MinVersion = tls.VersionTLS12
		}
	}
	c.ctx, c.stop = context.WithCancel(context.Background())
	s, err := c.connect(ctx)
	if err != nil {
		c.stop()
		clear(c.cfg.Password)
		return nil, err
	}
	c.cur = s
	c.wg.Add(1)
	go c.supervise(s)
	return c, nil
}

// plainAuth is SASL PLAIN over a copy of the password that connect wipes
// once the handshake is over.
type plainAuth struct {
	user string
	pass []byte
}

func (a *plainAuth) Mechanism() string { return "PLAIN" }
func (a *plainAuth) Response() string  { return "\x00" + a.user + "\x00" + string(a.pass) }
func (a *plainAuth) String() string    { return "PLAIN " + a.user + " [REDACTED]" }

// connect makes one connection attempt, bounded by ctx and DialTimeout.
func (c *Conn) connect(ctx context.Context) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", c.ep.addr)
	if err != nil {
		return nil, fmt.Errorf("amqp: connect to %s: %w", c.ep.addr, err)
	}
	nc := raw
	if c.ep.tls {
		tc := tls.Client(raw, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("amqp: TLS handshake with %s: %w", c.ep.addr, err)
		}
		nc = tc
	}
	// The AMQP handshake has no context: a deadline bounds it, and ctx's
	// end cuts it short. amqp091 clears the deadline once it is open.
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	abort := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	auth := &plainAuth{user: c.ep.user, pass: bytes.Clone(c.cfg.Password)}
	// #nosec G115 -- withDefaults made MaxMessageSize positive
	ac, err := amqp091.Open(&limitConn{Conn: nc, scan: frameScanner{max: uint64(c.cfg.MaxMessageSize)}}, amqp091.Config{
		SASL:       []amqp091.Authentication{auth},
		Vhost:      c.ep.vhost,
		Heartbeat:  c.cfg.Heartbeat,
		FrameSize:  FrameSize,
		Locale:     "en_US",
		Properties: amqp091.Table{"product": "sallyport", "connection_name": "sallyport connector"},
	})
	clear(auth.pass)
	aborted := !abort()
	if err != nil {
		_ = nc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("amqp: AMQP handshake with %s: %w", c.ep.addr, ctx.Err())
		}
		var ae *amqp091.Error
		if errors.Is(err, amqp091.ErrCredentials) || (errors.As(err, &ae) && ae.Code == amqp091.AccessRefused) {
			return nil, fmt.Errorf("amqp: broker %s refused user %q (wrong user name or password?): %w", c.ep.addr, c.ep.user, err)
		}
		return nil, fmt.Errorf("amqp: AMQP handshake with %s: %w", c.ep.addr, err)
	}
	if aborted {
		_ = ac.Close()
		return nil, fmt.Errorf("amqp: AMQP handshake with %s: %w", c.ep.addr, ctx.Err())
	}
	return newSession(c, ac), nil
}

// supervise watches the current session and replaces it when it is lost,
// until Close.
func (c *Conn) supervise(s *session) {
	defer c.wg.Done()
	for {
		var err *amqp091.Error
		select {
		case <-c.ctx.Done():
			return
		case err = <-s.lost:
		}
		c.setSession(s, nil)
		s.close()
		if c.ctx.Err() != nil {
			return
		}
		c.log.Warn("amqp connection lost; reconnecting", "broker", c.ep.addr, "err", describe(err))
		start := time.Now()
		next, attempts := c.redial()
		if next == nil {
			return
		}
		if !c.setSession(nil, next) {
			next.close()
			return
		}
		c.reconnects.Add(1)
		c.log.Info("amqp connection re-established", "broker", c.ep.addr, "attempts", attempts, "down_for", time.Since(start).Round(time.Millisecond))
		s = next
	}
}

func describe(err *amqp091.Error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}

// redial connects again with jittered exponential backoff; nil once the
// Conn is closed.
func (c *Conn) redial() (*session, int) {
	wait := c.cfg.BackoffMin
	for attempt := 1; ; attempt++ {
		s, err := c.connect(c.ctx)
		if err == nil {
			return s, attempt
		}
		if c.ctx.Err() != nil {
			return nil, attempt
		}
		c.log.Debug("amqp reconnect attempt failed", "broker", c.ep.addr, "attempt", attempt, "err", err)
		// Full jitter over the upper half: reconnecting clients spread out.
		d := wait/2 + rand.N(wait/2+1) // #nosec G404 -- jitter, not a secret
		t := time.NewTimer(d)
		select {
		case <-c.ctx.Done():
			t.Stop()
			return nil, attempt
		case <-t.C:
		}
		wait = min(wait*2, c.cfg.BackoffMax)
	}
}

// setSession replaces old by next as the current session, if old is the
// current one (old nil: if there is none) and the Conn is open. It
// reports whether it did.
func (c *Conn) setSession(old, next *session) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.cur != old {
		return false
	}
	c.cur = next
	close(c.changed)
	c.changed = make(chan struct{})
	return true
}

// session returns the current session once there is one other than
// stale, waiting for a reconnection until ctx ends (ctx's error) or the
// Conn closes (connector.ErrClosed).
func (c *Conn) session(ctx context.Context, stale *session) (*session, error) {
	for {
		c.mu.Lock()
		s, changed, closed := c.cur, c.changed, c.closed
		c.mu.Unlock()
		if closed {
			return nil, connector.ErrClosed
		}
		if s != nil && s != stale && !s.ac.IsClosed() {
			return s, nil
		}
		if s != nil && s.ac.IsClosed() {
			stale = s // the supervisor is about to replace it
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.ctx.Done():
			return nil, connector.ErrClosed
		}
	}
}

func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Close implements connector.Connector: it ends every Consume (they
// return connector.ErrClosed), closes the connection and wipes the
// password. Unsettled deliveries go back to their queues. Idempotent.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	s := c.cur
	c.cur = nil
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
	if s != nil {
		s.close()
	}
	clear(c.cfg.Password)
	return nil
}

// kind returns how queue was declared by Declare, if it was.
func (c *Conn) kind(queue string) (connector.QueueKind, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, ok := c.kinds[queue]
	return k, ok
}

// Declare implements connector.Connector. It is idempotent. A queue that
// exists with other arguments (another type, length bound, expiry or
// dead-lettering: the vault and the engines of a site may be configured
// apart) is used as it is, with a warning in the log; change the bounds
// of existing queues with a RabbitMQ policy, their type by moving them.
func (c *Conn) Declare(ctx context.Context, queue string, kind connector.QueueKind) error {
	if kind != connector.Shared && kind != connector.Private {
		return fmt.Errorf("amqp: declare %s: unknown queue kind %d", queue, kind)
	}
	var stale *session
	for {
		s, err := c.session(ctx, stale)
		if err != nil {
			return fmt.Errorf("amqp: declare %s: %w", queue, err)
		}
		err = s.declare(ctx, queue, kind)
		switch {
		case err == nil:
			c.mu.Lock()
			c.kinds[queue] = kind
			c.mu.Unlock()
			return nil
		case ctx.Err() != nil, errors.Is(err, connector.ErrClosed):
			return fmt.Errorf("amqp: declare %s: %w", queue, err)
		case !s.goneWithin(ctx):
			return err
		}
		stale = s // the connection went: declare on the next one
	}
}

// sleep waits d unless ctx or the Conn ends first; it reports whether the
// full wait passed.
func (c *Conn) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-c.ctx.Done():
	}
	return false
}
