package admit

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock               { return &clock{t: time.Unix(1_800_000_000, 0)} }
func pfx(s string) netip.Prefix      { return SourceOf(netip.MustParseAddr(s), 32, 64) }
func mustLogins(t *testing.T, c LoginConfig) *Logins {
	t.Helper()
	l, err := NewLogins(c)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLoginsPairBudgetSparesOthers(t *testing.T) {
	clk := newClock()
	l := mustLogins(t, LoginConfig{Now: clk.now})
	nat, home := pfx("192.0.2.1"), pfx("198.51.100.7")
	for i := range DefaultPairBurst {
		if d := l.Check("alice", nat); !d.Allow {
			t.Fatalf("attempt %d refused: %s", i, d.Reason)
		}
		l.Failed("alice", nat)
	}
	if d := l.Check("alice", nat); d.Allow || d.Reason != RefusedPair {
		t.Fatalf("alice from the guessing source: %+v, want refused (pair)", d)
	}
	if d := l.Check("alice", home); !d.Allow || d.Delay != 0 {
		t.Fatalf("alice from another source: %+v, want allowed at once", d)
	}
	if d := l.Check("bob", nat); !d.Allow || d.Delay != 0 {
		t.Fatalf("bob behind the same source: %+v, want allowed at once", d)
	}
	clk.add(DefaultPairEvery)
	if d := l.Check("alice", nat); !d.Allow {
		t.Fatalf("a token did not come back: %+v", d)
	}
}

// TestLoginsRefusalsWaitToo: once a source is in debt, refusals of its
// spent pairs are delayed like checks, so a guesser is held, not answered
// at the rate it connects.
func TestLoginsRefusalsWaitToo(t *testing.T) {
	clk := newClock()
	l := mustLogins(t, LoginConfig{Now: clk.now})
	src := pfx("192.0.2.44")
	for range DefaultSourceBurst + 3 {
		l.Failed("alice", src)
	}
	d := l.Check("alice", src)
	if d.Allow || d.Reason != RefusedPair || d.Delay == 0 {
		t.Fatalf("a spent pair from a source in debt: %+v, want a delayed refusal", d)
	}
	// A user known at that source is neither delayed nor refused.
	l.Succeeded("carol", src)
	if d := l.Check("carol", src); !d.Allow || d.Delay != 0 {
		t.Fatalf("carol: %+v", d)
	}
}

func TestLoginsSourceIsSlowedNotLocked(t *testing.T) {
	clk := newClock()
	l := mustLogins(t, LoginConfig{Now: clk.now})
	nat := pfx("192.0.2.1")
	l.Succeeded("carol", nat) // carol logs in from here every day
	// Password spraying: one guess for each of many users.
	for i := range DefaultSourceBurst + 20 {
		l.Failed(fmt.Sprint("user", i), nat)
	}
	d := l.Check("bob", nat)
	if !d.Allow {
		t.Fatalf("bob behind a spraying source was locked out: %s", d.Reason)
	}
	if d.Delay != DefaultMaxDelay {
		t.Fatalf("bob's delay = %v, want the maximum %v", d.Delay, DefaultMaxDelay)
	}
	if d := l.Check("carol", nat); !d.Allow || d.Delay != 0 {
		t.Fatalf("carol, known at this source: %+v, want allowed at once", d)
	}
	// The delay decays as the source stops failing.
	clk.add(time.Duration(sourceDebt+DefaultSourceBurst) * DefaultSourceEvery)
	if d := l.Check("bob", nat); !d.Allow || d.Delay != 0 {
		t.Fatalf("after a quiet spell: %+v", d)
	}
}

func TestLoginsDelayDoubles(t *testing.T) {
	clk := newClock()
	l := mustLogins(t, LoginConfig{Now: clk.now, SourceBurst: 1, SourceEvery: time.Hour})
	src := pfx("192.0.2.9")
	var got []time.Duration
	for i := range 8 {
		l.Failed(fmt.Sprint("u", i), src)
		got = append(got, l.Check("x", src).Delay)
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delays %v, want %v", got, want)
	}
}

func TestLoginsUserBudgetSparesKnownSources(t *testing.T) {
	clk := newClock()
	l := mustLogins(t, LoginConfig{Now: clk.now})
	office := pfx("203.0.113.5")
	l.Succeeded("admin", office)
	// A distributed guess at admin's password: many sources, few tries each.
	for i := range DefaultUserBurst + 5 {
		src := pfx(fmt.Sprintf("10.%d.%d.1", i/250, i%250))
		if d := l.Check("admin", src); d.Allow {
			l.Failed("admin", src)
		}
	}
	if d := l.Check("admin", pfx("10.200.0.1")); d.Allow || d.Reason != RefusedUser {
		t.Fatalf("admin from yet another unknown source: %+v, want refused (user)", d)
	}
	if d := l.Check("admin", office); !d.Allow || d.Delay != 0 {
		t.Fatalf("admin from the office was locked out by strangers' guesses: %+v", d)
	}
	if d := l.Check("someone-else", pfx("10.200.0.1")); !d.Allow {
		t.Fatalf("another user refused: %+v", d)
	}
	// Known sources are forgotten after KnownFor.
	clk.add(DefaultKnownFor + time.Second)
	for range DefaultUserBurst + 5 {
		l.Failed("admin", pfx("10.9.9.9"))
	}
	if d := l.Check("admin", office); d.Allow {
		t.Fatal("a source known only long ago still spared")
	}
}

func TestLoginsSuccessRestoresPair(t *testing.T) {
	clk := newClock()
	l := mustLogins(t, LoginConfig{Now: clk.now, PairBurst: 3, PairEvery: time.Hour})
	src := pfx("192.0.2.3")
	for range 2 {
		l.Failed("dana", src)
	}
	l.Succeeded("dana", src)
	for i := range 3 {
		if d := l.Check("dana", src); !d.Allow {
			t.Fatalf("attempt %d after a success refused", i)
		}
		l.Failed("dana", src)
	}
	if l.Check("dana", src).Allow {
		t.Fatal("budget did not run out")
	}
}

func TestLoginsLongNames(t *testing.T) {
	l := mustLogins(t, LoginConfig{})
	long := strings.Repeat("x", MaxUserLen+1)
	if d := l.Check(long, pfx("192.0.2.1")); d.Allow || d.Reason != RefusedTooLong {
		t.Fatalf("over-long user name: %+v", d)
	}
	l.Failed(long, pfx("192.0.2.1")) // counts against the source only
	if n := len(l.pairs.m) + len(l.users.m); n != 0 {
		t.Fatalf("an over-long name made %d per-user entries", n)
	}
}

// TestLoginsBoundedTables floods the limiter with distinct users and
// sources: the tables stay at their bound, and a pair that is being
// guessed at still gets refused (its bucket is never the one evicted while
// fuller ones exist).
func TestLoginsBoundedTables(t *testing.T) {
	clk := newClock()
	const entries = 64
	l := mustLogins(t, LoginConfig{Now: clk.now, Entries: entries, PairBurst: 2, PairEvery: time.Hour})
	target := pfx("192.0.2.77")
	for range 2 {
		l.Failed("victim", target)
	}
	for i := range 5000 {
		u := fmt.Sprint("flood", i)
		src := pfx(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
		l.Check(u, src)
		l.Failed(u, src)
		if i%2 == 1 {
			l.Succeeded(u, src)
		}
	}
	for name, n := range map[string]int{"pairs": len(l.pairs.m), "sources": len(l.sources.m), "users": len(l.users.m), "known": len(l.known.m)} {
		if n > entries {
			t.Errorf("%s table has %d entries, bound %d", name, n, entries)
		}
	}
	if d := l.Check("victim", target); d.Allow {
		t.Fatal("the flood evicted the spent budget of the pair under attack")
	}
}

func TestLoginConfigValidate(t *testing.T) {
	if _, err := NewLogins(LoginConfig{PairBurst: -1}); err == nil {
		t.Fatal("negative burst accepted")
	}
}
