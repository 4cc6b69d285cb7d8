// Package audit is the one sink for security events: logins, checkouts,
// host-key pins and refusals. For now it writes structured log records; a
// hash-chained, signed log and session recordings build on this interface.
package audit

import (
	"context"
	"log/slog"
)

// Event is one security-relevant fact. Attrs must never carry a secret.
type Event struct {
	Kind    string // e.g. "login", "checkout", "hostkey_pinned", "session_end"
	Outcome string // "ok", "denied", "error"
	User    string
	Source  string
	Secret  string
	Attrs   []slog.Attr
}

// Sink records audit events.
type Sink interface {
	Record(ctx context.Context, e Event)
}

// Log is a Sink that writes each event as one structured log record.
type Log struct{ L *slog.Logger }

// Record implements Sink.
func (l Log) Record(ctx context.Context, e Event) {
	attrs := append([]slog.Attr{
		slog.String("audit", e.Kind),
		slog.String("outcome", e.Outcome),
		slog.String("user", e.User),
		slog.String("source", e.Source),
	}, e.Attrs...)
	if e.Secret != "" {
		attrs = append(attrs, slog.String("secret", e.Secret))
	}
	level := slog.LevelInfo
	if e.Outcome != "ok" {
		level = slog.LevelWarn
	}
	l.L.LogAttrs(ctx, level, "audit", attrs...)
}
