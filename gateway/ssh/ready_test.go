package ssh

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// TestNotReadyClosesAtOnce: while Ready fails, new connections are closed
// before the handshake, and served again once it passes.
func TestNotReadyClosesAtOnce(t *testing.T) {
	var down atomic.Bool
	f := newFixture(t, func(c *Config) {
		c.Ready = func(context.Context) error {
			if down.Load() {
				return errors.New("token removed")
			}
			return nil
		}
	})
	down.Store(true)
	if _, err := f.dial("alice@web01", "alice-pw"); err == nil {
		t.Fatal("a connection was served while not ready")
	}
	down.Store(false)
	c := f.mustDial(t, "alice@web01", "alice-pw")
	if o, _, _ := run(t, c, "back"); o != "back" {
		t.Fatalf("got %q", o)
	}
	c.Close()
}
