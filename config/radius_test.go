package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct{ content, want string }{
		{"s3cret\n", "s3cret"},
		{"s3cret\r\n", "s3cret"},
		{"s3cret", "s3cret"},
		{"two words \n\n", "two words \n"},
	} {
		got, err := ReadSecretFile(write("ok", tc.content, 0o600))
		if err != nil || string(got) != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.content, got, err, tc.want)
		}
	}
	const secret = "do-not-print-me"
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"group-readable", secret, 0o640, "chmod 600"},
		{"world-readable", secret, 0o604, "chmod 600"},
		{"empty", "\n", 0o600, "is empty"},
		{"huge", strings.Repeat("x", maxSecretFile+1), 0o600, "larger than"},
	} {
		_, err := ReadSecretFile(write(tc.name, tc.content, tc.mode))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error quotes the secret: %v", tc.name, err)
		}
	}
	if _, err := ReadSecretFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	if _, err := ReadSecretFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestRADIUSClientUDP(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.secret"), []byte("alpha\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.secret"), []byte("bravo"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Parse([]byte(`auth: radius
radius:
  servers:
    - {address: 127.0.0.1, secret_file: a.secret}
    - {address: "127.0.0.2:1645", secret_file: b.secret}
  retries: 2
  hold_down: 45s
  nas_ip_address: 192.0.2.1
  max_rounds: 4
  groups_from: [filter-id]
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	rc, ac, err := c.RADIUSClient()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Validate(); err != nil {
		t.Fatalf("built config does not validate: %v", err)
	}
	if len(rc.Servers) != 2 || rc.Servers[0].Addr != "127.0.0.1:1812" || string(rc.Servers[0].Secret) != "alpha" ||
		rc.Servers[1].Addr != "127.0.0.2:1645" || string(rc.Servers[1].Secret) != "bravo" {
		t.Fatalf("servers: %v", rc.Servers)
	}
	if rc.Retries != 2 || rc.HoldDown != 45*time.Second || rc.Timeout != DefaultRADIUSTimeout ||
		rc.NASIdentifier != DefaultNASIdentifier || rc.NASIPAddress.String() != "192.0.2.1" || rc.TLS != nil {
		t.Fatalf("client config: %+v", rc)
	}
	if ac.GroupsFromClass || !ac.GroupsFromFilterID || ac.MaxRounds != 4 {
		t.Fatalf("auth config: %+v", ac)
	}
	WipeRADIUS(&rc)
	if string(rc.Servers[0].Secret) != "\x00\x00\x00\x00\x00" {
		t.Fatalf("WipeRADIUS left %q", rc.Servers[0].Secret)
	}

	if err := os.Chmod(filepath.Join(dir, "b.secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.RADIUSClient(); err == nil || !strings.Contains(err.Error(), "servers[1] (127.0.0.2:1645)") {
		t.Fatalf("readable secret file: %v", err)
	}
}

// writePEM writes a self-signed certificate and its key under dir.
func writePEM(t *testing.T, dir, name string, keyMode os.FileMode) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(keyFile, keyMode); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestRADIUSClientTLS(t *testing.T) {
	dir := t.TempDir()
	writePEM(t, dir, "ca", 0o600)
	writePEM(t, dir, "client", 0o600)
	writePEM(t, dir, "other", 0o600)
	writePEM(t, dir, "loose", 0o644)
	conf := func(ca, cert, key string) *File {
		t.Helper()
		c, err := Parse([]byte(`auth: radius
radius:
  transport: tls
  servers:
    - address: radsec.example.net
  tls:
    ca_file: `+ca+`
    cert_file: `+cert+`
    key_file: `+key+`
`), dir)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	rc, _, err := conf("ca.pem", "client.pem", "client.key").RADIUSClient()
	if err != nil {
		t.Fatal(err)
	}
	if rc.TLS == nil || rc.TLS.RootCAs == nil || len(rc.TLS.Certificates) != 1 || rc.TLS.InsecureSkipVerify {
		t.Fatalf("tls config: %+v", rc.TLS)
	}
	if len(rc.Servers) != 1 || rc.Servers[0].Addr != "radsec.example.net:2083" || len(rc.Servers[0].Secret) != 0 {
		t.Fatalf("servers: %v", rc.Servers)
	}
	if err := rc.Validate(); err != nil {
		t.Fatalf("built config does not validate: %v", err)
	}
	for _, tc := range []struct{ ca, cert, key, want string }{
		{"missing.pem", "client.pem", "client.key", "ca_file"},
		{"client.key", "client.pem", "client.key", "no PEM certificate"},
		{"ca.pem", "client.pem", "other.key", "do not form a usable pair"},
		{"ca.pem", "loose.pem", "loose.key", "chmod 600"},
		{"ca.pem", "missing.pem", "client.key", "cert_file"},
	} {
		_, _, err := conf(tc.ca, tc.cert, tc.key).RADIUSClient()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s/%s/%s: err = %v, want it to mention %q", tc.ca, tc.cert, tc.key, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("error quotes key material: %v", err)
		}
	}
}

// TestFIFONotOpened: a secret path that names a FIFO is refused at once
// instead of blocking start-up until someone writes to it.
func TestFIFONotOpened(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := ReadSecretFile(p); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading a FIFO blocked")
	}
	if _, err := Load(p); err == nil {
		t.Fatal("a FIFO was loaded as the configuration")
	}
}
