package ssh

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
)

var timeZero time.Time

// serve runs one client connection: handshake and login, the target dial,
// then the relay until either side goes away.
func (c *conn) serve() {
	defer c.srv.forget(c)
	defer c.cancel()
	defer c.nc.Close()

	if ready := c.srv.cfg.Ready; ready != nil {
		if err := ready(c.ctx); err != nil {
			// The host key cannot sign (token removed, module failing):
			// close now rather than fail half-way through the handshake.
			c.srv.notReady(err)
			return
		}
	}
	// Machines first: the banner and key exchange must be over within
	// seconds (keyExchanged then allows the longer login deadline).
	_ = c.nc.SetDeadline(c.started.Add(c.srv.cfg.KeyExchangeTimeout))
	sconn, chans, reqs, err := gossh.NewServerConn(c.nc, c.serverConfig())
	if err != nil {
		c.cred.Wipe()
		c.log().Debug("handshake ended", "err", err)
		return
	}
	defer sconn.Close()
	// The handshake deadline must not outlive the handshake: from here on
	// the idle and maximum-session timeouts govern the connection.
	_ = c.nc.SetDeadline(timeZero)
	if q, ok := c.nc.(interface{ handshakeDone() }); ok {
		q.handshakeDone()
	}
	c.authenticated.Store(true)
	if c.ac != nil {
		c.ac.Admit()
	}
	if c.rdp {
		c.serveRDPToken(chans, reqs)
		return
	}
	log := c.log().With("user", c.id.User, "secret", c.secret)

	cred := c.cred
	c.cred = nil
	target, err := c.dialTarget(c.ctx, cred)
	cred.Wipe()
	if err != nil {
		var ue *userError
		msg := "could not connect to the target"
		if errors.As(err, &ue) {
			msg = ue.msg
		}
		log.Error("target connection failed", "err", err)
		if r, ok := c.srv.cfg.Credentials.(RejectionReporter); ok && errors.Is(err, errCredentialRejected) {
			// The stored credential may be wrong: have the vault check it
			// now, without keeping the user waiting for the answer.
			id, src, secret := c.id, c.src, c.secret
			go func() {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), 10*time.Second)
				defer cancel()
				r.CredentialRejected(rctx, id, src, secret)
			}()
		}
		c.srv.cfg.Audit.Record(c.ctx, audit.Event{Kind: "session_start", Outcome: "error", User: c.id.User, Source: c.src.String(), Secret: c.secret,
			Attrs: auditReason("target connection failed", err)})
		c.refuse(chans, reqs, msg)
		return
	}
	defer target.Close()

	c.touch()
	c.established.Store(true)
	c.srv.cfg.Metrics.active(1)
	defer c.srv.cfg.Metrics.active(-1)
	c.srv.cfg.Audit.Record(c.ctx, audit.Event{Kind: "session_start", Outcome: "ok", User: c.id.User, Source: c.src.String(), Secret: c.secret})
	log.Info("session started")

	// One loop serves both connections' control traffic: the client's new
	// channels and global requests, and whatever the target sends on its
	// own. When the target's end goes away its request stream closes, and
	// we close the client's end; when the client goes away the loop ends
	// and the deferred Close ends the target. No goroutine per connection
	// is needed for any of it.
	var wg sync.WaitGroup
	var up, down atomic.Int64
	treqs, tchans := target.reqs, target.chans
	for chans != nil || reqs != nil {
		select {
		case r, ok := <-reqs:
			if !ok {
				reqs = nil
				continue
			}
			// tcpip-forward and the rest are refused; failure is also the
			// standard answer to OpenSSH's keepalive@openssh.com.
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		case nch, ok := <-chans:
			if !ok {
				chans = nil
				continue
			}
			if nch.ChannelType() != "session" {
				_ = nch.Reject(gossh.Prohibited, "only sessions are allowed through this gateway")
				c.warn(log, "channel refused", "type", logSafe(nch.ChannelType()))
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.relaySession(nch, target, &up, &down)
			}()
		case r, ok := <-treqs:
			if !ok {
				treqs = nil
				_ = sconn.Close()
				continue
			}
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		case nch, ok := <-tchans:
			if !ok {
				tchans = nil
				continue
			}
			// Forwarded ports, agent and X11 were never asked for.
			_ = nch.Reject(gossh.Prohibited, "not allowed through this gateway")
		}
	}
	_ = target.Close()
	wg.Wait()
	dur := c.srv.cfg.Now().Sub(c.started)
	cause := "closed"
	if p := c.endCause.Load(); p != nil {
		cause = *p
	}
	attrs := []slog.Attr{slog.Int64("bytes_up", up.Load()), slog.Int64("bytes_down", down.Load()),
		slog.String("duration", dur.Round(time.Millisecond).String()), slog.String("cause", cause)}
	if n := c.warnings.Load() - maxWarnings; n > 0 {
		attrs = append(attrs, slog.Int64("warnings_not_logged", n))
	}
	log.LogAttrs(context.Background(), slog.LevelInfo, "session ended", attrs...)
	c.srv.cfg.Audit.Record(context.WithoutCancel(c.ctx), audit.Event{Kind: "session_end", Outcome: "ok", User: c.id.User, Source: c.src.String(), Secret: c.secret,
		Attrs: attrs})
}

// keyExchanged moves a connection from its machine phase to its person
// phase: the key exchange is done, so the deadline becomes the login
// deadline, and admission spares it while connections still stalled in
// their machine phase remain.
func (c *conn) keyExchanged() {
	_ = c.nc.SetDeadline(c.started.Add(c.srv.cfg.HandshakeTimeout))
	if c.ac != nil {
		c.ac.Handshaken()
	}
}

// maxWarnings is how many warnings one connection may log about what its
// authenticated user asked for and was refused; the rest are counted and
// reported once, at the session's end.
const maxWarnings = 5

// warn logs a refusal of something an authenticated user asked for, within
// the connection's warning budget, so that one user cannot flood the log.
func (c *conn) warn(log *slog.Logger, msg string, args ...any) {
	if c.warnings.Add(1) <= maxWarnings {
		log.Warn(msg, args...)
	}
}

// logSafe bounds a client-chosen string (a channel or request type) for
// a log line.
func logSafe(s string) string {
	const max = 64
	s = strings.ToValidUTF8(s, "?")
	if len(s) > max {
		s = strings.ToValidUTF8(s[:max], "") + "…"
	}
	return s
}

// track and untrack keep the client's open session channels, so that a
// revocation can tell each of them why the session ends.
func (c *conn) track(ch gossh.Channel) {
	c.chMu.Lock()
	defer c.chMu.Unlock()
	if c.chans == nil {
		c.chans = map[gossh.Channel]struct{}{}
	}
	c.chans[ch] = struct{}{}
}

func (c *conn) untrack(ch gossh.Channel) {
	c.chMu.Lock()
	defer c.chMu.Unlock()
	delete(c.chans, ch)
}

// revocationNotice bounds how long a revoked session's message may take to
// reach a client that is not reading.
const revocationNotice = time.Second

// revoke ends the connection because its grant no longer holds: the user
// or the secret was removed. Each open session channel gets msg on stderr
// first. It returns at once; the connection's own goroutines finish.
func (c *conn) revoke(msg string) {
	if !c.endCause.CompareAndSwap(nil, &causeRevoked) {
		return // already ending for another reason
	}
	c.srv.cfg.Metrics.revokedSession()
	c.srv.cfg.Audit.Record(context.WithoutCancel(c.ctx), audit.Event{Kind: "session_revoked", Outcome: "denied",
		User: c.id.User, Source: c.src.String(), Secret: c.secret, Attrs: []slog.Attr{slog.String("reason", "grant no longer holds")}})
	c.chMu.Lock()
	chans := make([]gossh.Channel, 0, len(c.chans))
	for ch := range c.chans {
		chans = append(chans, ch)
	}
	c.chMu.Unlock()
	var wg sync.WaitGroup
	for _, ch := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Blocks only while the client's window is full; closing
			// the connection below ends it.
			_, _ = fmt.Fprintf(ch.Stderr(), "\r\nsallyport: %s\r\n", msg)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(revocationNotice)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()
	_ = c.nc.Close()
	<-done
}

// replyNone answers every global request from the client with failure. That
// refuses tcpip-forward and is also the standard answer to OpenSSH's
// keepalive@openssh.com, so client keepalives work.
func replyNone(reqs <-chan *gossh.Request) {
	for r := range reqs {
		if r.WantReply {
			_ = r.Reply(false, nil)
		}
	}
}

// refuse tells the user why their session cannot start: it serves the first
// session channel just long enough to print msg on stderr and exit 1.
func (c *conn) refuse(chans <-chan gossh.NewChannel, reqs <-chan *gossh.Request, msg string) {
	go replyNone(reqs)
	// Serve until the client hangs up (it does once its session ends), or
	// the deadline passes; closing first would make OpenSSH report a broken
	// pipe after the message.
	_ = c.nc.SetDeadline(c.srv.cfg.Now().Add(30 * time.Second))
	for nch := range chans {
		if nch.ChannelType() != "session" {
			_ = nch.Reject(gossh.Prohibited, msg)
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			return
		}
		go func() {
			for r := range creqs {
				switch r.Type {
				case "shell", "exec", "subsystem":
					_ = r.Reply(true, nil)
					_, _ = fmt.Fprintf(ch.Stderr(), "sallyport: %s.\r\n", msg)
					_, _ = ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 1))
					_ = ch.CloseWrite()
					_ = ch.Close()
				default:
					if r.WantReply {
						_ = r.Reply(r.Type == "pty-req" || r.Type == "env", nil)
					}
				}
			}
		}()
	}
}

// allowedEnv is the allow-list of environment variables passed to targets.
func allowedEnv(payload []byte) bool {
	var kv struct{ Name, Value string }
	if err := gossh.Unmarshal(payload, &kv); err != nil {
		return false
	}
	return kv.Name == "LANG" || strings.HasPrefix(kv.Name, "LC_")
}

// relaySession joins one client session channel to a new session channel on
// the target and relays data and an allow-list of requests both ways.
func (c *conn) relaySession(nch gossh.NewChannel, target *targetConn, up, down *atomic.Int64) {
	log := c.log().With("user", c.id.User, "secret", c.secret)
	tch, treqs, err := target.OpenChannel("session", nil)
	if err != nil {
		var oce *gossh.OpenChannelError
		if errors.As(err, &oce) {
			_ = nch.Reject(oce.Reason, oce.Message)
		} else {
			_ = nch.Reject(gossh.ConnectionFailed, "target refused the session")
		}
		c.warn(log, "target refused session channel", "err", err)
		return
	}
	cch, creqs, err := nch.Accept()
	if err != nil {
		_ = tch.Close()
		return
	}
	c.track(cch)
	defer c.untrack(cch)

	// Data flows in three goroutines; everything else — requests both ways,
	// the end of output, the close — is handled by this one, which keeps an
	// idle session to few goroutines.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // stdin: client → target, then EOF
		defer wg.Done()
		n, _ := c.pipe(tch, cch, true)
		up.Add(n)
		_ = tch.CloseWrite()
	}()
	outEnded := make(chan struct{}, 2)
	for _, p := range [][2]io.ReadWriter{{cch, tch}, {cch.Stderr(), tch.Stderr()}} {
		go func() { // stdout and stderr: target → client
			n, _ := c.pipe(p[0], p[1], false)
			down.Add(n)
			outEnded <- struct{}{}
		}()
	}

	// Exit status and signal are held back until all output has reached the
	// client, as the protocol expects. A client request in flight is
	// answered before the loop can end, so the channel never closes under it.
	var exits []*gossh.Request
	outputs := 2
	for treqs != nil || outputs > 0 {
		select {
		case r, ok := <-creqs:
			if !ok {
				// The client closed its channel: close ours to the target.
				creqs = nil
				_ = tch.Close()
				continue
			}
			c.forwardClientRequest(r, tch, log)
		case r, ok := <-treqs:
			if !ok {
				treqs = nil // the target closed the channel
				continue
			}
			switch r.Type {
			case "exit-status", "exit-signal":
				exits = append(exits, r)
			case "eow@openssh.com":
				_, _ = cch.SendRequest(r.Type, false, r.Payload)
			default:
				// keepalive@openssh.com and anything else: answered here.
				if r.WantReply {
					_ = r.Reply(false, nil)
				}
			}
		case <-outEnded:
			if outputs--; outputs == 0 {
				_ = cch.CloseWrite()
			}
		}
	}
	for _, r := range exits {
		_, _ = cch.SendRequest(r.Type, false, r.Payload)
	}
	_ = cch.Close()
	_ = tch.Close()
	if creqs != nil {
		// Refuse whatever the client still sends until its side closes.
		go replyNone(creqs)
	}
	wg.Wait()
}

// forwardClientRequest passes one allowed session request to the target and
// its answer back; everything else is refused here.
func (c *conn) forwardClientRequest(r *gossh.Request, tch gossh.Channel, log *slog.Logger) {
	allow := false
	switch r.Type {
	case "pty-req", "shell", "exec", "window-change", "signal", "break":
		allow = true
	case "env":
		allow = allowedEnv(r.Payload)
	case "subsystem":
		allow = len(r.Payload) >= 4 && string(r.Payload[4:]) == "sftp"
	case "x11-req", "auth-agent-req@openssh.com":
		c.warn(log, "forwarding refused", "request", r.Type)
	}
	if !allow {
		if r.WantReply {
			_ = r.Reply(false, nil)
		}
		return
	}
	ok, err := tch.SendRequest(r.Type, r.WantReply, r.Payload)
	if err != nil {
		ok = false
	}
	if r.WantReply {
		_ = r.Reply(ok, nil)
	}
}

// Relay buffers: a small one while a direction is quiet (interactive use),
// a large pooled one while it streams. An idle session holds only the small
// buffers, which keeps memory per session low. The large one holds several
// SSH packets, so one read drains them all and x/crypto/ssh sends fewer
// window adjustments: about 10% less CPU per GiB than 32 KiB reads.
const (
	smallBuf = 1024
	largeBuf = 256 * 1024
)

var largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}

// pipe copies src to dst until EOF or an error, counting bytes and marking
// the connection active. up says which way the bytes go, for metrics.
func (c *conn) pipe(dst io.Writer, src io.Reader, up bool) (int64, error) {
	var total int64
	var small [smallBuf]byte
	var large *[]byte
	defer func() {
		if large != nil {
			largePool.Put(large)
		}
	}()
	for {
		buf := small[:]
		if large != nil {
			buf = *large
		}
		n, err := src.Read(buf)
		if n > 0 {
			c.touch()
			c.srv.cfg.Metrics.relayed(up, n)
			total += int64(n)
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return total, werr
			}
		}
		if err != nil {
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
		switch {
		case large == nil && n == smallBuf:
			large = largePool.Get().(*[]byte)
		case large != nil && n < largeBuf/8:
			largePool.Put(large)
			large = nil
		}
	}
}
