package rdp

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/gateway/rdp/credssp"
	"github.com/sallyport/sallyport/gateway/rdp/ntlm"
	"github.com/sallyport/sallyport/gateway/rdp/pdu"
	sshgw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// Bounds on what a client may send before the relay.
const (
	// maxConnectionRequest bounds the X.224 Connection Request (a cookie or
	// routing token and the negotiation structures: well under 1 KiB).
	maxConnectionRequest = 2048
	// maxSetupPDUs bounds the PDUs a client may send between NLA and its
	// Client Info PDU (MCS Connect Initial, Erect Domain, Attach User,
	// one Channel Join per channel — at most 31 static channels).
	maxSetupPDUs = 64
)

// Early User Authorization Result (MS-RDPBCGR 2.2.10.2), sent after
// CredSSP when PROTOCOL_HYBRID_EX was selected.
const (
	authzSuccess      = 0x00000000
	authzAccessDenied = 0x00000005
)

// Reasons for logins refused without checking any token.
const (
	refusedMalformed = "login_malformed"
	refusedLimited   = "rate_limited"
)

// serve runs one connection: negotiation, TLS, NLA with the token, the
// target's login, the connection sequence's rewrite, then the relay.
func (c *conn) serve() {
	defer c.srv.forget(c)
	defer c.nc.Close()
	defer c.cancel()
	defer c.wipe()
	_ = c.nc.SetDeadline(c.started.Add(c.srv.cfg.HandshakeTimeout))

	tc, err := c.negotiate()
	if err != nil {
		c.log().Debug("negotiation ended", "err", err)
		return
	}
	if c.ac != nil {
		c.ac.Handshaken()
	}
	if err := c.authenticate(tc); err != nil {
		c.log().Debug("authentication ended", "err", err)
		return
	}
	if c.ac != nil {
		c.ac.Admit()
	}
	c.relay(tc)
}

// wipe clears whatever credential material the connection still holds.
func (c *conn) wipe() {
	if c.cand != nil {
		clear(c.cand.value)
	}
	c.cred.Wipe()
	c.cred = nil
	if c.target != nil {
		_ = c.target.Close()
	}
}

// negotiate answers the client's X.224 Connection Request and starts TLS.
// Only NLA is accepted from clients: the token must be proved before the
// gateway contacts any target. A client that offers less is told so with
// a negotiation failure it understands.
func (c *conn) negotiate() (*tls.Conn, error) {
	frame, err := pdu.ReadTPKT(c.nc, maxConnectionRequest)
	if err != nil {
		return nil, fmt.Errorf("connection request: %w", err)
	}
	cr, err := pdu.ParseConnectionRequest(frame)
	if err != nil {
		c.srv.cfg.Metrics.refusedConn("malformed")
		return nil, fmt.Errorf("connection request: %w", err)
	}
	c.requested = cr.RequestedProtocols
	var failure uint32
	switch {
	case !cr.HasNegotiation:
		// Standard RDP Security only: RC4 and a server key anyone can
		// spoof. Never.
		failure = pdu.FailureHybridRequiredByServer
	case cr.RequestedProtocols&pdu.ProtocolHybridEx != 0:
		c.selected = pdu.ProtocolHybridEx
	case cr.RequestedProtocols&pdu.ProtocolHybrid != 0:
		c.selected = pdu.ProtocolHybrid
	default:
		// TLS alone, RDSTLS or RDSAAD: the token could not be checked
		// before the connection sequence.
		failure = pdu.FailureHybridRequiredByServer
	}
	if failure != 0 {
		c.srv.cfg.Metrics.refusedConn("negotiation")
		_, _ = c.nc.Write(pdu.NegotiationFailure(failure))
		return nil, fmt.Errorf("client offers %s: refused with %s", pdu.ProtocolString(cr.RequestedProtocols), pdu.FailureString(failure))
	}
	cc := pdu.ConnectionConfirm{Type: pdu.NegResponse, Flags: pdu.NegRspExtendedClientDataSupported, SelectedProtocol: c.selected}
	out, err := cc.Encode()
	if err != nil {
		return nil, err
	}
	if _, err := c.nc.Write(out); err != nil {
		return nil, err
	}
	tc := tls.Server(c.nc, c.srv.tls)
	if err := tc.HandshakeContext(c.ctx); err != nil {
		return nil, fmt.Errorf("client TLS: %w", err)
	}
	return tc, nil
}

// authenticate runs NLA with the client: the NTLM proof of the token, and
// (in Authorize, before the client is answered) the token's consumption,
// the checkout and the target's login, so that any refusal still reaches
// the client as a CredSSP error it reports.
func (c *conn) authenticate(tc *tls.Conn) error {
	cfg := &c.srv.cfg
	acc, err := credssp.Serve(tc, credssp.ServerConfig{
		PublicKey: c.srv.publicKey,
		NTLM:      ntlm.NewServer(cfg.TargetName, cfg.Rand, cfg.Now),
		Lookup:    c.lookup,
		Authorize: c.authorize,
	})
	if err != nil {
		var se *credssp.StatusError
		switch {
		case errors.As(err, &se):
			// authorize refused and audited it.
		case errors.Is(err, credssp.ErrLogonFailure) && c.user != "":
			c.srv.logins.Failed(c.user, c.source)
			cfg.Metrics.login(false)
			cfg.Audit.Record(c.ctx, audit.Event{Kind: "login", Outcome: "denied", User: c.user, Secret: c.secretOf(), Source: c.src.String(),
				Attrs: []slog.Attr{slog.String("protocol", "rdp"), slog.String("reason", "token refused")}})
		}
		return err
	}
	// The delegated credentials hold the token, now spent.
	acc.Creds.Wipe()
	if c.selected == pdu.ProtocolHybridEx {
		var res [4]byte
		binary.LittleEndian.PutUint32(res[:], authzSuccess)
		if _, err := tc.Write(res[:]); err != nil {
			return err
		}
	}
	return nil
}

// secretOf is the secret the client named, for the audit of a refusal.
func (c *conn) secretOf() string {
	if c.cand != nil {
		return c.cand.secret
	}
	return ""
}

// splitLogin turns what the client sent as NLA user and domain into the
// gateway user and the secret: `alice@win01` (user, as typed, with no
// domain), or `win01\alice` (the secret as the domain).
func splitLogin(user, domain string) (string, string, error) {
	login := user
	if domain != "" {
		login = user + "@" + domain
	}
	if len(login) > names.MaxLoginLen {
		return "", "", errors.New("login too long")
	}
	u, secret, err := names.ParseLogin(login)
	if err != nil {
		return "", "", err
	}
	if secret == "" {
		return "", "", errors.New("no secret named")
	}
	return u, secret, nil
}

// lookup is NTLM's password lookup: the login's token, after the same
// pre-checks as an SSH login (form, failed-login budgets). When there is
// no token it returns a random one, so that a login with no token costs
// and answers the same as a wrong token.
func (c *conn) lookup(user, domain string) ([]byte, bool) {
	s := c.srv
	dummy := func() ([]byte, bool) {
		raw := make([]byte, tokenBytes)
		if _, err := io.ReadFull(s.cfg.Rand, raw); err != nil {
			return nil, false
		}
		b := make([]byte, tokenEncoding.EncodedLen(tokenBytes))
		tokenEncoding.Encode(b, raw)
		return b, true
	}
	refuse := func(reason string) ([]byte, bool) {
		s.logins.Failed("", c.source)
		s.unchecked.Add(c.source, reason)
		s.cfg.Metrics.refusedUnchecked(reason)
		s.cfg.Metrics.login(false)
		return dummy()
	}
	u, secret, err := splitLogin(user, domain)
	if err != nil {
		return refuse(refusedMalformed)
	}
	d := s.logins.Check(u, c.source)
	if d.Delay > 0 {
		t := time.NewTimer(d.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.ctx.Done():
			return nil, false
		}
	}
	if !d.Allow {
		return refuse(refusedLimited)
	}
	c.user = u
	cand, ok := s.cfg.Tokens.lookup(u, secret, c.src.Addr())
	if !ok {
		c.cand = &candidate{user: u, secret: secret}
		return dummy()
	}
	c.cand = cand
	return append([]byte(nil), cand.value...), true
}

// refusal is an authorize failure: what the client is told, and the cause.
func refusal(status uint32, reason string, err error) error {
	if err == nil {
		err = errors.New(reason)
	} else {
		err = fmt.Errorf("%s: %w", reason, err)
	}
	return &credssp.StatusError{Status: status, Err: err}
}

// authorize runs once the client has proved the token: it consumes the
// token, checks the credential out and logs in to the target. Every
// refusal is audited here.
func (c *conn) authorize(_, _ string) error {
	cfg := &c.srv.cfg
	ctx := c.ctx
	ev := audit.Event{Kind: "login", User: c.user, Secret: c.secretOf(), Source: c.src.String(),
		Attrs: []slog.Attr{slog.String("protocol", "rdp")}}
	deny := func(status uint32, reason string, err error) error {
		cfg.Metrics.login(false)
		ev.Outcome = "denied"
		ev.Attrs = append(ev.Attrs, slog.String("reason", reason))
		if err != nil {
			ev.Attrs = append(ev.Attrs, slog.String("detail", err.Error()))
		}
		cfg.Audit.Record(ctx, ev)
		return refusal(status, reason, err)
	}
	if c.cand == nil || c.cand.value == nil {
		return deny(credssp.StatusLogonFailure, "no token", nil)
	}
	id, ok := cfg.Tokens.take(c.cand)
	if !ok {
		// Proved, but used, replaced or expired in the meantime.
		c.srv.logins.Failed(c.user, c.source)
		return deny(credssp.StatusLogonFailure, "token already used or expired", nil)
	}
	c.srv.logins.Succeeded(c.user, c.source)
	c.id, c.secret = id, c.cand.secret
	cred, err := cfg.Credentials.Checkout(ctx, id, c.src, c.secret)
	if err != nil {
		return deny(credssp.StatusAccessDenied, "checkout refused", err)
	}
	c.cred = cred
	if cred.Protocol != workitem.ProtocolRDP {
		return deny(credssp.StatusAccessDenied, "not an RDP target", nil)
	}
	cfg.Metrics.login(true)
	ev.Outcome = "ok"
	cfg.Audit.Record(ctx, ev)

	t, err := c.dialTarget(ctx, cred)
	if err != nil {
		reason := "target connection failed"
		var ue *targetError
		if errors.As(err, &ue) {
			reason = ue.reason
		}
		c.log().Error("target connection failed", "user", c.id.User, "secret", c.secret, "err", err)
		if r, ok := cfg.Credentials.(sshgw.RejectionReporter); ok && errors.Is(err, ErrRejected) {
			// The vault checks the credential at once (a heartbeat).
			id, src, secret := c.id, c.src, c.secret
			go func() {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				r.CredentialRejected(rctx, id, src, secret)
			}()
		}
		cfg.Audit.Record(ctx, audit.Event{Kind: "session_start", Outcome: "error", User: c.id.User, Source: c.src.String(), Secret: c.secret,
			Attrs: []slog.Attr{slog.String("protocol", "rdp"), slog.String("reason", reason), slog.String("detail", err.Error())}})
		return &credssp.StatusError{Status: credssp.StatusAccessDenied, Err: err}
	}
	c.target = t
	return nil
}

// splitAccount splits a target account as stored in the vault into the
// user and domain NTLM and the Client Info PDU want: `DOMAIN\user`, or a
// user name (a UPN `user@domain` stays whole, with no domain).
func splitAccount(account string) (user, domain string) {
	if i := strings.IndexByte(account, '\\'); i >= 0 {
		return account[i+1:], account[:i]
	}
	return account, ""
}
