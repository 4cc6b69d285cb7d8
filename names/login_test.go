package names

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseLogin(t *testing.T) {
	tests := []struct {
		in, user, secret string
		bad              bool
	}{
		{in: "alice@web01", user: "alice", secret: "web01"},
		{in: "alice@corp.example@web01", user: "alice@corp.example", secret: "web01"},
		{in: "alice", user: "alice"},
		{in: "alice@corp.example@", user: "alice@corp.example"},
		{in: "alice@", user: "alice"},
		{in: "@web01", bad: true},
		{in: "", bad: true},
		{in: "al ice@web01", bad: true},
		{in: "alice@web\n01", bad: true},
		{in: "alice\x00@web01", bad: true},
		{in: "\xffalice@web01", bad: true},
		{in: strings.Repeat("a", MaxLoginLen+1), bad: true},
		{in: "é@web-01.dc1", user: "é", secret: "web-01.dc1"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, s, err := ParseLogin(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("ParseLogin(%q) = %q, %q; want error", tt.in, u, s)
				}
				return
			}
			if err != nil || u != tt.user || s != tt.secret {
				t.Fatalf("ParseLogin(%q) = %q, %q, %v; want %q, %q", tt.in, u, s, err, tt.user, tt.secret)
			}
		})
	}
}

func FuzzParseLogin(f *testing.F) {
	for _, s := range []string{"alice@web01", "a@b@c", "@", "x@", "\x00", "é@é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		u, s, err := ParseLogin(in)
		if err != nil {
			return
		}
		if u == "" || strings.Contains(s, "@") || !utf8.ValidString(u) || len(u)+len(s) > MaxLoginLen {
			t.Fatalf("ParseLogin(%q) = %q, %q: broke its contract", in, u, s)
		}
		want := u
		if s != "" || strings.HasSuffix(in, "@") {
			want = u + "@" + s
		}
		if want != in {
			t.Fatalf("ParseLogin(%q) = %q, %q: does not reassemble", in, u, s)
		}
	})
}
