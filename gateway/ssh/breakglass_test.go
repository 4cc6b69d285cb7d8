package ssh

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"
)

// recordAuth records whether it was asked and answers with id or err.
type recordAuth struct {
	called *bool
	id     Identity
	err    error
}

func (a recordAuth) Authenticate(context.Context, Login, Asker) (Identity, error) {
	*a.called = true
	return a.id, a.err
}

func TestBreakGlassRouting(t *testing.T) {
	var localCalled, netCalled bool
	a := BreakGlassAuth{
		Accounts: map[string]bool{"breakglass": true},
		Local:    recordAuth{called: &localCalled, err: ErrDenied},
		Network:  recordAuth{called: &netCalled, id: Identity{User: "alice", Groups: []string{"ops"}}},
	}
	ctx := context.Background()
	// A break-glass account never reaches the network authenticator, even
	// when the local check fails.
	if _, err := a.Authenticate(ctx, Login{User: "breakglass"}, nil); !errors.Is(err, ErrDenied) {
		t.Fatalf("break-glass with a wrong password: %v", err)
	}
	if !localCalled || netCalled {
		t.Fatalf("break-glass: local called %v, network called %v", localCalled, netCalled)
	}
	localCalled = false
	id, err := a.Authenticate(ctx, Login{User: "alice"}, nil)
	if err != nil || id.User != "alice" || len(id.Groups) != 1 {
		t.Fatalf("network user: %+v, %v", id, err)
	}
	if localCalled || !netCalled {
		t.Fatalf("network user: local called %v, network called %v", localCalled, netCalled)
	}
	// Names are compared exactly.
	netCalled = false
	if _, err := a.Authenticate(ctx, Login{User: "BreakGlass"}, nil); err != nil || !netCalled || localCalled {
		t.Fatalf("a differently cased name must go to the network: %v", err)
	}
}

// stuckAuth blocks users named "stuck" until release is closed (a RADIUS
// server that never answers, with a long timeout) and passes everyone else
// to next.
type stuckAuth struct {
	next    Authenticator
	entered chan struct{}
	release chan struct{}
}

func (a stuckAuth) Authenticate(ctx context.Context, l Login, ask Asker) (Identity, error) {
	if l.User != "stuck" {
		return a.next.Authenticate(ctx, l, ask)
	}
	a.entered <- struct{}{}
	select {
	case <-a.release:
	case <-ctx.Done():
	}
	return Identity{}, ErrUnavailable
}

// TestSlowAuthDoesNotBlockOthers holds several logins inside a stuck
// authenticator and checks that another user still logs in meanwhile.
func TestSlowAuthDoesNotBlockOthers(t *testing.T) {
	stuck := stuckAuth{entered: make(chan struct{}, 8), release: make(chan struct{})}
	f := newFixture(t, func(c *Config) { stuck.next = c.Auth; c.Auth = stuck })
	defer close(stuck.release)
	const n = 4
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, err := f.dialFrom("127.0.0."+strconv.Itoa(10+i), "stuck@web01", "pw")
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case <-stuck.entered:
		case <-time.After(30 * time.Second):
			t.Fatal("logins did not reach the authenticator")
		}
	}
	c := f.mustDial(t, "alice@web01", "alice-pw")
	if o, _, _ := run(t, c, "meanwhile"); o != "meanwhile" {
		t.Fatalf("got %q", o)
	}
	c.Close()
}
