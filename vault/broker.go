package vault

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// Broker limits.
const (
	// maxInFlight bounds the credential requests handled at once, so one
	// slow request (a busy HSM, a full reply queue) does not stall the rest
	// while a flood cannot spawn unbounded goroutines.
	maxInFlight = 16
	// requestTimeout bounds the work on one request, reply included.
	requestTimeout = 15 * time.Second
	// replyTTL is how long a sealed reply stays valid.
	replyTTL = 30 * time.Second
	// maxReplyTo bounds a request's reply queue name.
	maxReplyTo = 128
)

// ServeCredentials answers sealed credential requests consumed from queue
// until ctx ends (it then returns nil) or the connector fails (it returns
// that error). Requests are handled concurrently, at most 16 at a time;
// every handler has returned before ServeCredentials does.
//
// Items that do not open under their site's key — malformed, forged,
// expired, for an unknown site, of another kind — are dropped and logged at
// warn level without their content. A request whose reply queue is unusable
// is dropped too: there is nowhere to send the refusal.
func (v *Vault) ServeCredentials(ctx context.Context, conn connector.Connector, queue string) error {
	err := conn.Consume(ctx, queue, maxInFlight, func(ctx context.Context, d connector.Delivery) {
		// Every request is answered or dropped here and never retried:
		// a retry would come after the engine stopped waiting.
		defer func() { _ = d.Ack() }()
		body := d.Body()
		if len(body) > workitem.MaxSealed {
			v.log.Warn("credential request dropped", slog.String("reason", "too large"), slog.Int("bytes", len(body)))
			return
		}
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		v.handleRequest(rctx, conn, body)
	})
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		err = errors.New("consumer stopped")
	}
	return fmt.Errorf("vault: serve credentials on %q: %w", queue, err)
}

// logSafe bounds an untrusted string for a log line or audit event; every
// valid name (≤128 bytes) passes unchanged.
func logSafe(s string) string {
	const max = 256
	s = strings.ToValidUTF8(s, "?")
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

func (v *Vault) drop(reason string, attrs ...slog.Attr) {
	v.log.LogAttrs(context.Background(), slog.LevelWarn, "credential request dropped",
		append([]slog.Attr{slog.String("reason", reason)}, attrs...)...)
}

// handleRequest opens, answers and replies to one sealed request.
func (v *Vault) handleRequest(ctx context.Context, conn connector.Connector, msg []byte) {
	peek, err := workitem.Peek(msg)
	if err != nil {
		v.drop("malformed")
		return
	}
	where := []slog.Attr{slog.String("site", logSafe(peek.Site)), slog.String("item", logSafe(peek.ID))}
	key, err := v.lookupSiteKey(ctx, peek.Site)
	switch {
	case errors.Is(err, ErrNotFound):
		v.drop("unknown site", where...)
		return
	case err != nil:
		v.log.LogAttrs(ctx, slog.LevelError, "credential request: site key unavailable", append(where, slog.Any("error", err))...)
		return
	}
	defer clear(key)
	h, body, err := workitem.Open(key, msg, v.now())
	switch {
	case errors.Is(err, workitem.ErrExpired):
		v.drop("expired", where...)
		return
	case errors.Is(err, workitem.ErrAuth):
		v.drop("failed authentication", where...)
		return
	case err != nil:
		v.drop("malformed", where...)
		return
	}
	if h.Kind != workitem.KindCredentialRequest {
		v.drop("unexpected kind", append(where, slog.String("kind", h.Kind.String()))...)
		return
	}
	var req workitem.CredentialRequest
	if err := decodeStrict(bytes.NewReader(body), &req); err != nil {
		v.drop("bad request body", where...)
		return
	}
	if !validReplyTo(req.ReplyTo) {
		v.drop("bad reply queue", where...)
		return
	}
	reply := v.answer(ctx, h, &req)
	defer reply.Credential.Wipe()
	out, err := workitem.EncodeReply(reply)
	if err != nil {
		v.log.LogAttrs(ctx, slog.LevelError, "credential reply: encode", append(where, slog.Any("error", err))...)
		return
	}
	sealed, err := workitem.Seal(key, workitem.Header{
		Site: h.Site, ID: h.ID, Kind: workitem.KindCredentialReply, Expiry: v.now().Add(replyTTL),
	}, out)
	clear(out)
	if err != nil {
		v.log.LogAttrs(ctx, slog.LevelError, "credential reply: seal", append(where, slog.Any("error", err))...)
		return
	}
	if err := conn.Publish(ctx, req.ReplyTo, sealed, replyTTL); err != nil {
		v.log.LogAttrs(ctx, slog.LevelError, "credential reply: publish", append(where, slog.Any("error", err))...)
	}
}

// validReplyTo accepts "site.…" queue names of printable ASCII, ≤128 bytes.
func validReplyTo(q string) bool {
	if len(q) > maxReplyTo || !strings.HasPrefix(q, "site.") || len(q) == len("site.") {
		return false
	}
	for i := 0; i < len(q); i++ {
		if q[i] <= ' ' || q[i] > '~' {
			return false
		}
	}
	return true
}

// answer evaluates one authenticated request. It never fails: internal
// errors become RefusedUnavailable and are logged here.
func (v *Vault) answer(ctx context.Context, h workitem.Header, req *workitem.CredentialRequest) *workitem.CredentialReply {
	ev := audit.Event{
		User: logSafe(req.User), Source: logSafe(req.Source), Secret: logSafe(req.Secret),
		Attrs: []slog.Attr{slog.String("site", h.Site), slog.String("item", logSafe(h.ID))},
	}
	denied := &workitem.CredentialReply{Refused: workitem.RefusedDenied}
	if req.Op == workitem.OpRecheck {
		return v.recheck(ctx, ev, req)
	}
	if !names.ValidUserName(req.User) || len(req.Groups) > names.MaxGroups {
		ev.Kind, ev.Outcome = auditKind(req.Op), "denied"
		ev.Attrs = append(ev.Attrs, slog.String("reason", "invalid user or groups"))
		v.sink.Record(ctx, ev)
		return denied
	}
	if len(req.Groups) > 0 {
		// Group names never contain ',' (ValidGroupName); an invalid one
		// matches no allow-list entry, and logSafe keeps it printable.
		ev.Attrs = append(ev.Attrs, slog.String("groups", logSafe(strings.Join(req.Groups, ","))))
	}
	switch req.Op {
	case workitem.OpCheckout:
		ev.Kind = auditKind(req.Op)
		return v.checkout(ctx, ev, req)
	case workitem.OpList:
		names, err := v.allowedSecrets(ctx, req.User, req.Groups)
		if err != nil {
			v.log.Error("credential list failed", slog.String("user", req.User), slog.Any("error", err))
			return &workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
		}
		return &workitem.CredentialReply{Secrets: names}
	case workitem.OpPin:
		ev.Kind = auditKind(req.Op)
		return v.pin(ctx, ev, req)
	}
	ev.Kind, ev.Outcome = auditKind(req.Op), "denied"
	ev.Attrs = append(ev.Attrs, slog.String("reason", "unknown op"))
	v.sink.Record(ctx, ev)
	return denied
}

// auditKind names the audit event for op; unknown ops share one name so an
// untrusted op string never becomes an event kind.
func auditKind(op workitem.Op) string {
	switch op {
	case workitem.OpCheckout:
		return "checkout"
	case workitem.OpPin:
		return "hostkey_pinned"
	case workitem.OpList:
		return "list"
	case workitem.OpRecheck:
		return "grant_recheck"
	}
	return "credential_request"
}

// authorize loads secret and checks the allow list. It returns nil and a
// refusal reply (already audited) when the request must not go on.
func (v *Vault) authorize(ctx context.Context, ev audit.Event, req *workitem.CredentialRequest) (*secretRow, *workitem.CredentialReply) {
	deny := func(reason string) (*secretRow, *workitem.CredentialReply) {
		ev.Outcome = "denied"
		ev.Attrs = append(ev.Attrs, slog.String("reason", reason))
		v.sink.Record(ctx, ev)
		return nil, &workitem.CredentialReply{Refused: workitem.RefusedDenied}
	}
	unavailable := func(err error) (*secretRow, *workitem.CredentialReply) {
		v.log.Error("credential request failed", slog.String("op", string(req.Op)), slog.String("secret", req.Secret), slog.Any("error", err))
		ev.Outcome = "error"
		v.sink.Record(ctx, ev)
		return nil, &workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
	}
	if !names.ValidSecretName(req.Secret) {
		return deny("invalid secret name")
	}
	r, err := v.loadSecret(ctx, v.db, req.Secret)
	switch {
	case errors.Is(err, ErrNotFound):
		return deny("unknown secret")
	case err != nil:
		return unavailable(err)
	case r.disabled:
		return deny("secret disabled")
	}
	ok, err := v.allowed(ctx, req.Secret, req.User, req.Groups)
	switch {
	case err != nil:
		return unavailable(err)
	case !ok:
		return deny("not allowed")
	}
	return r, nil
}

func (v *Vault) checkout(ctx context.Context, ev audit.Event, req *workitem.CredentialRequest) *workitem.CredentialReply {
	r, refusal := v.authorize(ctx, ev, req)
	if refusal != nil {
		return refusal
	}
	secret, err := v.openCredential(ctx, r)
	if err != nil {
		v.log.Error("checkout: cannot open credential", slog.String("secret", r.name), slog.Any("error", err))
		ev.Outcome = "error"
		v.sink.Record(ctx, ev)
		return &workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
	}
	c := &workitem.Credential{
		Secret: r.name, Host: r.host, Port: r.port, Username: r.username,
		HostKey: r.hostKey, PinOnFirstUse: r.pinOnFirstUse && len(r.hostKey) == 0,
	}
	if r.kind == KindPrivateKey {
		c.PrivateKey = secret
	} else {
		c.Password = secret
	}
	ev.Outcome = "ok"
	ev.Attrs = append(ev.Attrs, slog.String("target", fmt.Sprintf("%s@%s:%d", r.username, r.host, r.port)))
	v.sink.Record(ctx, ev)
	return &workitem.CredentialReply{Credential: c}
}

// recheck answers whether live sessions' grants still hold. A grant that
// no longer does is audited here once (the engine ends its sessions, which
// it audits too); one that holds is not, or a busy site would write an
// event per session every few seconds.
func (v *Vault) recheck(ctx context.Context, ev audit.Event, req *workitem.CredentialRequest) *workitem.CredentialReply {
	if len(req.Grants) == 0 || len(req.Grants) > workitem.MaxGrants {
		ev.Kind, ev.Outcome = auditKind(req.Op), "denied"
		ev.Attrs = append(ev.Attrs, slog.String("reason", "bad grant count"))
		v.sink.Record(ctx, ev)
		return &workitem.CredentialReply{Refused: workitem.RefusedDenied}
	}
	out := make([]bool, len(req.Grants))
	for i, g := range req.Grants {
		ok, err := v.grantHolds(ctx, &g)
		if err != nil {
			v.log.Error("re-checking a grant failed", slog.String("secret", logSafe(g.Secret)), slog.Any("error", err))
			return &workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
		}
		out[i] = ok
		if !ok {
			e := ev
			e.Kind, e.Outcome = "grant_revoked", "denied"
			e.User, e.Source, e.Secret = logSafe(g.User), logSafe(g.Source), logSafe(g.Secret)
			e.Attrs = append(slices.Clip(ev.Attrs), slog.Bool("local_user", g.Local))
			v.sink.Record(ctx, e)
		}
	}
	return &workitem.CredentialReply{Allowed: out}
}

// grantHolds reports whether g's user (still there, for a local user, and
// with their current groups) may still use g's secret (still there).
func (v *Vault) grantHolds(ctx context.Context, g *workitem.Grant) (bool, error) {
	if !names.ValidUserName(g.User) || len(g.Groups) > names.MaxGroups || !names.ValidSecretName(g.Secret) {
		return false, nil
	}
	groups := g.Groups
	if g.Local {
		var disabled bool
		switch err := v.db.QueryRowContext(ctx, `SELECT disabled FROM users WHERE name = ?`, g.User).Scan(&disabled); {
		case errors.Is(err, sql.ErrNoRows) || err == nil && disabled:
			return false, nil
		case err != nil:
			return false, err
		}
		var err error
		if groups, err = v.userGroups(ctx, g.User); err != nil {
			return false, err
		}
	}
	// The allow list goes with its secret (ON DELETE CASCADE): a removed
	// secret allows nobody; a disabled one neither (allowed).
	return v.allowed(ctx, g.Secret, g.User, groups)
}

func (v *Vault) pin(ctx context.Context, ev audit.Event, req *workitem.CredentialRequest) *workitem.CredentialReply {
	pub, err := parseWireHostKey(req.HostKey)
	if err != nil {
		ev.Outcome = "denied"
		ev.Attrs = append(ev.Attrs, slog.String("reason", "unparseable host key"))
		v.sink.Record(ctx, ev)
		return &workitem.CredentialReply{Refused: workitem.RefusedDenied}
	}
	fp := ssh.FingerprintSHA256(pub)
	ev.Attrs = append(ev.Attrs, slog.String("fingerprint", fp))
	if _, refusal := v.authorize(ctx, ev, req); refusal != nil {
		return refusal
	}
	res, err := v.pinHostKey(ctx, req.Secret, pub.Marshal())
	if err != nil {
		v.log.Error("pin host key failed", slog.String("secret", req.Secret), slog.Any("error", err))
		ev.Outcome = "error"
		v.sink.Record(ctx, ev)
		return &workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
	}
	switch res {
	case pinStored:
		ev.Outcome = "ok"
		v.sink.Record(ctx, ev)
		return &workitem.CredentialReply{}
	case pinSame:
		return &workitem.CredentialReply{}
	case pinConflict:
		ev.Outcome = "denied"
		ev.Attrs = append(ev.Attrs, slog.String("reason", "a different key is pinned"))
		v.sink.Record(ctx, ev)
		return &workitem.CredentialReply{Refused: workitem.RefusedConflict}
	default: // pinNotAllowed
		ev.Outcome = "denied"
		ev.Attrs = append(ev.Attrs, slog.String("reason", "secret does not pin on first use"))
		v.sink.Record(ctx, ev)
		return &workitem.CredentialReply{Refused: workitem.RefusedDenied}
	}
}
