package rdp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/gateway/rdp/pdu"
)

var timeZero time.Time

// relay runs the session: the connection sequence up to the Client Info
// PDU, rewritten where injection needs it, then bytes both ways, fast-path
// included, until either side ends.
func (c *conn) relay(client *tls.Conn) {
	cfg := &c.srv.cfg
	t := c.target
	log := c.log().With("user", c.id.User, "secret", c.secret)
	var up, down atomic.Int64
	started := cfg.Now()

	// The connection sequence up to the Client Info PDU stays under the
	// handshake deadline, on both legs; up clears it once injected.
	_ = t.SetDeadline(c.started.Add(cfg.HandshakeTimeout))
	c.established.Store(true)
	cfg.Metrics.active(1)
	defer cfg.Metrics.active(-1)
	cfg.Audit.Record(c.ctx, audit.Event{Kind: "session_start", Outcome: "ok", User: c.id.User, Source: c.src.String(), Secret: c.secret,
		Attrs: []slog.Attr{slog.String("protocol", "rdp"), slog.String("target_protocol", pdu.ProtocolString(t.selected))}})
	log.Info("session started", "target_protocol", pdu.ProtocolString(t.selected))

	// Closing both ends is what stops the other direction's copy.
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = c.nc.Close()
			_ = t.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Add(1)
	var downErr error
	go func() {
		defer wg.Done()
		defer closeBoth()
		downErr = c.down(client, t, &down)
	}()
	upErr := c.up(client, t, &up)
	closeBoth()
	wg.Wait()

	cause := "closed"
	if p := c.endCause.Load(); p != nil {
		cause = *p
	} else if err := firstErr(upErr, downErr); err != nil {
		cause = err.Error()
	}
	attrs := []slog.Attr{
		slog.String("protocol", "rdp"),
		slog.Int64("bytes_up", up.Load()),
		slog.Int64("bytes_down", down.Load()),
		slog.Duration("duration", cfg.Now().Sub(started).Round(time.Millisecond)),
		slog.String("end", cause),
	}
	log.LogAttrs(context.Background(), slog.LevelInfo, "session ended", attrs...)
	cfg.Audit.Record(context.WithoutCancel(c.ctx), audit.Event{Kind: "session_end", Outcome: "ok", User: c.id.User, Source: c.src.String(), Secret: c.secret,
		Attrs: attrs})
}

// firstErr is the first error that is not a plain end of the connection.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, errClosed) {
			return err
		}
	}
	return nil
}

var errClosed = errors.New("closed")

// up relays client to target: PDU by PDU until the Client Info PDU, which
// gets the target's account, then bytes.
func (c *conn) up(client *tls.Conn, t *targetConn, n *atomic.Int64) error {
	w := &counter{w: t, n: n, c: c, up: true}
	for i := 0; ; i++ {
		if i == maxSetupPDUs {
			return errors.New("no Client Info PDU in the connection sequence")
		}
		kind, frame, err := pdu.ReadPDU(client, 0)
		if err != nil {
			return c.ended(err)
		}
		if kind != pdu.KindTPKT {
			return errors.New("fast-path PDU before the Client Info PDU")
		}
		if i == 0 {
			// The MCS Connect Initial names the protocol the client
			// negotiated (with us); the target checks it against its own.
			if c.selected != t.selected {
				if _, err := pdu.SetServerSelectedProtocol(frame, t.selected); err != nil && !errors.Is(err, pdu.ErrFieldAbsent) {
					return fmt.Errorf("MCS Connect Initial: %w", err)
				}
			}
			if _, err := w.Write(frame); err != nil {
				return c.ended(err)
			}
			continue
		}
		ci, err := pdu.ParseClientInfo(frame)
		if errors.Is(err, pdu.ErrNotClientInfo) {
			if _, err := w.Write(frame); err != nil {
				return c.ended(err)
			}
			continue
		}
		clear(frame)
		if err != nil {
			return fmt.Errorf("client info PDU: %w", err)
		}
		out, err := c.inject(ci)
		ci.Wipe()
		if err != nil {
			return fmt.Errorf("client info PDU: %w", err)
		}
		_, err = w.Write(out)
		clear(out)
		if err != nil {
			return c.ended(err)
		}
		break
	}
	// Injected: nothing of the credential is needed any more, and the
	// session is past its handshake.
	c.cred.Wipe()
	c.cred = nil
	_ = client.SetDeadline(timeZero)
	_ = t.SetDeadline(timeZero)
	_, err := io.Copy(w, client)
	return c.ended(err)
}

// inject rewrites the Client Info PDU for the target: its account, the
// password for a TLS-only target (NLA already gave it to an NLA target),
// autologon, no auto-reconnect cookie (the target must not resume a
// session on the client's say-so), and never the smart-card flag.
func (c *conn) inject(ci *pdu.ClientInfo) ([]byte, error) {
	user, domain := splitAccount(c.cred.Username)
	if err := ci.SetUser(user); err != nil {
		return nil, err
	}
	if err := ci.SetDomain(domain); err != nil {
		return nil, err
	}
	var pw []byte
	if c.target.selected == pdu.ProtocolSSL {
		pw = c.cred.Password
	}
	if err := ci.SetPassword(pw); err != nil {
		return nil, err
	}
	ci.Flags &^= pdu.InfoPasswordIsSCPin
	ci.SetAutoLogon()
	ci.StripAutoReconnectCookie()
	return ci.Encode()
}

// down relays target to client: the MCS Connect Response, which echoes
// the protocols the client asked for (the target saw ours), then bytes.
func (c *conn) down(client *tls.Conn, t *targetConn, n *atomic.Int64) error {
	w := &counter{w: client, n: n, c: c}
	kind, frame, err := pdu.ReadPDU(t, 0)
	if err != nil {
		return c.ended(err)
	}
	if kind != pdu.KindTPKT {
		return errors.New("target sent a fast-path PDU before the MCS Connect Response")
	}
	if t.selected != c.selected || targetProtocols != c.requested {
		if _, err := pdu.SetClientRequestedProtocols(frame, c.requested); err != nil && !errors.Is(err, pdu.ErrFieldAbsent) {
			return fmt.Errorf("MCS Connect Response: %w", err)
		}
	}
	if _, err := w.Write(frame); err != nil {
		return c.ended(err)
	}
	_, err = io.Copy(w, t)
	return c.ended(err)
}

// ended maps the errors of a connection closed under a copy to a plain end.
func (c *conn) ended(err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || c.endCause.Load() != nil {
		return nil
	}
	if c.ctx.Err() != nil {
		return errClosed
	}
	return err
}

// counter counts and timestamps the bytes written through it.
type counter struct {
	w  io.Writer
	n  *atomic.Int64
	c  *conn
	up bool // client to target
}

func (w *counter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n.Add(int64(n))
	w.c.touch()
	w.c.srv.cfg.Metrics.relayed(w.up, n)
	return n, err
}
