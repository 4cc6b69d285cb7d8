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
	h := Header{Site: "dc1", ID: NewID(), Kind: KindCredentialRequest, Engine: "0123456789abcdef", KeyVersion: 3, Expiry: now.Add(time.Minute)}
	sealed, err := Seal(k, h, []byte(`{"op":"checkout"}`))
	if err != nil {
		t.Fatal(err)
	}
	got, body, err := Open(k, sealed, now)
	if err != nil {
		t.Fatal(err)
	}
	if got.Site != "dc1" || got.ID != h.ID || got.Kind != h.Kind || !got.Expiry.Equal(h.Expiry) || got.Version != Version ||
		got.Engine != h.Engine || got.KeyVersion != 3 {
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
		{"key version changed", func(b []byte) []byte { c := bytes.Clone(b); c[16] ^= 1; return c }, k, now, ErrAuth},
		{"site moved", func(b []byte) []byte { c := bytes.Clone(b); c[18] ^= 1; return c }, k, now, ErrAuth},
		{"expiry extended", func(b []byte) []byte { c := bytes.Clone(b); c[12]++; return c }, k, now, ErrAuth},
		{"body flipped", func(b []byte) []byte { c := bytes.Clone(b); c[len(c)-20] ^= 1; return c }, k, now, ErrAuth},
		{"truncated", func(b []byte) []byte { return b[:len(b)-17] }, k, now, ErrAuth},
		{"header only", func(b []byte) []byte { return b[:10] }, k, now, ErrMalformed},
		{"too big", func([]byte) []byte { return make([]byte, MaxSealed+1) }, k, now, ErrMalformed},
		{"other version", func(b []byte) []byte { c := bytes.Clone(b); c[3] = 9; return c }, k, now, ErrVersion},
		{"version 1", func(b []byte) []byte { c := bytes.Clone(b); c[3] = 1; return c }, k, now, ErrVersion},
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

func TestOpenRefusesUnknownKinds(t *testing.T) {
	k := key(t)
	now := time.Now()
	for _, kind := range []Kind{0, kindLimit, 200} {
		sealed, err := Seal(k, Header{Site: "s", ID: "i", Kind: kind, Expiry: now.Add(time.Minute)}, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if _, body, err := Open(k, sealed, now); !errors.Is(err, ErrKind) || body != nil {
			t.Fatalf("kind %d: %v", kind, err)
		}
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

func TestReplayCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := NewReplayCache(3, func() time.Time { return now })
	exp := now.Add(time.Minute)
	if !c.Take("a", exp) || c.Take("a", exp) {
		t.Fatal("a replay was taken")
	}
	c.Take("b", exp)
	c.Take("c", now.Add(time.Second))
	if c.Take("d", exp) {
		t.Fatal("a full cache took a new id (it must fail closed)")
	}
	now = now.Add(2 * time.Second) // c expired: room again
	if !c.Take("d", exp) {
		t.Fatal("an expired entry was not dropped")
	}
	now = now.Add(time.Hour)
	if !c.Take("a", now.Add(time.Minute)) {
		t.Fatal("an id was remembered past its item's expiry")
	}
}

func TestLoginRequestEncoding(t *testing.T) {
	r := &LoginRequest{Op: LoginPassword, User: "alice", Source: "192.0.2.1:5", ReplyTo: "q", Secret: []byte("pa\x00ss")}
	body, err := EncodeLoginRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeLoginRequest(body)
	if err != nil || got.User != "alice" || string(got.Secret) != "pa\x00ss" {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, s := range []string{fmt.Sprint(got), fmt.Sprintf("%#v", got)} {
		if strings.Contains(s, "pa") && strings.Contains(s, "ss") && strings.Contains(s, "pa\x00ss") {
			t.Fatalf("printing leaks the secret: %q", s)
		}
	}
	if _, err := EncodeLoginRequest(&LoginRequest{Op: LoginTOTP}); err == nil {
		t.Fatal("a request without its secret was encoded")
	}
	if _, err := DecodeLoginRequest([]byte(`{"op":"totp","user":"a","source":"","reply_to":""}`)); err == nil {
		t.Fatal("a request without its secret was decoded")
	}
	var p Ping
	if err := DecodeJSON([]byte(`{"sent":1}`+"\x00x"), &p); err == nil {
		t.Fatal("a ping with trailing bytes was decoded")
	}
}

func FuzzDecodeLoginRequest(f *testing.F) {
	b, _ := EncodeLoginRequest(&LoginRequest{Op: LoginTOTP, User: "u", Secret: []byte("123456")})
	f.Add(b)
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeLoginRequest(body)
		if err == nil && len(r.Secret) == 0 {
			t.Fatal("decoded without a secret")
		}
		_, _ = DecodeLoginReply(body)
	})
}
