// Package hsm holds Sallyport's long-lived keys behind one key-provider
// interface. The soft provider keeps them in a 0600 file and is meant for
// development; the PKCS#11 provider keeps them in a hardware token (or any
// PKCS#11 module, such as SoftHSM2 or a cloud HSM client library).
//
// Callers never see key material: they ask for a crypto.Signer by label, or
// ask the provider to seal and open small blobs (data keys) under an AES-256
// key that stays inside the provider.
package hsm

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"errors"
)

// Well-known key labels.
const (
	// LabelKEK is the vault's key-encryption key (AES-256): it wraps every
	// data key.
	LabelKEK = "sallyport-kek"
	// LabelSSHHostKey is the gateway's SSH host key (ECDSA P-256).
	LabelSSHHostKey = "sallyport-ssh-host"
	// LabelAuditKey signs the audit log (ECDSA P-256).
	LabelAuditKey = "sallyport-audit"
	// LabelEngineKey is the engine's ECDSA P-256 key pair; it signs and is
	// also used for P-256 ECDH.
	LabelEngineKey = "sallyport-engine"
	// LabelRDPKey signs the RDP gateway's TLS handshakes (its certificate
	// is self-signed with it, or issued for it).
	LabelRDPKey = "sallyport-rdp-tls"
)

var (
	// ErrKeyNotFound is returned when no key has the requested label.
	ErrKeyNotFound = errors.New("hsm: key not found")
	// ErrKeyExists is returned when creating a key under a label that is
	// already taken.
	ErrKeyExists = errors.New("hsm: key already exists")
	// ErrUnavailable is returned when the token or module cannot serve
	// requests right now (removed, failed, or being reopened). The error
	// wraps the cause; a later call may succeed.
	ErrUnavailable = errors.New("hsm: key provider unavailable")
	// ErrClosed is returned by a provider after Close.
	ErrClosed = errors.New("hsm: key provider closed")
	// ErrOpen is returned when sealed data fails authentication: it was
	// altered, sealed under another key, or opened with other aad.
	ErrOpen = errors.New("hsm: message authentication failed")
)

// Provider is a key store that never hands out secret key material.
// Implementations are safe for concurrent use.
type Provider interface {
	// Signer returns the ECDSA P-256 signer stored under label. Its Public
	// method returns an *ecdsa.PublicKey and Sign returns an ASN.1 DER
	// signature of the digest it is given.
	Signer(ctx context.Context, label string) (crypto.Signer, error)
	// Seal encrypts plaintext with the AES-256 key under label (AES-GCM);
	// aad is authenticated but not encrypted.
	Seal(ctx context.Context, label string, plaintext, aad []byte) ([]byte, error)
	// Open reverses Seal; it fails with ErrOpen if ciphertext or aad were
	// altered.
	Open(ctx context.Context, label string, ciphertext, aad []byte) ([]byte, error)
	// GenerateAESKey creates an AES-256 key under label; it fails with
	// ErrKeyExists if the label is taken.
	GenerateAESKey(ctx context.Context, label string) error
	// GenerateSigner creates an ECDSA P-256 key pair under label; it fails
	// with ErrKeyExists if the label is taken.
	GenerateSigner(ctx context.Context, label string) error
	// EnsureAESKey creates an AES-256 key under label if none exists.
	EnsureAESKey(ctx context.Context, label string) error
	// EnsureSigner creates an ECDSA P-256 key pair under label if none exists.
	EnsureSigner(ctx context.Context, label string) error
	// HasKey reports whether a key exists under label.
	HasKey(ctx context.Context, label string) (bool, error)
	// ECDH returns the P-256 ECDH shared secret (the x-coordinate, 32
	// bytes) between the private key of the key pair under label and peer.
	ECDH(ctx context.Context, label string, peer *ecdh.PublicKey) ([]byte, error)
	// DeleteKey destroys the key (or key pair) under label; it fails with
	// ErrKeyNotFound if there is none.
	DeleteKey(ctx context.Context, label string) error
	// Ping checks cheaply that the provider can serve requests.
	Ping(ctx context.Context) error
	// Close releases the provider's resources. Later calls fail with
	// ErrClosed.
	Close() error
}
