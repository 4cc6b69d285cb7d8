package main

import (
	"context"
	"sync"
	"time"

	"github.com/sallyport/sallyport/hsm"
)

// readiness answers the gateway's per-connection "can the host key sign?"
// from a cache of the key provider's Ping, refreshed at most once a second
// so that a burst of connections costs one round trip to the token.
type readiness struct {
	keys hsm.Provider
	ttl  time.Duration

	mu      sync.Mutex
	checked time.Time
	err     error
}

func newReadiness(keys hsm.Provider) *readiness { return &readiness{keys: keys, ttl: time.Second} }

func (r *readiness) Ready(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) >= r.ttl {
		// The answer is cached for every connection: one whose own context
		// is already cancelled (its client gone) must not record that as
		// the provider's state.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		r.err = r.keys.Ping(pctx)
		cancel()
		r.checked = time.Now()
	}
	return r.err
}
