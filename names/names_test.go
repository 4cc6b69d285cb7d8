package names

import (
	"strings"
	"testing"
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
		"dev": true, "site-a": true, "eu-west_1": true, "eu.west_1": false,
		"-dev": false, "-": false, "": false, "a@b": false, "..": false,
	} {
		if got := ValidSiteName(name); got != want {
			t.Errorf("ValidSiteName(%q) = %v, want %v", name, got, want)
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
