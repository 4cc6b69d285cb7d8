package admit

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"time"
)

// buckets is a fixed-size table of token buckets keyed by 64-bit salted
// hashes. Keys are hashes, never the client's bytes, so an entry costs the
// same whatever a client sends, and nobody without the process's random
// seed can aim two keys at one bucket.
//
// A full table makes room by dropping entries that have refilled (they
// carry no information) among a sample, or else the sampled entry with the
// most tokens. It never fails closed for everyone: a flood of new keys only
// evicts the buckets that say least about anyone.
type buckets struct {
	burst float64
	every time.Duration // one token back per every
	floor float64       // tokens never go below this (≤ 0: how much debt is remembered)
	max   int
	m     map[uint64]bucket
}

type bucket struct {
	tokens float64
	last   int64 // unix nanoseconds of the last refill
}

// sample is how many entries a full table looks at to choose one to drop.
const sample = 16

func newBuckets(burst int, every time.Duration, floor float64, max int) *buckets {
	return &buckets{burst: float64(burst), every: every, floor: floor, max: max, m: make(map[uint64]bucket)}
}

// refilled returns b brought up to now.
func (t *buckets) refilled(b bucket, now int64) bucket {
	if el := now - b.last; el > 0 {
		b.tokens = min(t.burst, b.tokens+float64(el)/float64(t.every))
		b.last = now
	}
	return b
}

// tokens returns k's tokens now; an unknown key has a full bucket.
func (t *buckets) tokens(k uint64, now time.Time) float64 {
	b, ok := t.m[k]
	if !ok {
		return t.burst
	}
	return t.refilled(b, now.UnixNano()).tokens
}

// take spends one token of k if it has one and reports whether it did.
func (t *buckets) take(k uint64, now time.Time) bool {
	b := t.get(k, now)
	if b.tokens < 1 {
		t.m[k] = b
		return false
	}
	b.tokens--
	t.m[k] = b
	return true
}

// spend takes one token from k whether or not it has one, down to floor:
// a failure that happened is remembered even when the budget is spent.
func (t *buckets) spend(k uint64, now time.Time) {
	b := t.get(k, now)
	b.tokens = max(t.floor, b.tokens-1)
	t.m[k] = b
}

// forget drops k: its bucket is full again.
func (t *buckets) forget(k uint64) { delete(t.m, k) }

// get returns k's bucket brought up to now, making room for it if new.
func (t *buckets) get(k uint64, now time.Time) bucket {
	ns := now.UnixNano()
	if b, ok := t.m[k]; ok {
		return t.refilled(b, ns)
	}
	if len(t.m) >= t.max {
		t.evict(ns)
	}
	return bucket{tokens: t.burst, last: ns}
}

// evict drops one entry: a refilled one if the sample has it, else the
// sampled entry with the most tokens. Go starts every map iteration at a
// random place, which makes the sample random.
func (t *buckets) evict(now int64) {
	var victim uint64
	best, seen := -1.0e300, 0
	for k, b := range t.m {
		tok := t.refilled(b, now).tokens
		if tok >= t.burst {
			delete(t.m, k)
			return
		}
		if tok > best {
			victim, best = k, tok
		}
		if seen++; seen == sample {
			break
		}
	}
	delete(t.m, victim)
}

// stamps is a fixed-size table of times keyed by hashes: when each key was
// last seen. A full table drops the oldest entry of a sample.
type stamps struct {
	max int
	m   map[uint64]int64
}

func newStamps(max int) *stamps { return &stamps{max: max, m: make(map[uint64]int64)} }

// seenSince reports whether k was put at or after t.
func (s *stamps) seenSince(k uint64, t time.Time) bool {
	at, ok := s.m[k]
	return ok && at >= t.UnixNano()
}

func (s *stamps) put(k uint64, now time.Time) {
	if _, ok := s.m[k]; !ok && len(s.m) >= s.max {
		var victim uint64
		oldest, seen := int64(1<<63-1), 0
		for k, at := range s.m {
			if at < oldest {
				victim, oldest = k, at
			}
			if seen++; seen == sample {
				break
			}
		}
		delete(s.m, victim)
	}
	s.m[k] = now.UnixNano()
}

// hasher makes the salted 64-bit keys of the tables.
type hasher struct{ seed maphash.Seed }

func newHasher() hasher { return hasher{seed: maphash.MakeSeed()} }

// Domain bytes keep the three kinds of key apart.
const (
	domainSource byte = iota + 1
	domainUser
	domainPair
)

func (h hasher) key(domain byte, user string, src netip.Prefix) uint64 {
	var mh maphash.Hash
	mh.SetSeed(h.seed)
	_ = mh.WriteByte(domain)
	if domain != domainSource {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(user))) // #nosec G115 -- only a separator; the length is bounded by the caller
		_, _ = mh.Write(n[:])
		_, _ = mh.WriteString(user)
	}
	if domain != domainUser {
		a := src.Addr().As16()
		_, _ = mh.Write(a[:])
		_ = mh.WriteByte(byte(src.Bits())) // #nosec G115 -- 0..128
	}
	return mh.Sum64()
}
