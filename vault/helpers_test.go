package vault

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/hsm"
)

// recorder is an audit.Sink that keeps events for assertions.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
}

func (r *recorder) Record(_ context.Context, e audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// find returns the events of kind.
func (r *recorder) find(kind string) []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []audit.Event
	for _, e := range r.events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// syncBuffer is a goroutine-safe log destination.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// clock is a settable clock for WithClock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// testVault is a vault in a temporary directory with its key provider,
// audit recorder and log buffer.
type testVault struct {
	*Vault
	dir   string
	path  string
	keys  *hsm.Soft
	audit *recorder
	logs  *syncBuffer
}

func newTestVault(t testing.TB, opts ...Option) *testVault {
	t.Helper()
	dir := t.TempDir()
	keys, err := hsm.OpenSoft(filepath.Join(dir, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.EnsureAESKey(context.Background(), hsm.LabelKEK); err != nil {
		t.Fatal(err)
	}
	tv := &testVault{dir: dir, path: filepath.Join(dir, "data", "vault.db"), keys: keys, audit: &recorder{}, logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(tv.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	v, err := Open(context.Background(), tv.path, keys, log, tv.audit, opts...)
	if err != nil {
		t.Fatal(err)
	}
	tv.Vault = v
	t.Cleanup(func() { v.Close() })
	return tv
}

// discardLogger drops everything.
func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newHostKey returns a fresh ed25519 public key.
func newHostKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// authorizedLine renders k as an authorized_keys line without newline.
func authorizedLine(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// newPrivateKeyPEM returns an unencrypted OpenSSH ed25519 private key.
func newPrivateKeyPEM(t testing.TB) []byte {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block)
}

// newEncryptedKeyPEM returns a passphrase-protected OpenSSH private key.
func newEncryptedKeyPEM(t testing.TB) []byte {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("passphrase"))
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block)
}

// passwordSecret is a valid password secret spec for name.
func passwordSecret(t testing.TB, name, password string, allow ...string) SecretSpec {
	t.Helper()
	return SecretSpec{
		Name: name, Host: "10.0.0.5", Port: 22, Username: "root",
		Password: []byte(password), HostKey: authorizedLine(newHostKey(t)), Allow: allow,
	}
}
