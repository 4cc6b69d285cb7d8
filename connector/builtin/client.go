package builtin

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/enroll"
	"github.com/sallyport/sallyport/names"
)

// Client defaults, besides those shared with ServerConfig.
const (
	// DefaultMinBackoff is the first wait before a reconnect.
	DefaultMinBackoff = 500 * time.Millisecond
	// DefaultMaxBackoff caps the wait between reconnects.
	DefaultMaxBackoff = 30 * time.Second
	// DefaultMaxPending bounds the requests (Declare, Publish) a client
	// has in flight on its connection at once.
	DefaultMaxPending = 64
)

// ErrUnauthorized means the vault refused the engine: unknown, revoked,
// or not holding the key of its id. The client does not reconnect after
// it: every call returns it, wrapped, until Close.
var ErrUnauthorized = errors.New("builtin: engine not authorized by the vault")

// errLost means the connection ended under a call, which carries on over
// the next one.
var errLost = errors.New("builtin: connection lost")

// ClientConfig configures Dial.
type ClientConfig struct {
	// URL is the vault's endpoint, "wss://host:8671/v1/connector".
	URL string
	// RootCAs holds the only CA the vault's certificate may chain to (the
	// engine's --ca-file). Required: there is no fallback to the system
	// pool and no way to skip verification.
	RootCAs *x509.CertPool
	// ServerName overrides the name checked in the vault's certificate
	// (default: the URL's host).
	ServerName string
	// EngineID is the engine's id (enroll.EngineID of Signer's key).
	EngineID string
	// Signer holds the engine's ECDSA P-256 key; only Public and Sign are
	// used, so it may live in an HSM (hsm.Provider.Signer).
	Signer crypto.Signer
	// Log receives connection events (never a message body); nil
	// discards them.
	Log *slog.Logger

	// MinBackoff and MaxBackoff bound the jittered exponential wait
	// between connection attempts (DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration
	// HandshakeTimeout bounds one connection attempt, TLS and
	// authentication included (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// PingInterval is how often the client pings the vault; a vault that
	// has not answered by the next ping is gone (DefaultPingInterval).
	PingInterval time.Duration
	// WriteTimeout bounds the sending of one frame (DefaultWriteTimeout).
	WriteTimeout time.Duration
	// MaxFrameSize bounds a frame from the vault (DefaultMaxFrameSize).
	MaxFrameSize int
	// MaxPending bounds the requests in flight (DefaultMaxPending).
	MaxPending int
}

// String describes c without its signer: a handle into the key provider
// in production, but a raw private key would print under encoding/json.
func (c ClientConfig) String() string {
	return fmt.Sprintf("builtin.ClientConfig{URL: %q, EngineID: %q, Signer: [REDACTED]}", c.URL, c.EngineID)
}

// GoString describes c without its signer, for %#v.
func (c ClientConfig) GoString() string { return c.String() }

// LogValue keeps the signer out of slog records.
func (c ClientConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.String("url", c.URL), slog.String("engine", c.EngineID))
}

// MarshalJSON keeps the signer out of encoding/json; no protocol carries a
// ClientConfig.
func (c ClientConfig) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }

// Validate checks that cfg can make a connection: a wss URL, a CA pool, a
// P-256 signer whose key matches the engine id, no negative limit.
func (c ClientConfig) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil {
		return fmt.Errorf("builtin: client config: URL: %w", err)
	}
	if u.Scheme != "wss" || u.Host == "" {
		return fmt.Errorf("builtin: client config: URL %q is not wss://host…", c.URL)
	}
	if c.RootCAs == nil {
		return errors.New("builtin: client config: no RootCAs: the vault's CA must be pinned")
	}
	if c.Signer == nil {
		return errors.New("builtin: client config: no Signer")
	}
	pub, ok := c.Signer.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return errors.New("builtin: client config: Signer is not an ECDSA P-256 key")
	}
	if !names.ValidEngineID(c.EngineID) {
		return errors.New("builtin: client config: malformed EngineID")
	}
	if id, err := enroll.EngineID(pub); err != nil || id != c.EngineID {
		return errors.New("builtin: client config: EngineID is not the id of Signer's key")
	}
	if c.MinBackoff < 0 || c.MaxBackoff < 0 || c.HandshakeTimeout < 0 || c.PingInterval < 0 || c.WriteTimeout < 0 ||
		c.MaxFrameSize < 0 || c.MaxPending < 0 {
		return errors.New("builtin: client config: negative limit")
	}
	if c.MaxFrameSize != 0 && c.MaxFrameSize < frameOverhead+1024 {
		return fmt.Errorf("builtin: client config: MaxFrameSize %d is below %d", c.MaxFrameSize, frameOverhead+1024)
	}
	return nil
}

func (c *ClientConfig) setDefaults() {
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defDur(&c.MinBackoff, DefaultMinBackoff)
	defDur(&c.MaxBackoff, DefaultMaxBackoff)
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	defDur(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	defDur(&c.PingInterval, DefaultPingInterval)
	defDur(&c.WriteTimeout, DefaultWriteTimeout)
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = DefaultMaxFrameSize
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Client is an engine's end of the built-in connector: a
// connector.Connector over one WebSocket to the vault, re-established with
// backoff whenever it drops, under the same Publish and Consume calls.
type Client struct {
	cfg ClientConfig
	log *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the reconnect loop and every connection's reader and pinger

	mu       sync.Mutex
	cur      *conn         // the live connection, or nil
	changed  chan struct{} // closed and replaced when cur, fatal or closed change
	fatal    error         // wraps ErrUnauthorized: the client is done
	closed   bool
	declared map[string]connector.QueueKind // declared again on each new connection
}

// maxDeclared bounds the queues a client remembers to declare again.
const maxDeclared = 64

// Dial connects to the vault and authenticates as cfg.EngineID. Failures
// that may pass (the vault down or busy, the network) are retried with
// backoff until ctx ends; a refusal by the vault (ErrUnauthorized) or a
// certificate that does not verify returns at once. Once connected, the
// client reconnects by itself until Close.
func Dial(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	c := &Client{cfg: cfg, log: cfg.Log.With(slog.String("engine_id", cfg.EngineID)),
		changed: make(chan struct{}), declared: map[string]connector.QueueKind{}}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	for attempt := 0; ; attempt++ {
		cn, err := c.connect(ctx)
		if err == nil {
			c.cur = cn
			c.wg.Add(1)
			go c.run(cn)
			return c, nil
		}
		if errors.Is(err, ErrUnauthorized) || badCertificate(err) || ctx.Err() != nil {
			if errors.Is(err, ErrUnauthorized) {
				c.log.Error("builtin connector: the vault refused this engine", slog.Any("err", err))
			}
			c.cancel()
			c.wg.Wait()
			return nil, err
		}
		c.log.Warn("builtin connector: connect failed", slog.Int("attempt", attempt+1), slog.Any("err", err))
		if !sleep(ctx, c.backoff(attempt)) {
			c.cancel()
			c.wg.Wait()
			return nil, fmt.Errorf("builtin: dial %s: %w (last error: %w)", cfg.URL, ctx.Err(), err)
		}
	}
}

// badCertificate reports whether err is the vault's certificate failing
// verification: a wrong CA pin or a wrong vault, which retrying will not
// mend.
func badCertificate(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he)
}

// backoff returns the wait before attempt n (from 0): exponential from
// MinBackoff, capped at MaxBackoff, jittered down by up to half so that
// engines restarted together do not reconnect together.
func (c *Client) backoff(n int) time.Duration {
	d := c.cfg.MinBackoff
	for i := 0; i < n && d < c.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.cfg.MaxBackoff)
	return d/2 + mrand.N(d/2+1) // #nosec G404 -- jitter, not a secret
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// run replaces the connection whenever it dies, until Close or a refusal.
func (c *Client) run(cn *conn) {
	defer c.wg.Done()
	for {
		select {
		case <-cn.ctx.Done():
		case <-c.ctx.Done():
		}
		c.setConn(cn, nil)
		if c.ctx.Err() != nil {
			return
		}
		c.log.Warn("builtin connector: connection lost, reconnecting")
		for attempt := 0; ; attempt++ {
			if !sleep(c.ctx, c.backoff(attempt)) {
				return
			}
			next, err := c.connect(c.ctx)
			if err == nil {
				cn = next
				break
			}
			if errors.Is(err, ErrUnauthorized) {
				c.log.Error("builtin connector: the vault refused this engine, not reconnecting", slog.Any("err", err))
				c.mu.Lock()
				c.fatal = err
				c.broadcast()
				c.mu.Unlock()
				return
			}
			if c.ctx.Err() != nil {
				return
			}
			c.log.Warn("builtin connector: reconnect failed", slog.Int("attempt", attempt+1), slog.Any("err", err))
		}
		c.log.Info("builtin connector: reconnected", slog.String("site", cn.site))
		c.setConn(nil, cn)
	}
}

// broadcast wakes every waitConn; callers hold c.mu.
func (c *Client) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// setConn replaces old (nil: whatever) with cn.
func (c *Client) setConn(old, cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old == nil || c.cur == old {
		c.cur = cn
		c.broadcast()
	}
}

// waitConn returns the live connection, waiting for one until ctx ends.
func (c *Client) waitConn(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		switch {
		case c.closed:
			c.mu.Unlock()
			return nil, connector.ErrClosed
		case c.fatal != nil:
			err := c.fatal
			c.mu.Unlock()
			return nil, err
		case c.cur != nil && c.cur.ctx.Err() == nil:
			cn := c.cur
			c.mu.Unlock()
			return cn, nil
		}
		wait := c.changed
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close implements connector.Connector: it ends the connection and the
// reconnecting, and waits for the client's goroutines. Consume calls
// return ErrClosed once their handlers have returned; deliveries left
// unsettled go back to their queue on the vault.
func (c *Client) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.broadcast()
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}

// connect makes one connection: WebSocket over TLS 1.3, then the
// handshake (see transcript).
func (c *Client) connect(ctx context.Context) (*conn, error) {
	// The connection lives until the client closes; the handshake alone
	// is bounded by ctx and the timeout.
	cctx, ccancel := context.WithCancel(c.ctx)
	hctx, hcancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer hcancel()
	stop := context.AfterFunc(hctx, ccancel)
	fail := func(ws *websocket.Conn, err error) (*conn, error) {
		ccancel()
		if ws != nil {
			_ = ws.CloseNow()
		}
		return nil, fmt.Errorf("builtin: connect to %s: %w", c.cfg.URL, err)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs:    c.cfg.RootCAs,
			ServerName: c.cfg.ServerName,
			MinVersion: tls.VersionTLS13,
			MaxVersion: tls.VersionTLS13,
			NextProtos: []string{"http/1.1"},
		},
		DisableCompression: true,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return errors.New("redirect refused")
	}}
	ws, resp, err := websocket.Dial(cctx, c.cfg.URL, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		return fail(nil, err)
	}
	ws.SetReadLimit(int64(c.cfg.MaxFrameSize))
	binding, err := channelBinding(resp.TLS)
	if err != nil {
		return fail(ws, err)
	}

	f, err := readFrame(hctx, ws)
	if err == nil && (f.op != opChallenge || len(f.body) != NonceSize) {
		err = fmt.Errorf("got %v, want a challenge", f.op)
	}
	if err != nil {
		return fail(ws, fmt.Errorf("challenge: %w", err))
	}
	msg, err := transcript(f.body, c.cfg.EngineID, binding)
	if err != nil {
		return fail(ws, err)
	}
	digest := sha256.Sum256(msg)
	sig, err := c.cfg.Signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return fail(ws, fmt.Errorf("sign the transcript: %w", err))
	}
	b, err := appendFrame(nil, &frame{op: opHello, name: c.cfg.EngineID, body: sig})
	if err == nil {
		err = ws.Write(hctx, websocket.MessageBinary, b)
	}
	if err != nil {
		return fail(ws, fmt.Errorf("hello: %w", err))
	}
	f, err = readFrame(hctx, ws)
	switch {
	case err != nil:
		return fail(ws, fmt.Errorf("welcome: %w", err))
	case f.op == opError && f.num == codeUnauthorized:
		return fail(ws, fmt.Errorf("%w: %s", ErrUnauthorized, c.cfg.EngineID))
	case f.op == opError:
		return fail(ws, fmt.Errorf("the vault refused the connection (code %d)", f.num))
	case f.op != opWelcome || int64(f.num) < frameOverhead+1024:
		return fail(ws, fmt.Errorf("got %v, want welcome", f.op))
	}
	if !stop() {
		return fail(ws, hctx.Err())
	}
	cn := &conn{c: c, ws: ws, ctx: cctx, cancel: ccancel, site: f.name,
		maxFrame: min(c.cfg.MaxFrameSize, int(f.num)),
		sem:      make(chan struct{}, c.cfg.MaxPending),
		pending:  map[uint32]chan frame{}, subs: map[uint32]*subscription{}}
	c.wg.Add(2)
	go cn.readLoop()
	go cn.pinger()

	c.mu.Lock()
	declared := make(map[string]connector.QueueKind, len(c.declared))
	for q, k := range c.declared {
		declared[q] = k
	}
	c.mu.Unlock()
	for q, k := range declared {
		if err := cn.request(hctx, declareFrame(q, k)); err != nil {
			if errors.Is(err, errLost) || hctx.Err() != nil {
				cn.close()
				return nil, fmt.Errorf("builtin: connect to %s: declare %s again: %w", c.cfg.URL, q, err)
			}
			c.log.Warn("builtin connector: declare again failed", slog.String("queue", logSafe(q)), slog.Any("err", err))
		}
	}
	return cn, nil
}

// readFrame reads one binary frame.
func readFrame(ctx context.Context, ws *websocket.Conn) (frame, error) {
	typ, b, err := ws.Read(ctx)
	if err != nil {
		return frame{}, err
	}
	if typ != websocket.MessageBinary {
		return frame{}, errors.New("text message")
	}
	return decodeFrame(b)
}

func declareFrame(queue string, kind connector.QueueKind) *frame {
	f := &frame{op: opDeclare, name: queue}
	if kind == connector.Private {
		f.flags = flagPrivate
	}
	return f
}

// checkQueue refuses a queue name the wire cannot carry.
func checkQueue(queue string) error {
	if queue == "" || len(queue) > maxName {
		return fmt.Errorf("builtin: queue name of %d bytes: %w", len(queue), connector.ErrForbidden)
	}
	return nil
}

// do sends a request, over the next connection if the current one dies
// before the answer: so a request may be carried out twice, as with a
// broker's publisher confirms.
func (c *Client) do(ctx context.Context, f *frame) error {
	for {
		cn, err := c.waitConn(ctx)
		if err != nil {
			return err
		}
		err = cn.request(ctx, f)
		if !errors.Is(err, errLost) {
			return err
		}
	}
}

// Declare implements connector.Connector. The vault allows an engine to
// declare only its own reply queue, as Private.
func (c *Client) Declare(ctx context.Context, queue string, kind connector.QueueKind) error {
	if err := checkQueue(queue); err != nil {
		return err
	}
	if err := c.do(ctx, declareFrame(queue, kind)); err != nil {
		return fmt.Errorf("builtin: declare %s: %w", queue, err)
	}
	c.mu.Lock()
	if _, ok := c.declared[queue]; ok || len(c.declared) < maxDeclared {
		c.declared[queue] = kind
	}
	c.mu.Unlock()
	return nil
}

// Publish implements connector.Connector: it returns once the message is
// in its queue on the vault. While the connection is down it waits for
// the next one (until ctx ends); the TTL counts from the call.
func (c *Client) Publish(ctx context.Context, queue string, body []byte, ttl time.Duration) error {
	if err := checkQueue(queue); err != nil {
		return err
	}
	if len(body) > MaxBody {
		return fmt.Errorf("builtin: publish to %s: message of %d bytes is over %d", queue, len(body), MaxBody)
	}
	var expiry time.Time
	if ttl > 0 {
		expiry = time.Now().Add(ttl)
	}
	for {
		f := &frame{op: opPublish, name: queue, body: body}
		if ttl > 0 {
			left := time.Until(expiry)
			if left <= 0 {
				return fmt.Errorf("builtin: publish to %s: expired while waiting for the vault", queue)
			}
			f.ttl = uint64((left + time.Millisecond - 1) / time.Millisecond) // #nosec G115 -- left > 0
		}
		cn, err := c.waitConn(ctx)
		if err != nil {
			return fmt.Errorf("builtin: publish to %s: %w", queue, err)
		}
		if len(body) > cn.maxFrame-frameOverhead {
			return fmt.Errorf("builtin: publish to %s: message of %d bytes is over the vault's limit", queue, len(body))
		}
		err = cn.request(ctx, f)
		if !errors.Is(err, errLost) {
			if err != nil {
				return fmt.Errorf("builtin: publish to %s: %w", queue, err)
			}
			return nil
		}
	}
}

// Consume implements connector.Connector. The vault pushes up to prefetch
// deliveries; each runs handle in its own goroutine, at most prefetch at a
// time. When the connection drops, the consumer carries on over the next
// one (the vault puts back what the old one held unsettled, and an Ack on
// a delivery of the old connection returns connector.ErrSettled). It
// returns nil once ctx has ended and every handler has returned,
// connector.ErrClosed after Close, or an error wrapping ErrUnauthorized or
// connector.ErrForbidden.
func (c *Client) Consume(ctx context.Context, queue string, prefetch int, handle func(context.Context, connector.Delivery)) error {
	if err := checkQueue(queue); err != nil {
		return err
	}
	prefetch = min(max(prefetch, 1), DefaultMaxPrefetch)
	hctx, hcancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.ctx, hcancel) // Close cancels the handlers too
	r := &consumeRun{handle: handle, ctx: hctx, slots: make(chan struct{}, prefetch)}
	defer func() {
		stop()
		r.wg.Wait()
		hcancel()
	}()
	for {
		cn, err := c.waitConn(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("builtin: consume %s: %w", queue, err)
		}
		err = c.subscribe(ctx, cn, queue, prefetch, r)
		if !errors.Is(err, errLost) {
			if err != nil {
				return fmt.Errorf("builtin: consume %s: %w", queue, err)
			}
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		c.log.Debug("builtin connector: consumer waits for the next connection", slog.String("queue", logSafe(queue)))
	}
}

// consumeRun is what one Consume call shares across its connections.
type consumeRun struct {
	handle func(context.Context, connector.Delivery)
	ctx    context.Context // the handlers'
	slots  chan struct{}   // one per running handler: prefetch bounds them
	wg     sync.WaitGroup
}

// subscribe consumes queue over cn until ctx ends (nil), cn dies
// (errLost) or the vault ends the consumer (its error).
func (c *Client) subscribe(ctx context.Context, cn *conn, queue string, prefetch int, r *consumeRun) error {
	sub := cn.addSub(prefetch)
	if sub == nil {
		return errLost
	}
	defer cn.removeSub(sub.id)
	if err := cn.write(&frame{op: opConsume, id: sub.id, name: queue, num: uint32(prefetch)}); err != nil { // #nosec G115 -- 1 ≤ prefetch ≤ DefaultMaxPrefetch
		return errLost
	}
	for {
		select {
		case f := <-sub.deliveries:
			select {
			case r.slots <- struct{}{}:
			case <-ctx.Done():
				return c.cancelSub(cn, sub, r)
			case <-cn.ctx.Done():
				return errLost
			}
			r.wg.Add(1)
			go r.run(cn, f)
		case code := <-sub.done:
			if code == codeNone {
				return errors.New("the vault ended the consumer")
			}
			return codeError(code)
		case <-cn.ctx.Done():
			return errLost
		case <-ctx.Done():
			return c.cancelSub(cn, sub, r)
		}
	}
}

// cancelSub ends a subscription once every handler has settled what it
// had: the vault then puts back what it sent that never started, and says
// done.
func (c *Client) cancelSub(cn *conn, sub *subscription, r *consumeRun) error {
	r.wg.Wait()
	if err := cn.write(&frame{op: opCancel, id: sub.id}); err != nil {
		return nil // the connection is gone, and with it the consumer
	}
	t := time.NewTimer(c.cfg.WriteTimeout)
	defer t.Stop()
	select {
	case <-sub.done:
	case <-cn.ctx.Done():
	case <-t.C:
		c.log.Warn("builtin connector: the vault did not end a consumer, dropping the connection")
		cn.close()
	}
	return nil
}

// run handles one delivery and puts it back if handle left it unsettled.
func (r *consumeRun) run(cn *conn, f frame) {
	defer r.wg.Done()
	defer func() { <-r.slots }()
	d := &delivery{cn: cn, tag: f.tag, body: f.body, redelivered: f.flags&flagRedelivered != 0}
	r.handle(r.ctx, d)
	if d.settle() {
		_ = cn.write(&frame{op: opReject, tag: d.tag, flags: flagRequeue})
	}
}

// codeError maps a wire error code to the error a caller sees.
func codeError(code uint32) error {
	switch code {
	case codeForbidden:
		return connector.ErrForbidden
	case codeFull:
		return connector.ErrFull
	case codeBadRequest:
		return errBadRequest
	case codeTooMany:
		return errTooMany
	case codeUnauthorized:
		return ErrUnauthorized
	case codeSettled:
		return connector.ErrSettled
	}
	return fmt.Errorf("builtin: the vault failed the request (code %d)", code)
}

// conn is one authenticated WebSocket to the vault.
type conn struct {
	c        *Client
	ws       *websocket.Conn
	ctx      context.Context // ends when the connection dies
	cancel   context.CancelFunc
	site     string
	maxFrame int           // the smaller of ours and the vault's
	sem      chan struct{} // bounds pending requests

	mu      sync.Mutex
	next    uint32
	pending map[uint32]chan frame
	subs    map[uint32]*subscription
}

// subscription is one consumer on a connection.
type subscription struct {
	id         uint32
	deliveries chan frame  // at most prefetch: the vault sends no more unsettled
	done       chan uint32 // the vault's opDone code
}

// close ends the connection; the reader and pinger then return.
func (cn *conn) close() {
	cn.cancel()
	_ = cn.ws.CloseNow()
}

// newID returns an id not in use on cn; callers hold cn.mu.
func (cn *conn) newID() uint32 {
	for {
		cn.next++
		id := cn.next
		if _, ok := cn.pending[id]; ok {
			continue
		}
		if _, ok := cn.subs[id]; ok || id == 0 {
			continue
		}
		return id
	}
}

func (cn *conn) addSub(prefetch int) *subscription {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.ctx.Err() != nil {
		return nil
	}
	s := &subscription{id: cn.newID(), deliveries: make(chan frame, prefetch), done: make(chan uint32, 1)}
	cn.subs[s.id] = s
	return s
}

func (cn *conn) removeSub(id uint32) {
	cn.mu.Lock()
	delete(cn.subs, id)
	cn.mu.Unlock()
}

// write sends f; a failure kills the connection.
func (cn *conn) write(f *frame) error {
	if err := cn.ctx.Err(); err != nil {
		return errLost
	}
	b, err := appendFrame(make([]byte, 0, headerSize+24+len(f.name)+len(f.body)), f)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cn.ctx, cn.c.cfg.WriteTimeout)
	defer cancel()
	if err := cn.ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		cn.close()
		return errLost
	}
	return nil
}

// request sends f with a new id and waits for the vault's answer.
func (cn *conn) request(ctx context.Context, f *frame) error {
	select {
	case cn.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-cn.ctx.Done():
		return errLost
	}
	defer func() { <-cn.sem }()
	ch := make(chan frame, 1)
	cn.mu.Lock()
	id := cn.newID()
	cn.pending[id] = ch
	cn.mu.Unlock()
	defer func() {
		cn.mu.Lock()
		delete(cn.pending, id)
		cn.mu.Unlock()
	}()
	g := *f
	g.id = id
	if err := cn.write(&g); err != nil {
		return err
	}
	select {
	case r := <-ch:
		if r.op == opOK {
			return nil
		}
		if r.num == codeClosed {
			cn.close() // the vault is going down: try the next one
			return errLost
		}
		return codeError(r.num)
	case <-ctx.Done():
		return ctx.Err()
	case <-cn.ctx.Done():
		return errLost
	}
}

// readLoop dispatches the vault's frames until the connection dies.
func (cn *conn) readLoop() {
	defer cn.c.wg.Done()
	defer cn.close()
	for {
		f, err := readFrame(cn.ctx, cn.ws)
		if err == nil {
			err = cn.dispatch(&f)
		}
		if err != nil {
			if cn.ctx.Err() == nil {
				cn.c.log.Info("builtin connector: connection ended", slog.Any("err", err))
			}
			return
		}
	}
}

// dispatch hands one frame to whoever waits for it. It never blocks.
func (cn *conn) dispatch(f *frame) error {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	switch f.op {
	case opOK, opError:
		if ch := cn.pending[f.id]; ch != nil {
			delete(cn.pending, f.id)
			ch <- *f
		}
		return nil
	case opDeliver:
		s := cn.subs[f.id]
		if s == nil {
			return nil // for a consumer already ended: the vault puts it back
		}
		select {
		case s.deliveries <- *f:
			return nil
		default:
			return errors.New("protocol error: deliveries beyond prefetch")
		}
	case opDone:
		if s := cn.subs[f.id]; s != nil {
			delete(cn.subs, f.id)
			s.done <- f.num
		}
		return nil
	}
	return fmt.Errorf("protocol error: unexpected %v from the vault", f.op)
}

// pinger checks that the vault still answers.
func (cn *conn) pinger() {
	defer cn.c.wg.Done()
	t := time.NewTicker(cn.c.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-cn.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(cn.ctx, cn.c.cfg.PingInterval)
		err := cn.ws.Ping(ctx)
		cancel()
		if err != nil {
			if cn.ctx.Err() == nil {
				cn.c.log.Info("builtin connector: the vault stopped answering pings", slog.Any("err", err))
			}
			cn.close()
			return
		}
	}
}

// delivery is one message from the vault.
type delivery struct {
	cn          *conn
	tag         uint64
	body        []byte
	redelivered bool

	mu      sync.Mutex
	settled bool
}

func (d *delivery) Body() []byte      { return d.body }
func (d *delivery) Redelivered() bool { return d.redelivered }

func (d *delivery) settle() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return false
	}
	d.settled = true
	return true
}

// Ack implements connector.Delivery. It returns once the vault has
// settled the message, or connector.ErrSettled if it was settled before,
// or its connection is gone (the vault delivers it again).
func (d *delivery) Ack() error {
	if !d.settle() {
		return connector.ErrSettled
	}
	return d.cn.settle(&frame{op: opAck, tag: d.tag})
}

// Reject implements connector.Delivery, as Ack does.
func (d *delivery) Reject(requeue bool) error {
	if !d.settle() {
		return connector.ErrSettled
	}
	f := &frame{op: opReject, tag: d.tag}
	if requeue {
		f.flags = flagRequeue
	}
	return d.cn.settle(f)
}

// settle sends a settlement and waits for the vault's answer. A vault
// that does not answer in time loses the connection, so that the message
// is surely delivered again.
func (cn *conn) settle(f *frame) error {
	ctx, cancel := context.WithTimeout(cn.ctx, cn.c.cfg.WriteTimeout)
	defer cancel()
	err := cn.request(ctx, f)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errLost), errors.Is(err, connector.ErrSettled):
		return connector.ErrSettled
	case ctx.Err() != nil:
		cn.close()
		return connector.ErrSettled
	}
	return fmt.Errorf("builtin: settle: %w", err)
}

var _ connector.Connector = (*Client)(nil)
