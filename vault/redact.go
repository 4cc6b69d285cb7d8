package vault

import (
	"encoding/json"
	"fmt"
	"log/slog"
)

// String leaves out the TLS private key (Cert) and the admin token's
// hash, which fmt would otherwise print byte by byte.
func (c DaemonConfig) String() string {
	return fmt.Sprintf("vault.DaemonConfig{DBPath: %q, ConnectorURL: %q, Cert: [REDACTED], TokenSHA256: [REDACTED]}", c.DBPath, c.ConnectorURL)
}

// GoString leaves out the private key under %#v.
func (c DaemonConfig) GoString() string { return c.String() }

// LogValue leaves out the private key in slog records.
func (c DaemonConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.String("db_path", c.DBPath), slog.String("connector_url", c.ConnectorURL))
}

// MarshalJSON leaves out the private key; no protocol carries a
// DaemonConfig.
func (c DaemonConfig) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }
