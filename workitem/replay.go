package workitem

import (
	"sync"
	"time"
)

// DefaultReplayEntries bounds a ReplayCache.
const DefaultReplayEntries = 1 << 20

// ReplayCache remembers the ids of items already taken, each until its
// item expires, so that an item delivered twice (a broker's redelivery, or
// a replay by someone who copied it) is acted on once. It is bounded: when
// full of unexpired ids it refuses new ones (fails closed) rather than
// forgetting one that might be replayed.
type ReplayCache struct {
	max int
	now func() time.Time

	mu      sync.Mutex
	seen    map[string]time.Time
	refused int64
}

// NewReplayCache returns a cache of at most max ids (0: the default).
func NewReplayCache(max int, now func() time.Time) *ReplayCache {
	if max <= 0 {
		max = DefaultReplayEntries
	}
	if now == nil {
		now = time.Now
	}
	return &ReplayCache{max: max, now: now, seen: map[string]time.Time{}}
}

// Take records id, valid until expiry, and reports whether it was new.
// false means a replay (or, when the cache is full of live ids, that it
// could not be recorded: the item must not be acted on either way).
func (c *ReplayCache) Take(id string, expiry time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if exp, ok := c.seen[id]; ok && now.Before(exp) {
		return false
	}
	if len(c.seen) >= c.max {
		for k, exp := range c.seen {
			if !now.Before(exp) {
				delete(c.seen, k)
			}
		}
		if len(c.seen) >= c.max {
			c.refused++
			return false
		}
	}
	c.seen[id] = expiry
	return true
}

// Forget drops id: the item it named was not acted on, and may come again
// (a redelivery after a failure to apply it).
func (c *ReplayCache) Forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seen, id)
}

// Len returns how many ids are remembered.
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
