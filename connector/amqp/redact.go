package amqp

import (
	"encoding/json"
	"log/slog"
)

// MarshalJSON describes c without its password; no protocol carries a
// Config.
func (c Config) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }

// GoString leaves out the password under %#v.
func (a *plainAuth) GoString() string { return a.String() }

// LogValue leaves out the password in slog records.
func (a *plainAuth) LogValue() slog.Value { return slog.StringValue(a.String()) }
