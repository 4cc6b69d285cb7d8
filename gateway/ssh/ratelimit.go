package ssh

import (
	"sync"
	"time"
)

// limiter is a failed-login limiter: a token bucket per key (source address
// or user name). Each failure takes a token; tokens come back at a steady
// rate up to burst. A key with no tokens is refused before any password is
// checked, so guessing costs the attacker time, not us CPU.
//
// The table is bounded: when it is full, buckets that have refilled
// completely are dropped (they carry no information), and if none has, new
// keys share one overflow bucket — which fails closed under a flood.
type limiter struct {
	burst  float64
	every  time.Duration // one token back per every
	max    int
	now    func() time.Time
	mu     sync.Mutex
	bucket map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

const overflowKey = "\x00overflow"

func newLimiter(burst int, every time.Duration, max int, now func() time.Time) *limiter {
	return &limiter{burst: float64(burst), every: every, max: max, now: now, bucket: map[string]*bucket{}}
}

// refill brings b up to date; callers hold l.mu.
func (l *limiter) refill(b *bucket, t time.Time) {
	if el := t.Sub(b.last); el > 0 {
		b.tokens += float64(el) / float64(l.every)
		if b.tokens > l.burst {
			b.tokens = l.burst
		}
		b.last = t
	}
}

// allow reports whether key may try to log in now.
func (l *limiter) allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.bucket[key]
	if !ok {
		if len(l.bucket) >= l.max {
			if ob, ok := l.bucket[overflowKey]; ok {
				l.refill(ob, l.now())
				return ob.tokens >= 1
			}
		}
		return true
	}
	l.refill(b, l.now())
	return b.tokens >= 1
}

// fail records a failed login for key.
func (l *limiter) fail(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.now()
	b, ok := l.bucket[key]
	if !ok {
		if len(l.bucket) >= l.max {
			l.sweep(t)
		}
		if len(l.bucket) >= l.max {
			key = overflowKey
			b = l.bucket[key]
		}
		if b == nil {
			b = &bucket{tokens: l.burst, last: t}
			l.bucket[key] = b
		}
	}
	l.refill(b, t)
	if b.tokens >= 1 {
		b.tokens--
	} else {
		b.tokens = 0
	}
}

// sweep drops full buckets; callers hold l.mu.
func (l *limiter) sweep(t time.Time) {
	for k, b := range l.bucket {
		l.refill(b, t)
		if b.tokens >= l.burst {
			delete(l.bucket, k)
		}
	}
}
