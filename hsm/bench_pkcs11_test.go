//go:build cgo

package hsm

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/miekg/pkcs11"
)

// BenchmarkSignProviderVsRaw signs on SoftHSM2 through the provider (session
// pool, handle cache, ASN.1 encoding) and with bare C_SignInit/C_Sign calls
// on one session, in the same run: the ratio is the provider's overhead.
func BenchmarkSignProviderVsRaw(b *testing.B) {
	label, _ := newToken(b)
	p, _ := openToken(b, label, 4)
	ctx := context.Background()
	if err := p.GenerateSigner(ctx, LabelSSHHostKey); err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("benchmark"))
	b.Run("provider", func(b *testing.B) {
		s, err := p.Signer(ctx, LabelSSHHostKey)
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, "signs/s")
	})
	b.Run("raw", func(b *testing.B) {
		err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
			hs, err := findObjects(c, sh, LabelSSHHostKey, pkcs11.CKO_PRIVATE_KEY, 2)
			if err != nil {
				return err
			}
			mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.SignInit(sh, mech, hs[0]); err != nil {
					return err
				}
				if _, err := c.Sign(sh, d[:]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		reportRate(b, "signs/s")
	})
}
