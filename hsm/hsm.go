// Package hsm holds Sallyport's long-lived keys behind one key-provider
// interface. The soft provider keeps them in a 0600 file and is meant for
// development; a PKCS#11 provider keeps them in a hardware token.
//
// Callers never see key material: they ask for a crypto.Signer by label, or
// ask the provider to seal and open small blobs (data keys) under an AES-256
// key that stays inside the provider.
package hsm

import (
	"context"
	"crypto"
	"errors"
)

// Well-known key labels.
const (
	// LabelKEK is the vault's key-encryption key: it wraps every data key.
	LabelKEK = "sallyport-kek"
	// LabelSSHHostKey is the gateway's SSH host key (ECDSA P-256).
	LabelSSHHostKey = "sallyport-ssh-host"
)

// ErrKeyNotFound is returned when no key has the requested label.
var ErrKeyNotFound = errors.New("hsm: key not found")

// Provider is a key store that never hands out secret key material.
type Provider interface {
	// Signer returns the ECDSA P-256 signer stored under label.
	Signer(ctx context.Context, label string) (crypto.Signer, error)
	// Seal encrypts plaintext with the AES-256 key under label (AES-GCM);
	// aad is authenticated but not encrypted.
	Seal(ctx context.Context, label string, plaintext, aad []byte) ([]byte, error)
	// Open reverses Seal; it fails if ciphertext or aad were altered.
	Open(ctx context.Context, label string, ciphertext, aad []byte) ([]byte, error)
	// EnsureAESKey creates an AES-256 key under label if none exists.
	EnsureAESKey(ctx context.Context, label string) error
	// EnsureSigner creates an ECDSA P-256 key pair under label if none exists.
	EnsureSigner(ctx context.Context, label string) error
	// Close releases the provider's resources.
	Close() error
}
