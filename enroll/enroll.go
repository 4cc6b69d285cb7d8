// Package enroll is how an engine and the vault come to trust each other:
// the engine's id and fingerprint (from its public key), the signatures on
// every request an engine makes to the vault's callback API, and the
// wrapping of keys the vault hands an approved engine to that engine's
// public key, so that only the holder of the private key (in its HSM, when
// it has one) can unwrap them, and a copied data directory opens nothing.
package enroll

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
)

// EngineID returns the id of the engine whose key is pub: the first 64
// bits of the SHA-256 of its PKIX encoding, in hex. The same key always
// gives the same id, so an engine that registers again is recognised.
func EngineID(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("enroll: engine key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8]), nil
}

// Fingerprint returns "SHA256:" and the unpadded base64 of the SHA-256 of
// pub's PKIX encoding, the form an administrator compares before approving.
func Fingerprint(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("enroll: engine key: %w", err)
	}
	sum := sha256.Sum256(der)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:]), nil
}

// ParsePublicKey parses a PKIX DER P-256 ECDSA public key.
func ParsePublicKey(der []byte) (*ecdsa.PublicKey, error) {
	if len(der) == 0 || len(der) > 512 {
		return nil, errors.New("enroll: public key: bad length")
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("enroll: public key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve.Params().Name != "P-256" {
		return nil, errors.New("enroll: public key: not ECDSA P-256")
	}
	return pub, nil
}

// MarshalPublicKey is the PKIX DER encoding of an engine's key.
func MarshalPublicKey(pub crypto.PublicKey) ([]byte, error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve.Params().Name != "P-256" {
		return nil, errors.New("enroll: engine key must be ECDSA P-256")
	}
	return x509.MarshalPKIXPublicKey(k)
}

// wrapVersion is the first byte of a wrapped blob.
const wrapVersion = 1

const wrapContext = "sallyport-wrap-v1"

// Wrap seals plaintext for the holder of the private key behind pub (an
// engine's ECDSA P-256 key, used for ECDH): a fresh ephemeral P-256 key,
// ECDH, HKDF-SHA256 (salt: both public keys; info: the label), AES-256-GCM
// with the label as additional data. label says what the blob is ("engine
// key", "site key dc-east v3"), so a blob cannot be passed off as another.
// Layout: version(1) ephemeral public key(65) nonce(12) ciphertext+tag.
func Wrap(pub *ecdsa.PublicKey, label string, plaintext []byte) ([]byte, error) {
	peer, err := pub.ECDH()
	if err != nil {
		return nil, fmt.Errorf("enroll: wrap: %w", err)
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("enroll: wrap: %w", err)
	}
	shared, err := eph.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("enroll: wrap: %w", err)
	}
	defer clear(shared)
	aead, err := wrapAEAD(shared, eph.PublicKey().Bytes(), peer.Bytes(), label)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, 1+65+aead.NonceSize()+len(plaintext)+aead.Overhead())
	out = append(out, wrapVersion)
	out = append(out, eph.PublicKey().Bytes()...)
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("enroll: wrap: %w", err)
	}
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, []byte(wrapContext+"\x00"+label)), nil
}

// ECDHFunc computes the ECDH shared secret between the unwrapping party's
// private key and peer (hsm.Provider.ECDH, bound to the engine's label).
type ECDHFunc func(peer *ecdh.PublicKey) ([]byte, error)

// ErrUnwrap is returned for a blob that does not open: altered, wrapped to
// another key, or under another label.
var ErrUnwrap = errors.New("enroll: wrapped key does not open")

// Unwrap reverses Wrap. self is the unwrapping party's public key; ecdhFn
// does the ECDH with its private key (which may stay in an HSM). The
// caller wipes the result.
func Unwrap(ecdhFn ECDHFunc, self *ecdsa.PublicKey, label string, blob []byte) ([]byte, error) {
	if len(blob) < 1+65+12+16 || blob[0] != wrapVersion {
		return nil, ErrUnwrap
	}
	ephPub, err := ecdh.P256().NewPublicKey(blob[1:66])
	if err != nil {
		return nil, ErrUnwrap
	}
	selfECDH, err := self.ECDH()
	if err != nil {
		return nil, fmt.Errorf("enroll: unwrap: %w", err)
	}
	shared, err := ecdhFn(ephPub)
	if err != nil {
		return nil, fmt.Errorf("enroll: unwrap: %w", err)
	}
	defer clear(shared)
	aead, err := wrapAEAD(shared, ephPub.Bytes(), selfECDH.Bytes(), label)
	if err != nil {
		return nil, err
	}
	rest := blob[66:]
	pt, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], []byte(wrapContext+"\x00"+label))
	if err != nil {
		return nil, ErrUnwrap
	}
	return pt, nil
}

func wrapAEAD(shared, ephPub, peerPub []byte, label string) (cipher.AEAD, error) {
	salt := make([]byte, 0, len(ephPub)+len(peerPub))
	salt = append(append(salt, ephPub...), peerPub...)
	key, err := hkdf.Key(sha256.New, shared, salt, wrapContext+" "+label, 32)
	if err != nil {
		return nil, fmt.Errorf("enroll: derive: %w", err)
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	return cipher.NewGCM(block)
}
