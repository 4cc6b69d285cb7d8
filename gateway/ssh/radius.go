package ssh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/radius"
)

// RADIUSAuth authenticates gateway users against RADIUS servers: the
// password goes in the first Access-Request, and every Access-Challenge
// (a one-time code, a push confirmation) becomes one more
// keyboard-interactive prompt with echo off.
type RADIUSAuth struct {
	RADIUS *radius.Authenticator
	Log    *slog.Logger
}

// Authenticate implements Authenticator. A refusal wraps ErrDenied; no
// server answering wraps ErrUnavailable.
func (a RADIUSAuth) Authenticate(ctx context.Context, login Login, ask Asker) (Identity, error) {
	relay := func(ctx context.Context, instruction string, ps []radius.Prompt) ([]string, error) {
		prompts := make([]Prompt, len(ps))
		for i, p := range ps {
			prompts[i] = Prompt{Text: promptText(p.Text), Echo: p.Echo}
		}
		return ask(ctx, instruction, prompts)
	}
	id, err := a.RADIUS.Authenticate(ctx, radius.Login{User: login.User, Source: login.Source, Password: login.Password}, relay)
	switch {
	case err == nil:
	case errors.Is(err, radius.ErrUnavailable):
		return Identity{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	default:
		return Identity{}, fmt.Errorf("%w: radius: %w", ErrDenied, err)
	}
	if len(id.Groups) > names.MaxGroups {
		if a.Log != nil {
			a.Log.Warn("radius accept carried too many groups; keeping the first ones",
				"user", login.User, "groups", len(id.Groups), "kept", names.MaxGroups)
		}
		id.Groups = id.Groups[:names.MaxGroups]
	}
	return Identity{User: login.User, Groups: id.Groups}, nil
}

// promptText makes a challenge's Reply-Message read as a prompt: servers
// send "Enter your one-time code" or "Code:", and the answer should not
// be typed against the last letter.
func promptText(s string) string {
	t := strings.TrimRight(s, " \t")
	switch {
	case t == "":
		return s
	case strings.HasSuffix(t, "\n"):
		return s
	case strings.HasSuffix(t, ":"), strings.HasSuffix(t, "?"), strings.HasSuffix(t, ">"):
		return t + " "
	default:
		return t + ": "
	}
}

// BreakGlassAuth sends a fixed set of accounts to a local authenticator and
// every other user to the network one (RADIUS). The local accounts are for
// when the network authenticator is down or misconfigured, so they never
// depend on it; and no other user can reach the local store, so a stale
// local password cannot bypass the network's MFA.
type BreakGlassAuth struct {
	// Accounts are the gateway user names that log in locally.
	Accounts map[string]bool
	Local    Authenticator
	Network  Authenticator
	Log      *slog.Logger
}

// Authenticate implements Authenticator.
func (a BreakGlassAuth) Authenticate(ctx context.Context, login Login, ask Asker) (Identity, error) {
	if !a.Accounts[login.User] {
		return a.Network.Authenticate(ctx, login, ask)
	}
	id, err := a.Local.Authenticate(ctx, login, ask)
	if err == nil && a.Log != nil {
		a.Log.Warn("break-glass login: local account used instead of RADIUS", "user", login.User, "source", login.Source.String())
	}
	return id, err
}
