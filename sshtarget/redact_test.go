package sshtarget

import (
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json.
func TestRedacts(t *testing.T) {
	pw := redacttest.Secret(20)
	key := redacttest.Secret(64)
	redacttest.Check(t, []redacttest.Case{
		{Name: "Login with a password", Value: Login{Host: "192.0.2.1", Port: 22, User: "root", Password: pw, HostKey: []byte("pin")}, Secret: pw},
		{Name: "Login with a key", Value: Login{Host: "192.0.2.1", User: "root", PrivateKey: key}, Secret: key},
	})
}
