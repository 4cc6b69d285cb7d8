package builtin

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
)

// Defaults of ServerConfig and ClientConfig.
const (
	// MaxBody is the largest message body the connector carries: a sealed
	// work item (workitem.MaxSealed).
	MaxBody = 1 << 20
	// DefaultMaxFrameSize fits a MaxBody message and its header.
	DefaultMaxFrameSize = MaxBody + 512
	// DefaultMaxSessions bounds the server's connections, authenticated or
	// still in their handshake.
	DefaultMaxSessions = 1024
	// DefaultMaxSessionsPerEngine bounds one engine's connections: one is
	// normal, a second overlaps a reconnect the server has not noticed yet.
	DefaultMaxSessionsPerEngine = 4
	// DefaultMaxConsumers bounds the consumers of one connection.
	DefaultMaxConsumers = 16
	// DefaultMaxPrefetch bounds one consumer's prefetch; a larger one is
	// lowered to it.
	DefaultMaxPrefetch = 256
	// DefaultHandshakeTimeout is how long a client has, once its WebSocket
	// is up, to authenticate.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultPingInterval is how often each end pings the other; a peer
	// that has not answered by the next ping is gone.
	DefaultPingInterval = 15 * time.Second
	// DefaultWriteTimeout bounds the sending of one frame.
	DefaultWriteTimeout = 10 * time.Second
)

// ServerConfig configures a Server. Zero limits take their defaults.
type ServerConfig struct {
	// Queues holds the site queues; each authenticated connection gets
	// one Queues.Session(). Required.
	Queues *connector.Memory
	// Auth decides who may connect. Required: without it the server
	// refuses everyone.
	Auth Authorizer
	// Log receives connection events (never a message body); nil
	// discards them.
	Log *slog.Logger

	// MaxFrameSize bounds one frame, read limit of every WebSocket
	// (DefaultMaxFrameSize).
	MaxFrameSize int
	// MaxSessions bounds connections, handshakes included
	// (DefaultMaxSessions); beyond it a client gets 503 and retries.
	MaxSessions int
	// MaxSessionsPerEngine bounds one engine's connections
	// (DefaultMaxSessionsPerEngine).
	MaxSessionsPerEngine int
	// MaxConsumers bounds one connection's consumers (DefaultMaxConsumers).
	MaxConsumers int
	// MaxPrefetch bounds one consumer's prefetch (DefaultMaxPrefetch).
	MaxPrefetch int
	// HandshakeTimeout is the time a client has to authenticate
	// (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// PingInterval is how often the server pings each client
	// (DefaultPingInterval).
	PingInterval time.Duration
	// WriteTimeout bounds the sending of one frame (DefaultWriteTimeout).
	WriteTimeout time.Duration

	// allowAnyQueue lifts the access rule: for this package's tests only
	// (the connector contract uses queues that are not site queues). It
	// is unexported so that no deployment can set it.
	allowAnyQueue bool
	// rand draws the nonces (nil: crypto/rand); tests pin it to show that
	// the channel binding alone stops a relayed signature.
	rand io.Reader
}

// Validate reports a missing Queues or Auth, or a negative limit.
func (c ServerConfig) Validate() error {
	if c.Queues == nil {
		return errors.New("builtin: server config: no Queues")
	}
	if c.Auth == nil {
		return errors.New("builtin: server config: no Auth")
	}
	if c.MaxFrameSize < 0 || c.MaxSessions < 0 || c.MaxSessionsPerEngine < 0 || c.MaxConsumers < 0 || c.MaxPrefetch < 0 ||
		c.HandshakeTimeout < 0 || c.PingInterval < 0 || c.WriteTimeout < 0 {
		return errors.New("builtin: server config: negative limit")
	}
	if c.MaxFrameSize != 0 && c.MaxFrameSize < frameOverhead+1024 {
		return fmt.Errorf("builtin: server config: MaxFrameSize %d is below %d", c.MaxFrameSize, frameOverhead+1024)
	}
	return nil
}

func (c *ServerConfig) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxFrameSize, DefaultMaxFrameSize)
	def(&c.MaxSessions, DefaultMaxSessions)
	def(&c.MaxSessionsPerEngine, DefaultMaxSessionsPerEngine)
	def(&c.MaxConsumers, DefaultMaxConsumers)
	def(&c.MaxPrefetch, DefaultMaxPrefetch)
	defDur(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	defDur(&c.PingInterval, DefaultPingInterval)
	defDur(&c.WriteTimeout, DefaultWriteTimeout)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Server is the vault's end of the built-in connector: an http.Handler
// for the WebSocket endpoint (mounted at /v1/connector on a TLS 1.3
// listener the vault owns). Each authenticated connection is one session
// of the Memory in its config, so the broker semantics are Memory's.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
	bad error // from Validate: if set, every connection is refused

	ctx    context.Context // parent of every session; ends at Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup // every ServeHTTP that got past admit

	mu        sync.Mutex
	closed    bool
	admitted  int // connections in handshake or session
	sessions  map[*session]struct{}
	perEngine map[string]int
	// disconnects counts Disconnect calls: a handshake that began before
	// one may have been authorized just before a revocation, so it does
	// not register (the engine retries and asks again).
	disconnects uint64
}

// NewServer returns a server for cfg. A cfg that fails Validate gives a
// server that refuses every connection (and says why in the log).
func NewServer(cfg ServerConfig) *Server {
	bad := cfg.Validate()
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, log: cfg.Log, bad: bad, ctx: ctx, cancel: cancel,
		sessions: map[*session]struct{}{}, perEngine: map[string]int{}}
	if bad != nil {
		s.log.Error("builtin connector disabled", slog.Any("err", bad))
	}
	return s
}

// maxHello bounds a hello frame: header, engine id, signature.
const maxHello = headerSize + 1 + maxName + 4 + maxSignature

// ErrServerClosed is returned by Shutdown when called twice.
var ErrServerClosed = errors.New("builtin: server closed")

// admit counts a new connection in, or refuses it when the server is
// closed or full.
func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.admitted >= s.cfg.MaxSessions {
		return false
	}
	s.admitted++
	s.wg.Add(1)
	return true
}

func (s *Server) release() {
	s.mu.Lock()
	s.admitted--
	s.mu.Unlock()
	s.wg.Done()
}

// ServeHTTP implements http.Handler: it upgrades the request to a
// WebSocket, authenticates the engine and serves its session until
// either end closes it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.bad != nil {
		http.Error(w, "connector unavailable", http.StatusServiceUnavailable)
		return
	}
	binding, err := channelBinding(r.TLS)
	if err != nil {
		http.Error(w, "TLS 1.3 required", http.StatusUpgradeRequired)
		return
	}
	if !s.admit() {
		s.log.Warn("builtin connector: connection refused", slog.String("remote", r.RemoteAddr), slog.String("reason", "server full or closed"))
		http.Error(w, "connector busy", http.StatusServiceUnavailable)
		return
	}
	defer s.release()
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		s.log.Debug("builtin connector: websocket upgrade failed", slog.String("remote", r.RemoteAddr), slog.Any("err", err))
		return
	}
	defer func() { _ = ws.CloseNow() }()
	// Until it has authenticated, a client may send a hello and no more.
	ws.SetReadLimit(maxHello)
	sess, err := s.handshake(ws, binding, r.RemoteAddr)
	if err != nil {
		return // logged by handshake
	}
	ws.SetReadLimit(int64(s.cfg.MaxFrameSize))
	sess.serve()
}

// handshake authenticates the client and registers its session.
func (s *Server) handshake(ws *websocket.Conn, binding []byte, remote string) (*session, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	log := s.log.With(slog.String("remote", remote))
	refuse := func(code uint32, reason string, err error) error {
		if err == nil {
			err = errors.New(reason)
		}
		log.Warn("builtin connector: engine refused", slog.String("reason", reason), slog.Any("err", err))
		if code != codeNone {
			// The caller closes the socket; the client has nothing more to
			// send, so the close does not lose this frame.
			if b, e := appendFrame(nil, &frame{op: opError, num: code}); e == nil {
				_ = ws.Write(ctx, websocket.MessageBinary, b)
			}
		}
		return fmt.Errorf("%s: %w", reason, err)
	}

	var nonce [NonceSize]byte
	src := s.cfg.rand
	if src == nil {
		src = rand.Reader
	}
	if _, err := io.ReadFull(src, nonce[:]); err != nil {
		return nil, refuse(codeInternal, "nonce", err)
	}
	b, _ := appendFrame(nil, &frame{op: opChallenge, body: nonce[:]})
	if err := ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		return nil, refuse(codeNone, "send challenge", err)
	}
	typ, msg, err := ws.Read(ctx)
	if err != nil {
		return nil, refuse(codeNone, "read hello", err)
	}
	f, err := decodeFrame(msg)
	if err == nil && (typ != websocket.MessageBinary || f.op != opHello) {
		err = fmt.Errorf("got %v, want hello", f.op)
	}
	if err != nil {
		return nil, refuse(codeBadRequest, "bad hello", err)
	}
	if !names.ValidEngineID(f.name) || len(f.body) == 0 || len(f.body) > maxSignature {
		return nil, refuse(codeUnauthorized, "malformed engine id or signature", errors.New(logSafe(f.name)))
	}
	engineID := f.name
	log = log.With(slog.String("engine_id", engineID))

	s.mu.Lock()
	gen := s.disconnects
	s.mu.Unlock()
	msg, err = transcript(nonce[:], engineID, binding)
	if err != nil {
		return nil, refuse(codeInternal, "transcript", err)
	}
	site, err := s.cfg.Auth.Authorize(ctx, engineID, msg, f.body)
	switch {
	case err != nil && (errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)):
		return nil, refuse(codeUnavailable, "authorizer unavailable", err)
	case err != nil:
		return nil, refuse(codeUnauthorized, "not authorized", err)
	case !s.cfg.allowAnyQueue && !names.ValidSiteName(site):
		return nil, refuse(codeInternal, "authorizer returned an invalid site", errors.New(logSafe(site)))
	}

	sess := &session{srv: s, ws: ws, g: grant{engineID: engineID, site: site, anyQueue: s.cfg.allowAnyQueue},
		ms: s.cfg.Queues.Session(), consumers: map[uint32]context.CancelFunc{}, inflight: map[uint64]*inflight{}}
	sess.ctx, sess.cancel = context.WithCancel(s.ctx)
	sess.log = log.With(slog.String("site", site))
	if code, reason := s.register(sess, gen); code != codeNone {
		sess.cancel()
		_ = sess.ms.Close()
		return nil, refuse(code, reason, nil)
	}
	b, err = appendFrame(nil, &frame{op: opWelcome, name: site, num: uint32(s.cfg.MaxFrameSize)}) // #nosec G115 -- the frame size is far below 4 GiB
	if err == nil {
		err = ws.Write(ctx, websocket.MessageBinary, b)
	}
	if err != nil {
		sess.end()
		return nil, refuse(codeNone, "send welcome", err)
	}
	sess.log.Info("builtin connector: engine connected")
	return sess, nil
}

// register adds sess to the server unless a limit or a Disconnect since
// gen forbids it.
func (s *Server) register(sess *session, gen uint64) (code uint32, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return codeUnavailable, "server closed"
	case s.disconnects != gen:
		return codeUnavailable, "disconnect during handshake"
	case s.perEngine[sess.g.engineID] >= s.cfg.MaxSessionsPerEngine:
		return codeTooMany, "too many sessions for engine"
	}
	s.sessions[sess] = struct{}{}
	s.perEngine[sess.g.engineID]++
	return codeNone, ""
}

func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sessions[sess]; !ok {
		return
	}
	delete(s.sessions, sess)
	if s.perEngine[sess.g.engineID]--; s.perEngine[sess.g.engineID] <= 0 {
		delete(s.perEngine, sess.g.engineID)
	}
}

// Disconnect closes every session of engineID at once (call it when the
// engine is revoked, after the revocation is stored, so that its next
// handshake is refused). Its consumers stop, and what they held unsettled
// goes back to its queue; it returns without waiting for that.
func (s *Server) Disconnect(engineID string) {
	s.mu.Lock()
	s.disconnects++
	var victims []*session
	for sess := range s.sessions {
		if sess.g.engineID == engineID {
			victims = append(victims, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range victims {
		sess.log.Info("builtin connector: engine cut off")
		sess.end()
	}
}

// Sessions returns how many authenticated connections the server holds.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Shutdown refuses new connections, closes every session and waits until
// their goroutines have ended, or ctx ends (it then returns ctx's error).
// What the sessions held unsettled goes back to its queue. The vault calls
// it besides its http.Server's Shutdown, which does not track WebSockets.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.closed = true
	all := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		all = append(all, sess)
	}
	s.mu.Unlock()
	s.cancel() // ends handshakes too
	for _, sess := range all {
		sess.end()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("builtin: shutdown: %w", ctx.Err())
	}
}

// session is one authenticated connection.
type session struct {
	srv *Server
	ws  *websocket.Conn
	g   grant
	ms  *connector.MemorySession
	log *slog.Logger

	ctx    context.Context // ends with the session
	cancel context.CancelFunc
	wg     sync.WaitGroup // consumers and the pinger
	once   sync.Once

	mu        sync.Mutex
	consumers map[uint32]context.CancelFunc
	inflight  map[uint64]*inflight
	tag       uint64
	refused   int // access-rule refusals; the first is logged
}

// inflight is a delivery the client has not settled yet.
type inflight struct {
	d       connector.Delivery
	settled chan struct{}
}

// end tears the session down now: it no longer counts, its consumers stop
// (their unsettled deliveries go back), its socket closes. serve's
// goroutine waits for the rest.
func (ss *session) end() {
	ss.once.Do(func() {
		ss.srv.unregister(ss)
		ss.cancel()
		_ = ss.ms.Close()
		_ = ss.ws.CloseNow()
	})
}

// serve reads the client's frames until the session ends, then waits for
// its goroutines.
func (ss *session) serve() {
	defer ss.wg.Wait()
	defer ss.end()
	ss.wg.Add(1)
	go ss.pinger()
	for {
		typ, b, err := ss.ws.Read(ss.ctx)
		if err != nil {
			if ss.ctx.Err() == nil {
				ss.log.Info("builtin connector: engine disconnected", slog.Any("err", err))
			}
			return
		}
		f, err := decodeFrame(b)
		if err == nil && typ != websocket.MessageBinary {
			err = errors.New("text message")
		}
		if err != nil {
			ss.log.Warn("builtin connector: protocol error", slog.Any("err", err))
			return
		}
		if err := ss.handle(&f); err != nil {
			if ss.ctx.Err() == nil { // not a failed write of a session already over
				ss.log.Warn("builtin connector: protocol error", slog.String("op", f.op.String()), slog.Any("err", err))
			}
			return
		}
	}
}

// pinger checks that the client still answers.
func (ss *session) pinger() {
	defer ss.wg.Done()
	t := time.NewTicker(ss.srv.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ss.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(ss.ctx, ss.srv.cfg.PingInterval)
		err := ss.ws.Ping(ctx)
		cancel()
		if err != nil {
			if ss.ctx.Err() == nil {
				ss.log.Info("builtin connector: engine stopped answering pings", slog.Any("err", err))
			}
			ss.end()
			return
		}
	}
}

// write sends f; a failure ends the session.
func (ss *session) write(f *frame) error {
	b, err := appendFrame(make([]byte, 0, headerSize+16+len(f.name)+len(f.body)), f)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ss.ctx, ss.srv.cfg.WriteTimeout)
	defer cancel()
	if err := ss.ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		ss.end()
		return fmt.Errorf("send %v: %w", f.op, err)
	}
	return nil
}

// reply answers request id with err (nil: opOK).
func (ss *session) reply(id uint32, err error) error {
	if err == nil {
		return ss.write(&frame{op: opOK, id: id})
	}
	return ss.write(&frame{op: opError, id: id, num: errorCode(err)})
}

// errorCode maps a connector error to its wire code.
func errorCode(err error) uint32 {
	switch {
	case err == nil:
		return codeNone
	case errors.Is(err, connector.ErrForbidden):
		return codeForbidden
	case errors.Is(err, connector.ErrFull):
		return codeFull
	case errors.Is(err, connector.ErrClosed):
		return codeClosed
	case errors.Is(err, connector.ErrSettled):
		return codeSettled
	case errors.Is(err, errBadRequest):
		return codeBadRequest
	case errors.Is(err, errTooMany):
		return codeTooMany
	}
	return codeInternal
}

// errBadRequest is a request the server refuses as malformed.
var errBadRequest = errors.New("builtin: bad request")

// check applies the access rule, logging the session's first refusal.
func (ss *session) check(o op, queue string, kind connector.QueueKind) error {
	if ss.g.allows(o, queue, kind) {
		return nil
	}
	ss.mu.Lock()
	ss.refused++
	first := ss.refused == 1
	ss.mu.Unlock()
	if first {
		ss.log.Warn("builtin connector: queue refused", slog.String("op", o.String()), slog.String("queue", logSafe(queue)))
	}
	return connector.ErrForbidden
}

// handle serves one frame from the client. Declare, Publish and the
// settlements are handled here, in order, so a session has one request
// pending at a time; a consumer runs in its own goroutine. An error is a
// protocol violation and ends the session.
func (ss *session) handle(f *frame) error {
	switch f.op {
	case opDeclare:
		kind := connector.Shared
		if f.flags&flagPrivate != 0 {
			kind = connector.Private
		}
		err := ss.check(f.op, f.name, kind)
		if err == nil {
			err = ss.ms.Declare(ss.ctx, f.name, kind)
		}
		return ss.replyOrEnd(f.id, err)
	case opPublish:
		err := ss.check(f.op, f.name, connector.Shared)
		if err == nil {
			err = ss.ms.Publish(ss.ctx, f.name, f.body, ttlDuration(f.ttl))
		}
		return ss.replyOrEnd(f.id, err)
	case opConsume:
		return ss.consume(f)
	case opCancel:
		ss.mu.Lock()
		cancel := ss.consumers[f.id]
		ss.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		return nil
	case opAck, opReject:
		ss.mu.Lock()
		in := ss.inflight[f.tag]
		delete(ss.inflight, f.tag)
		ss.mu.Unlock()
		err := connector.ErrSettled // settled already, or its consumer ended and put it back
		if in != nil {
			if f.op == opAck {
				err = in.d.Ack()
			} else {
				err = in.d.Reject(f.flags&flagRequeue != 0)
			}
			close(in.settled)
		}
		if f.id == 0 {
			return nil // the client does not wait for an answer
		}
		return ss.reply(f.id, err)
	}
	return fmt.Errorf("unexpected %v from a client", f.op)
}

// replyOrEnd replies; if the queues are closed (the vault is going down),
// it ends the session too, so that the client reconnects with backoff
// rather than asking again at once.
func (ss *session) replyOrEnd(id uint32, err error) error {
	if werr := ss.reply(id, err); werr != nil {
		return werr
	}
	if errors.Is(err, connector.ErrClosed) {
		ss.log.Warn("builtin connector: queues closed, ending the session")
		ss.end()
		return err
	}
	return nil
}

// errTooMany is a request beyond a limit of the session.
var errTooMany = errors.New("builtin: too many consumers")

// consume starts consumer f.id on f.name.
func (ss *session) consume(f *frame) error {
	id := f.id
	err := ss.check(f.op, f.name, connector.Shared)
	prefetch := int(f.num)
	if err == nil && prefetch <= 0 {
		err = errBadRequest
	}
	prefetch = min(prefetch, ss.srv.cfg.MaxPrefetch)
	ctx, cancel := context.WithCancel(ss.ctx)
	if err == nil {
		ss.mu.Lock()
		switch {
		case ss.consumers[id] != nil:
			ss.mu.Unlock()
			cancel()
			return fmt.Errorf("consumer id %d in use", id)
		case len(ss.consumers) >= ss.srv.cfg.MaxConsumers:
			err = errTooMany
		default:
			ss.consumers[id] = cancel
		}
		ss.mu.Unlock()
	}
	if err != nil {
		cancel()
		return ss.write(&frame{op: opDone, id: id, num: errorCode(err)})
	}
	queue := f.name
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		defer cancel()
		err := ss.ms.Consume(ctx, queue, prefetch, func(ctx context.Context, d connector.Delivery) {
			ss.deliver(ctx, id, d)
		})
		ss.mu.Lock()
		delete(ss.consumers, id)
		ss.mu.Unlock()
		if ss.ctx.Err() != nil {
			return // the session is over: nobody to tell
		}
		if errors.Is(err, connector.ErrClosed) {
			ss.log.Warn("builtin connector: queues closed")
			ss.end()
			return
		}
		_ = ss.write(&frame{op: opDone, id: id, num: errorCode(err)})
	}()
	return nil
}

// deliver sends d to consumer id and waits until the client settles it or
// the consumer ends; Memory puts back what is left unsettled.
func (ss *session) deliver(ctx context.Context, id uint32, d connector.Delivery) {
	in := &inflight{d: d, settled: make(chan struct{})}
	ss.mu.Lock()
	ss.tag++
	tag := ss.tag
	ss.inflight[tag] = in
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		delete(ss.inflight, tag)
		ss.mu.Unlock()
	}()
	var flags uint8
	if d.Redelivered() {
		flags = flagRedelivered
	}
	if err := ss.write(&frame{op: opDeliver, id: id, tag: tag, flags: flags, body: d.Body()}); err != nil {
		return
	}
	select {
	case <-in.settled:
	case <-ctx.Done():
	}
}

// ttlDuration converts a wire TTL (milliseconds, 0: none) without
// overflow.
func ttlDuration(ms uint64) time.Duration {
	const max = uint64(math.MaxInt64 / int64(time.Millisecond))
	if ms > max {
		ms = max
	}
	return time.Duration(ms) * time.Millisecond // #nosec G115 -- bounded just above
}

var _ http.Handler = (*Server)(nil)
