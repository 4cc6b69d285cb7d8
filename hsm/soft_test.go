package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestSoft(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ks", "keystore.json")
	s, err := OpenSoft(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Seal(ctx, LabelKEK, []byte("x"), nil); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Seal with no key: %v", err)
	}
	if err := s.EnsureAESKey(ctx, LabelKEK); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureSigner(ctx, LabelSSHHostKey); err != nil {
		t.Fatal(err)
	}
	ct, err := s.Seal(ctx, LabelKEK, []byte("data key"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keystore mode %v, %v", fi.Mode().Perm(), err)
	}

	// Reopen: the same keys come back.
	s2, err := OpenSoft(path)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := s2.Open(ctx, LabelKEK, ct, []byte("aad"))
	if err != nil || string(pt) != "data key" {
		t.Fatalf("Open = %q, %v", pt, err)
	}
	if _, err := s2.Open(ctx, LabelKEK, ct, []byte("other")); !errors.Is(err, ErrOpen) {
		t.Fatalf("Open with other aad: %v", err)
	}
	ct[len(ct)-1] ^= 1
	if _, err := s2.Open(ctx, LabelKEK, ct, []byte("aad")); !errors.Is(err, ErrOpen) {
		t.Fatalf("Open of tampered data: %v", err)
	}
	signer, err := s2.Signer(ctx, LabelSSHHostKey)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(signer.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("signature does not verify: %v", err)
	}

	// A keystore others can read is refused.
	if err := os.Chmod(path, 0o644); err != nil { // #nosec G302 -- the test makes it too open on purpose
		t.Fatal(err)
	}
	if _, err := OpenSoft(path); err == nil {
		t.Fatal("opened a world-readable keystore")
	}
	// Garbage is refused with a clear error.
	if err := os.WriteFile(path, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenSoft(path); err == nil {
		t.Fatal("opened a corrupt keystore")
	}
}
