package vault

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestValidSecretName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"web01", true},
		{"db-prod.eu_1", true},
		{strings.Repeat("a", 64), true},
		{"", false},
		{strings.Repeat("a", 65), false},
		{"web@01", false},
		{"web 01", false},
		{"web/01", false},
		{"wéb", false},
		{".", false},
		{"..", false},
		{"group:ops", false},
		// Well-formed for lookups and removal of a legacy row; AddSecret
		// refuses it as a new name (LooksLikeFlag).
		{"-rf", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidSecretName(tt.name); got != tt.want {
				t.Errorf("ValidSecretName(%q) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}

func TestLooksLikeFlag(t *testing.T) {
	for name, want := range map[string]bool{
		"-rf": true, "-": true, "--": true, "--help": true,
		"web01": false, "web-01": false, "web01-": false, "": false, " -x": false, "−x": false,
	} {
		if got := LooksLikeFlag(name); got != want {
			t.Errorf("LooksLikeFlag(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestValidSiteName: site names follow the secret-name rule but, being
// created on first use, may never start with '-'.
func TestValidSiteName(t *testing.T) {
	for name, want := range map[string]bool{
		"dev": true, "site-a": true, "eu.west_1": true,
		"-dev": false, "-": false, "": false, "a@b": false, "..": false,
	} {
		if got := validSiteName(name); got != want {
			t.Errorf("validSiteName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestValidUserName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"alice", true},
		{"alice@corp.example", true},
		{"CORP\\alice", true},
		{"ålice", true},
		{"a", true},
		{strings.Repeat("a", 128), true},
		{"", false},
		{strings.Repeat("a", 129), false},
		{"al ice", false},
		{"al\tice", false},
		{"al\x00ice", false},
		{"al\x1bice", false},
		{"al\u200bice", false}, // zero-width space (format character)
		{"al\u202eice", false}, // right-to-left override
		{"al,ice", false},
		{"group:ops", false},
		{"\xff", false},
		{".", false},
		{"..", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidUserName(tt.name); got != tt.want {
				t.Errorf("ValidUserName(%q) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}

func TestValidGroupName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"ops", true},
		{"Domain Admins", true},
		{"team:red", true},
		{"", false},
		{" ops", false},
		{"ops ", false},
		{"a  b", false},
		{"a,b", false},
		{"a\nb", false},
		{strings.Repeat("g", 129), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidGroupName(tt.name); got != tt.want {
				t.Errorf("ValidGroupName(%q) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}

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
		if ValidSecretName(s) {
			if len(s) == 0 || len(s) > 64 || strings.ContainsAny(s, "@:/ ") {
				t.Fatalf("secret name %q accepted", s)
			}
		}
		if validSiteName(s) && (!ValidSecretName(s) || strings.HasPrefix(s, "-")) {
			t.Fatalf("site name %q accepted", s)
		}
		if ValidUserName(s) {
			if !utf8.ValidString(s) || len(s) > 128 || strings.ContainsAny(s, ",: ") || strings.HasPrefix(s, groupPrefix) {
				t.Fatalf("user name %q accepted", s)
			}
			for _, r := range s {
				if unicode.IsControl(r) || unicode.IsSpace(r) || unicode.Is(unicode.Cf, r) {
					t.Fatalf("user name %q with %U accepted", s, r)
				}
			}
		}
		if ValidGroupName(s) {
			if strings.Contains(s, ",") || strings.TrimSpace(s) != s || !utf8.ValidString(s) {
				t.Fatalf("group name %q accepted", s)
			}
		}
		if validAllowEntry(s) && !ValidUserName(s) && !strings.HasPrefix(s, groupPrefix) {
			t.Fatalf("allow entry %q is neither a user nor a group", s)
		}
		_ = validHost(s)
		_ = validTargetUser(s)
	})
}
