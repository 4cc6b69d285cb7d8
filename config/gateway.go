package config

import (
	"fmt"
	"time"

	"github.com/sallyport/sallyport/admit"
)

// Gateway tunes the SSH gateway's door: its deadlines, how connections
// that have not logged in yet share it, and the failed-login limiter.
// Every key is optional; the defaults suit a gateway on the Internet.
type Gateway struct {
	// KeyExchangeTimeout bounds the client's banner and key exchange, the
	// machine part of a login. Default 10s; 1s..2m.
	KeyExchangeTimeoutText string        `yaml:"key_exchange_timeout"`
	KeyExchangeTimeout     time.Duration `yaml:"-"`
	// LoginTimeout bounds the whole login, a person typing a password and
	// a code included. Default 2m; key_exchange_timeout..30m.
	LoginTimeoutText string        `yaml:"login_timeout"`
	LoginTimeout     time.Duration `yaml:"-"`
	// DialTimeout bounds connecting and logging in to a target. Default
	// 10s; at most 5m.
	DialTimeoutText string        `yaml:"dial_timeout"`
	DialTimeout     time.Duration `yaml:"-"`
	// RecheckInterval is how often live sessions' grants are re-checked
	// (a removed user or secret ends its sessions within about this
	// long). Default 2s; 200ms..5m.
	RecheckIntervalText string        `yaml:"recheck_interval"`
	RecheckInterval     time.Duration `yaml:"-"`

	Admission    *Admission    `yaml:"admission"`
	FailedLogins *FailedLogins `yaml:"failed_logins"`
}

// Admission is how connections that have not logged in share the gateway
// (package admit).
type Admission struct {
	// MaxPending caps them in all. Default 256; at most 65536.
	MaxPending int `yaml:"max_pending"`
	// MaxPendingPerSource caps them per source. Default 10.
	MaxPendingPerSource int `yaml:"max_pending_per_source"`
	// EarlyDropFrom is where random early drop starts. Default half of
	// max_pending.
	EarlyDropFrom int `yaml:"early_drop_from"`
	// ConnectionRatePerSource and ConnectionBurstPerSource bound how fast
	// one source opens connections. Default 50 per second, bursts of 100.
	ConnectionRatePerSource  float64 `yaml:"connection_rate_per_source"`
	ConnectionBurstPerSource int     `yaml:"connection_burst_per_source"`
	// IPv4Prefix and IPv6Prefix say how much of an address is one source.
	// Default 32 and 64.
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
}

// FailedLogins sets the failed-login limiter's budgets (package admit;
// SECURITY.md explains them).
type FailedLogins struct {
	// PerUserAndSource failures are allowed, then one per 30 s; past that
	// the pair is refused. Default 10.
	PerUserAndSource int `yaml:"per_user_and_source"`
	// PerSource failures are allowed, then one per 10 s; past that users
	// new to the source wait before they are checked. Default 30.
	PerSource int `yaml:"per_source"`
	// MaxDelay caps that wait. Default 8s; at most 1m.
	MaxDelayText string        `yaml:"max_delay"`
	MaxDelay     time.Duration `yaml:"-"`
	// PerUser failures are allowed, then one per 30 s; past that the user
	// is refused from sources they have not logged in from. Default 100.
	PerUser int `yaml:"per_user"`
	// KnownSourceFor is how long a source stays known to a user after a
	// login from it. Default 720h (30 days).
	KnownSourceForText string        `yaml:"known_source_for"`
	KnownSourceFor     time.Duration `yaml:"-"`
}

func (g *Gateway) check() error {
	durations := []struct {
		key      string
		text     string
		dst      *time.Duration
		def      time.Duration
		min, max time.Duration
	}{
		{"key_exchange_timeout", g.KeyExchangeTimeoutText, &g.KeyExchangeTimeout, 10 * time.Second, time.Second, 2 * time.Minute},
		{"login_timeout", g.LoginTimeoutText, &g.LoginTimeout, 2 * time.Minute, time.Second, 30 * time.Minute},
		{"dial_timeout", g.DialTimeoutText, &g.DialTimeout, 10 * time.Second, 100 * time.Millisecond, 5 * time.Minute},
		{"recheck_interval", g.RecheckIntervalText, &g.RecheckInterval, 2 * time.Second, 200 * time.Millisecond, 5 * time.Minute},
	}
	for _, d := range durations {
		if err := boundedDuration(d.key, d.text, d.dst, d.def, d.min, d.max); err != nil {
			return err
		}
	}
	if g.LoginTimeout < g.KeyExchangeTimeout {
		return fmt.Errorf("login_timeout (%v) is shorter than key_exchange_timeout (%v)", g.LoginTimeout, g.KeyExchangeTimeout)
	}
	if g.Admission == nil {
		g.Admission = &Admission{}
	}
	if err := g.Admission.check(); err != nil {
		return fmt.Errorf("admission: %w", err)
	}
	if g.FailedLogins == nil {
		g.FailedLogins = &FailedLogins{}
	}
	if err := g.FailedLogins.check(); err != nil {
		return fmt.Errorf("failed_logins: %w", err)
	}
	return nil
}

func (a *Admission) check() error {
	ints := []struct {
		key      string
		v        *int
		def      int
		min, max int
	}{
		{"max_pending", &a.MaxPending, admit.DefaultMaxPending, 1, 65536},
		{"max_pending_per_source", &a.MaxPendingPerSource, admit.DefaultMaxPerSource, 1, 65536},
		{"connection_burst_per_source", &a.ConnectionBurstPerSource, admit.DefaultBurst, 1, 1 << 20},
		{"ipv4_prefix", &a.IPv4Prefix, admit.DefaultIPv4Bits, 8, 32},
		{"ipv6_prefix", &a.IPv6Prefix, admit.DefaultIPv6Bits, 16, 128},
	}
	for _, i := range ints {
		if err := boundedInt(i.key, i.v, i.def, i.min, i.max); err != nil {
			return err
		}
	}
	if err := boundedInt("early_drop_from", &a.EarlyDropFrom, a.MaxPending/2, 1, a.MaxPending); err != nil {
		return err
	}
	switch {
	case a.MaxPendingPerSource > a.MaxPending:
		return fmt.Errorf("max_pending_per_source (%d) exceeds max_pending (%d)", a.MaxPendingPerSource, a.MaxPending)
	case a.ConnectionRatePerSource == 0:
		a.ConnectionRatePerSource = admit.DefaultRate
	case a.ConnectionRatePerSource < 0.01 || a.ConnectionRatePerSource > 1e6:
		return fmt.Errorf("connection_rate_per_source: %v is not between 0.01 and 1000000", a.ConnectionRatePerSource)
	}
	return nil
}

func (f *FailedLogins) check() error {
	for _, i := range []struct {
		key string
		v   *int
		def int
	}{
		{"per_user_and_source", &f.PerUserAndSource, admit.DefaultPairBurst},
		{"per_source", &f.PerSource, admit.DefaultSourceBurst},
		{"per_user", &f.PerUser, admit.DefaultUserBurst},
	} {
		if err := boundedInt(i.key, i.v, i.def, 1, 1<<20); err != nil {
			return err
		}
	}
	if err := boundedDuration("max_delay", f.MaxDelayText, &f.MaxDelay, admit.DefaultMaxDelay, 0, time.Minute); err != nil {
		return err
	}
	return boundedDuration("known_source_for", f.KnownSourceForText, &f.KnownSourceFor, admit.DefaultKnownFor, time.Minute, 366*24*time.Hour)
}

// AdmissionConfig is the admission settings for package admit.
func (g *Gateway) AdmissionConfig() admit.Config {
	a := g.Admission
	return admit.Config{
		MaxPending: a.MaxPending, MaxPerSource: a.MaxPendingPerSource, EarlyDrop: a.EarlyDropFrom,
		Rate: a.ConnectionRatePerSource, Burst: a.ConnectionBurstPerSource,
		IPv4Bits: a.IPv4Prefix, IPv6Bits: a.IPv6Prefix,
	}
}

// LoginConfig is the failed-login limiter's settings for package admit.
func (g *Gateway) LoginConfig() admit.LoginConfig {
	f := g.FailedLogins
	return admit.LoginConfig{
		PairBurst: f.PerUserAndSource, SourceBurst: f.PerSource, UserBurst: f.PerUser,
		MaxDelay: f.MaxDelay, KnownFor: f.KnownSourceFor,
	}
}

// boundedDuration parses text into dst: def when empty, else within
// [min, max].
func boundedDuration(key, text string, dst *time.Duration, def, min, max time.Duration) error {
	d, err := duration(key, text)
	if err != nil {
		return err
	}
	if text == "" {
		d = def
	}
	if d < min || d > max {
		return fmt.Errorf("%s: %v is not between %v and %v", key, d, min, max)
	}
	*dst = d
	return nil
}

// boundedInt sets *v to def when zero, and checks it is within [min, max].
func boundedInt(key string, v *int, def, min, max int) error {
	if *v == 0 {
		*v = def
	}
	if *v < min || *v > max {
		return fmt.Errorf("%s: %d is not between %d and %d", key, *v, min, max)
	}
	return nil
}
