package radius

import (
	"net/netip"
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json.
func TestRedacts(t *testing.T) {
	shared, pw := redacttest.Secret(22), redacttest.Secret(14)
	src := netip.MustParseAddrPort("192.0.2.1:5000")
	redacttest.Check(t, []redacttest.Case{
		{Name: "Server", Value: Server{Addr: "r:1812", Secret: shared}, Secret: shared},
		{Name: "Config", Value: Config{Servers: []Server{{Addr: "r:1812", Secret: shared}}}, Secret: shared},
		{Name: "Login", Value: Login{User: "alice", Source: src, Password: pw}, Secret: pw},
	})
}
