package builtin

import (
	"testing"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/connector/connectortest"
)

// TestContract runs the connector contract over clients of one server.
// The contract's queues are not site queues, so this server lifts the
// access rule (allowAnyQueue, which only this package's tests can set).
func TestContract(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(50)
	defer m.Close()
	auth := newAuth()
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: auth, allowAnyQueue: true})
	connectortest.Run(t, connectortest.Options{
		New: func(t *testing.T) connector.Connector {
			e := newEngine(t, "contract")
			auth.add(e)
			return dial(t, p, ts.url, e)
		},
		MaxLength: 50,
	})
}
