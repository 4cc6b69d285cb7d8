package radius

// RadSec: RADIUS over TLS (RFC 6614). Each server gets one persistent
// TCP+TLS connection, dialled when the first request needs it and shared by
// every concurrent login. Requests on a connection are told apart by their
// Identifier: one reader goroutine per connection hands each reply to the
// request waiting on that identifier, so at most 256 requests can be
// outstanding on one connection.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	layeh "layeh.com/radius"
)

// DefaultRadSecSecret is the shared secret RFC 6614 §2.3 fixes for RADIUS
// over TLS. A server with an empty Secret uses it when Config.TLS is set.
const DefaultRadSecSecret = "radsec"

// idQuarantine is how long the identifier of a request that timed out or
// was cancelled stays reserved, in case the server's reply is still on its
// way: reusing it at once could pair that late reply with a new request.
// It is FreeRADIUS's default max_request_time.
const idQuarantine = 30 * time.Second

var (
	// errConnLost marks a request whose connection ended before its reply
	// came; the request may be sent again on a new connection.
	errConnLost = errors.New("connection lost")
	// errClosed is returned once Client.Close has been called. It is not a
	// refusal: the service is unavailable to this client from now on.
	errClosed = fmt.Errorf("radius: %w: client closed", ErrUnavailable)
	// errFrameLength means a frame's length field is outside 20..4096.
	errFrameLength = errors.New("frame length outside 20..4096")
	// errAllAbandoned ends a connection on which every identifier is held
	// by a request that got no reply: the server is not answering on it.
	errAllAbandoned = errors.New("all 256 identifiers are held by requests that got no reply")
	// errSilent ends a connection on which a request timed out without the
	// server sending anything at all since it was written: a half-open
	// connection (a firewall dropped it) would otherwise take every later
	// request down with it until TCP keepalive noticed, minutes later.
	errSilent = errors.New("the server sent nothing while a request waited for its reply")
)

// frameLengthError is errFrameLength with the offending length.
type frameLengthError struct{ n int }

func (e frameLengthError) Error() string {
	return fmt.Sprintf("frame length %d outside %d..%d", e.n, headerLen, maxPacketLen)
}

func (e frameLengthError) Is(target error) bool { return target == errFrameLength }

// readFrame reads one RADIUS packet from a RadSec stream: a four-octet
// header whose last two octets hold the packet's length (big-endian,
// header included), then the rest of the packet. It reads exactly one packet
// and nothing more.
//
// It returns io.EOF if the stream ends before the packet's first octet,
// io.ErrUnexpectedEOF if it ends inside the packet, and an error matching
// errFrameLength, without reading on, if the length is not 20..4096: the
// stream cannot be resynchronised after that. started, when not nil, is
// called once the first octet has arrived (to arm a read deadline for the
// rest).
func readFrame(r io.Reader, started func()) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:1]); err != nil {
		return nil, err
	}
	if started != nil {
		started()
	}
	if _, err := io.ReadFull(r, hdr[1:]); err != nil {
		return nil, midFrame(err)
	}
	n := int(binary.BigEndian.Uint16(hdr[2:]))
	if n < headerLen || n > maxPacketLen {
		return nil, frameLengthError{n}
	}
	b := make([]byte, n)
	copy(b, hdr[:])
	if _, err := io.ReadFull(r, b[len(hdr):]); err != nil {
		return nil, midFrame(err)
	}
	return b, nil
}

// midFrame turns an io.EOF met inside a frame into io.ErrUnexpectedEOF.
func midFrame(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// radsecPeer is one RadSec server and its current connection.
type radsecPeer struct {
	c   *Client
	srv Server
	tls *tls.Config // the client's copy, with ServerName set

	mu     sync.Mutex
	conn   *radsecConn // nil before the first dial; may have failed since
	dial   *dialCall   // not nil while a dial is under way
	closed bool
}

// dialCall is one dial that several requests may wait for.
type dialCall struct {
	done chan struct{} // closed when conn or err is set
	conn *radsecConn
	err  error
}

// initRadSec prepares one peer per server. cfg.TLS is not nil.
func (c *Client) initRadSec() {
	base := c.cfg.TLS.Clone()
	if base.MinVersion < tls.VersionTLS12 {
		base.MinVersion = tls.VersionTLS12
	}
	c.cfg.TLS = base
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.peers = make(map[string]*radsecPeer, len(c.cfg.Servers))
	for _, s := range c.cfg.Servers {
		tc := base.Clone()
		if tc.ServerName == "" {
			host, _, _ := net.SplitHostPort(s.Addr) // checked by Validate
			tc.ServerName = host
		}
		c.peers[s.Addr] = &radsecPeer{c: c, srv: s, tls: tc}
	}
}

// closeRadSec is Close for a RadSec client: no new dials or requests, every
// connection closed, every goroutine finished.
func (c *Client) closeRadSec() {
	if c.cancel == nil {
		return // UDP
	}
	c.cancel()
	var conns []*radsecConn
	for _, p := range c.peers {
		p.mu.Lock()
		p.closed = true
		if p.conn != nil {
			conns = append(conns, p.conn)
			p.conn = nil
		}
		p.mu.Unlock()
	}
	for _, rc := range conns {
		rc.fail(errClosed)
	}
	c.wg.Wait()
}

// exchangeTLS sends req to the RadSec server s and returns its verified
// reply. When the request was sent on a connection that was already open
// and that connection ends before the reply (a server closes idle
// connections, and may do so just as a request goes out), it is sent once
// more on a new connection. A connection dialled for the request that ends
// without a reply is not tried again: that is a server refusing this client.
func (c *Client) exchangeTLS(ctx context.Context, s Server, req *layeh.Packet) (*layeh.Packet, error) {
	p := c.peers[s.Addr]
	for attempt := 1; ; attempt++ {
		rc, reused, err := p.get(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := rc.roundTrip(ctx, req)
		if err != nil && reused && attempt == 1 && errors.Is(err, errConnLost) && ctx.Err() == nil {
			c.logger.Info("radsec connection ended before the reply; reconnecting", "server", s.Addr)
			continue
		}
		return resp, err
	}
}

// get returns the peer's open connection, or dials one. reused reports that
// the connection was already open when get was called.
func (p *radsecPeer) get(ctx context.Context) (_ *radsecConn, reused bool, _ error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, false, errClosed
	}
	if rc := p.conn; rc != nil {
		select {
		case <-rc.dead:
			p.conn = nil
		default:
			p.mu.Unlock()
			return rc, true, nil
		}
	}
	d := p.dial
	if d == nil {
		d = &dialCall{done: make(chan struct{})}
		p.dial = d
		// The dial does not belong to this request: others may join it,
		// and it runs to its own timeout even if ctx ends.
		p.c.wg.Go(func() { p.dialNow(d) })
	}
	p.mu.Unlock()
	select {
	case <-d.done:
		return d.conn, false, d.err
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// dialNow connects to the server, completes the TLS handshake within
// Config.Timeout and publishes the result in d.
func (p *radsecPeer) dialNow(d *dialCall) {
	c := p.c
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.Timeout)
	defer cancel()
	var rc *radsecConn
	var err error
	var nd net.Dialer
	raw, derr := nd.DialContext(ctx, "tcp", p.srv.Addr)
	if derr != nil {
		err = p.dialFailed(ctx, "connect", derr)
	} else {
		tc := tls.Client(raw, p.tls)
		if herr := tc.HandshakeContext(ctx); herr != nil {
			_ = raw.Close()
			err = p.dialFailed(ctx, "TLS handshake", herr)
		} else {
			rc = &radsecConn{
				peer:  p,
				tc:    tc,
				raw:   raw,
				wsem:  make(chan struct{}, 1),
				freed: make(chan struct{}),
				dead:  make(chan struct{}),
			}
			st := tc.ConnectionState()
			c.logger.Debug("radsec connected", "server", p.srv.Addr,
				"tls_version", tls.VersionName(st.Version), "cipher_suite", tls.CipherSuiteName(st.CipherSuite))
		}
	}
	p.mu.Lock()
	p.dial = nil
	switch {
	case p.closed:
		if rc != nil {
			_ = raw.Close()
			rc = nil
		}
		err = errClosed
	case rc != nil:
		p.conn = rc
		c.wg.Go(rc.readLoop)
	}
	p.mu.Unlock()
	d.conn, d.err = rc, err
	close(d.done)
}

// dialFailed logs why a connection could not be set up and returns the
// error for the requests that waited for it. The text of err is kept, never
// err itself: a handshake cut short by the dial's own timeout must not look
// like the caller's ctx ending.
func (p *radsecPeer) dialFailed(ctx context.Context, stage string, err error) error {
	addr := p.srv.Addr
	if p.c.ctx.Err() != nil {
		return errClosed
	}
	var cve *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	if errors.As(err, &cve) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) {
		p.c.logger.Error("radsec server certificate could not be verified", "server", addr, "server_name", p.tls.ServerName, "error", err.Error())
		return fmt.Errorf("%w: %s: the server certificate could not be verified: %v", errNoAnswer, addr, err)
	}
	reason := err.Error()
	switch {
	case ctx.Err() != nil:
		reason = fmt.Sprintf("not done within %v", p.c.cfg.Timeout)
	case stage == "TLS handshake" && refusedHandshake(err):
		reason += " (the server ended the handshake: did it refuse the client certificate?)"
	}
	p.c.logger.Warn("radsec connection failed", "server", addr, "stage", stage, "reason", reason)
	return fmt.Errorf("%w: %s: %s: %s", errNoAnswer, addr, stage, reason)
}

// isReset reports a connection reset by the peer.
func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// refusedHandshake reports a handshake the server ended, by closing the
// connection or with an alert. That is how servers refuse a client
// certificate; the alert, if any, rarely says so (Go sends "handshake
// failure", OpenSSL may just close).
func refusedHandshake(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

// radsecConn is one TLS connection to a RadSec server.
type radsecConn struct {
	peer *radsecPeer
	tc   *tls.Conn
	raw  net.Conn      // under tc; closing it ends reads and writes at once
	wsem chan struct{} // held while a request is written

	mu      sync.Mutex
	slots   [256]*radsecWaiter // by identifier; nil = free
	next    uint8              // where the search for a free identifier starts
	freed   chan struct{}      // closed (and replaced) when an identifier is freed
	replies int                // verified replies delivered
	// lastFrame is when the last frame began or ended (unix ns).
	lastFrame atomic.Int64
	err       error         // why the connection ended; set once
	dead      chan struct{} // closed when err is set
}

// radsecWaiter is one request waiting for its reply.
type radsecWaiter struct {
	req   []byte             // the encoded request, to verify the reply against
	reply chan *layeh.Packet // buffered: the reader never blocks on it
	// abandoned is when the request stopped waiting (timeout or ctx); its
	// identifier stays reserved for idQuarantine after that.
	abandoned time.Time
}

// roundTrip sends req on rc and waits, at most Config.Timeout, for its
// verified reply.
func (rc *radsecConn) roundTrip(ctx context.Context, req *layeh.Packet) (*layeh.Packet, error) {
	p := rc.peer
	wire, err := encode(req, p.srv)
	if err != nil {
		return nil, err
	}
	defer clear(wire) // it holds the encrypted User-Password; runs after release
	timer := time.NewTimer(p.c.cfg.Timeout)
	defer timer.Stop()
	w := &radsecWaiter{reply: make(chan *layeh.Packet, 1)}
	id, err := rc.acquire(ctx, timer.C, w, wire)
	if err != nil {
		return nil, err
	}
	answered, sent := false, false
	defer func() {
		if !answered {
			rc.abandon(id, w, sent)
		}
	}()
	// Taken before the write: the reply may begin before write returns.
	sentAt := time.Now().UnixNano()
	if err := rc.write(ctx, timer.C, wire); err != nil {
		return nil, err
	}
	sent = true
	select {
	case resp := <-w.reply:
		answered = true
		return resp, nil
	case <-rc.dead:
		select {
		case resp := <-w.reply:
			answered = true
			return resp, nil
		default:
		}
		return nil, rc.lostErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		if rc.lastFrame.Load() < sentAt {
			rc.fail(errSilent)
		}
		return nil, fmt.Errorf("%w: %s: no reply within %v", errNoAnswer, p.srv.Addr, p.c.cfg.Timeout)
	}
}

// acquire reserves an identifier for w, waiting while all 256 are in use,
// and stamps it into wire (re-signing its Message-Authenticator).
func (rc *radsecConn) acquire(ctx context.Context, expired <-chan time.Time, w *radsecWaiter, wire []byte) (uint8, error) {
	secret := rc.peer.srv.Secret
	for {
		rc.mu.Lock()
		if rc.err != nil {
			rc.mu.Unlock()
			return 0, rc.lostErr()
		}
		now := time.Now()
		var wake time.Duration // until the first quarantined identifier is free
		active := 0            // identifiers whose request is still waiting
		id := rc.next
		for range len(rc.slots) {
			s := rc.slots[id]
			if s != nil && !s.abandoned.IsZero() {
				left := idQuarantine - now.Sub(s.abandoned)
				if left <= 0 {
					s = nil
				} else if wake == 0 || left < wake {
					wake = left
				}
			} else if s != nil {
				active++
			}
			if s == nil {
				rc.slots[id] = w
				rc.next = id + 1
				wire[1] = id
				signRequest(wire, secret)
				w.req = wire
				rc.mu.Unlock()
				return id, nil
			}
			id++
		}
		freed := rc.freed
		rc.mu.Unlock()
		if active == 0 {
			rc.fail(errAllAbandoned)
			return 0, rc.lostErr()
		}
		var wakeC <-chan time.Time
		var wakeT *time.Timer
		if wake > 0 {
			wakeT = time.NewTimer(wake)
			wakeC = wakeT.C
		}
		var err error
		select {
		case <-freed:
		case <-wakeC:
		case <-rc.dead:
		case <-ctx.Done():
			err = ctx.Err()
		case <-expired:
			err = fmt.Errorf("%w: %s: all 256 identifiers of the connection stayed in use for %v",
				errNoAnswer, rc.peer.srv.Addr, rc.peer.c.cfg.Timeout)
		}
		if wakeT != nil {
			wakeT.Stop()
		}
		if err != nil {
			return 0, err
		}
	}
}

// abandon marks w's identifier as no longer waited on. If its request was
// sent, the identifier stays reserved (see idQuarantine) until the late
// reply arrives or the time runs out; otherwise it is free at once.
func (rc *radsecConn) abandon(id uint8, w *radsecWaiter, sent bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	switch {
	case rc.slots[id] != w:
	case sent:
		w.abandoned = time.Now()
	default:
		rc.freeLocked(id)
	}
}

// freeLocked frees identifier id and wakes requests waiting for one.
// rc.mu is held.
func (rc *radsecConn) freeLocked(id uint8) {
	rc.slots[id] = nil
	close(rc.freed)
	rc.freed = make(chan struct{})
}

// write sends one request. Writes are serialised; waiting for the turn
// respects ctx and the request's timeout, and ctx ending during the write
// interrupts it (a partly written frame ends the connection).
func (rc *radsecConn) write(ctx context.Context, expired <-chan time.Time, wire []byte) error {
	c := rc.peer.c
	select {
	case rc.wsem <- struct{}{}:
	case <-rc.dead:
		return rc.lostErr()
	case <-ctx.Done():
		return ctx.Err()
	case <-expired:
		return fmt.Errorf("%w: %s: the connection stayed busy for %v", errNoAnswer, rc.peer.srv.Addr, c.cfg.Timeout)
	}
	defer func() { <-rc.wsem }()
	if err := rc.raw.SetWriteDeadline(time.Now().Add(c.cfg.Timeout)); err != nil {
		rc.fail(fmt.Errorf("write: %w", err))
		return rc.lostErr()
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = rc.raw.SetWriteDeadline(time.Now())
		close(fired)
	})
	_, err := rc.tc.Write(wire)
	if !stop() {
		<-fired // the next writer sets its own deadline after this one's
	}
	if err != nil {
		rc.fail(fmt.Errorf("write: %w", err))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return rc.lostErr()
	}
	return nil
}

// readLoop reads replies until the connection ends and hands each to the
// request waiting on its identifier. Once a frame has started, the rest of
// it must arrive within Config.Timeout.
func (rc *radsecConn) readLoop() {
	timeout := rc.peer.c.cfg.Timeout
	armed := func() {
		// A frame has begun: the server is alive, and the rest of it
		// must follow within the timeout.
		rc.lastFrame.Store(time.Now().UnixNano())
		_ = rc.raw.SetReadDeadline(time.Now().Add(timeout))
	}
	for {
		b, err := readFrame(rc.tc, armed)
		if err != nil {
			rc.fail(err)
			return
		}
		_ = rc.raw.SetReadDeadline(time.Time{})
		rc.lastFrame.Store(time.Now().UnixNano())
		rc.dispatch(b)
	}
}

// dispatch verifies one reply against the request that holds its
// identifier and delivers it. A reply that fails verification is dropped and
// logged; the request keeps waiting for a genuine one.
func (rc *radsecConn) dispatch(b []byte) {
	log := rc.peer.c.logger
	addr := rc.peer.srv.Addr
	id := b[1]
	rc.mu.Lock()
	if rc.err != nil {
		rc.mu.Unlock()
		return
	}
	w := rc.slots[id]
	switch {
	case w == nil:
		rc.mu.Unlock()
		log.Warn("radius reply dropped", "server", addr, "reason", "reply identifier matches no outstanding request", "identifier", id)
	case !w.abandoned.IsZero():
		rc.freeLocked(id)
		rc.mu.Unlock()
		log.Info("radius reply dropped", "server", addr, "reason", "reply came after its request timed out or was cancelled", "identifier", id)
	default:
		resp, err := verifyReply(b, w.req, rc.peer.srv.Secret)
		if err != nil {
			rc.mu.Unlock()
			log.Warn("radius reply dropped", "server", addr, "reason", err.Error())
			return
		}
		rc.freeLocked(id)
		rc.replies++
		// Delivered before the lock is released (the channel is buffered
		// and this is its only send): a request that sees the connection
		// end after this must find its reply, not report it lost.
		w.reply <- resp
		rc.mu.Unlock()
	}
}

// fail ends the connection for cause, once: every request waiting on it
// sees rc.dead and gets lostErr.
func (rc *radsecConn) fail(cause error) {
	rc.mu.Lock()
	if rc.err != nil {
		rc.mu.Unlock()
		return
	}
	rc.err = cause
	waiting := 0
	for _, w := range rc.slots {
		if w != nil && w.abandoned.IsZero() {
			waiting++
		}
	}
	replies := rc.replies
	// The requests learn of it through dead; the reader must not touch
	// their encoded requests any more.
	clear(rc.slots[:])
	close(rc.dead)
	rc.mu.Unlock()
	_ = rc.raw.Close()

	log := rc.peer.c.logger
	addr := rc.peer.srv.Addr
	switch {
	case errors.Is(cause, errClosed):
		log.Debug("radsec connection closed", "server", addr)
	case errors.Is(cause, errFrameLength):
		log.Warn("radsec connection closed: invalid frame", "server", addr, "reason", cause.Error())
	case errors.Is(cause, io.ErrUnexpectedEOF):
		log.Warn("radsec connection closed: the server ended it inside a frame", "server", addr)
	case isTimeout(cause):
		log.Warn("radsec connection closed: frame not completed in time", "server", addr, "timeout", rc.peer.c.cfg.Timeout)
	case errors.Is(cause, errSilent):
		log.Warn("radsec connection closed; the next request dials again", "server", addr, "reason", cause.Error(),
			"timeout", rc.peer.c.cfg.Timeout)
	case errors.Is(cause, errAllAbandoned):
		log.Warn("radsec connection closed", "server", addr, "reason", cause.Error())
	case waiting == 0 && replies > 0:
		// Servers close idle connections (FreeRADIUS after idle_timeout).
		log.Info("radsec server closed the connection", "server", addr, "error", cause.Error())
	case replies == 0:
		log.Warn("radsec server closed the connection before any reply; did it refuse the client certificate?",
			"server", addr, "requests_waiting", waiting, "error", cause.Error())
	default:
		log.Warn("radsec connection lost", "server", addr, "requests_waiting", waiting, "error", cause.Error())
	}
}

// lostErr is the error for a request whose connection ended.
func (rc *radsecConn) lostErr() error {
	rc.mu.Lock()
	cause, replies := rc.err, rc.replies
	rc.mu.Unlock()
	if errors.Is(cause, errClosed) {
		return errClosed
	}
	hint := ""
	if replies == 0 && !errors.Is(cause, errFrameLength) && !errors.Is(cause, io.ErrUnexpectedEOF) &&
		!errors.Is(cause, errAllAbandoned) && !isTimeout(cause) {
		hint = " before any reply (did the server refuse the client certificate?)"
	}
	return fmt.Errorf("%w: %s: %w%s: %v", errNoAnswer, rc.peer.srv.Addr, errConnLost, hint, cause)
}

// isTimeout reports a deadline that expired.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
