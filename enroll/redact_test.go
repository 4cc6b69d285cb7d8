package enroll

import (
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's key-bearing types. Their JSON is the
// callback API's wire form (and the keys in it are wrapped); they print
// and log without the keys.
func TestRedacts(t *testing.T) {
	key, pw := redacttest.Secret(61), redacttest.Secret(40)
	redacttest.Check(t, []redacttest.Case{
		{Name: "WrappedKey", Value: WrappedKey{Version: 2, Wrapped: key}, Secret: key, Wire: true},
		{Name: "Connector", Value: Connector{Kind: "amqp", URL: "amqps://u@h/", Secret: pw}, Secret: pw, Wire: true},
		{Name: "EngineConfig engine key", Value: EngineConfig{ID: "e", EngineKey: &WrappedKey{Version: 1, Wrapped: key}}, Secret: key, Wire: true},
		{Name: "EngineConfig site key", Value: EngineConfig{ID: "e", SiteKeys: []WrappedKey{{Version: 1, Wrapped: key}}}, Secret: key, Wire: true},
		{Name: "EngineConfig connector", Value: EngineConfig{ID: "e", Connector: Connector{Kind: "amqp", Secret: pw}}, Secret: pw, Wire: true},
	})
}
