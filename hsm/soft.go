package hsm

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// softFile is the on-disk form of a soft keystore.
type softFile struct {
	Version int                `json:"version"`
	Keys    map[string]softKey `json:"keys"`
}

// String leaves out the key material. softFile's JSON is the keystore's
// format and holds the material on purpose; it is written only to the
// keystore file.
func (f softFile) String() string {
	return fmt.Sprintf("soft keystore v%d, %d keys [REDACTED]", f.Version, len(f.Keys))
}

// GoString leaves out the key material under %#v.
func (f softFile) GoString() string { return f.String() }

// LogValue leaves out the key material in slog records.
func (f softFile) LogValue() slog.Value { return slog.StringValue(f.String()) }

type softKey struct {
	Type     string `json:"type"` // "aes256" or "ecdsa-p256"
	Material []byte `json:"material"`
}

// String leaves out the key material (softKey's JSON is the keystore's
// format, see softFile).
func (k softKey) String() string { return k.Type + " key [REDACTED]" }

// GoString leaves out the key material under %#v.
func (k softKey) GoString() string { return k.String() }

// LogValue leaves out the key material in slog records.
func (k softKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// Soft is the development key provider: keys live in one JSON file with mode
// 0600. Anyone who can read that file can decrypt every secret in the vault,
// which is why production gateways use a PKCS#11 token instead.
type Soft struct {
	path string

	mu      sync.Mutex
	closed  bool
	aeads   map[string]cipher.AEAD
	signers map[string]*ecdsa.PrivateKey
	file    softFile
}

// String names the keystore without its keys (fmt prints a *Soft's
// fields, the key material among them, at the top level).
func (s *Soft) String() string { return "hsm.Soft{" + s.path + " [REDACTED]}" }

// GoString leaves out the keys under %#v.
func (s *Soft) GoString() string { return s.String() }

// LogValue leaves out the keys in slog records.
func (s *Soft) LogValue() slog.Value { return slog.StringValue(s.String()) }

// OpenSoft opens the soft keystore at path, creating an empty one (and its
// directory, 0700) if it does not exist. It refuses a keystore file that
// other users can read.
func OpenSoft(path string) (*Soft, error) {
	s := &Soft{path: path, aeads: map[string]cipher.AEAD{}, signers: map[string]*ecdsa.PrivateKey{}}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("soft keystore: %w", err)
		}
		s.file = softFile{Version: 1, Keys: map[string]softKey{}}
		if err := s.save(); err != nil {
			return nil, err
		}
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("soft keystore: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("soft keystore %s: mode %v is readable by others; chmod 600 it", path, fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path) // #nosec G304 -- operator-chosen keystore path
	if err != nil {
		return nil, fmt.Errorf("soft keystore: %w", err)
	}
	if err := json.Unmarshal(raw, &s.file); err != nil {
		return nil, fmt.Errorf("soft keystore %s: not a keystore file", path)
	}
	if s.file.Version != 1 {
		return nil, fmt.Errorf("soft keystore %s: unsupported version %d", path, s.file.Version)
	}
	if s.file.Keys == nil {
		s.file.Keys = map[string]softKey{}
	}
	for label, k := range s.file.Keys {
		if err := s.load(label, k); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Soft) load(label string, k softKey) error {
	switch k.Type {
	case "aes256":
		if len(k.Material) != 32 {
			return fmt.Errorf("soft keystore: key %q has a bad length", label)
		}
		block, err := aes.NewCipher(k.Material)
		if err != nil {
			return fmt.Errorf("soft keystore: key %q: %w", label, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return fmt.Errorf("soft keystore: key %q: %w", label, err)
		}
		s.aeads[label] = aead
	case "ecdsa-p256":
		key, err := x509.ParseECPrivateKey(k.Material)
		if err != nil || key.Curve != elliptic.P256() {
			return fmt.Errorf("soft keystore: key %q is not an ECDSA P-256 key", label)
		}
		s.signers[label] = key
	default:
		return fmt.Errorf("soft keystore: key %q has unknown type %q", label, k.Type)
	}
	return nil
}

// save writes the keystore atomically: a 0600 temporary file renamed over the old one.
func (s *Soft) save() error {
	raw, err := json.Marshal(s.file)
	if err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".keystore-*")
	if err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	defer os.Remove(tmp.Name()) // #nosec G104 -- best effort; gone after rename
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("soft keystore: %w", err)
	}
	if _, err := tmp.Write(raw); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("soft keystore: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("soft keystore: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	return nil
}

// GenerateAESKey implements Provider.
func (s *Soft) GenerateAESKey(_ context.Context, label string) error {
	k := softKey{Type: "aes256", Material: make([]byte, 32)}
	if _, err := rand.Read(k.Material); err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.add(label, k)
}

// GenerateSigner implements Provider.
func (s *Soft) GenerateSigner(_ context.Context, label string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.add(label, softKey{Type: "ecdsa-p256", Material: der})
}

// EnsureAESKey implements Provider.
func (s *Soft) EnsureAESKey(ctx context.Context, label string) error {
	if err := s.GenerateAESKey(ctx, label); err != nil && !errors.Is(err, ErrKeyExists) {
		return err
	}
	return nil
}

// EnsureSigner implements Provider.
func (s *Soft) EnsureSigner(ctx context.Context, label string) error {
	if err := s.GenerateSigner(ctx, label); err != nil && !errors.Is(err, ErrKeyExists) {
		return err
	}
	return nil
}

// add stores a new key; s.mu must be held.
func (s *Soft) add(label string, k softKey) error {
	if s.closed {
		return ErrClosed
	}
	if _, ok := s.file.Keys[label]; ok {
		return fmt.Errorf("%w: %q", ErrKeyExists, label)
	}
	if err := s.load(label, k); err != nil {
		return err
	}
	s.file.Keys[label] = k
	if err := s.save(); err != nil {
		delete(s.file.Keys, label)
		delete(s.aeads, label)
		delete(s.signers, label)
		return err
	}
	return nil
}

// HasKey implements Provider.
func (s *Soft) HasKey(_ context.Context, label string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, ErrClosed
	}
	_, ok := s.file.Keys[label]
	return ok, nil
}

// DeleteKey implements Provider.
func (s *Soft) DeleteKey(_ context.Context, label string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	k, ok := s.file.Keys[label]
	if !ok {
		return fmt.Errorf("%w: %q", ErrKeyNotFound, label)
	}
	delete(s.file.Keys, label)
	if err := s.save(); err != nil {
		s.file.Keys[label] = k
		return err
	}
	clear(k.Material)
	delete(s.aeads, label)
	delete(s.signers, label)
	return nil
}

// Ping implements Provider; the soft keystore is always available until
// it is closed.
func (s *Soft) Ping(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return nil
}

// signer returns the ECDSA key under label.
func (s *Soft) signer(label string) (*ecdsa.PrivateKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	k, ok := s.signers[label]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, label)
	}
	return k, nil
}

// Signer implements Provider.
func (s *Soft) Signer(_ context.Context, label string) (crypto.Signer, error) {
	k, err := s.signer(label)
	if err != nil {
		return nil, err
	}
	return &softSigner{s: s, label: label, pub: &k.PublicKey}, nil
}

// softSigner signs with a soft key without handing the private key out.
type softSigner struct {
	s     *Soft
	label string
	pub   *ecdsa.PublicKey
}

// Public returns the *ecdsa.PublicKey.
func (g *softSigner) Public() crypto.PublicKey { return g.pub }

// Sign returns an ASN.1 DER ECDSA signature of digest.
func (g *softSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	k, err := g.s.signer(g.label)
	if err != nil {
		return nil, err
	}
	if err := checkDigest(digest, opts); err != nil {
		return nil, err
	}
	return ecdsa.SignASN1(r, k, digest)
}

// ECDH implements Provider.
func (s *Soft) ECDH(_ context.Context, label string, peer *ecdh.PublicKey) ([]byte, error) {
	if err := checkPeer(peer); err != nil {
		return nil, err
	}
	k, err := s.signer(label)
	if err != nil {
		return nil, err
	}
	priv, err := k.ECDH()
	if err != nil {
		return nil, fmt.Errorf("soft keystore: key %q: %w", label, err)
	}
	secret, err := priv.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("soft keystore: ECDH with key %q: %w", label, err)
	}
	return secret, nil
}

// ExportSigner returns a copy of the ECDSA private key under label. It
// exists for `sallyport keys migrate`, which moves the SSH host key from
// the soft keystore into a token so that clients' known_hosts stay valid.
func (s *Soft) ExportSigner(label string) (*ecdsa.PrivateKey, error) {
	k, err := s.signer(label)
	if err != nil {
		return nil, err
	}
	raw, err := k.Bytes()
	if err != nil {
		return nil, fmt.Errorf("soft keystore: key %q: %w", label, err)
	}
	defer clear(raw)
	out, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), raw)
	if err != nil {
		return nil, fmt.Errorf("soft keystore: key %q: %w", label, err)
	}
	return out, nil
}

func (s *Soft) aead(label string) (cipher.AEAD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	a, ok := s.aeads[label]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, label)
	}
	return a, nil
}

// Seal implements Provider. The output is nonce || ciphertext || tag.
func (s *Soft) Seal(_ context.Context, label string, plaintext, aad []byte) ([]byte, error) {
	a, err := s.aead(label)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, a.NonceSize(), a.NonceSize()+len(plaintext)+a.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("soft keystore: %w", err)
	}
	return a.Seal(nonce, nonce, plaintext, aad), nil
}

// Open implements Provider.
func (s *Soft) Open(_ context.Context, label string, ciphertext, aad []byte) ([]byte, error) {
	a, err := s.aead(label)
	if err != nil {
		return nil, err
	}
	if len(ciphertext) < a.NonceSize()+a.Overhead() {
		return nil, ErrOpen
	}
	pt, err := a.Open(nil, ciphertext[:a.NonceSize()], ciphertext[a.NonceSize():], aad)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// Close implements Provider: it forgets the keys (wiping the encoded key
// material it holds) and makes later calls fail with ErrClosed. The file
// is left as it is.
func (s *Soft) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for label, k := range s.file.Keys {
		clear(k.Material)
		delete(s.file.Keys, label)
	}
	clear(s.aeads)
	clear(s.signers)
	return nil
}

var _ Provider = (*Soft)(nil)
