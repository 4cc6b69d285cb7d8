package hsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
)

// PKCS11Config selects a PKCS#11 token.
type PKCS11Config struct {
	// Module is the path of the PKCS#11 shared library, for example
	// /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel is the label of the token that holds the keys; the token
	// is found by label (slot numbers change when tokens come and go).
	TokenLabel string
	// PIN is the token's user PIN. OpenPKCS11 keeps its own copy (to log in
	// again after the token is reopened) and wipes it on Close; the caller
	// should wipe its copy once OpenPKCS11 returns. It is never logged and
	// never appears in errors.
	PIN []byte
	// Sessions is the number of sessions kept open for concurrent
	// operations: 0 means 4; at most 64.
	Sessions int
}

// String redacts the PIN.
func (cfg PKCS11Config) String() string {
	return fmt.Sprintf("hsm.PKCS11Config{Module: %q, TokenLabel: %q, PIN: [REDACTED], Sessions: %d}", cfg.Module, cfg.TokenLabel, cfg.Sessions)
}

// GoString redacts the PIN under %#v.
func (cfg PKCS11Config) GoString() string { return cfg.String() }

// LogValue redacts the PIN in slog records.
func (cfg PKCS11Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("module", cfg.Module), slog.String("token_label", cfg.TokenLabel), slog.Int("sessions", cfg.Sessions))
}

// MarshalJSON redacts the PIN; no protocol carries a PKCS11Config.
func (cfg PKCS11Config) MarshalJSON() ([]byte, error) { return json.Marshal(cfg.String()) }

// Session pool bounds.
const (
	defaultPKCS11Sessions = 4
	maxPKCS11Sessions     = 64
	// maxTokenLabel is the size of CK_TOKEN_INFO's label field.
	maxTokenLabel = 32
)

// sessions validates cfg and returns the session count to use.
func (cfg PKCS11Config) sessions() (int, error) {
	switch {
	case cfg.Module == "":
		return 0, errors.New("hsm: PKCS#11: no module path configured")
	case cfg.TokenLabel == "":
		return 0, errors.New("hsm: PKCS#11: no token label configured")
	case len(cfg.TokenLabel) > maxTokenLabel:
		return 0, fmt.Errorf("hsm: PKCS#11: token label %q is longer than %d bytes", cfg.TokenLabel, maxTokenLabel)
	case len(cfg.PIN) == 0:
		return 0, fmt.Errorf("hsm: PKCS#11: no PIN given for token %q", cfg.TokenLabel)
	case cfg.Sessions < 0 || cfg.Sessions > maxPKCS11Sessions:
		return 0, fmt.Errorf("hsm: PKCS#11: sessions must be between 1 and %d, not %d", maxPKCS11Sessions, cfg.Sessions)
	case cfg.Sessions == 0:
		return defaultPKCS11Sessions, nil
	}
	return cfg.Sessions, nil
}
