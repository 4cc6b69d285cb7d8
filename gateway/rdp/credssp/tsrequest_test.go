package credssp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"strings"
	"testing"
)

func TestRequestRoundTrip(t *testing.T) {
	nonce := bytes.Repeat([]byte{7}, 32)
	for _, r := range []Request{
		{Version: 6, NegoToken: []byte("NTLMSSP\x00\x01")},
		{Version: 6, NegoToken: []byte("tok"), PubKeyAuth: []byte("pka"), ClientNonce: nonce},
		{Version: 6, AuthInfo: []byte("sealed creds")},
		{Version: 3, ErrorCode: 0xc000006d},
		{Version: 2, PubKeyAuth: []byte{1, 2, 3}},
	} {
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		if got.Version != r.Version || !bytes.Equal(got.NegoToken, r.NegoToken) || !bytes.Equal(got.AuthInfo, r.AuthInfo) ||
			!bytes.Equal(got.PubKeyAuth, r.PubKeyAuth) || got.ErrorCode != r.ErrorCode || !bytes.Equal(got.ClientNonce, r.ClientNonce) {
			t.Fatalf("round trip %+v -> %+v", r, got)
		}
		read, err := Read(bytes.NewReader(append(bytes.Clone(b), "next message"...)))
		if err != nil || !bytes.Equal(read, b) {
			t.Fatalf("Read: %v", err)
		}
	}
}

func TestRequestRefused(t *testing.T) {
	good, _ := (&Request{Version: 6, NegoToken: []byte("t")}).Marshal()
	for name, b := range map[string][]byte{
		"trailing":    append(bytes.Clone(good), 0),
		"truncated":   good[:len(good)-1],
		"not DER":     []byte("hello"),
		"version 1":   mustMarshal(t, wireRequest{Version: 1}),
		"two tokens":  mustMarshal(t, wireRequest{Version: 6, NegoTokens: []negoToken{{[]byte("a")}, {[]byte("b")}}}),
		"short nonce": mustMarshal(t, wireRequest{Version: 6, ClientNonce: []byte("short")}),
		"huge":        make([]byte, MaxMessage+1),
	} {
		if _, err := Unmarshal(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, b := range map[string][]byte{
		"not a sequence":     {0x31, 0x00},
		"4-byte length":      {0x30, 0x84, 0, 0, 0, 1},
		"non-minimal length": {0x30, 0x81, 0x00},
		"over the bound":     {0x30, 0x83, 0x10, 0x00, 0x00},
	} {
		if _, err := Read(bytes.NewReader(b)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Read %s: %v", name, err)
		}
	}
}

func mustMarshal(t *testing.T, w wireRequest) []byte {
	t.Helper()
	b, err := asn1Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCredentials(t *testing.T) {
	p := PasswordCreds{Domain: EncodeUTF16("CORP"), User: EncodeUTF16("Administrator"), Password: UTF16FromUTF8([]byte("pässwörd😀"))}
	b, err := MarshalCredentials(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalCredentials(b)
	if err != nil {
		t.Fatal(err)
	}
	if DecodeUTF16(got.User) != "Administrator" || DecodeUTF16(got.Password) != "pässwörd😀" || DecodeUTF16(got.Domain) != "CORP" {
		t.Fatalf("got %s", got)
	}
	if s := got.String(); strings.Contains(s, "pässwörd") || !strings.Contains(s, "REDACTED") {
		t.Fatalf("String: %s", s)
	}
	got.Wipe()
	if !bytes.Equal(got.Password, make([]byte, len(got.Password))) {
		t.Fatal("Wipe")
	}
	odd := PasswordCreds{User: []byte{1, 2, 3}}
	b, _ = MarshalCredentials(odd)
	if _, err := UnmarshalCredentials(b); !errors.Is(err, ErrMalformed) {
		t.Fatalf("odd UTF-16: %v", err)
	}
	smartcard, _ := asn1Marshal(wireCredentials{CredType: 2, Credentials: []byte{0x30, 0}})
	if _, err := UnmarshalCredentials(smartcard); !errors.Is(err, ErrMalformed) {
		t.Fatalf("smart card credentials: %v", err)
	}
}

func TestBindings(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := SubjectPublicKey(spki)
	if err != nil || len(pub) != 65 || pub[0] != 4 {
		t.Fatalf("subject public key: %d bytes, %v", len(pub), err)
	}
	nonce := bytes.Repeat([]byte{1}, 32)
	c, s := ClientBinding(nonce, pub), ServerBinding(nonce, pub)
	if len(c) != 32 || bytes.Equal(c, s) || bytes.Equal(c, ClientBinding(bytes.Repeat([]byte{2}, 32), pub)) {
		t.Fatal("bindings do not depend on direction and nonce")
	}
	if l := LegacyServerBinding(pub); l[0] != pub[0]+1 || !bytes.Equal(l[1:], pub[1:]) {
		t.Fatal("legacy binding")
	}
}

func TestUTF16FromUTF8(t *testing.T) {
	for _, s := range []string{"", "abc", "ü", "😀x", "日本"} {
		if got := DecodeUTF16(UTF16FromUTF8([]byte(s))); got != s {
			t.Errorf("%q -> %q", s, got)
		}
		if !bytes.Equal(UTF16FromUTF8([]byte(s)), EncodeUTF16(s)) {
			t.Errorf("%q: the two encoders differ", s)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	good, _ := (&Request{Version: 6, NegoToken: []byte("t"), ClientNonce: bytes.Repeat([]byte{1}, 32)}).Marshal()
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Unmarshal(b)
		if err != nil {
			return
		}
		again, err := r.Marshal()
		if err != nil {
			t.Fatalf("decoded request does not encode: %v", err)
		}
		if _, err := Unmarshal(again); err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
	})
}

func FuzzRead(f *testing.F) {
	good, _ := (&Request{Version: 6, NegoToken: []byte("t")}).Marshal()
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := Read(bytes.NewReader(b))
		if err == nil && (len(out) > MaxMessage || !bytes.HasPrefix(b, out)) {
			t.Fatalf("Read returned %d bytes not a prefix of the input", len(out))
		}
	})
}

func FuzzUnmarshalCredentials(f *testing.F) {
	b, _ := MarshalCredentials(PasswordCreds{Domain: EncodeUTF16("D"), User: EncodeUTF16("u"), Password: EncodeUTF16("p")})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := UnmarshalCredentials(b)
		if err == nil && (len(p.Password) > maxCredential || len(p.User)%2 != 0) {
			t.Fatalf("accepted %d-byte password", len(p.Password))
		}
	})
}

func asn1Marshal(v any) ([]byte, error) { return asn1.Marshal(v) }

// An NTSTATUS is sent as Windows sends it: a four-byte signed INTEGER
// (FreeRDP cannot read the five-byte positive form), and read in either
// form.
func TestErrorCodeSigned(t *testing.T) {
	b, err := (&Request{Version: 6, ErrorCode: StatusLogonFailure}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0xa4, 0x06, 0x02, 0x04, 0xc0, 0x00, 0x00, 0x6d}
	if !bytes.Contains(b, want) {
		t.Fatalf("errorCode not encoded as a 4-byte signed INTEGER: % x", b)
	}
	r, err := Unmarshal(b)
	if err != nil || r.ErrorCode != StatusLogonFailure {
		t.Fatalf("round trip: %v %#x", err, r)
	}
	// The positive five-byte form is read too.
	pos := []byte{0x30, 0x10, 0xa0, 0x03, 0x02, 0x01, 0x06, 0xa4, 0x07, 0x02, 0x05, 0x00, 0xc0, 0x00, 0x00, 0x6d}
	pos[1] = byte(len(pos) - 2)
	if r, err := Unmarshal(pos); err != nil || r.ErrorCode != StatusLogonFailure {
		t.Fatalf("positive form: %v %+v", err, r)
	}
}
