package enroll

import "fmt"

// The configuration the vault's callback API hands an engine
// (GET /v1/engine/config), shared by the two sides.

// WrappedKey is a key wrapped to an engine's public key (enroll.Wrap).
type WrappedKey struct {
	Version int    `json:"version"`
	Wrapped []byte `json:"wrapped"`
}

// Connector is how an engine reaches its site's connector.
type Connector struct {
	Kind string `json:"kind"`
	URL  string `json:"url"`
	// Secret is the broker password wrapped to the engine's key, or empty.
	Secret []byte `json:"secret,omitempty"`
}

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
