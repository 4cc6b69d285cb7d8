// Package names holds the naming rules every part of Sallyport shares: what
// a secret, site, user or group name may be, how a login name splits into
// user and secret, how many groups a login may carry, and how the site
// connector's queues are named. It imports nothing of Sallyport's, so the
// vault, the engine, the gateways and the configuration all apply the same
// rule from one place.
package names

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on names and lists. They keep every stored or received value small
// enough to log, index and compare cheaply.
const (
	MaxSecretName = 64
	MaxUserName   = 128
	MaxGroupName  = 128
	// MaxGroups bounds the groups of one user or one login; a gateway keeps
	// the first MaxGroups a RADIUS server sends, and the vault refuses a
	// request with more.
	MaxGroups = 256
)

// ValidSecretName reports whether s is a well-formed secret name: 1..64
// characters of [A-Za-z0-9._-], other than "." and "..". It never contains
// '@', which is what lets the gateway split "user@secret" logins at the
// last '@'.
//
// This is the rule for names that are looked up, shown or removed. A NEW
// secret's name must in addition not start with '-' (LooksLikeFlag), which
// AddSecret checks. The two rules differ on purpose: a secret stored before
// the '-' rule existed must stay reachable, so that it can still be shown,
// used and removed rather than stranded.
func ValidSecretName(s string) bool {
	if len(s) == 0 || len(s) > MaxSecretName || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// LooksLikeFlag reports whether name starts with '-', so that a command
// line taking it as an argument (`sallyport ctl secret rm NAME`, or
// `ssh NAME@web01@gateway` for a user) would read it as an option. New
// secret, user, group and site names are refused when they look like a
// flag; existing secret and user names that do are still accepted for
// lookups and removal (see ValidSecretName and ValidUserName).
func LooksLikeFlag(name string) bool { return strings.HasPrefix(name, "-") }

// ValidSiteName is the rule for site names: the secret-name rule without
// '.' (queue names are split at dots, see ParseQueue), and no leading '-'
// (LooksLikeFlag). Unlike secrets there is no exception for existing
// names: no site was ever created under an older rule.
func ValidSiteName(s string) bool {
	return ValidSecretName(s) && !LooksLikeFlag(s) && !strings.Contains(s, ".")
}

// ValidUserName reports whether s is a well-formed gateway user name:
// 1..128 bytes of valid UTF-8, every character printable (no control or
// format characters), no whitespace, and neither ',' (the list separator of
// the CLI) nor ':' (so that no user name can look like a "group:" entry),
// and not "." or "..".
// User names MAY contain '@', so UPNs such as alice@corp.example work.
//
// This is the rule for names that are looked up (logins, allow lists,
// break-glass lists) or removed. A NEW local user's name, and each of its
// group names, must in addition not start with '-' (LooksLikeFlag), which
// AddUser checks; a user created before that rule can still log in and be
// removed.
func ValidUserName(s string) bool {
	return validName(s, MaxUserName, false)
}

// ValidGroupName reports whether s is a well-formed group name: the
// user-name rule, except that single inner spaces are allowed ("Domain
// Admins") and ':' is (a group entry is recognised by its prefix alone).
// As with user names, AddUser also refuses a new membership in a group
// whose name starts with '-' (LooksLikeFlag); lookups do not, since group
// names also come from outside (RADIUS) and from existing rows.
func ValidGroupName(s string) bool {
	return validName(s, MaxGroupName, true)
}

func validName(s string, max int, group bool) bool {
	// "." and ".." would be cleaned out of API paths such as /v1/users/NAME.
	if len(s) == 0 || len(s) > max || !utf8.ValidString(s) || s == "." || s == ".." {
		return false
	}
	if group && (s[0] == ' ' || s[len(s)-1] == ' ' || strings.Contains(s, "  ")) {
		return false
	}
	for _, r := range s {
		switch {
		case r == ' ' && group:
		case r == ',':
			return false
		case r == ':' && !group:
			return false
		case unicode.IsSpace(r) || !unicode.IsPrint(r):
			return false
		}
	}
	return true
}
