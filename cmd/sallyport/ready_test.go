package main

import (
	"context"
	"testing"

	"github.com/sallyport/sallyport/hsm"
)

// pingProvider is a key provider whose Ping honours its context, as the
// PKCS#11 provider's does.
type pingProvider struct{ hsm.Provider }

func (pingProvider) Ping(ctx context.Context) error { return ctx.Err() }

// A connection whose context is already cancelled (its client went away)
// must not make the cached answer "not ready" for the connections after it.
func TestReadinessIgnoresCallerCancel(t *testing.T) {
	r := newReadiness(pingProvider{})
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	_ = r.Ready(gone)
	if err := r.Ready(context.Background()); err != nil {
		t.Fatalf("the next connection is refused: %v", err)
	}
}
