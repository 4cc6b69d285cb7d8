package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sallyport/sallyport/connector"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// DefaultRequestTimeout bounds one round trip to the vault.
const DefaultRequestTimeout = 10 * time.Second

// Key is an engine's own key (it seals what the engine sends and opens
// what is sent to it alone) and its version.
type Key struct {
	Bytes   []byte
	Version int
}

// String redacts the key.
func (k Key) String() string { return fmt.Sprintf("engine key v%d [REDACTED]", k.Version) }

// GoString redacts the key under %#v.
func (k Key) GoString() string { return k.String() }

// LogValue redacts the key in slog records.
func (k Key) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalJSON redacts the key; no protocol carries a Key.
func (k Key) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// Credentials is the gateway's link to the vault at a site: the credential
// source, the local-user check and the live-grant re-check, all as sealed
// requests on the site's request queue, answered on the engine's own reply
// queue. Everything is sealed under the engine's key, so another engine of
// the same site can neither read nor forge it.
type Credentials struct {
	conn    connector.Connector
	site    string
	engine  string
	timeout time.Duration
	log     *slog.Logger
	now     func() time.Time
	count   func(kind, outcome string)
	observe func(kind string, d time.Duration)

	keyMu sync.RWMutex
	key   Key

	waiting *waitBook
}

// waitBook is who waits for which reply, by item id. The connections an
// engine moves between share one, so that a reply that arrives on the
// other connection (the old one still draining, or the new one on the
// same broker queue) still reaches who asked.
type waitBook struct {
	mu      sync.Mutex
	pending map[string]chan reply
}

func newWaitBook() *waitBook { return &waitBook{pending: map[string]chan reply{}} }

func (b *waitBook) add(id string, ch chan reply) {
	b.mu.Lock()
	b.pending[id] = ch
	b.mu.Unlock()
}

// take returns and forgets who waits for id.
func (b *waitBook) take(id string) (chan reply, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch, ok := b.pending[id]
	delete(b.pending, id)
	return ch, ok
}

// ShareWaiting makes c deliver replies to, and take replies for, the
// requests sent through prev (call before Run).
func (c *Credentials) ShareWaiting(prev *Credentials) { c.waiting = prev.waiting }

// reply is an opened reply: its kind and body.
type reply struct {
	kind workitem.Kind
	body []byte
}

// String names the link without its key (fmt prints a *Credentials's
// fields, the key among them, at the top level).
func (c *Credentials) String() string {
	return "engine.Credentials{site " + c.site + ", engine " + c.engine + " [REDACTED]}"
}

// GoString leaves out the key under %#v.
func (c *Credentials) GoString() string { return c.String() }

// LogValue leaves out the key in slog records.
func (c *Credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// NewCredentials returns the link for engine of site, sealing under key (a
// copy is kept). Call Run to receive replies.
func NewCredentials(conn connector.Connector, site, engine string, key Key, log *slog.Logger) *Credentials {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Credentials{
		conn: conn, site: site, engine: engine,
		timeout: DefaultRequestTimeout, log: log, now: time.Now,
		waiting: newWaitBook(),
	}
	c.SetKey(key)
	return c
}

// SetKey replaces the engine key (after the vault rotated it).
func (c *Credentials) SetKey(k Key) {
	c.keyMu.Lock()
	defer c.keyMu.Unlock()
	clear(c.key.Bytes)
	c.key = Key{Bytes: bytes.Clone(k.Bytes), Version: k.Version}
}

func (c *Credentials) currentKey() Key {
	c.keyMu.RLock()
	defer c.keyMu.RUnlock()
	return Key{Bytes: bytes.Clone(c.key.Bytes), Version: c.key.Version}
}

// Close wipes the key.
func (c *Credentials) Close() {
	c.keyMu.Lock()
	defer c.keyMu.Unlock()
	clear(c.key.Bytes)
	c.key = Key{}
}

// replyQueue is the engine's own reply queue.
func (c *Credentials) replyQueue() string { return names.ReplyQueue(c.site, c.engine) }

// replyPrefetch is how many replies are handled at once; each is a
// lookup and a channel send.
const replyPrefetch = 64

// Run receives replies until ctx ends.
func (c *Credentials) Run(ctx context.Context) error {
	if err := c.conn.Declare(ctx, c.replyQueue(), connector.Private); err != nil {
		return err
	}
	return c.conn.Consume(ctx, c.replyQueue(), replyPrefetch, func(ctx context.Context, d connector.Delivery) {
		c.receive(ctx, d.Body())
		_ = d.Ack()
	})
}

// drop counts and logs a reply that is not acted on.
func (c *Credentials) drop(kind, reason string, attrs ...any) {
	if c.count != nil {
		c.count(kind, reason)
	}
	c.log.Warn("reply dropped", append([]any{"reason", reason}, attrs...)...)
}

func (c *Credentials) receive(_ context.Context, sealed []byte) {
	k := c.currentKey()
	defer clear(k.Bytes)
	h, body, err := workitem.Open(k.Bytes, sealed, c.now())
	if err != nil {
		c.drop("unknown", "failed to open", "err", err)
		return
	}
	if h.Site != c.site || h.Engine != c.engine || (h.Kind != workitem.KindCredentialReply && h.Kind != workitem.KindLoginReply) {
		clear(body)
		c.drop(h.Kind.String(), "unexpected", "site", h.Site, "engine", h.Engine)
		return
	}
	ch, ok := c.waiting.take(h.ID)
	if !ok {
		clear(body)
		c.drop(h.Kind.String(), "nobody waits", "id", h.ID)
		return
	}
	ch <- reply{kind: h.Kind, body: body} // buffered: never blocks
	if c.count != nil {
		c.count(h.Kind.String(), "ok")
	}
}

// call seals body as kind, sends it, and waits for the reply of wantKind.
// The caller wipes body; the reply body is the caller's to wipe.
func (c *Credentials) call(ctx context.Context, kind, wantKind workitem.Kind, body []byte) ([]byte, error) {
	k := c.currentKey()
	defer clear(k.Bytes)
	if len(k.Bytes) == 0 {
		return nil, fmt.Errorf("%w: no engine key (not approved yet?)", gw.ErrUnavailable)
	}
	id := workitem.NewID()
	sealed, err := workitem.Seal(k.Bytes, workitem.Header{
		Site: c.site, ID: id, Kind: kind, Engine: c.engine, KeyVersion: uint32(k.Version), // #nosec G115 -- versions are small counters
		Expiry: c.now().Add(c.timeout),
	}, body)
	if err != nil {
		return nil, err
	}
	ch := make(chan reply, 1)
	c.waiting.add(id, ch)
	defer c.waiting.take(id)
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	if err := c.conn.Publish(ctx, names.RequestQueue(c.site), sealed, c.timeout); err != nil {
		return nil, fmt.Errorf("%w: publish request: %v", gw.ErrUnavailable, err)
	}
	select {
	case r := <-ch:
		if r.kind != wantKind {
			clear(r.body)
			return nil, fmt.Errorf("%w: a %s answered a %s", gw.ErrUnavailable, r.kind, kind)
		}
		if c.observe != nil {
			c.observe(kind.String(), time.Since(start))
		}
		return r.body, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: no answer from the vault: %v", gw.ErrUnavailable, ctx.Err())
	}
}

// credentialCall sends a credential request and decodes its reply.
func (c *Credentials) credentialCall(ctx context.Context, req workitem.CredentialRequest) (workitem.CredentialReply, error) {
	var r workitem.CredentialReply
	req.ReplyTo = c.replyQueue()
	body, err := json.Marshal(req) // #nosec G117 -- "secret" is the secret's name; the request holds no credential
	if err != nil {
		return r, err
	}
	raw, err := c.call(ctx, workitem.KindCredentialRequest, workitem.KindCredentialReply, body)
	if err != nil {
		return r, err
	}
	decoded, err := workitem.DecodeReply(raw)
	clear(raw)
	if err != nil {
		return r, fmt.Errorf("%w: malformed credential reply", gw.ErrUnavailable)
	}
	r = *decoded
	switch r.Refused {
	case "":
		return r, nil
	case workitem.RefusedDenied, workitem.RefusedConflict:
		r.Credential.Wipe()
		return r, fmt.Errorf("%w: vault refused (%s)", gw.ErrDenied, r.Refused)
	default:
		r.Credential.Wipe()
		return r, fmt.Errorf("%w: vault refused (%s)", gw.ErrUnavailable, r.Refused)
	}
}

// Checkout implements gateway/ssh.CredentialSource.
func (c *Credentials) Checkout(ctx context.Context, id gw.Identity, src netip.AddrPort, secret string) (*workitem.Credential, error) {
	r, err := c.credentialCall(ctx, workitem.CredentialRequest{Op: workitem.OpCheckout, User: id.User, Groups: id.Groups, Source: src.String(), Secret: secret})
	if err != nil {
		return nil, err
	}
	if r.Credential == nil {
		return nil, fmt.Errorf("%w: empty credential reply", gw.ErrUnavailable)
	}
	return r.Credential, nil
}

// List implements gateway/ssh.CredentialSource.
func (c *Credentials) List(ctx context.Context, id gw.Identity, src netip.AddrPort) ([]string, error) {
	r, err := c.credentialCall(ctx, workitem.CredentialRequest{Op: workitem.OpList, User: id.User, Groups: id.Groups, Source: src.String()})
	if err != nil {
		return nil, err
	}
	return r.Secrets, nil
}

// PinHostKey implements gateway/ssh.CredentialSource.
func (c *Credentials) PinHostKey(ctx context.Context, id gw.Identity, src netip.AddrPort, secret string, key []byte) error {
	_, err := c.credentialCall(ctx, workitem.CredentialRequest{Op: workitem.OpPin, User: id.User, Groups: id.Groups, Source: src.String(), Secret: secret, HostKey: key})
	if errors.Is(err, gw.ErrDenied) {
		return fmt.Errorf("host key not pinned: %w", err)
	}
	return err
}

// CredentialRejected implements gateway/ssh.RejectionReporter: the vault
// is told, and checks the credential with a heartbeat.
func (c *Credentials) CredentialRejected(ctx context.Context, id gw.Identity, src netip.AddrPort, secret string) {
	if _, err := c.credentialCall(ctx, workitem.CredentialRequest{Op: workitem.OpRejected, User: id.User, Groups: id.Groups,
		Source: src.String(), Secret: secret}); err != nil {
		c.log.Warn("could not tell the vault that a target refused its credential", "secret", secret, "err", err)
	}
}

// StillAllowed implements gateway/ssh.GrantChecker: it asks the vault, at
// most workitem.MaxGrants grants per request.
func (c *Credentials) StillAllowed(ctx context.Context, grants []gw.Grant) ([]bool, error) {
	out := make([]bool, 0, len(grants))
	for chunk := range slices.Chunk(grants, workitem.MaxGrants) {
		req := workitem.CredentialRequest{Op: workitem.OpRecheck, Grants: make([]workitem.Grant, len(chunk))}
		for i, g := range chunk {
			req.Grants[i] = workitem.Grant{User: g.Identity.User, Groups: g.Identity.Groups, Local: g.Identity.Local,
				Source: g.Source.String(), Secret: g.Secret}
		}
		r, err := c.credentialCall(ctx, req)
		if err != nil {
			return nil, err
		}
		if len(r.Allowed) != len(chunk) {
			return nil, fmt.Errorf("%w: %d answers to %d grants", gw.ErrUnavailable, len(r.Allowed), len(chunk))
		}
		out = append(out, r.Allowed...)
	}
	return out, nil
}

// loginCall sends a local-user check and decodes its reply.
func (c *Credentials) loginCall(ctx context.Context, op, user string, secret []byte) (*workitem.LoginReply, error) {
	req := &workitem.LoginRequest{Op: op, User: user, ReplyTo: c.replyQueue(), Secret: secret}
	body, err := workitem.EncodeLoginRequest(req)
	if err != nil {
		return nil, err
	}
	raw, err := c.call(ctx, workitem.KindLoginRequest, workitem.KindLoginReply, body)
	clear(body)
	if err != nil {
		return nil, err
	}
	r, err := workitem.DecodeLoginReply(raw)
	clear(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed login reply", gw.ErrUnavailable)
	}
	switch r.Refused {
	case "":
		return r, nil
	case workitem.RefusedDenied:
		return nil, gw.ErrDenied
	default:
		return nil, fmt.Errorf("%w: vault refused (%s)", gw.ErrUnavailable, r.Refused)
	}
}

// VerifyPassword implements gateway/ssh.LocalUsers through the vault.
func (c *Credentials) VerifyPassword(ctx context.Context, user string, password []byte) (bool, []string, error) {
	r, err := c.loginCall(ctx, workitem.LoginPassword, user, password)
	if err != nil {
		return false, nil, err
	}
	return r.TOTP, r.Groups, nil
}

// VerifyTOTP implements gateway/ssh.LocalUsers through the vault.
func (c *Credentials) VerifyTOTP(ctx context.Context, user, code string) error {
	b := []byte(code)
	defer clear(b)
	_, err := c.loginCall(ctx, workitem.LoginTOTP, user, b)
	return err
}

var (
	_ gw.CredentialSource = (*Credentials)(nil)
	_ gw.GrantChecker     = (*Credentials)(nil)
	_ gw.LocalUsers       = (*Credentials)(nil)
)
