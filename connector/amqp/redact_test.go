package amqp

import (
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json.
func TestRedacts(t *testing.T) {
	pw := redacttest.Secret(26)
	redacttest.Check(t, []redacttest.Case{
		{Name: "Config", Value: Config{URL: "amqps://u@h/", Password: pw}, Secret: pw},
		{Name: "plainAuth", Value: &plainAuth{user: "u", pass: pw}, Secret: pw},
	})
}
