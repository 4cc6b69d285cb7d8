package engine

import (
	"encoding/json"
	"log/slog"
)

// String redacts the broker password (the signer is a handle, but stays
// out too).
func (s ConnectorSettings) String() string {
	return "engine.ConnectorSettings{" + s.Kind + " " + s.URL + " site " + s.Site + " engine " + s.Engine + " [REDACTED]}"
}

// GoString redacts the broker password under %#v.
func (s ConnectorSettings) GoString() string { return s.String() }

// LogValue redacts the broker password in slog records.
func (s ConnectorSettings) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts the broker password; no protocol carries
// ConnectorSettings.
func (s ConnectorSettings) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// String names the worker without its site keys (fmt prints a *worker's
// fields, the keys among them, at the top level).
func (w *worker) String() string { return "engine worker of site " + w.site + " [REDACTED]" }

// GoString leaves out the site keys under %#v.
func (w *worker) GoString() string { return w.String() }

// LogValue leaves out the site keys in slog records.
func (w *worker) LogValue() slog.Value { return slog.StringValue(w.String()) }
