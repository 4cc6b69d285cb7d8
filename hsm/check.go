package hsm

import (
	"crypto"
	"crypto/ecdh"
	"errors"
	"fmt"
)

// checkDigest refuses a digest whose length does not match the hash named
// by opts (when opts names one).
func checkDigest(digest []byte, opts crypto.SignerOpts) error {
	if len(digest) == 0 {
		return errors.New("hsm: empty digest")
	}
	if opts == nil {
		return nil
	}
	h := opts.HashFunc()
	if h == 0 {
		return nil
	}
	size, ok := hashSize(h)
	if !ok {
		return fmt.Errorf("hsm: unknown hash function %d", uint(h))
	}
	if len(digest) != size {
		return fmt.Errorf("hsm: digest is %d bytes, %v needs %d", len(digest), h, size)
	}
	return nil
}

// hashSize is h.Size without its panic on an unknown hash.
func hashSize(h crypto.Hash) (n int, ok bool) {
	defer func() {
		if recover() != nil {
			n, ok = 0, false
		}
	}()
	return h.Size(), true
}

// checkPeer refuses a missing or non-P-256 ECDH peer key.
func checkPeer(peer *ecdh.PublicKey) error {
	if peer == nil {
		return errors.New("hsm: ECDH: no peer public key")
	}
	if peer.Curve() != ecdh.P256() {
		return errors.New("hsm: ECDH: peer key is not on P-256")
	}
	return nil
}
