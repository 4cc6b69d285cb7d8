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

// Version is the sealed-item format version this package writes.
const Version = 1

// MaxSealed bounds the size of a sealed item accepted by Open.
const MaxSealed = 1 << 20

// Kind says what an item asks for or answers.
type Kind uint8

// Item kinds.
const (
	KindCredentialRequest Kind = 1 // engine → vault: check out a credential
	KindCredentialReply   Kind = 2 // vault → engine: the credential, or a refusal
)

func (k Kind) String() string {
	switch k {
	case KindCredentialRequest:
		return "credential-request"
	case KindCredentialReply:
		return "credential-reply"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Header is the authenticated, unencrypted part of a sealed item.
type Header struct {
	Version uint8
	Site    string
	ID      string
	Kind    Kind
	Expiry  time.Time
}

// Errors returned by Open. Callers branch on them to count and log rejects.
var (
	ErrMalformed = errors.New("workitem: malformed item")
	ErrAuth      = errors.New("workitem: item failed authentication")
	ErrExpired   = errors.New("workitem: item expired")
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
// len(site)(1) site len(id)(1) id.
func encodeHeader(h Header) ([]byte, error) {
	if len(h.Site) > 255 || len(h.ID) > 255 || h.Site == "" || h.ID == "" {
		return nil, fmt.Errorf("workitem: site and id must be 1..255 bytes")
	}
	b := make([]byte, 0, 3+1+1+8+2+len(h.Site)+len(h.ID))
	b = append(b, magic...)
	b = append(b, h.Version, byte(h.Kind))
	b = binary.BigEndian.AppendUint64(b, uint64(h.Expiry.UnixMilli())) // #nosec G115 -- two's complement round-trips
	b = append(b, byte(len(h.Site)))                                   // #nosec G115 -- checked ≤ 255 above
	b = append(b, h.Site...)
	b = append(b, byte(len(h.ID))) // #nosec G115 -- checked ≤ 255 above
	b = append(b, h.ID...)
	return b, nil
}

// decodeHeader parses a header and returns it with its encoded length.
func decodeHeader(b []byte) (Header, int, error) {
	var h Header
	if len(b) < 3+1+1+8+1 || string(b[:3]) != magic {
		return h, 0, ErrMalformed
	}
	h.Version, h.Kind = b[3], Kind(b[4])
	h.Expiry = time.UnixMilli(int64(binary.BigEndian.Uint64(b[5:13]))) // #nosec G115 -- two's complement round-trips
	n := 13
	for _, dst := range []*string{&h.Site, &h.ID} {
		if len(b) < n+1 {
			return h, 0, ErrMalformed
		}
		l := int(b[n])
		n++
		if l == 0 || len(b) < n+l || !utf8.Valid(b[n:n+l]) {
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
	if h.Version != Version {
		return Header{}, nil, fmt.Errorf("%w: version %d", ErrMalformed, h.Version)
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
