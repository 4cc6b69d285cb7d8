package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
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
)

// Reasons an item is rejected, the labels of the rejection metric.
const (
	rejectMalformed     = "malformed"
	rejectVersion       = "unknown_version"
	rejectTooLarge      = "too_large"
	rejectWrongSite     = "wrong_site"
	rejectUnknownEngine = "unknown_engine"
	rejectNotApproved   = "not_approved"
	rejectRevoked       = "revoked"
	rejectStaleKey      = "stale_key"
	rejectAuth          = "failed_authentication"
	rejectExpired       = "expired"
	rejectReplay        = "replayed"
	rejectKind          = "unexpected_kind"
	rejectBody          = "bad_body"
	rejectReplyTo       = "bad_reply_queue"
)

// ItemCounter counts items by site, kind and outcome ("ok" or a reject
// reason); nil counts nothing. The daemon backs it with Prometheus.
type ItemCounter func(site, kind, outcome string)

// ServeSite answers the requests a site's engines send to its request
// queue (names.RequestQueue) until ctx ends (it then returns nil) or the
// connector fails (it returns that error). Requests are handled
// concurrently, at most 16 at a time; every handler has returned before
// ServeSite does.
//
// Every request must be sealed under the key of an approved engine of that
// site, name that engine and that site in its header, carry the engine
// key's current version, be unexpired and never seen before (replay
// cache); its reply goes to that engine's own reply queue, sealed under
// its key. Anything else is dropped, counted by reason and logged without
// its content: there is nowhere safe to send a refusal.
func (v *Vault) ServeSite(ctx context.Context, conn connector.Connector, site string, count ItemCounter) error {
	queue := names.RequestQueue(site)
	if err := conn.Declare(ctx, queue, connector.Shared); err != nil {
		return fmt.Errorf("vault: serve site %s: %w", site, err)
	}
	err := conn.Consume(ctx, queue, maxInFlight, func(ctx context.Context, d connector.Delivery) {
		// Every request is answered or dropped here and never retried:
		// a retry would come after the engine stopped waiting. A
		// redelivered one is caught by the replay cache if it was taken.
		defer func() { _ = d.Ack() }()
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		v.handleRequest(rctx, conn, site, d.Body(), count)
	})
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		err = errors.New("consumer stopped")
	}
	return fmt.Errorf("vault: serve site %s: %w", site, err)
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

// request is one opened request on its way to an answer.
type request struct {
	h     workitem.Header
	key   []byte // the engine's key: replies are sealed under it
	count ItemCounter
	where []slog.Attr
}

// String redacts the engine's key.
func (r request) String() string {
	return fmt.Sprintf("request{%s from engine %s [REDACTED]}", r.h.ID, r.h.Engine)
}

// GoString redacts the engine's key under %#v.
func (r request) GoString() string { return r.String() }

// LogValue redacts the engine's key in slog records.
func (r request) LogValue() slog.Value { return slog.StringValue(r.String()) }

// reject drops an item, counting and logging why.
func (v *Vault) reject(site, kind, reason string, count ItemCounter, attrs ...slog.Attr) {
	if count != nil {
		count(site, kind, reason)
	}
	v.log.LogAttrs(context.Background(), slog.LevelWarn, "item dropped",
		append([]slog.Attr{slog.String("reason", reason), slog.String("queue_site", site)}, attrs...)...)
}

// handleRequest opens, answers and replies to one sealed request taken
// from site's request queue.
func (v *Vault) handleRequest(ctx context.Context, conn connector.Connector, site string, msg []byte, count ItemCounter) {
	if len(msg) > workitem.MaxSealed {
		v.reject(site, "unknown", rejectTooLarge, count, slog.Int("bytes", len(msg)))
		return
	}
	peek, err := workitem.Peek(msg)
	if err != nil {
		reason := rejectMalformed
		if errors.Is(err, workitem.ErrVersion) {
			reason = rejectVersion
		}
		v.reject(site, "unknown", reason, count)
		return
	}
	kind := peek.Kind.String()
	where := []slog.Attr{slog.String("site", logSafe(peek.Site)), slog.String("engine", logSafe(peek.Engine)), slog.String("item", logSafe(peek.ID))}
	if peek.Site != site {
		v.reject(site, kind, rejectWrongSite, count, where...)
		return
	}
	key, version, engineSite, err := v.engineKeyOf(ctx, peek.Engine)
	switch {
	case errors.Is(err, ErrNotFound):
		v.reject(site, kind, rejectUnknownEngine, count, where...)
		return
	case errors.Is(err, ErrPending):
		v.reject(site, kind, rejectNotApproved, count, where...)
		return
	case errors.Is(err, ErrRevoked):
		v.reject(site, kind, rejectRevoked, count, where...)
		return
	case err != nil:
		v.log.LogAttrs(ctx, slog.LevelError, "request: engine key unavailable", append(where, slog.Any("error", err))...)
		return
	}
	defer clear(key)
	if engineSite != site {
		v.reject(site, kind, rejectWrongSite, count, where...)
		return
	}
	if int(peek.KeyVersion) != version { // #nosec G115 -- versions are small counters
		v.reject(site, kind, rejectStaleKey, count, where...)
		return
	}
	h, body, err := workitem.Open(key, msg, v.now())
	switch {
	case errors.Is(err, workitem.ErrExpired):
		v.reject(site, kind, rejectExpired, count, where...)
		return
	case errors.Is(err, workitem.ErrAuth):
		v.reject(site, kind, rejectAuth, count, where...)
		return
	case errors.Is(err, workitem.ErrKind):
		v.reject(site, kind, rejectKind, count, where...)
		return
	case err != nil:
		v.reject(site, kind, rejectMalformed, count, where...)
		return
	}
	defer clear(body)
	if !v.replays.Take(h.Site+"/"+h.Engine+"/"+h.ID, h.Expiry) {
		v.reject(site, kind, rejectReplay, count, where...)
		return
	}
	req := &request{h: h, key: key, count: count, where: where}
	switch h.Kind {
	case workitem.KindCredentialRequest:
		v.credentialRequest(ctx, conn, req, body)
	case workitem.KindLoginRequest:
		v.loginRequest(ctx, conn, req, body)
	default:
		v.reject(site, kind, rejectKind, count, where...)
	}
}

// replyQueue is where a reply to h goes: its engine's own queue on its site.
func replyQueue(h workitem.Header) string { return names.ReplyQueue(h.Site, h.Engine) }

// credentialRequest answers a KindCredentialRequest.
func (v *Vault) credentialRequest(ctx context.Context, conn connector.Connector, r *request, body []byte) {
	var req workitem.CredentialRequest
	if err := decodeStrict(bytes.NewReader(body), &req); err != nil {
		v.reject(r.h.Site, r.h.Kind.String(), rejectBody, r.count, r.where...)
		return
	}
	if req.ReplyTo != replyQueue(r.h) {
		v.reject(r.h.Site, r.h.Kind.String(), rejectReplyTo, r.count, r.where...)
		return
	}
	reply := v.answer(ctx, r.h, &req)
	defer reply.Credential.Wipe()
	out, err := workitem.EncodeReply(reply)
	if err != nil {
		v.log.LogAttrs(ctx, slog.LevelError, "credential reply: encode", append(r.where, slog.Any("error", err))...)
		return
	}
	v.reply(ctx, conn, r, workitem.KindCredentialReply, out)
}

// reply seals out (wiping it) under the asking engine's key and publishes
// it to the engine's reply queue.
func (v *Vault) reply(ctx context.Context, conn connector.Connector, r *request, kind workitem.Kind, out []byte) {
	defer clear(out)
	sealed, err := workitem.Seal(r.key, workitem.Header{
		Site: r.h.Site, ID: r.h.ID, Kind: kind, Engine: r.h.Engine, KeyVersion: r.h.KeyVersion, Expiry: v.now().Add(replyTTL),
	}, out)
	if err != nil {
		v.log.LogAttrs(ctx, slog.LevelError, "reply: seal", append(r.where, slog.Any("error", err))...)
		return
	}
	if err := conn.Publish(ctx, replyQueue(r.h), sealed, replyTTL); err != nil {
		v.log.LogAttrs(ctx, slog.LevelError, "reply: publish", append(r.where, slog.Any("error", err))...)
		return
	}
	if r.count != nil {
		r.count(r.h.Site, r.h.Kind.String(), "ok")
	}
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
		return v.recheck(ctx, h.Site, ev, req)
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
		return v.checkout(ctx, h.Site, ev, req)
	case workitem.OpList:
		names, err := v.allowedSecrets(ctx, h.Site, req.User, req.Groups)
		if err != nil {
			v.log.Error("credential list failed", slog.String("user", req.User), slog.Any("error", err))
			return &workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
		}
		return &workitem.CredentialReply{Secrets: names}
	case workitem.OpPin:
		ev.Kind = auditKind(req.Op)
		return v.pin(ctx, h.Site, ev, req)
	case workitem.OpRejected:
		ev.Kind = auditKind(req.Op)
		return v.rejected(ctx, h.Site, ev, req)
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
	case workitem.OpRejected:
		return "credential_rejected"
	}
	return "credential_request"
}

// authorize loads secret and checks the allow list. It returns nil and a
// refusal reply (already audited) when the request must not go on.
func (v *Vault) authorize(ctx context.Context, site string, ev audit.Event, req *workitem.CredentialRequest) (*secretRow, *workitem.CredentialReply) {
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
	case r.site != site:
		// An engine serves its own site's secrets only, whoever asks.
		return deny("secret of another site")
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

// rejected takes an engine's report that a target refused the credential
// it checked out for the user: a heartbeat of the secret goes at once
// (unless one is in flight). Only a user who may use the secret can
// cause one.
func (v *Vault) rejected(ctx context.Context, site string, ev audit.Event, req *workitem.CredentialRequest) *workitem.CredentialReply {
	r, refusal := v.authorize(ctx, site, ev, req)
	if refusal != nil {
		return refusal
	}
	ev.Outcome = "ok"
	v.sink.Record(ctx, ev)
	if len(r.hostKey) > 0 {
		if _, err := v.exec(ctx, `UPDATE secret_schedule SET hb_due = ? WHERE secret = ?`, v.now().UnixNano(), r.name); err != nil {
			v.log.Error("scheduling a heartbeat after a refused credential", slog.String("secret", r.name), slog.Any("error", err))
			return &workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
		}
	}
	return &workitem.CredentialReply{}
}

func (v *Vault) checkout(ctx context.Context, site string, ev audit.Event, req *workitem.CredentialRequest) *workitem.CredentialReply {
	r, refusal := v.authorize(ctx, site, ev, req)
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
		Secret: r.name, Protocol: r.protocol, Host: r.host, Port: r.port, Username: r.username,
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
	v.noteUse(ctx, r.name)
	return &workitem.CredentialReply{Credential: c}
}

// recheck answers whether live sessions' grants still hold. A grant that
// no longer does is audited here once (the engine ends its sessions, which
// it audits too); one that holds is not, or a busy site would write an
// event per session every few seconds.
func (v *Vault) recheck(ctx context.Context, site string, ev audit.Event, req *workitem.CredentialRequest) *workitem.CredentialReply {
	if len(req.Grants) == 0 || len(req.Grants) > workitem.MaxGrants {
		ev.Kind, ev.Outcome = auditKind(req.Op), "denied"
		ev.Attrs = append(ev.Attrs, slog.String("reason", "bad grant count"))
		v.sink.Record(ctx, ev)
		return &workitem.CredentialReply{Refused: workitem.RefusedDenied}
	}
	out := make([]bool, len(req.Grants))
	inUse := map[string]bool{}
	defer func() {
		// Live sessions keep a rotate-after-use secret from rotating.
		for secret := range inUse {
			v.noteUse(ctx, secret)
		}
	}()
	for i, g := range req.Grants {
		ok, err := v.grantHolds(ctx, site, &g)
		if err != nil {
			v.log.Error("re-checking a grant failed", slog.String("secret", logSafe(g.Secret)), slog.Any("error", err))
			return &workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
		}
		out[i] = ok
		if ok {
			inUse[g.Secret] = true
		}
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
func (v *Vault) grantHolds(ctx context.Context, site string, g *workitem.Grant) (bool, error) {
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
	if r, err := v.loadSecret(ctx, v.db, g.Secret); errors.Is(err, ErrNotFound) || err == nil && r.site != site {
		return false, nil
	} else if err != nil {
		return false, err
	}
	// The allow list goes with its secret (ON DELETE CASCADE): a removed
	// secret allows nobody; a disabled one neither (allowed).
	return v.allowed(ctx, g.Secret, g.User, groups)
}

func (v *Vault) pin(ctx context.Context, site string, ev audit.Event, req *workitem.CredentialRequest) *workitem.CredentialReply {
	r, refusal := v.authorize(ctx, site, ev, req)
	if refusal != nil {
		return refusal
	}
	// What a pin is depends on the target: an SSH host key, or the
	// SHA-256 of an RDP target's certificate.
	var key []byte
	if r.protocol == ProtocolRDP {
		if len(req.HostKey) != sha256.Size {
			return v.refusePin(ctx, ev, "not a certificate SHA-256")
		}
		key = req.HostKey
		ev.Attrs = append(ev.Attrs, slog.String("fingerprint", "SHA256:"+hex.EncodeToString(key)))
	} else {
		pub, err := parseWireHostKey(req.HostKey)
		if err != nil {
			return v.refusePin(ctx, ev, "unparseable host key")
		}
		key = pub.Marshal()
		ev.Attrs = append(ev.Attrs, slog.String("fingerprint", ssh.FingerprintSHA256(pub)))
	}
	res, err := v.pinHostKey(ctx, req.Secret, key)
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

// refusePin refuses a pin whose key is malformed, audited.
func (v *Vault) refusePin(ctx context.Context, ev audit.Event, reason string) *workitem.CredentialReply {
	ev.Outcome = "denied"
	ev.Attrs = append(ev.Attrs, slog.String("reason", reason))
	v.sink.Record(ctx, ev)
	return &workitem.CredentialReply{Refused: workitem.RefusedDenied}
}
