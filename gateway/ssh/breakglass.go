package ssh

import (
	"context"
	"log/slog"
)

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
