package vault

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/sallyport/sallyport/names"
)

func TestValidAllowEntry(t *testing.T) {
	tests := []struct {
		entry string
		want  bool
	}{
		{"alice", true},
		{"alice@corp.example", true},
		{"group:ops", true},
		{"group:Domain Admins", true},
		{"group:", false},
		{"group: ops", false},
		{"", false},
		{"a b", false},
	}
	for _, tt := range tests {
		if got := validAllowEntry(tt.entry); got != tt.want {
			t.Errorf("validAllowEntry(%q) = %v, want %v", tt.entry, got, tt.want)
		}
	}
}

func TestValidHost(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"web01.corp.example", true},
		{"web01.corp.example.", true},
		{"10.0.0.1", true},
		{"::1", true},
		{"fe80::1%eth0", false},
		{"[::1]", false},
		{"", false},
		{"-web", false},
		{"web..example", false},
		{"web example", false},
		{strings.Repeat("a", 63) + ".example", true},
		{strings.Repeat("a", 64) + ".example", false},
		{strings.Repeat("a.", 127), false}, // 254 bytes
	}
	for _, tt := range tests {
		if got := validHost(tt.host); got != tt.want {
			t.Errorf("validHost(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
}

// FuzzNames checks the name validators' invariants on arbitrary input: they
// never panic, and an accepted name honours every documented property.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"alice", "alice@corp.example", "web01", "group:ops", "Domain Admins", "\xff", "a\u202eb", "..", "-rf"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if names.ValidSecretName(s) {
			if len(s) == 0 || len(s) > 64 || strings.ContainsAny(s, "@:/ ") {
				t.Fatalf("secret name %q accepted", s)
			}
		}
		if names.ValidSiteName(s) && (!names.ValidSecretName(s) || strings.HasPrefix(s, "-")) {
			t.Fatalf("site name %q accepted", s)
		}
		if names.ValidUserName(s) {
			if !utf8.ValidString(s) || len(s) > 128 || strings.ContainsAny(s, ",: ") || strings.HasPrefix(s, groupPrefix) {
				t.Fatalf("user name %q accepted", s)
			}
			for _, r := range s {
				if unicode.IsControl(r) || unicode.IsSpace(r) || unicode.Is(unicode.Cf, r) {
					t.Fatalf("user name %q with %U accepted", s, r)
				}
			}
		}
		if names.ValidGroupName(s) {
			if strings.Contains(s, ",") || strings.TrimSpace(s) != s || !utf8.ValidString(s) {
				t.Fatalf("group name %q accepted", s)
			}
		}
		if validAllowEntry(s) && !names.ValidUserName(s) && !strings.HasPrefix(s, groupPrefix) {
			t.Fatalf("allow entry %q is neither a user nor a group", s)
		}
		_ = validHost(s)
		_ = validTargetUser(s)
	})
}
