package rabbitmqtest

import (
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts checks that a Broker keeps its password out of fmt, slog
// and encoding/json.
func TestRedacts(t *testing.T) {
	pw := redacttest.Secret(24)
	redacttest.Check(t, []redacttest.Case{
		{Name: "Broker", Value: &Broker{AMQPPort: 5672, User: "sallyport", Password: pw}, Secret: pw},
	})
}
