package hsm

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// softFile is the on-disk form of a soft keystore.
type softFile struct {
	Version int                `json:"version"`
	Keys    map[string]softKey `json:"keys"`
}

type softKey struct {
	Type     string `json:"type"` // "aes256" or "ecdsa-p256"
	Material []byte `json:"material"`
}

// Soft is the development key provider: keys live in one JSON file with mode
// 0600. Anyone who can read that file can decrypt every secret in the vault,
// which is why production gateways use a PKCS#11 token instead.
type Soft struct {
	path string

	mu      sync.Mutex
	aeads   map[string]cipher.AEAD
	signers map[string]*ecdsa.PrivateKey
	file    softFile
}

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

// EnsureAESKey implements Provider.
func (s *Soft) EnsureAESKey(_ context.Context, label string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.file.Keys[label]; ok {
		return nil
	}
	k := softKey{Type: "aes256", Material: make([]byte, 32)}
	if _, err := rand.Read(k.Material); err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	return s.add(label, k)
}

// EnsureSigner implements Provider.
func (s *Soft) EnsureSigner(_ context.Context, label string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.file.Keys[label]; ok {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	return s.add(label, softKey{Type: "ecdsa-p256", Material: der})
}

func (s *Soft) add(label string, k softKey) error {
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

// Signer implements Provider.
func (s *Soft) Signer(_ context.Context, label string) (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.signers[label]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, label)
	}
	return k, nil
}

func (s *Soft) aead(label string) (cipher.AEAD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
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

// ErrOpen is returned when sealed data fails authentication.
var ErrOpen = errors.New("hsm: sealed data failed authentication")

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

// Close implements Provider.
func (s *Soft) Close() error { return nil }

var _ Provider = (*Soft)(nil)
