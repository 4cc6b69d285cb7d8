package ssh

import (
	"net/netip"
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json.
func TestRedacts(t *testing.T) {
	pw := redacttest.Secret(18)
	redacttest.Check(t, []redacttest.Case{
		{Name: "Login", Value: Login{User: "alice", Source: netip.MustParseAddrPort("192.0.2.1:5000"), Password: pw}, Secret: pw},
	})
}
