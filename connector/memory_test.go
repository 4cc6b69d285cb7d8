package connector_test

import (
	"testing"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/connector/connectortest"
)

// TestMemoryContract runs the contract over sessions of one Memory, the
// way the built-in connector's engines share the vault's queues.
func TestMemoryContract(t *testing.T) {
	m := connector.NewMemory(50)
	defer m.Close()
	connectortest.Run(t, connectortest.Options{
		New: func(t *testing.T) connector.Connector {
			s := m.Session()
			t.Cleanup(func() { _ = s.Close() })
			return s
		},
		MaxLength: 50,
	})
}

func TestMemoryClose(t *testing.T) {
	m := connector.NewMemory(0)
	s := m.Session()
	_ = m.Close()
	if err := s.Publish(t.Context(), "q", []byte("x"), 0); err != connector.ErrClosed {
		t.Fatalf("publish through a session of a closed Memory: %v", err)
	}
}
