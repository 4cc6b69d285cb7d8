package config

import (
	"fmt"
	"time"
)

// Maintenance tunes heartbeats and rotations: the vault's scheduler
// (item lifetimes, the resend window, rotate-after-use, the per-host
// limit) and an engine's limits on the changes it makes at once.
type Maintenance struct {
	// HeartbeatTTL is how long a heartbeat (or verify) item lives; an
	// expired one is discarded unprocessed. Default 5m; 5s..1h.
	HeartbeatTTLText string        `yaml:"heartbeat_ttl"`
	HeartbeatTTL     time.Duration `yaml:"-"`
	// ChangeTTL is how long a password-change item lives. Default 20m;
	// 10s..6h.
	ChangeTTLText string        `yaml:"change_ttl"`
	ChangeTTL     time.Duration `yaml:"-"`
	// ResendGrace: the same item is not sent again for a secret until this
	// long after it expired (and an unanswered change is verified only
	// then). An engine never starts a change after its item expired and
	// cuts it off at the expiry, so the grace covers the clocks of the
	// vault and the engines disagreeing and a result on its way. Default
	// 5m; 5s..1h.
	ResendGraceText string        `yaml:"resend_grace"`
	ResendGrace     time.Duration `yaml:"-"`
	// AfterUseDelay: a rotate-after-use secret rotates once no session
	// has been seen on it for this long. Default 10s; 1s..1h.
	AfterUseDelayText string        `yaml:"after_use_delay"`
	AfterUseDelay     time.Duration `yaml:"-"`
	// HostChanges bounds the changes in flight per target host, in the
	// vault and in each engine. Default 1; 1..64.
	HostChanges int `yaml:"host_changes"`
	// EngineChanges bounds the changes one engine makes at once. Default
	// 4; 1..256.
	EngineChanges int `yaml:"engine_changes"`
}

func (m *Maintenance) check() error {
	for _, d := range []struct {
		key      string
		text     string
		dst      *time.Duration
		def      time.Duration
		min, max time.Duration
	}{
		{"heartbeat_ttl", m.HeartbeatTTLText, &m.HeartbeatTTL, 5 * time.Minute, 5 * time.Second, time.Hour},
		{"change_ttl", m.ChangeTTLText, &m.ChangeTTL, 20 * time.Minute, 10 * time.Second, 6 * time.Hour},
		{"resend_grace", m.ResendGraceText, &m.ResendGrace, 5 * time.Minute, 5 * time.Second, time.Hour},
		{"after_use_delay", m.AfterUseDelayText, &m.AfterUseDelay, 10 * time.Second, time.Second, time.Hour},
	} {
		if err := boundedDuration(d.key, d.text, d.dst, d.def, d.min, d.max); err != nil {
			return err
		}
	}
	for _, i := range []struct {
		key      string
		v        *int
		def      int
		min, max int
	}{
		{"host_changes", &m.HostChanges, 1, 1, 64},
		{"engine_changes", &m.EngineChanges, 4, 1, 256},
	} {
		if err := boundedInt(i.key, i.v, i.def, i.min, i.max); err != nil {
			return err
		}
	}
	if m.EngineChanges < m.HostChanges {
		return fmt.Errorf("engine_changes (%d) is below host_changes (%d)", m.EngineChanges, m.HostChanges)
	}
	return nil
}
