package builtin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's key-bearing types: each must keep the
// key out of fmt, slog and encoding/json, even a raw private key given
// as the signer.
func TestRedacts(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	redacttest.Check(t, []redacttest.Case{
		{Name: "ClientConfig", Value: ClientConfig{URL: "wss://v:8671/v1/connector", EngineID: "e", Signer: key}, Secret: redacttest.ECDSAScalar(t, key)},
	})
}
