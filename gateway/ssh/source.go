package ssh

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"

	"github.com/sallyport/sallyport/workitem"
)

// Identity is who a gateway user proved to be.
type Identity struct {
	User   string
	Groups []string
	// Local says the user was proved against the vault's local user store
	// (not RADIUS), so a re-check also requires the user to still be there.
	Local bool
}

// Login is what a client presented when it started authenticating.
type Login struct {
	User   string
	Source netip.AddrPort
	// Password is the first answer (keyboard-interactive) or the password
	// (password method). The authenticator must not keep it.
	Password []byte
}

// String redacts the password.
func (l Login) String() string {
	return "ssh.Login{" + l.User + " from " + l.Source.String() + " [REDACTED]}"
}

// GoString redacts the password under %#v.
func (l Login) GoString() string { return l.String() }

// LogValue redacts the password in slog records.
func (l Login) LogValue() slog.Value { return slog.StringValue(l.String()) }

// MarshalJSON redacts the password; no protocol carries a Login.
func (l Login) MarshalJSON() ([]byte, error) { return json.Marshal(l.String()) }

// Prompt is one question for the user in a keyboard-interactive round.
type Prompt struct {
	Text string
	Echo bool
}

// Asker puts one keyboard-interactive round to the client and returns its
// answers. It fails when the client authenticated with the password method
// and so cannot be asked anything more.
type Asker func(ctx context.Context, instruction string, prompts []Prompt) ([]string, error)

// ErrDenied is returned by authenticators and credential sources for every
// refusal. The user always sees the same message, whatever the cause.
var ErrDenied = errors.New("access denied")

// ErrUnavailable means a backing service (vault, RADIUS) did not answer.
var ErrUnavailable = errors.New("service unavailable")

// ErrNotInteractive is returned by an Asker when the client used the password
// method, so no further prompt can be shown.
var ErrNotInteractive = errors.New("client cannot answer prompts")

// Authenticator proves a gateway user's identity: local users in dev mode,
// RADIUS in production.
type Authenticator interface {
	Authenticate(ctx context.Context, login Login, ask Asker) (Identity, error)
}

// CredentialSource hands out target credentials. In `sallyport dev` it is the
// engine's client for the vault over the in-process queue.
type CredentialSource interface {
	// Checkout returns the credential for secret if id may use it, or
	// ErrDenied. The caller wipes it when done.
	Checkout(ctx context.Context, id Identity, source netip.AddrPort, secret string) (*workitem.Credential, error)
	// List returns the names of the secrets id may use, sorted.
	List(ctx context.Context, id Identity, source netip.AddrPort) ([]string, error)
	// PinHostKey records key (SSH wire format) as the target host key of
	// secret on first use. It fails if another key is already pinned.
	PinHostKey(ctx context.Context, id Identity, source netip.AddrPort, secret string, key []byte) error
}

// RejectionReporter is told when a target refused the credential the
// vault handed out, so that the vault checks the credential at once (a
// heartbeat). A CredentialSource may implement it.
type RejectionReporter interface {
	CredentialRejected(ctx context.Context, id Identity, source netip.AddrPort, secret string)
}

// Grant is what a live session was let through for: who, from where, to
// which secret.
type Grant struct {
	Identity Identity
	Source   netip.AddrPort
	Secret   string
}

// GrantChecker re-checks the grants of live sessions, so that removing a
// user or a secret (and later, a policy change) reaches sessions already
// running.
type GrantChecker interface {
	// StillAllowed reports, in order, whether each grant still holds. An
	// error means the answer is unknown; the sessions go on until the
	// next check.
	StillAllowed(ctx context.Context, grants []Grant) ([]bool, error)
}

// LocalUsers is the part of the vault's user store the local authenticator uses.
type LocalUsers interface {
	// VerifyPassword checks user's password. It returns ErrDenied for an
	// unknown user or a wrong password, taking the same time for both.
	VerifyPassword(ctx context.Context, user string, password []byte) (totp bool, groups []string, err error)
	// VerifyTOTP checks a one-time code and consumes it: the same code,
	// or any earlier one, is refused afterwards.
	VerifyTOTP(ctx context.Context, user, code string) error
}
