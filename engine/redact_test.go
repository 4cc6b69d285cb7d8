package engine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json.
func TestRedacts(t *testing.T) {
	key, pw := redacttest.Secret(32), redacttest.Secret(24)
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	creds := NewCredentials(nil, "east", "e1", Key{Bytes: key, Version: 1}, slog.New(slog.DiscardHandler))
	w := newWorker(nil, "east", "e1", creds, nil, nil)
	w.setSiteKeys(map[int][]byte{1: key})
	redacttest.Check(t, []redacttest.Case{
		{Name: "Key", Value: Key{Bytes: key, Version: 1}, Secret: key},
		{Name: "ConnectorSettings", Value: ConnectorSettings{Kind: "amqp", URL: "amqps://u@h/", Secret: pw, Site: "east"}, Secret: pw},
		// A raw private key as the signer (tests do that): encoding/json
		// would print its scalar.
		{Name: "ConnectorSettings signer", Value: ConnectorSettings{Kind: "builtin", Signer: signer}, Secret: redacttest.ECDSAScalar(t, signer)},
		{Name: "Credentials", Value: creds, Secret: key},
		{Name: "worker", Value: w, Secret: key},
	})
}
