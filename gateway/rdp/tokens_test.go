package rdp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	sshgw "github.com/sallyport/sallyport/gateway/ssh"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestTokens(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	tk := NewTokens(TokenConfig{Now: clock.now})
	alice := sshgw.Identity{User: "alice", Groups: []string{"ops"}}
	src := netip.MustParseAddrPort("192.0.2.7:40000")

	tok, exp, err := tk.IssueRDPToken(alice, src, "win01")
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != 26 || strings.Trim(tok, "abcdefghijklmnopqrstuvwxyz234567") != "" {
		t.Fatalf("token %q: want 26 lower-case base32 characters", tok)
	}
	if !exp.Equal(clock.t.Add(DefaultTokenTTL)) {
		t.Fatalf("expiry %v", exp)
	}
	// Bound to the source address (any port), the user and the secret.
	if _, ok := tk.lookup("alice", "win01", netip.MustParseAddr("192.0.2.8")); ok {
		t.Fatal("token found from another address")
	}
	if _, ok := tk.lookup("bob", "win01", src.Addr()); ok {
		t.Fatal("token found for another user")
	}
	if _, ok := tk.lookup("alice", "win02", src.Addr()); ok {
		t.Fatal("token found for another secret")
	}
	c, ok := tk.lookup("alice", "win01", netip.MustParseAddr("::ffff:192.0.2.7"))
	if !ok || string(c.value) != tok {
		t.Fatalf("lookup: %v", ok)
	}
	// One login: the first take wins, the second fails.
	id, ok := tk.take(c)
	if !ok || id.User != "alice" || len(id.Groups) != 1 {
		t.Fatalf("take: %v %+v", ok, id)
	}
	if _, ok := tk.take(c); ok {
		t.Fatal("token taken twice")
	}
	if _, ok := tk.lookup("alice", "win01", src.Addr()); ok {
		t.Fatal("used token still there")
	}

	// A new token replaces the old one; a proof against the old one
	// cannot take the new one.
	old, _, _ := tk.IssueRDPToken(alice, src, "win01")
	oc, _ := tk.lookup("alice", "win01", src.Addr())
	newer, _, _ := tk.IssueRDPToken(alice, src, "win01")
	if old == newer {
		t.Fatal("same token twice")
	}
	if _, ok := tk.take(oc); ok {
		t.Fatal("replaced token taken")
	}
	// Expiry.
	nc, _ := tk.lookup("alice", "win01", src.Addr())
	clock.t = clock.t.Add(DefaultTokenTTL)
	if _, ok := tk.take(nc); ok {
		t.Fatal("expired token taken")
	}
	if _, ok := tk.lookup("alice", "win01", src.Addr()); ok {
		t.Fatal("expired token found")
	}
}

func TestTokensBounded(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	tk := NewTokens(TokenConfig{Now: clock.now, Max: 3, TTL: time.Minute})
	src := netip.MustParseAddrPort("192.0.2.7:40000")
	for _, u := range []string{"a", "b", "c"} {
		if _, _, err := tk.IssueRDPToken(sshgw.Identity{User: u}, src, "win01"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := tk.IssueRDPToken(sshgw.Identity{User: "d"}, src, "win01"); !errors.Is(err, ErrTooManyTokens) {
		t.Fatalf("fourth token: %v", err)
	}
	// Replacing one's own token is not a new one.
	if _, _, err := tk.IssueRDPToken(sshgw.Identity{User: "a"}, src, "win01"); err != nil {
		t.Fatal(err)
	}
	// Expired ones make room.
	clock.t = clock.t.Add(time.Minute)
	if _, _, err := tk.IssueRDPToken(sshgw.Identity{User: "d"}, src, "win01"); err != nil {
		t.Fatal(err)
	}
	if n := tk.Outstanding(); n != 1 {
		t.Fatalf("%d outstanding after the sweep", n)
	}
	tk.Sweep()
}

func TestSplitLogin(t *testing.T) {
	for _, tc := range []struct {
		user, domain, wantUser, wantSecret string
		ok                                 bool
	}{
		{"alice@win01", "", "alice", "win01", true},
		{"alice", "win01", "alice", "win01", true},
		{"alice@corp.example@win01", "", "alice@corp.example", "win01", true},
		{"alice", "", "", "", false},
		{"alice@", "", "", "", false},
		{"alice@win 01", "", "", "", false},
		{strings.Repeat("a", 300) + "@win01", "", "", "", false},
	} {
		u, s, err := splitLogin(tc.user, tc.domain)
		if (err == nil) != tc.ok || u != tc.wantUser || s != tc.wantSecret {
			t.Errorf("splitLogin(%q, %q) = %q, %q, %v", tc.user, tc.domain, u, s, err)
		}
	}
}

func TestSplitAccount(t *testing.T) {
	for in, want := range map[string][2]string{
		`CORP\Administrator`: {"Administrator", "CORP"},
		"Administrator":      {"Administrator", ""},
		"admin@corp.example": {"admin@corp.example", ""},
	} {
		if u, d := splitAccount(in); u != want[0] || d != want[1] {
			t.Errorf("splitAccount(%q) = %q, %q", in, u, d)
		}
	}
}
