package radius

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
)

// mfaServer answers like the FreeRADIUS recipe: alice has a password and a
// TOTP challenge with a single-use State; bob has a password only.
func mfaServer(t *testing.T) func(*layeh.Packet, int) *layeh.Packet {
	var mu sync.Mutex
	states := map[string]bool{}
	n := 0
	return func(req *layeh.Packet, _ int) *layeh.Packet {
		mu.Lock()
		defer mu.Unlock()
		if got := rfc2865.NASIdentifier_GetString(req); got != "sallyport-test" {
			t.Errorf("NAS-Identifier %q", got)
		}
		if got := rfc2865.NASIPAddress_Get(req); got.String() != "192.0.2.7" {
			t.Errorf("NAS-IP-Address %v", got)
		}
		if got := rfc2865.CallingStationID_GetString(req); got != "198.51.100.9" {
			t.Errorf("Calling-Station-Id %q", got)
		}
		user := rfc2865.UserName_GetString(req)
		pass := rfc2865.UserPassword_GetString(req)
		if user == "loop" {
			r := req.Response(layeh.CodeAccessChallenge)
			r.Add(rfc2865.State_Type, layeh.Attribute("again"))
			return r
		}
		if st, ok := req.Lookup(rfc2865.State_Type); ok {
			valid := states[string(st)]
			delete(states, string(st))
			if valid && user == "alice" && pass == "123456" {
				r := req.Response(layeh.CodeAccessAccept)
				r.Add(rfc2865.Class_Type, layeh.Attribute("admins"))
				r.Add(rfc2865.Class_Type, layeh.Attribute{0x00, 0xff, 0x01}) // NPS-style binary cookie
				r.Add(rfc2865.FilterID_Type, layeh.Attribute("ops"))
				r.Add(rfc2865.FilterID_Type, layeh.Attribute("admins"))
				return r
			}
			return req.Response(layeh.CodeAccessReject)
		}
		switch {
		case user == "alice" && pass == "alicepass":
			n++
			st := "state-" + string(rune('a'+n))
			states[st] = true
			r := req.Response(layeh.CodeAccessChallenge)
			r.Add(rfc2865.State_Type, layeh.Attribute(st))
			r.Add(rfc2865.ReplyMessage_Type, layeh.Attribute("Enter your "))
			r.Add(rfc2865.ReplyMessage_Type, layeh.Attribute("TOTP code:\x1b[2J "))
			return r
		case user == "bob" && pass == "bobpass":
			return req.Response(layeh.CodeAccessAccept)
		}
		return req.Response(layeh.CodeAccessReject)
	}
}

func TestAuthenticate(t *testing.T) {
	type asked struct {
		prompts []Prompt
	}
	tests := []struct {
		name       string
		user, pass string
		answer     string
		askErr     error
		cfg        AuthConfig
		want       Identity
		wantErr    error
		wantPrompt string // "" means the user must not be asked
		wantAsks   int
	}{
		{name: "pap only", user: "bob", pass: "bobpass", want: Identity{User: "bob"}},
		{name: "wrong password", user: "bob", pass: "nope", wantErr: ErrDenied},
		{name: "challenge accept, Class groups", user: "alice", pass: "alicepass", answer: "123456",
			cfg:  AuthConfig{GroupsFromClass: true},
			want: Identity{User: "alice", Groups: []string{"admins"}}, wantPrompt: "Enter your TOTP code:[2J ", wantAsks: 1},
		{name: "challenge accept, both group sources", user: "alice", pass: "alicepass", answer: "123456",
			cfg:  AuthConfig{GroupsFromClass: true, GroupsFromFilterID: true},
			want: Identity{User: "alice", Groups: []string{"admins", "ops"}}, wantPrompt: "Enter your TOTP code:[2J ", wantAsks: 1},
		{name: "challenge accept, Filter-Id groups", user: "alice", pass: "alicepass", answer: "123456",
			cfg:  AuthConfig{GroupsFromFilterID: true},
			want: Identity{User: "alice", Groups: []string{"ops", "admins"}}, wantPrompt: "Enter your TOTP code:[2J ", wantAsks: 1},
		{name: "wrong code", user: "alice", pass: "alicepass", answer: "000000", wantErr: ErrDenied,
			wantPrompt: "Enter your TOTP code:[2J ", wantAsks: 1},
		{name: "asker fails", user: "alice", pass: "alicepass", askErr: errors.New("not interactive"), wantErr: ErrDenied,
			wantPrompt: "Enter your TOTP code:[2J ", wantAsks: 1},
		{name: "endless challenge", user: "loop", pass: "x", answer: "y", cfg: AuthConfig{MaxRounds: 3},
			wantErr: ErrDenied, wantPrompt: defaultPrompt, wantAsks: 2},
		{name: "empty user", user: "", pass: "x", wantErr: ErrDenied},
		{name: "password too long", user: "bob", pass: strings.Repeat("p", 129), wantErr: ErrDenied},
	}
	r := newResponder(t, testSecret, faultNone, mfaServer(t))
	c := testClient(t, nil, r.addr())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewAuthenticator(c, tt.cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			var asks []asked
			ask := func(_ context.Context, _ string, p []Prompt) ([]string, error) {
				asks = append(asks, asked{p})
				if tt.askErr != nil {
					return nil, tt.askErr
				}
				return []string{tt.answer}, nil
			}
			login := Login{User: tt.user, Password: []byte(tt.pass), Source: netip.MustParseAddrPort("198.51.100.9:40022")}
			got, err := a.Authenticate(context.Background(), login, ask)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Authenticate() error = %v, want %v", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("Authenticate() error = %v", err)
			}
			if got.User != tt.want.User || !slices.Equal(got.Groups, tt.want.Groups) {
				t.Errorf("Authenticate() = %+v, want %+v", got, tt.want)
			}
			if len(asks) != tt.wantAsks {
				t.Fatalf("asked %d times, want %d", len(asks), tt.wantAsks)
			}
			for _, q := range asks {
				if len(q.prompts) != 1 || q.prompts[0].Echo || q.prompts[0].Text != tt.wantPrompt {
					t.Errorf("prompts %+v, want one non-echoed %q", q.prompts, tt.wantPrompt)
				}
			}
			if string(login.Password) != tt.pass {
				t.Error("Authenticate modified the caller's password")
			}
		})
	}
}

func TestAuthenticateUnavailable(t *testing.T) {
	tests := []struct {
		name  string
		fault fault
	}{
		{"silent", faultNone},
		{"forged accepts only", faultNoMsgAuth},
		{"bad Message-Authenticator", faultBadMsgAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newResponder(t, testSecret, tt.fault, func(req *layeh.Packet, _ int) *layeh.Packet {
				if tt.fault == faultNone {
					return nil
				}
				return req.Response(layeh.CodeAccessAccept)
			})
			a, err := NewAuthenticator(testClient(t, nil, r.addr()), AuthConfig{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.Authenticate(context.Background(), Login{User: "bob", Password: []byte("bobpass")}, nil)
			if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrDenied) || id.User != "" {
				t.Fatalf("Authenticate() = %+v, %v; want ErrUnavailable", id, err)
			}
		})
	}
}

// TestAuthenticateChallengeStaysOnServer: the answer to a challenge goes to
// the server that issued it, even when it then falls silent; another server
// does not know the State and must not be asked.
func TestAuthenticateChallengeStaysOnServer(t *testing.T) {
	first := newResponder(t, testSecret, faultNone, func(req *layeh.Packet, n int) *layeh.Packet {
		if n > 0 {
			return nil
		}
		r := req.Response(layeh.CodeAccessChallenge)
		r.Add(rfc2865.State_Type, layeh.Attribute("s"))
		return r
	})
	second := newResponder(t, testSecret, faultNone, acceptAll)
	a, err := NewAuthenticator(testClient(t, nil, first.addr(), second.addr()), AuthConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(context.Context, string, []Prompt) ([]string, error) { return []string{"123456"}, nil }
	_, err = a.Authenticate(context.Background(), Login{User: "alice", Password: []byte("alicepass")}, ask)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Authenticate() error = %v, want ErrUnavailable", err)
	}
	if n := len(second.received()); n != 0 {
		t.Errorf("second server saw %d requests, want 0", n)
	}
}

func TestChallengePromptStripsControls(t *testing.T) {
	p := &layeh.Packet{Code: layeh.CodeAccessChallenge}
	p.Add(rfc2865.ReplyMessage_Type, layeh.Attribute("Enter \x1b[2Jcode\u202e:edoc\u2066\r\nline two"))
	if got, want := challengePrompt(p), "Enter [2Jcode:edoc\nline two"; got != want {
		t.Fatalf("challengePrompt = %q, want %q", got, want)
	}
}
