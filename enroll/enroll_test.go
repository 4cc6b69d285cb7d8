package enroll

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ecdhWith(k *ecdsa.PrivateKey) ECDHFunc {
	return func(peer *ecdh.PublicKey) ([]byte, error) {
		priv, err := k.ECDH()
		if err != nil {
			return nil, err
		}
		return priv.ECDH(peer)
	}
}

func TestWrapUnwrap(t *testing.T) {
	k, other := newKey(t), newKey(t)
	secret := []byte("0123456789abcdef0123456789abcdef")
	blob, err := Wrap(&k.PublicKey, "site key dc-east v1", secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob, secret) {
		t.Fatal("the blob holds the key in the clear")
	}
	got, err := Unwrap(ecdhWith(k), &k.PublicKey, "site key dc-east v1", blob)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unwrap: %v", err)
	}
	for name, try := range map[string]func() ([]byte, error){
		"other key":   func() ([]byte, error) { return Unwrap(ecdhWith(other), &other.PublicKey, "site key dc-east v1", blob) },
		"other label": func() ([]byte, error) { return Unwrap(ecdhWith(k), &k.PublicKey, "engine key", blob) },
		"altered": func() ([]byte, error) {
			b := bytes.Clone(blob)
			b[len(b)-1] ^= 1
			return Unwrap(ecdhWith(k), &k.PublicKey, "site key dc-east v1", b)
		},
		"truncated": func() ([]byte, error) { return Unwrap(ecdhWith(k), &k.PublicKey, "site key dc-east v1", blob[:40]) },
	} {
		if _, err := try(); !errors.Is(err, ErrUnwrap) {
			t.Errorf("%s: %v, want ErrUnwrap", name, err)
		}
	}
}

func TestEngineID(t *testing.T) {
	k := newKey(t)
	id, err := EngineID(&k.PublicKey)
	if err != nil || len(id) != 16 {
		t.Fatalf("id %q %v", id, err)
	}
	again, _ := EngineID(&k.PublicKey)
	if again != id {
		t.Fatal("the id is not stable")
	}
	fp, _ := Fingerprint(&k.PublicKey)
	if !strings.HasPrefix(fp, "SHA256:") {
		t.Fatalf("fingerprint %q", fp)
	}
	der, _ := MarshalPublicKey(&k.PublicKey)
	if pub, err := ParsePublicKey(der); err != nil || !pub.Equal(&k.PublicKey) {
		t.Fatalf("parse: %v", err)
	}
}

func TestSignVerify(t *testing.T) {
	k := newKey(t)
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"x":1}`)
	req := httptest.NewRequest("POST", "https://vault/v1/engine/config?x=1", bytes.NewReader(body))
	if err := Sign(req, "0123456789abcdef", k, body, now); err != nil {
		t.Fatal(err)
	}
	s, err := Verify(req, &k.PublicKey, body, now.Add(10*time.Second))
	if err != nil || s.Engine != "0123456789abcdef" || len(s.Nonce) != 32 {
		t.Fatalf("verify: %+v %v", s, err)
	}
	for name, check := range map[string]func() error{
		"other body": func() error { _, err := Verify(req, &k.PublicKey, []byte(`{"x":2}`), now); return err },
		"other key":  func() error { _, err := Verify(req, &newKey(t).PublicKey, body, now); return err },
		"too late":   func() error { _, err := Verify(req, &k.PublicKey, body, now.Add(2*MaxSkew)); return err },
		"other path": func() error {
			r2 := req.Clone(req.Context())
			r2.URL.Path = "/v1/engine/register"
			_, err := Verify(r2, &k.PublicKey, body, now)
			return err
		},
		"other engine": func() error {
			r2 := req.Clone(req.Context())
			r2.Header.Set(HeaderEngine, "fedcba9876543210")
			_, err := Verify(r2, &k.PublicKey, body, now)
			return err
		},
	} {
		if err := check(); !errors.Is(err, ErrSignature) {
			t.Errorf("%s: %v, want ErrSignature", name, err)
		}
	}
}
