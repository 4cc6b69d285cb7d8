// Package workitem defines the units of work that travel between the vault and
// the engines at a site, and seals them for the trip.
//
// Every item is sealed with AES-256-GCM under a key shared by the vault and one
// site (or one engine). The header — version, site, item id, kind and expiry —
// is the additional authenticated data, so an item cannot be moved to another
// site, altered, or used after it expires. Bodies are JSON, except that a
// credential reply carries its secret bytes after the JSON (EncodeReply),
// so that no copy of a credential is left in encoding/json's buffers.
package workitem

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Version is the sealed-item format version this package writes and the
// only one it opens. Version 2 added the engine and the key version to the
// header.
const Version = 2

// MaxSealed bounds the size of a sealed item accepted by Open.
const MaxSealed = 1 << 20

// Kind says what an item asks for or answers. It is part of the
// authenticated header, so an item of one kind cannot be passed off as
// another.
type Kind uint8

// Item kinds, and the key each is sealed under.
const (
	// KindCredentialRequest: engine → vault (engine key): check out a
	// credential, list secrets, pin a host key, re-check live grants.
	KindCredentialRequest Kind = 1
	// KindCredentialReply: vault → engine (engine key).
	KindCredentialReply Kind = 2
	// KindLoginRequest: engine → vault (engine key): check a local user's
	// password or one-time code, so that engines never hold password
	// hashes or TOTP seeds.
	KindLoginRequest Kind = 3
	// KindLoginReply: vault → engine (engine key).
	KindLoginReply Kind = 4
	// KindPing: vault → any engine of a site (site key): is someone there?
	KindPing Kind = 5
	// KindPong: engine → vault (engine key): the answer to a ping.
	KindPong Kind = 6
	// KindTask: vault → any engine of a site (site key): a heartbeat, a
	// password change or a reconciliation check on one secret's target
	// (see Task).
	KindTask Kind = 7
	// KindTaskResult: engine → vault (engine key): what a task found.
	KindTaskResult Kind = 8
	// Kinds from here on do not exist yet; Open refuses them.
	kindLimit Kind = 9
)

func (k Kind) String() string {
	switch k {
	case KindCredentialRequest:
		return "credential-request"
	case KindCredentialReply:
		return "credential-reply"
	case KindLoginRequest:
		return "login-request"
	case KindLoginReply:
		return "login-reply"
	case KindPing:
		return "ping"
	case KindPong:
		return "pong"
	case KindTask:
		return "task"
	case KindTaskResult:
		return "task-result"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// SiteKeyed reports whether items of kind k are sealed under their site's
// key (work for any engine of the site) rather than under one engine's
// key (everything an engine sends, and everything sent to one engine).
func (k Kind) SiteKeyed() bool { return k == KindPing || k == KindTask }

// Header is the authenticated, unencrypted part of a sealed item.
type Header struct {
	Version uint8
	Kind    Kind
	Site    string
	ID      string
	// Engine is the engine that sent the item, or the one it is for; ""
	// for work that any engine of the site may take.
	Engine string
	// KeyVersion is the version of the key that sealed the item (site
	// keys and engine keys are rotated; old versions open items for a
	// while).
	KeyVersion uint32
	Expiry     time.Time
}

// Errors returned by Open. Callers branch on them to count and log rejects.
var (
	ErrMalformed = errors.New("workitem: malformed item")
	ErrVersion   = errors.New("workitem: unknown format version")
	ErrAuth      = errors.New("workitem: item failed authentication")
	ErrExpired   = errors.New("workitem: item expired")
	ErrKind      = errors.New("workitem: unknown kind")
)

const magic = "SPW"

// NewID returns a random 128-bit item id in hex.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("workitem: no randomness: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// encodeHeader lays out: magic(3) version(1) kind(1) expiry(8, unix ms)
// key version(4) len(site)(1) site len(id)(1) id len(engine)(1) engine.
func encodeHeader(h Header) ([]byte, error) {
	if len(h.Site) > 255 || len(h.ID) > 255 || len(h.Engine) > 255 || h.Site == "" || h.ID == "" {
		return nil, fmt.Errorf("workitem: site and id must be 1..255 bytes, engine at most 255")
	}
	b := make([]byte, 0, 3+1+1+8+4+3+len(h.Site)+len(h.ID)+len(h.Engine))
	b = append(b, magic...)
	b = append(b, h.Version, byte(h.Kind))
	b = binary.BigEndian.AppendUint64(b, uint64(h.Expiry.UnixMilli())) // #nosec G115 -- two's complement round-trips
	b = binary.BigEndian.AppendUint32(b, h.KeyVersion)
	for _, f := range []string{h.Site, h.ID, h.Engine} {
		b = append(b, byte(len(f))) // #nosec G115 -- checked ≤ 255 above
		b = append(b, f...)
	}
	return b, nil
}

// decodeHeader parses a header and returns it with its encoded length.
func decodeHeader(b []byte) (Header, int, error) {
	var h Header
	const fixed = 3 + 1 + 1 + 8 + 4
	if len(b) < fixed || string(b[:3]) != magic {
		return h, 0, ErrMalformed
	}
	h.Version, h.Kind = b[3], Kind(b[4])
	if h.Version != Version {
		return h, 0, fmt.Errorf("%w: version %d", ErrVersion, h.Version)
	}
	h.Expiry = time.UnixMilli(int64(binary.BigEndian.Uint64(b[5:13]))) // #nosec G115 -- two's complement round-trips
	h.KeyVersion = binary.BigEndian.Uint32(b[13:17])
	n := fixed
	for i, dst := range []*string{&h.Site, &h.ID, &h.Engine} {
		if len(b) < n+1 {
			return h, 0, ErrMalformed
		}
		l := int(b[n])
		n++
		if (l == 0 && i < 2) || len(b) < n+l || !utf8.Valid(b[n:n+l]) {
			return h, 0, ErrMalformed
		}
		*dst = string(b[n : n+l])
		n += l
	}
	return h, n, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, errors.New("workitem: key must be 32 bytes (AES-256)")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("workitem: %w", err)
	}
	return cipher.NewGCM(block)
}

// Seal encrypts body under key with h as additional data. h.Version is set
// to Version.
func Seal(key []byte, h Header, body []byte) ([]byte, error) {
	h.Version = Version
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	hdr, err := encodeHeader(h)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(hdr)+a.NonceSize()+len(body)+a.Overhead())
	out = append(out, hdr...)
	nonce := out[len(hdr) : len(hdr)+a.NonceSize()]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("workitem: %w", err)
	}
	out = out[:len(hdr)+a.NonceSize()]
	return a.Seal(out, nonce, body, hdr), nil
}

// Open authenticates and decrypts a sealed item. It rejects items over
// MaxSealed, of another version, that fail authentication, or whose expiry
// is not after now.
func Open(key []byte, sealed []byte, now time.Time) (Header, []byte, error) {
	if len(sealed) > MaxSealed {
		return Header{}, nil, ErrMalformed
	}
	h, n, err := decodeHeader(sealed)
	if err != nil {
		return Header{}, nil, err
	}
	a, err := newAEAD(key)
	if err != nil {
		return Header{}, nil, err
	}
	rest := sealed[n:]
	if len(rest) < a.NonceSize()+a.Overhead() {
		return Header{}, nil, ErrMalformed
	}
	body, err := a.Open(nil, rest[:a.NonceSize()], rest[a.NonceSize():], sealed[:n])
	if err != nil {
		return Header{}, nil, ErrAuth
	}
	if !now.Before(h.Expiry) {
		clear(body) // it may hold a credential
		return h, nil, ErrExpired
	}
	if h.Kind == 0 || h.Kind >= kindLimit {
		clear(body)
		return h, nil, ErrKind
	}
	return h, body, nil
}

// Peek parses the header of a sealed item WITHOUT authenticating it, so a
// receiver can pick the key for h.Site. Nothing in the result may be trusted
// until Open succeeds.
func Peek(sealed []byte) (Header, error) {
	if len(sealed) > MaxSealed {
		return Header{}, ErrMalformed
	}
	h, _, err := decodeHeader(sealed)
	return h, err
}
