package wipe

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"math/big"
	"testing"
)

func TestBorrowStringSharesBytes(t *testing.T) {
	b := []byte("s3cret")
	s := BorrowString(b)
	clear(b)
	if s != "\x00\x00\x00\x00\x00\x00" {
		t.Fatalf("wiping the bytes left the string %q", s)
	}
	if BorrowString(nil) != "" {
		t.Fatal("empty")
	}
}

func TestKey(t *testing.T) {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	Key(&ed)
	for _, b := range ed {
		if b != 0 {
			t.Fatal("ed25519 key not wiped")
		}
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	Key(ec)
	//lint:ignore SA1019 the scalar is what must be zero
	if !zero(ec.D) {
		t.Fatal("ecdsa scalar not wiped")
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	Key(rk)
	if !zero(rk.D) || !zero(rk.Primes[0]) || !zero(rk.Primes[1]) {
		t.Fatal("rsa key not wiped")
	}
}

// zero reports whether every word of x is zero (clearing the words leaves
// the length, so Sign would still say non-zero).
func zero(x *big.Int) bool {
	for _, w := range x.Bits() {
		if w != 0 {
			return false
		}
	}
	return len(x.Bits()) > 0
}
