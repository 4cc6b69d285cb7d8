package names

import "strings"

// The site connector's queues. Every queue of a site is named
// "sallyport.SITE.…", so that a broker's permissions (RabbitMQ's
// configure/write/read patterns, the built-in connector's rules) can bind
// a site's credentials to its own queues with one prefix, QueuePrefix(site).
// Site names hold no '.', so the split is unambiguous.
const queueRoot = "sallyport."

// Queue kinds, the third part of a queue name.
const (
	QueueRequests = "requests" // engines → vault: credential requests, logins, pins, re-checks
	QueueWork     = "work"     // vault → the site's engines (competing): pings, heartbeats, rotations
	QueueResults  = "results"  // engines → vault: results of work
	QueueReply    = "reply"    // vault → one engine: replies to its requests
)

// QueuePrefix is what every queue of site starts with.
func QueuePrefix(site string) string { return queueRoot + site + "." }

// RequestQueue is where a site's engines send requests to the vault.
func RequestQueue(site string) string { return QueuePrefix(site) + QueueRequests }

// WorkQueue is where the vault sends a site's work; its engines compete
// for it.
func WorkQueue(site string) string { return QueuePrefix(site) + QueueWork }

// ResultQueue is where a site's engines send the results of work.
func ResultQueue(site string) string { return QueuePrefix(site) + QueueResults }

// ReplyQueue is one engine's queue for the vault's replies.
func ReplyQueue(site, engine string) string { return QueuePrefix(site) + QueueReply + "." + engine }

// ParseQueue splits one of the names above into its site, kind and (for a
// reply queue) engine. ok is false for anything else.
func ParseQueue(q string) (site, kind, engine string, ok bool) {
	rest, found := strings.CutPrefix(q, queueRoot)
	if !found {
		return "", "", "", false
	}
	site, rest, found = strings.Cut(rest, ".")
	if !found || !ValidSiteName(site) {
		return "", "", "", false
	}
	switch rest {
	case QueueRequests, QueueWork, QueueResults:
		return site, rest, "", true
	}
	engine, found = strings.CutPrefix(rest, QueueReply+".")
	if !found || !ValidEngineID(engine) {
		return "", "", "", false
	}
	return site, QueueReply, engine, true
}

// EngineIDLen is the length of an engine id: 16 lowercase hex digits (the
// first 64 bits of the SHA-256 of the engine's public key).
const EngineIDLen = 16

// ValidEngineID reports whether s is a well-formed engine id.
func ValidEngineID(s string) bool {
	if len(s) != EngineIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
