package enroll

import (
	"fmt"
	"log/slog"
)

// The configuration the vault's callback API hands an engine
// (GET /v1/engine/config), shared by the two sides.

// The types below are the callback API's wire form: their JSON carries
// the wrapped keys and broker password on purpose. They are ciphertext,
// open only to the engine, but print and log without them all the same.

// WrappedKey is a key wrapped to an engine's public key (enroll.Wrap).
type WrappedKey struct {
	Version int    `json:"version"`
	Wrapped []byte `json:"wrapped"`
}

// String leaves out the wrapped key.
func (k WrappedKey) String() string { return fmt.Sprintf("wrapped key v%d [REDACTED]", k.Version) }

// GoString leaves out the wrapped key under %#v.
func (k WrappedKey) GoString() string { return k.String() }

// LogValue leaves out the wrapped key in slog records.
func (k WrappedKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// Connector is how an engine reaches its site's connector.
type Connector struct {
	Kind string `json:"kind"`
	URL  string `json:"url"`
	// Secret is the broker password wrapped to the engine's key, or empty.
	Secret []byte `json:"secret,omitempty"`
}

// String leaves out the wrapped broker password.
func (c Connector) String() string { return "connector{" + c.Kind + " " + c.URL + " [REDACTED]}" }

// GoString leaves out the wrapped broker password under %#v.
func (c Connector) GoString() string { return c.String() }

// LogValue leaves out the wrapped broker password in slog records.
func (c Connector) LogValue() slog.Value { return slog.StringValue(c.String()) }

// EngineConfig is what an approved engine pulls from the vault: its own
// key and its site's keys, wrapped to its public key so that only it can
// open them, and how to reach its site's connector. A pending or revoked
// engine gets only its State.
type EngineConfig struct {
	ID        string       `json:"id"`
	Site      string       `json:"site"`
	State     string       `json:"state"`
	EngineKey *WrappedKey  `json:"engine_key,omitempty"`
	SiteKeys  []WrappedKey `json:"site_keys,omitempty"` // newest first
	Connector Connector    `json:"connector"`
	// VaultTime is the vault's clock (unix ms), so an engine can warn
	// about a skewed clock before its items expire early or late.
	VaultTime int64 `json:"vault_time"`
}

// String leaves out the wrapped keys and broker password.
func (c EngineConfig) String() string {
	return fmt.Sprintf("engine config{%s %s %s, %d site keys, %s}", c.ID, c.Site, c.State, len(c.SiteKeys), c.Connector)
}

// GoString leaves out the wrapped keys under %#v.
func (c EngineConfig) GoString() string { return c.String() }

// LogValue leaves out the wrapped keys in slog records.
func (c EngineConfig) LogValue() slog.Value { return slog.StringValue(c.String()) }

// EngineKeyLabel labels a wrapped engine key; Wrap and Unwrap take the
// same label.
func EngineKeyLabel(id string, version int) string {
	return fmt.Sprintf("engine key %s v%d", id, version)
}

// SiteKeyLabel labels a wrapped site key.
func SiteKeyLabel(site string, version int) string {
	return fmt.Sprintf("site key %s v%d", site, version)
}

// ConnectorSecretLabel labels a wrapped broker password.
func ConnectorSecretLabel(site string) string { return "connector secret " + site }

// Engine states, as the vault reports them.
const (
	StatePending  = "pending"
	StateApproved = "approved"
	StateRevoked  = "revoked"
)

// RegisterRequest is the body of POST /v1/engine/register, signed by the
// key it registers.
type RegisterRequest struct {
	Site      string `json:"site"`
	PublicKey []byte `json:"public_key"` // PKIX DER
	Name      string `json:"name"`
}

// Registered is the answer to a registration.
type Registered struct {
	ID          string `json:"id"`
	Fingerprint string `json:"fingerprint"`
	State       string `json:"state"`
}
