package workitem

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func key(t testing.TB) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	k := key(t)
	now := time.Unix(1_700_000_000, 0)
	h := Header{Site: "dc1", ID: NewID(), Kind: KindCredentialRequest, Expiry: now.Add(time.Minute)}
	sealed, err := Seal(k, h, []byte(`{"op":"checkout"}`))
	if err != nil {
		t.Fatal(err)
	}
	got, body, err := Open(k, sealed, now)
	if err != nil {
		t.Fatal(err)
	}
	if got.Site != "dc1" || got.ID != h.ID || got.Kind != h.Kind || !got.Expiry.Equal(h.Expiry) || got.Version != Version {
		t.Fatalf("header %+v, want %+v", got, h)
	}
	if string(body) != `{"op":"checkout"}` {
		t.Fatalf("body %q", body)
	}
	if p, err := Peek(sealed); err != nil || p.Site != "dc1" {
		t.Fatalf("Peek = %+v, %v", p, err)
	}

	tests := []struct {
		name   string
		mutate func([]byte) []byte
		key    []byte
		now    time.Time
		want   error
	}{
		{"expired", nil, k, now.Add(time.Minute), ErrExpired},
		{"other key", nil, key(t), now, ErrAuth},
		{"site moved", func(b []byte) []byte { c := bytes.Clone(b); c[14] ^= 1; return c }, k, now, ErrAuth},
		{"expiry extended", func(b []byte) []byte { c := bytes.Clone(b); c[12]++; return c }, k, now, ErrAuth},
		{"body flipped", func(b []byte) []byte { c := bytes.Clone(b); c[len(c)-20] ^= 1; return c }, k, now, ErrAuth},
		{"truncated", func(b []byte) []byte { return b[:len(b)-17] }, k, now, ErrAuth},
		{"header only", func(b []byte) []byte { return b[:10] }, k, now, ErrMalformed},
		{"too big", func([]byte) []byte { return make([]byte, MaxSealed+1) }, k, now, ErrMalformed},
		{"other version", func(b []byte) []byte { c := bytes.Clone(b); c[3] = 9; return c }, k, now, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := sealed
			if tt.mutate != nil {
				in = tt.mutate(sealed)
			}
			if _, _, err := Open(tt.key, in, tt.now); !errors.Is(err, tt.want) {
				t.Fatalf("Open = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSealRejectsBadInput(t *testing.T) {
	exp := time.Now().Add(time.Minute)
	if _, err := Seal(make([]byte, 16), Header{Site: "s", ID: "i", Expiry: exp}, nil); err == nil {
		t.Fatal("AES-128 key accepted")
	}
	if _, err := Seal(key(t), Header{Site: "", ID: "i", Expiry: exp}, nil); err == nil {
		t.Fatal("empty site accepted")
	}
}

func TestCredentialRedacts(t *testing.T) {
	c := &Credential{Username: "root", Host: "h", Password: []byte("hunter2-secret")}
	for _, s := range []string{c.String(), c.GoString()} {
		if bytes.Contains([]byte(s), []byte("hunter2")) {
			t.Fatalf("%q leaks the password", s)
		}
	}
	pw := c.Password
	c.Wipe()
	if c.Password != nil || !bytes.Equal(pw, make([]byte, len(pw))) {
		t.Fatal("Wipe left the password")
	}
}

func FuzzOpen(f *testing.F) {
	k := bytes.Repeat([]byte{7}, 32)
	now := time.Unix(1_700_000_000, 0)
	good, _ := Seal(k, Header{Site: "s", ID: "id", Kind: KindCredentialReply, Expiry: now.Add(time.Hour)}, []byte("{}"))
	f.Add(good)
	f.Add([]byte("SPW\x01\x02"))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, body, err := Open(k, in, now)
		if err == nil && (h.Site == "" || h.ID == "" || body == nil) {
			t.Fatalf("Open accepted a malformed item: %+v", h)
		}
		_, _ = Peek(in)
	})
}

func TestReplyEncoding(t *testing.T) {
	for _, r := range []*CredentialReply{
		{Credential: &Credential{Secret: "web01", Host: "10.0.0.1", Port: 22, Username: "root", Password: []byte("pa\x00ss\"w{}rd"), HostKey: []byte{1, 2, 3}}},
		{Credential: &Credential{Secret: "k", Host: "h", Port: 2222, Username: "u", PrivateKey: []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n..."), PinOnFirstUse: true}},
		{Refused: RefusedDenied},
		{Secrets: []string{"a", "b"}},
		{Allowed: []bool{true, false, true}},
	} {
		body, err := EncodeReply(r)
		if err != nil {
			t.Fatal(err)
		}
		if c := r.Credential; c != nil {
			secret := append(c.Password, c.PrivateKey...)
			if i := bytes.IndexByte(body, 0); i < 0 || bytes.Contains(body[:i], secret) {
				t.Fatalf("the secret is inside the JSON part: %q", body)
			}
		}
		got, err := DecodeReply(body)
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if g, w := fmt.Sprintf("%+v %+v", *got, got.Credential), fmt.Sprintf("%+v %+v", *r, r.Credential); g != w {
			t.Fatalf("round trip:\n got %s\nwant %s", g, w)
		}
		if c := got.Credential; c != nil {
			if !bytes.Equal(c.Password, r.Credential.Password) || !bytes.Equal(c.PrivateKey, r.Credential.PrivateKey) {
				t.Fatal("secret bytes differ")
			}
			clear(body)
			if len(c.Password) > 0 && c.Password[0] == 0 || len(c.PrivateKey) > 0 && c.PrivateKey[0] == 0 {
				t.Fatal("the decoded secret shares memory with the body")
			}
		}
	}
	if _, err := EncodeReply(&CredentialReply{Credential: &Credential{Password: []byte("a"), PrivateKey: []byte("b")}}); err == nil {
		t.Fatal("a credential with both a password and a key was encoded")
	}
	for _, bad := range []string{
		`{"credential":{"secret":"x","secret_kind":"password"}}`,         // no secret bytes
		`{"credential":{"secret":"x","secret_kind":"magic"}}` + "\x00pw", // unknown kind
		`{"refused":"denied"}` + "\x00pw",                                // secret without credential
		`{"refused":"denied","extra":1}`,                                 // unknown field
		`{"refused":"denied"} {}`,                                        // trailing data
		`{"credential":{"password":"cHc="},"secret_kind":"password"}`,    // secret as JSON
	} {
		if _, err := DecodeReply([]byte(bad)); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

func FuzzDecodeReply(f *testing.F) {
	for _, r := range []*CredentialReply{
		{Credential: &Credential{Secret: "s", Host: "h", Port: 22, Username: "u", Password: []byte("pw")}},
		{Secrets: []string{"a"}}, {Allowed: []bool{false}},
	} {
		b, _ := EncodeReply(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeReply(body)
		if err != nil {
			return
		}
		if c := r.Credential; c != nil && len(c.Password)+len(c.PrivateKey) == 0 {
			t.Fatal("a credential decoded without its secret")
		}
	})
}

func TestCredentialRedactsInLogs(t *testing.T) {
	c := &Credential{Secret: "web01", Host: "h", Username: "root", Password: []byte("Sup3r-S3cret-Pw")}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		slog.New(h).Info("x", "cred", c, "reply", CredentialReply{Credential: c})
	}
	out := buf.String()
	for _, leak := range []string{"Sup3r-S3cret-Pw", base64.StdEncoding.EncodeToString(c.Password)} {
		if strings.Contains(out, leak) {
			t.Fatalf("a log line holds the password:\n%s", out)
		}
	}
	if !strings.Contains(out, "REDACTED") {
		t.Fatalf("no redaction marker:\n%s", out)
	}
}
