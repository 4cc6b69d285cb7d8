//go:build !cgo

package hsm

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"errors"
	"log/slog"
)

// errNoPKCS11 explains why a binary built without cgo cannot use a token.
var errNoPKCS11 = errors.New("hsm: this binary was built without PKCS#11 support (CGO_ENABLED=0); " +
	"PKCS#11 modules are C libraries, so rebuild with cgo enabled (CGO_ENABLED=1 and a C compiler, e.g. `make build` with gcc installed)")

// PKCS11 is the PKCS#11 key provider. This binary was built without cgo,
// so it cannot load PKCS#11 modules: OpenPKCS11 always fails and no
// PKCS11 value is ever usable.
type PKCS11 struct{}

// OpenPKCS11 fails: this binary was built without PKCS#11 support.
func OpenPKCS11(cfg PKCS11Config, _ *slog.Logger) (*PKCS11, error) {
	if _, err := cfg.sessions(); err != nil {
		return nil, err
	}
	return nil, errNoPKCS11
}

// Signer implements Provider; it always fails.
func (*PKCS11) Signer(context.Context, string) (crypto.Signer, error) { return nil, errNoPKCS11 }

// Seal implements Provider; it always fails.
func (*PKCS11) Seal(context.Context, string, []byte, []byte) ([]byte, error) {
	return nil, errNoPKCS11
}

// Open implements Provider; it always fails.
func (*PKCS11) Open(context.Context, string, []byte, []byte) ([]byte, error) {
	return nil, errNoPKCS11
}

// GenerateAESKey implements Provider; it always fails.
func (*PKCS11) GenerateAESKey(context.Context, string) error { return errNoPKCS11 }

// GenerateSigner implements Provider; it always fails.
func (*PKCS11) GenerateSigner(context.Context, string) error { return errNoPKCS11 }

// ImportSigner always fails.
func (*PKCS11) ImportSigner(context.Context, string, *ecdsa.PrivateKey) error { return errNoPKCS11 }

// EnsureAESKey implements Provider; it always fails.
func (*PKCS11) EnsureAESKey(context.Context, string) error { return errNoPKCS11 }

// EnsureSigner implements Provider; it always fails.
func (*PKCS11) EnsureSigner(context.Context, string) error { return errNoPKCS11 }

// HasKey implements Provider; it always fails.
func (*PKCS11) HasKey(context.Context, string) (bool, error) { return false, errNoPKCS11 }

// ECDH implements Provider; it always fails.
func (*PKCS11) ECDH(context.Context, string, *ecdh.PublicKey) ([]byte, error) {
	return nil, errNoPKCS11
}

// DeleteKey implements Provider; it always fails.
func (*PKCS11) DeleteKey(context.Context, string) error { return errNoPKCS11 }

// Ping implements Provider; it always fails.
func (*PKCS11) Ping(context.Context) error { return errNoPKCS11 }

// Close implements Provider.
func (*PKCS11) Close() error { return nil }

var _ Provider = (*PKCS11)(nil)
