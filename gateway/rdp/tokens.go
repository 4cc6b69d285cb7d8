package rdp

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"io"
	"net/netip"
	"sync"
	"time"

	sshgw "github.com/sallyport/sallyport/gateway/ssh"
)

// Token defaults.
const (
	// DefaultTokenTTL is how long an RDP token may be used after it is
	// issued.
	DefaultTokenTTL = 2 * time.Minute
	// DefaultMaxTokens bounds the tokens outstanding at once.
	DefaultMaxTokens = 100_000
	// tokenBytes is a token's entropy: 128 bits, 26 base32 characters.
	tokenBytes = 16
)

// ErrTooManyTokens refuses an issue while DefaultMaxTokens (or the
// configured maximum) are outstanding.
var ErrTooManyTokens = errors.New("rdp: too many RDP tokens outstanding")

// tokenEncoding is lower-case base32 without padding: easy to read out and
// type, and free of characters a shell or an .rdp file would treat
// specially.
var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Tokens holds the one-time RDP tokens the SSH gateway hands out after a
// user has logged in with MFA. A token is bound to the user (with the
// groups they proved), the secret and the source address of the SSH login;
// it is good for one RDP login from that address, within its lifetime.
// A user has at most one token per secret: issuing another replaces it.
//
// Tokens is safe for concurrent use.
type Tokens struct {
	ttl  time.Duration
	max  int
	now  func() time.Time
	rand io.Reader

	mu      sync.Mutex
	byLogin map[loginKey]*token
	gen     uint64
}

type loginKey struct{ user, secret string }

type token struct {
	value   []byte // the token as typed (ASCII); wiped when it goes
	id      sshgw.Identity
	source  netip.Addr
	expires time.Time
	gen     uint64
}

// TokenConfig configures Tokens; zero values take the defaults.
type TokenConfig struct {
	TTL  time.Duration
	Max  int
	Now  func() time.Time
	Rand io.Reader
}

// NewTokens returns an empty token store.
func NewTokens(cfg TokenConfig) *Tokens {
	t := &Tokens{ttl: cfg.TTL, max: cfg.Max, now: cfg.Now, rand: cfg.Rand, byLogin: map[loginKey]*token{}}
	if t.ttl <= 0 {
		t.ttl = DefaultTokenTTL
	}
	if t.max <= 0 {
		t.max = DefaultMaxTokens
	}
	if t.now == nil {
		t.now = time.Now
	}
	if t.rand == nil {
		t.rand = rand.Reader
	}
	return t
}

// TTL is how long a token lasts.
func (t *Tokens) TTL() time.Duration { return t.ttl }

// IssueRDPToken makes a token for id to log in to secret over RDP from
// source's address, replacing any unused one of the same user for the
// same secret, and returns it with its expiry. The caller has checked
// that id may use secret.
func (t *Tokens) IssueRDPToken(id sshgw.Identity, source netip.AddrPort, secret string) (string, time.Time, error) {
	raw := make([]byte, tokenBytes)
	if _, err := io.ReadFull(t.rand, raw); err != nil {
		return "", time.Time{}, err
	}
	value := make([]byte, tokenEncoding.EncodedLen(len(raw)))
	tokenEncoding.Encode(value, raw)
	clear(raw)

	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	k := loginKey{id.User, secret}
	if old, ok := t.byLogin[k]; ok {
		t.dropLocked(k, old)
	}
	if len(t.byLogin) >= t.max {
		t.sweepLocked(now)
		if len(t.byLogin) >= t.max {
			clear(value)
			return "", time.Time{}, ErrTooManyTokens
		}
	}
	t.gen++
	id.Groups = append([]string(nil), id.Groups...)
	tok := &token{value: value, id: id, source: source.Addr().Unmap(),
		expires: now.Add(t.ttl), gen: t.gen}
	t.byLogin[k] = tok
	return string(value), tok.expires, nil
}

// Outstanding is how many tokens are held, expired ones included until
// they are swept.
func (t *Tokens) Outstanding() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byLogin)
}

// candidate is a token looked up for an NTLM proof: a copy of its value
// for the proof, and what identifies the token for take.
type candidate struct {
	user, secret string
	value        []byte
	gen          uint64
}

// lookup returns a copy of the live token of user for secret if it was
// issued to source's address. The copy is the caller's to wipe.
func (t *Tokens) lookup(user, secret string, source netip.Addr) (*candidate, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := loginKey{user, secret}
	tok, ok := t.byLogin[k]
	if !ok {
		return nil, false
	}
	if !t.now().Before(tok.expires) {
		t.dropLocked(k, tok)
		return nil, false
	}
	if tok.source != source.Unmap() {
		return nil, false
	}
	return &candidate{user: user, secret: secret, value: append([]byte(nil), tok.value...), gen: tok.gen}, true
}

// take consumes the token c was looked up from, once its proof has
// succeeded, and returns the identity it was issued to. It fails if the
// token has been used, replaced or has expired since: each token logs in
// once.
func (t *Tokens) take(c *candidate) (sshgw.Identity, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := loginKey{c.user, c.secret}
	tok, ok := t.byLogin[k]
	if !ok || tok.gen != c.gen {
		return sshgw.Identity{}, false
	}
	t.dropLocked(k, tok)
	if !t.now().Before(tok.expires) {
		return sshgw.Identity{}, false
	}
	return tok.id, true
}

func (t *Tokens) dropLocked(k loginKey, tok *token) {
	clear(tok.value)
	delete(t.byLogin, k)
}

// sweepLocked drops every expired token.
func (t *Tokens) sweepLocked(now time.Time) {
	for k, tok := range t.byLogin {
		if !now.Before(tok.expires) {
			t.dropLocked(k, tok)
		}
	}
}

// Sweep drops expired tokens; the server calls it periodically.
func (t *Tokens) Sweep() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked(t.now())
}
