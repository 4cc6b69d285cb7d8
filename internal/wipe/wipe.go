// Package wipe holds the two tricks that let a credential handed to
// x/crypto/ssh be wiped afterwards: a string that shares a byte slice's
// memory (x/crypto/ssh takes passwords as strings, and a string(b)
// conversion would leave a copy nobody can clear), and zeroing what can
// be reached of a parsed private key.
package wipe

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"math/big"
	"unsafe"
)

// BorrowString returns a string that shares b's bytes. Wiping b wipes it:
// the caller must not let the string outlive b's use, and must not wipe b
// while the string may still be read.
func BorrowString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b)) // #nosec G103 -- lets a credential handed to x/crypto/ssh be wiped afterwards
}

// Key zeroes what it can reach of a parsed private key: all of an Ed25519
// key; the big integers of RSA and ECDSA keys (crypto/rsa and crypto/ecdsa
// also keep precomputed forms out of reach; SECURITY.md says so).
func Key(k any) {
	switch k := k.(type) {
	case *ed25519.PrivateKey:
		clear(*k)
	case ed25519.PrivateKey:
		clear(k)
	case *ecdsa.PrivateKey:
		//lint:ignore SA1019 D is deprecated for use, but it still holds the scalar: zero it.
		wipeInt(k.D)
	case *rsa.PrivateKey:
		wipeInt(k.D)
		for _, p := range k.Primes {
			wipeInt(p)
		}
		wipeInt(k.Precomputed.Dp)
		wipeInt(k.Precomputed.Dq)
		wipeInt(k.Precomputed.Qinv)
	}
}

func wipeInt(x *big.Int) {
	if x != nil {
		clear(x.Bits())
	}
}
