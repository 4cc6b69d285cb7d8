package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnsureToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "admin.token")
	sum, err := EnsureToken(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v (%v)", fi.Mode().Perm(), err)
	}
	raw, _ := os.ReadFile(path)
	token := strings.TrimSpace(string(raw))
	if _, err := hex.DecodeString(token); err != nil || len(token) != 64 {
		t.Fatalf("token %q is not 32 bytes of hex", token)
	}
	if sum != sha256.Sum256([]byte(token)) {
		t.Fatal("EnsureToken does not return SHA-256 of the token")
	}
	again, err := EnsureToken(path)
	if err != nil || again != sum {
		t.Fatal("EnsureToken replaced an existing token")
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureToken(path); err == nil {
		t.Fatal("accepted a token file the group can read")
	}
	for name, content := range map[string]string{"short": "abc\n", "spaces": strings.Repeat("a", 20) + " " + strings.Repeat("b", 20)} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := EnsureToken(p); err == nil {
			t.Errorf("accepted a %s token", name)
		}
	}
}

func TestEnsureTLSCert(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	cert, err := EnsureTLSCert(certPath, keyPath, []string{"vault.corp.example", "192.0.2.10"})
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "vault.corp.example", "192.0.2.10"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("certificate does not cover %s: %v", h, err)
		}
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 364*24*3600e9 || d > 366*24*3600e9 {
		t.Errorf("validity %v", d)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v (%v)", fi.Mode().Perm(), err)
	}
	again, err := EnsureTLSCert(certPath, keyPath, []string{"vault.corp.example"})
	if err != nil || !bytes.Equal(again.Certificate[0], cert.Certificate[0]) {
		t.Fatal("an existing, still valid certificate was not reused")
	}
	other, err := EnsureTLSCert(certPath, keyPath, []string{"new.corp.example"})
	if err != nil || bytes.Equal(other.Certificate[0], cert.Certificate[0]) {
		t.Fatal("a certificate missing a host name was reused")
	}
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureTLSCert(certPath, keyPath, nil); err == nil {
		t.Fatal("accepted a key file others can read")
	}
}

// startTLSAPI serves the API over TLS 1.3 with a certificate from
// EnsureTLSCert and returns a Client that trusts exactly that certificate.
func startTLSAPI(t *testing.T) (*testVault, *Client, string) {
	t.Helper()
	v := newTestVault(t)
	dir := t.TempDir()
	certPath := filepath.Join(dir, "api.crt")
	cert, err := EnsureTLSCert(certPath, filepath.Join(dir, "api.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(NewAPI(v.Vault, sha256.Sum256([]byte(testToken)), nil, discardLogger()))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(srv.URL, testToken, ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return v, c, srv.URL
}

func TestClientRoundTrip(t *testing.T) {
	v, c, _ := startTLSAPI(t)
	ctx := context.Background()
	uri, err := c.AddUser(ctx, UserSpec{Name: "alice", Password: []byte("alice-password"), TOTP: true, Groups: []string{"ops"}})
	if err != nil || !strings.HasPrefix(uri, "otpauth://totp/Sallyport:alice?secret=") {
		t.Fatalf("AddUser = %q, %v", uri, err)
	}
	if _, _, err := v.VerifyPassword(ctx, "alice", []byte("alice-password")); err != nil {
		t.Fatalf("the password did not arrive intact: %v", err)
	}
	if _, err := c.AddUser(ctx, UserSpec{Name: "alice", Password: []byte("alice-password")}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := c.AddUser(ctx, UserSpec{Name: "bob", Password: []byte("short")}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "password") {
		t.Fatalf("short password: %v", err)
	}
	users, err := c.ListUsers(ctx)
	if err != nil || len(users) != 1 || users[0].Name != "alice" || !users[0].TOTP {
		t.Fatalf("ListUsers = %+v, %v", users, err)
	}
	hk := authorizedLine(newHostKey(t))
	info, err := c.AddSecret(ctx, SecretSpec{Name: "web01", Host: "10.0.0.5", Port: 22, Username: "root", Password: []byte("target-pw"),
		HostKey: hk, Allow: []string{"alice"}})
	if err != nil || info.Name != "web01" || info.Port != 22 || info.HostKey != hk {
		t.Fatalf("AddSecret = %+v, %v", info, err)
	}
	r, err := v.loadSecret(ctx, v.db, "web01")
	if err != nil {
		t.Fatal(err)
	}
	if cred, err := v.openCredential(ctx, r); err != nil || string(cred) != "target-pw" {
		t.Fatal("the secret did not arrive intact")
	}
	list, err := c.ListSecrets(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("ListSecrets = %+v, %v", list, err)
	}
	shown, err := c.ShowSecret(ctx, "web01")
	if err != nil || shown.HostKeyFingerprint == "" {
		t.Fatalf("ShowSecret = %+v, %v", shown, err)
	}
	if err := c.RemoveSecret(ctx, "web01"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ShowSecret(ctx, "web01"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after removal: %v", err)
	}
	if err := c.RemoveUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
}

func TestClientRefusesOtherCAAndBadToken(t *testing.T) {
	_, _, url := startTLSAPI(t)
	ctx := context.Background()
	// A different self-signed certificate is not trusted.
	dir := t.TempDir()
	if _, err := EnsureTLSCert(filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key"), nil); err != nil {
		t.Fatal(err)
	}
	other, _ := os.ReadFile(filepath.Join(dir, "c.crt"))
	c, err := NewClient(url, testToken, other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListUsers(ctx); err == nil {
		t.Fatal("the client trusted a server certificate it was not given")
	}
	// Right CA, wrong token: ErrUnauthorized.
	ca := caOf(t, url)
	wrong, err := NewClient(url, strings.Repeat("f", 64), ca)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wrong.ListUsers(ctx); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
}

// caOf fetches the certificate a TLS server presents, as PEM.
func caOf(t *testing.T, url string) []byte {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(url, "https://"), &tls.Config{InsecureSkipVerify: true}) // #nosec G402 -- test fetches the cert to pin it
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: conn.ConnectionState().PeerCertificates[0].Raw})
}

func TestClientRequiresTLS13(t *testing.T) {
	dir := t.TempDir()
	cert, err := EnsureTLSCert(filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS12} // #nosec G402 -- the test needs an old server
	srv.StartTLS()
	defer srv.Close()
	ca, _ := os.ReadFile(filepath.Join(dir, "c.crt"))
	c, err := NewClient(srv.URL, testToken, ca)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListUsers(context.Background()); err == nil || errors.As(err, new(*APIError)) {
		t.Fatalf("talked to a TLS 1.2 server: %v", err)
	}
}

func TestNewClientValidation(t *testing.T) {
	dir := t.TempDir()
	if _, err := EnsureTLSCert(filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key"), nil); err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(filepath.Join(dir, "c.crt"))
	tests := []struct {
		name, url, token string
		ca               []byte
	}{
		{"http", "http://127.0.0.1:8443", testToken, ca},
		{"no host", "https://", testToken, ca},
		{"user info", "https://u:p@127.0.0.1:8443", testToken, ca},
		{"path", "https://127.0.0.1:8443/x", testToken, ca},
		{"short token", "https://127.0.0.1:8443", "abc", ca},
		{"token with newline", "https://127.0.0.1:8443", testToken + "\n", ca},
		{"no CA", "https://127.0.0.1:8443", testToken, nil},
		{"garbage CA", "https://127.0.0.1:8443", testToken, []byte("nope")},
	}
	for _, tt := range tests {
		if _, err := NewClient(tt.url, tt.token, tt.ca); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

func TestClientErrorSanitised(t *testing.T) {
	e := &APIError{Status: 400, Message: sanitize("bad \x1b[31mred\x1b[0m\n" + strings.Repeat("x", 600))}
	if strings.ContainsAny(e.Error(), "\x1b\n") || len(e.Message) > 520 {
		t.Fatalf("unsanitised: %q", e.Error())
	}
	if !errors.Is(e, ErrInvalid) {
		t.Fatal("400 does not unwrap to ErrInvalid")
	}
	if errors.Is(&APIError{Status: http.StatusInternalServerError}, ErrInvalid) {
		t.Fatal("500 unwraps to ErrInvalid")
	}
}

// FuzzParseToken: token files are operator-written bytes. The parser never
// panics, and what it accepts is printable ASCII within the bounds.
func FuzzParseToken(f *testing.F) {
	f.Add([]byte(testToken + "\n"))
	f.Add([]byte("  \t" + testToken + "\r\n"))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		tok, err := parseToken(raw)
		if err != nil {
			return
		}
		if len(tok) < minToken || len(tok) > maxToken || !bytes.Contains(raw, tok) {
			t.Fatalf("bad token accepted from %q", raw)
		}
		for _, c := range tok {
			if c <= ' ' || c > '~' {
				t.Fatalf("token with byte %#x accepted", c)
			}
		}
	})
}
