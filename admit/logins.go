package admit

import (
	"errors"
	"net/netip"
	"sync"
	"time"
)

// Defaults for the zero values of LoginConfig. SECURITY.md explains them.
const (
	DefaultPairBurst   = 10
	DefaultPairEvery   = 30 * time.Second
	DefaultSourceBurst = 30
	DefaultSourceEvery = 10 * time.Second
	DefaultUserBurst   = 100
	DefaultUserEvery   = 30 * time.Second
	DefaultMaxDelay    = 8 * time.Second
	DefaultKnownFor    = 30 * 24 * time.Hour
	DefaultEntries     = 65536

	// MaxUserLen bounds the user names Logins accepts; longer ones are
	// refused outright (callers refuse far shorter ones first).
	MaxUserLen = 1024

	// firstDelay is the delay of a source that has just spent its budget;
	// each further failure doubles it, up to MaxDelay.
	firstDelay = 250 * time.Millisecond
	// sourceDebt is how many failures past its budget a source is held to
	// account for (its tokens go down to -sourceDebt).
	sourceDebt = 16
)

// LoginConfig configures Logins. Zero values take the defaults above.
type LoginConfig struct {
	// PairBurst failures of one user from one source are allowed, then one
	// more per PairEvery; past that the pair is refused without checking.
	PairBurst int
	PairEvery time.Duration
	// SourceBurst failures from one source (any users) are allowed, then
	// one more per SourceEvery; past that, every attempt from the source by
	// a user who has not logged in from it before is delayed before it is
	// checked (250 ms, doubling per further failure, at most MaxDelay).
	SourceBurst int
	SourceEvery time.Duration
	MaxDelay    time.Duration
	// UserBurst failures for one user (from anywhere) are allowed, then one
	// more per UserEvery; past that the user is refused from every source
	// they have not logged in from within KnownFor, and only from those.
	UserBurst int
	UserEvery time.Duration
	KnownFor  time.Duration
	// Entries bounds each of the four tables (pairs, sources, users, known
	// pairs); memory is a few MiB at the default whatever clients send.
	Entries int
	// Now replaces the clock in tests.
	Now func() time.Time
}

func (c *LoginConfig) setDefaults() {
	defI := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defI(&c.PairBurst, DefaultPairBurst)
	defD(&c.PairEvery, DefaultPairEvery)
	defI(&c.SourceBurst, DefaultSourceBurst)
	defD(&c.SourceEvery, DefaultSourceEvery)
	defD(&c.MaxDelay, DefaultMaxDelay)
	defI(&c.UserBurst, DefaultUserBurst)
	defD(&c.UserEvery, DefaultUserEvery)
	defD(&c.KnownFor, DefaultKnownFor)
	defI(&c.Entries, DefaultEntries)
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports negative settings; zero values take defaults.
func (c LoginConfig) Validate() error {
	if c.PairBurst < 0 || c.SourceBurst < 0 || c.UserBurst < 0 || c.Entries < 0 ||
		c.PairEvery < 0 || c.SourceEvery < 0 || c.UserEvery < 0 || c.MaxDelay < 0 || c.KnownFor < 0 {
		return errors.New("admit: login limits must not be negative")
	}
	return nil
}

// Decision is what Logins says about one login attempt before it is checked.
type Decision struct {
	// Allow says whether the attempt may be checked at all.
	Allow bool
	// Delay is how long to wait before checking it, or before refusing it
	// (its source is failing a lot); zero when answered at once.
	Delay time.Duration
	// Reason says why an attempt is refused, for the log and audit; it
	// names no user and no source.
	Reason string
}

// Reasons of a refused Decision.
const (
	RefusedPair    = "too many failures for this user from this source"
	RefusedUser    = "too many failures for this user, from a source it has not logged in from"
	RefusedTooLong = "user name too long"
)

// Logins is the failed-login limiter. It is safe for concurrent use.
type Logins struct {
	cfg  LoginConfig
	keys hasher

	mu      sync.Mutex
	pairs   *buckets
	sources *buckets
	users   *buckets
	known   *stamps
}

// NewLogins returns a limiter.
func NewLogins(cfg LoginConfig) (*Logins, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Logins{
		cfg:     cfg,
		keys:    newHasher(),
		pairs:   newBuckets(cfg.PairBurst, cfg.PairEvery, 0, cfg.Entries),
		sources: newBuckets(cfg.SourceBurst, cfg.SourceEvery, -sourceDebt, cfg.Entries),
		users:   newBuckets(cfg.UserBurst, cfg.UserEvery, 0, cfg.Entries),
		known:   newStamps(cfg.Entries),
	}, nil
}

// Check decides whether user may try to log in from src now. user is ""
// when the login name could not even be parsed: only the source's budget
// applies then.
func (l *Logins) Check(user string, src netip.Prefix) Decision {
	if len(user) > MaxUserLen {
		return Decision{Reason: RefusedTooLong}
	}
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	// A source that keeps failing waits before each answer, refusals
	// included: a guesser whose budget is spent is held, not answered at
	// once, so it cannot make the gateway run key exchanges as fast as it
	// can connect. Users who have logged in from the source are spared.
	srcDelay := l.delay(l.sources.tokens(l.keys.key(domainSource, "", src), now))
	known := false
	if user != "" {
		pair := l.keys.key(domainPair, user, src)
		known = l.known.seenSince(pair, now.Add(-l.cfg.KnownFor))
		if l.pairs.tokens(pair, now) < 1 {
			return Decision{Reason: RefusedPair, Delay: srcDelay}
		}
		if !known && l.users.tokens(l.keys.key(domainUser, user, src), now) < 1 {
			return Decision{Reason: RefusedUser, Delay: srcDelay}
		}
	}
	d := Decision{Allow: true}
	if !known {
		d.Delay = srcDelay
	}
	return d
}

// delay maps a source's tokens to the wait before its next attempt.
func (l *Logins) delay(tokens float64) time.Duration {
	if tokens >= 1 {
		return 0
	}
	d := firstDelay
	for debt := 1 - tokens; debt > 1 && d < l.cfg.MaxDelay; debt-- {
		d *= 2
	}
	return min(d, l.cfg.MaxDelay)
}

// Failed records a failed attempt of user ("" if unknown) from src.
func (l *Logins) Failed(user string, src netip.Prefix) {
	if len(user) > MaxUserLen {
		user = ""
	}
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sources.spend(l.keys.key(domainSource, "", src), now)
	if user != "" {
		l.pairs.spend(l.keys.key(domainPair, user, src), now)
		l.users.spend(l.keys.key(domainUser, user, src), now)
	}
}

// Succeeded records that user proved who they are from src: src becomes a
// known source of user's for KnownFor, and the pair's budget is whole again
// (its failures were the user's own typos).
func (l *Logins) Succeeded(user string, src netip.Prefix) {
	if user == "" || len(user) > MaxUserLen {
		return
	}
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	pair := l.keys.key(domainPair, user, src)
	l.known.put(pair, now)
	l.pairs.forget(pair)
}
