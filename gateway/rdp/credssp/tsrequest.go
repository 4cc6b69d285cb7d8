// Package credssp implements the parts of the Credential Security Support
// Provider protocol (MS-CSSP) that the RDP gateway speaks on both legs:
// the TSRequest messages that carry NTLM tokens, the binding of the
// authentication to the TLS server's public key (pubKeyAuth), and the
// delegated password credentials (TSCredentials with TSPasswordCreds).
//
// Only password credentials over NTLM are supported: smart-card
// credentials, Kerberos and SPNEGO wrapping are refused. Every message is
// read with a size bound, and decoding is strict DER.
package credssp

import (
	"bytes"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"unicode/utf16"
	"unicode/utf8"
)

// Protocol versions. Version 5 and later bind pubKeyAuth to a client
// nonce (hash-based); versions 2 to 4 send the public key itself, sealed.
const (
	MinVersion = 2
	// Version is the version this package offers.
	Version = 6
)

// MaxMessage bounds one TSRequest on the wire.
const MaxMessage = 64 << 10

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("credssp: malformed message")

// NegoToken is one element of TSRequest.negoTokens.
type negoToken struct {
	Token []byte `asn1:"explicit,tag:0"`
}

// wireRequest is TSRequest as DER (MS-CSSP 2.2.1).
type wireRequest struct {
	Version     int         `asn1:"explicit,tag:0"`
	NegoTokens  []negoToken `asn1:"optional,explicit,tag:1"`
	AuthInfo    []byte      `asn1:"optional,explicit,tag:2"`
	PubKeyAuth  []byte      `asn1:"optional,explicit,tag:3"`
	ErrorCode   int64       `asn1:"optional,explicit,tag:4"`
	ClientNonce []byte      `asn1:"optional,explicit,tag:5"`
}

// Request is a TSRequest.
type Request struct {
	Version int
	// NegoToken is the NTLM message carried (the first negoToken); nil
	// when none.
	NegoToken []byte
	// AuthInfo is the sealed TSCredentials.
	AuthInfo []byte
	// PubKeyAuth is the sealed public-key binding.
	PubKeyAuth []byte
	// ErrorCode is an NTSTATUS the peer reports (version 3 and later).
	ErrorCode uint32
	// ClientNonce is the 32-byte nonce of version 5 and later.
	ClientNonce []byte
}

// Marshal encodes r as DER.
func (r *Request) Marshal() ([]byte, error) {
	// An NTSTATUS goes on the wire as the signed 32-bit integer Windows
	// sends (0xC000006D is -1073741715, four bytes): FreeRDP reads no
	// longer INTEGER, so the five-byte positive form would break it.
	w := wireRequest{Version: r.Version, AuthInfo: r.AuthInfo, PubKeyAuth: r.PubKeyAuth,
		ErrorCode: int64(int32(r.ErrorCode)), ClientNonce: r.ClientNonce} // #nosec G115 -- deliberate two's-complement reinterpretation
	if r.NegoToken != nil {
		w.NegoTokens = []negoToken{{Token: r.NegoToken}}
	}
	return asn1.Marshal(w)
}

// Unmarshal decodes one DER TSRequest, strictly: trailing bytes, more than
// one negoToken, an unknown version or a nonce of the wrong size are
// refused.
func Unmarshal(b []byte) (*Request, error) {
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("%w: too large", ErrMalformed)
	}
	var w wireRequest
	rest, err := asn1.Unmarshal(b, &w)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	switch {
	case len(rest) != 0:
		return nil, fmt.Errorf("%w: trailing bytes", ErrMalformed)
	case w.Version < MinVersion || w.Version > 255:
		return nil, fmt.Errorf("%w: version %d", ErrMalformed, w.Version)
	case len(w.NegoTokens) > 1:
		return nil, fmt.Errorf("%w: %d negoTokens", ErrMalformed, len(w.NegoTokens))
	case w.ClientNonce != nil && len(w.ClientNonce) != 32:
		return nil, fmt.Errorf("%w: client nonce of %d bytes", ErrMalformed, len(w.ClientNonce))
	case w.ErrorCode < math.MinInt32 || w.ErrorCode > math.MaxUint32:
		return nil, fmt.Errorf("%w: error code out of range", ErrMalformed)
	}
	// Either form of an NTSTATUS: signed (as Windows sends it) or
	// positive.
	code := uint32(w.ErrorCode) // #nosec G115 -- range checked above; a negative value is the signed form
	r := &Request{Version: w.Version, AuthInfo: w.AuthInfo, PubKeyAuth: w.PubKeyAuth,
		ErrorCode: code, ClientNonce: w.ClientNonce}
	if len(w.NegoTokens) == 1 {
		r.NegoToken = w.NegoTokens[0].Token
	}
	return r, nil
}

// Read reads one DER-encoded TSRequest from r, at most MaxMessage bytes:
// the SEQUENCE header first, so that nothing beyond the message is read.
func Read(r io.Reader) ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	if h[0] != 0x30 {
		return nil, fmt.Errorf("%w: not a SEQUENCE (0x%02x)", ErrMalformed, h[0])
	}
	head := h[:]
	n := int(h[1])
	if h[1]&0x80 != 0 {
		k := int(h[1] & 0x7f)
		if k < 1 || k > 3 {
			return nil, fmt.Errorf("%w: length of %d bytes", ErrMalformed, k)
		}
		lb := make([]byte, k)
		if _, err := io.ReadFull(r, lb); err != nil {
			return nil, err
		}
		if lb[0] == 0 {
			return nil, fmt.Errorf("%w: non-minimal length", ErrMalformed)
		}
		n = 0
		for _, b := range lb {
			n = n<<8 | int(b)
		}
		head = append(head, lb...)
	}
	if len(head)+n > MaxMessage {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrMalformed, len(head)+n, MaxMessage)
	}
	out := make([]byte, len(head)+n)
	copy(out, head)
	if _, err := io.ReadFull(r, out[len(head):]); err != nil {
		return nil, err
	}
	return out, nil
}

// Binding hashes (MS-CSSP 3.1.5.1.1, version 5 and later).
var (
	clientToServer = []byte("CredSSP Client-To-Server Binding Hash\x00")
	serverToClient = []byte("CredSSP Server-To-Client Binding Hash\x00")
)

// ClientBinding is what a version 5+ client seals in pubKeyAuth: SHA-256
// over the client-to-server magic, the nonce and the TLS server's
// SubjectPublicKey (the BIT STRING's bytes of its certificate's key).
func ClientBinding(nonce, subjectPublicKey []byte) []byte {
	return bindingHash(clientToServer, nonce, subjectPublicKey)
}

// ServerBinding is the server's answer: the same over the
// server-to-client magic.
func ServerBinding(nonce, subjectPublicKey []byte) []byte {
	return bindingHash(serverToClient, nonce, subjectPublicKey)
}

func bindingHash(magic, nonce, key []byte) []byte {
	h := sha256.New()
	h.Write(magic)
	h.Write(nonce)
	h.Write(key)
	return h.Sum(nil)
}

// LegacyServerBinding is a version 2-4 server's answer: the public key
// with its first byte incremented by one.
func LegacyServerBinding(subjectPublicKey []byte) []byte {
	out := bytes.Clone(subjectPublicKey)
	if len(out) > 0 {
		out[0]++
	}
	return out
}

// SubjectPublicKey returns the bytes of the SubjectPublicKey BIT STRING of
// a certificate's SubjectPublicKeyInfo (the DER of x509.Certificate's
// RawSubjectPublicKeyInfo), which CredSSP binds to.
func SubjectPublicKey(rawSPKI []byte) ([]byte, error) {
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	rest, err := asn1.Unmarshal(rawSPKI, &spki)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: subject public key info", ErrMalformed)
	}
	return spki.PublicKey.Bytes, nil
}

// Password credentials (MS-CSSP 2.2.1.2).
type wireCredentials struct {
	CredType    int    `asn1:"explicit,tag:0"`
	Credentials []byte `asn1:"explicit,tag:1"`
}

type wirePasswordCreds struct {
	Domain   []byte `asn1:"explicit,tag:0"`
	User     []byte `asn1:"explicit,tag:1"`
	Password []byte `asn1:"explicit,tag:2"`
}

// credTypePassword is TSCredentials.credType for TSPasswordCreds.
const credTypePassword = 1

// maxCredential bounds each field of delegated credentials, in bytes of
// UTF-16.
const maxCredential = 1024

// PasswordCreds are the credentials a client delegates: a domain, a user
// and a password, each UTF-16LE as on the wire. They redact themselves;
// call Wipe when done.
type PasswordCreds struct {
	Domain, User, Password []byte
}

// String redacts the password.
func (p PasswordCreds) String() string {
	return "credssp.PasswordCreds{" + DecodeUTF16(p.Domain) + `\` + DecodeUTF16(p.User) + " [REDACTED]}"
}

// GoString redacts the password under %#v.
func (p PasswordCreds) GoString() string { return p.String() }

// Wipe clears every field.
func (p *PasswordCreds) Wipe() {
	clear(p.Domain)
	clear(p.User)
	clear(p.Password)
}

// MarshalCredentials encodes TSCredentials holding p. The caller wipes
// the result.
func MarshalCredentials(p PasswordCreds) ([]byte, error) {
	inner, err := asn1.Marshal(wirePasswordCreds(p))
	if err != nil {
		return nil, err
	}
	defer clear(inner)
	return asn1.Marshal(wireCredentials{CredType: credTypePassword, Credentials: inner})
}

// UnmarshalCredentials decodes TSCredentials: only password credentials,
// each field at most 1 KiB and of whole UTF-16 code units. The fields are
// fresh copies; the caller wipes them and b.
func UnmarshalCredentials(b []byte) (*PasswordCreds, error) {
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("%w: credentials too large", ErrMalformed)
	}
	var c wireCredentials
	if rest, err := asn1.Unmarshal(b, &c); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: TSCredentials", ErrMalformed)
	}
	if c.CredType != credTypePassword {
		return nil, fmt.Errorf("%w: credential type %d is not a password", ErrMalformed, c.CredType)
	}
	var p wirePasswordCreds
	rest, err := asn1.Unmarshal(c.Credentials, &p)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: TSPasswordCreds", ErrMalformed)
	}
	for _, f := range [][]byte{p.Domain, p.User, p.Password} {
		if len(f) > maxCredential || len(f)%2 != 0 {
			return nil, fmt.Errorf("%w: credential field of %d bytes", ErrMalformed, len(f))
		}
	}
	return &PasswordCreds{Domain: bytes.Clone(p.Domain), User: bytes.Clone(p.User), Password: bytes.Clone(p.Password)}, nil
}

// EncodeUTF16 returns s as UTF-16LE.
func EncodeUTF16(s string) []byte {
	out := make([]byte, 0, 2*len(s))
	for _, c := range utf16.Encode([]rune(s)) {
		out = binary.LittleEndian.AppendUint16(out, c)
	}
	return out
}

// UTF16FromUTF8 converts UTF-8 bytes (a password) to UTF-16LE without a
// string copy that could not be wiped; invalid UTF-8 becomes U+FFFD.
func UTF16FromUTF8(b []byte) []byte {
	out := make([]byte, 0, 2*len(b))
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		b = b[n:]
		// AppendRune writes one code unit, or a surrogate pair.
		var units [2]uint16
		for _, c := range utf16.AppendRune(units[:0], r) {
			out = binary.LittleEndian.AppendUint16(out, c)
		}
	}
	return out
}

// DecodeUTF16 decodes UTF-16LE (an odd trailing byte is dropped; invalid
// surrogates become U+FFFD).
func DecodeUTF16(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
	}
	return string(utf16.Decode(u))
}
