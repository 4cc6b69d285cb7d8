//go:build cgo

package hsm

import (
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedactsPKCS11 extends TestRedacts with the types that exist only
// with cgo.
func TestRedactsPKCS11(t *testing.T) {
	pin := redacttest.Secret(12)
	redacttest.Check(t, []redacttest.Case{
		{Name: "PKCS11", Value: &PKCS11{modName: "/lib/p11.so", token: "t", pin: pin}, Secret: pin},
	})
}
