package vault

import (
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/sallyport/sallyport/names"
)

// Limits on names and lists. They keep every stored or received value small
// enough to log, index and compare cheaply.
const (
	maxAllow      = 1024 // allow-list entries per secret
	maxHost       = 253
	maxTargetUser = 256

	// groupPrefix marks an allow-list entry that names a group.
	groupPrefix = "group:"
)

// notFlagWhy is the validation message for a new name that looks like a flag.
const notFlagWhy = "must not start with '-'"

// validAllowEntry reports whether e is a user name or "group:NAME".
func validAllowEntry(e string) bool {
	if g, ok := strings.CutPrefix(e, groupPrefix); ok {
		return names.ValidGroupName(g)
	}
	return names.ValidUserName(e)
}

// validHost reports whether h is an IP address (without zone or brackets)
// or a DNS host name of at most 253 characters.
func validHost(h string) bool {
	if len(h) == 0 || len(h) > maxHost {
		return false
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == ""
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false
			}
		}
	}
	return true
}

// validTargetUser reports whether s is a plausible account name on a target:
// 1..256 printable characters, no whitespace.
func validTargetUser(s string) bool {
	if len(s) == 0 || len(s) > maxTargetUser || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// dedupe returns the distinct entries of list, in their first order.
func dedupe(list []string) []string {
	seen := make(map[string]bool, len(list))
	out := make([]string, 0, len(list))
	for _, s := range list {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
