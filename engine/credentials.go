// Package engine is the runtime of a Sallyport engine: the process at a site
// that runs the gateways and does the vault's work there. The engine reaches
// the vault only through a connector, exactly as a remote site would, even
// when both run inside `sallyport dev`.
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
	"github.com/sallyport/sallyport/workitem"
)

// DefaultRequestTimeout bounds one credential round trip to the vault.
const DefaultRequestTimeout = 10 * time.Second

// Credentials is the gateway's credential source at a site: it sends sealed
// credential requests to the vault's queue and waits for the sealed replies
// on a queue of its own.
type Credentials struct {
	conn         connector.Connector
	site         string
	key          []byte
	requestQueue string
	replyQueue   string
	timeout      time.Duration
	log          *slog.Logger
	now          func() time.Time

	mu      sync.Mutex
	pending map[string]chan []byte
}

// NewCredentials returns a credential source for site, sealing with the
// site's 32-byte key and asking the vault on requestQueue. Call Run to
// receive replies.
func NewCredentials(conn connector.Connector, site string, siteKey []byte, requestQueue string, log *slog.Logger) *Credentials {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Credentials{
		conn: conn, site: site, key: bytes.Clone(siteKey), requestQueue: requestQueue,
		replyQueue: "site." + site + ".replies." + workitem.NewID()[:12],
		timeout:    DefaultRequestTimeout, log: log, now: time.Now,
		pending: map[string]chan []byte{},
	}
}

// replyPrefetch is how many replies are handled at once; each is a
// lookup and a channel send.
const replyPrefetch = 64

// Run receives replies until ctx ends.
func (c *Credentials) Run(ctx context.Context) error {
	if err := c.conn.Declare(ctx, c.replyQueue, connector.Private); err != nil {
		return err
	}
	return c.conn.Consume(ctx, c.replyQueue, replyPrefetch, func(ctx context.Context, d connector.Delivery) {
		c.receive(ctx, d.Body())
		_ = d.Ack()
	})
}

func (c *Credentials) receive(_ context.Context, sealed []byte) {
	h, body, err := workitem.Open(c.key, sealed, c.now())
	if err != nil {
		c.log.Warn("dropped a reply that failed to open", "err", err)
		return
	}
	if h.Kind != workitem.KindCredentialReply || h.Site != c.site {
		clear(body)
		c.log.Warn("dropped an unexpected item", "kind", h.Kind.String(), "site", h.Site)
		return
	}
	c.mu.Lock()
	ch, ok := c.pending[h.ID]
	delete(c.pending, h.ID)
	c.mu.Unlock()
	if !ok {
		clear(body)
		c.log.Warn("dropped a reply nobody waits for", "id", h.ID)
		return
	}
	ch <- body // buffered: never blocks
}

// call sends req and waits for its reply.
func (c *Credentials) call(ctx context.Context, req workitem.CredentialRequest) (workitem.CredentialReply, error) {
	var reply workitem.CredentialReply
	req.ReplyTo = c.replyQueue
	body, err := json.Marshal(req) // #nosec G117 -- "secret" is the secret's name; the request holds no credential
	if err != nil {
		return reply, err
	}
	id := workitem.NewID()
	sealed, err := workitem.Seal(c.key, workitem.Header{
		Site: c.site, ID: id, Kind: workitem.KindCredentialRequest, Expiry: c.now().Add(c.timeout),
	}, body)
	if err != nil {
		return reply, err
	}
	ch := make(chan []byte, 1)
	c.mu.Lock()
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.conn.Publish(ctx, c.requestQueue, sealed, c.timeout); err != nil {
		return reply, fmt.Errorf("%w: publish credential request: %v", gw.ErrUnavailable, err)
	}
	select {
	case raw := <-ch:
		r, err := workitem.DecodeReply(raw)
		clear(raw)
		if err != nil {
			return reply, fmt.Errorf("%w: malformed credential reply", gw.ErrUnavailable)
		}
		reply = *r
	case <-ctx.Done():
		return reply, fmt.Errorf("%w: no answer from the vault: %v", gw.ErrUnavailable, ctx.Err())
	}
	switch reply.Refused {
	case "":
		return reply, nil
	case workitem.RefusedDenied, workitem.RefusedConflict:
		reply.Credential.Wipe()
		return reply, fmt.Errorf("%w: vault refused (%s)", gw.ErrDenied, reply.Refused)
	default:
		reply.Credential.Wipe()
		return reply, fmt.Errorf("%w: vault refused (%s)", gw.ErrUnavailable, reply.Refused)
	}
}

// Checkout implements gateway/ssh.CredentialSource.
func (c *Credentials) Checkout(ctx context.Context, id gw.Identity, src netip.AddrPort, secret string) (*workitem.Credential, error) {
	r, err := c.call(ctx, workitem.CredentialRequest{Op: workitem.OpCheckout, User: id.User, Groups: id.Groups, Source: src.String(), Secret: secret})
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
	r, err := c.call(ctx, workitem.CredentialRequest{Op: workitem.OpList, User: id.User, Groups: id.Groups, Source: src.String()})
	if err != nil {
		return nil, err
	}
	return r.Secrets, nil
}

// PinHostKey implements gateway/ssh.CredentialSource.
func (c *Credentials) PinHostKey(ctx context.Context, id gw.Identity, src netip.AddrPort, secret string, key []byte) error {
	_, err := c.call(ctx, workitem.CredentialRequest{Op: workitem.OpPin, User: id.User, Groups: id.Groups, Source: src.String(), Secret: secret, HostKey: key})
	if errors.Is(err, gw.ErrDenied) {
		return fmt.Errorf("host key not pinned: %w", err)
	}
	return err
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
		r, err := c.call(ctx, req)
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

var (
	_ gw.CredentialSource = (*Credentials)(nil)
	_ gw.GrantChecker     = (*Credentials)(nil)
)
