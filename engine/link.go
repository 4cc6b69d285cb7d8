package engine

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/workitem"
)

// link is the gateway's stable handle on the vault: it forwards to the
// Credentials of the connector in force, which changes when the vault
// moves the site to another connector, and answers "unavailable" while
// there is none.
type link struct {
	mu sync.RWMutex
	c  *Credentials
}

func (l *link) set(c *Credentials) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.c = c
}

func (l *link) get() (*Credentials, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.c == nil {
		return nil, fmt.Errorf("%w: not connected to the vault yet", gw.ErrUnavailable)
	}
	return l.c, nil
}

func (l *link) Checkout(ctx context.Context, id gw.Identity, src netip.AddrPort, secret string) (*workitem.Credential, error) {
	c, err := l.get()
	if err != nil {
		return nil, err
	}
	return c.Checkout(ctx, id, src, secret)
}

func (l *link) List(ctx context.Context, id gw.Identity, src netip.AddrPort) ([]string, error) {
	c, err := l.get()
	if err != nil {
		return nil, err
	}
	return c.List(ctx, id, src)
}

func (l *link) PinHostKey(ctx context.Context, id gw.Identity, src netip.AddrPort, secret string, key []byte) error {
	c, err := l.get()
	if err != nil {
		return err
	}
	return c.PinHostKey(ctx, id, src, secret, key)
}

func (l *link) CredentialRejected(ctx context.Context, id gw.Identity, src netip.AddrPort, secret string) {
	if c, err := l.get(); err == nil {
		c.CredentialRejected(ctx, id, src, secret)
	}
}

func (l *link) StillAllowed(ctx context.Context, grants []gw.Grant) ([]bool, error) {
	c, err := l.get()
	if err != nil {
		return nil, err
	}
	return c.StillAllowed(ctx, grants)
}

func (l *link) VerifyPassword(ctx context.Context, user string, password []byte) (bool, []string, error) {
	c, err := l.get()
	if err != nil {
		return false, nil, err
	}
	return c.VerifyPassword(ctx, user, password)
}

func (l *link) VerifyTOTP(ctx context.Context, user, code string) error {
	c, err := l.get()
	if err != nil {
		return err
	}
	return c.VerifyTOTP(ctx, user, code)
}

var (
	_ gw.CredentialSource = (*link)(nil)
	_ gw.GrantChecker     = (*link)(nil)
	_ gw.LocalUsers       = (*link)(nil)
)
