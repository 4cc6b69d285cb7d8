package ssh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
)

// Bounds on what a client may send while authenticating.
const (
	maxAnswerLen = 1024 // one keyboard-interactive answer or password
	maxMenu      = 200  // secrets listed in the menu
)

// errLoginRefused is what x/crypto/ssh turns into the client's one and only
// "Permission denied": every refusal looks the same from outside.
var errLoginRefused = errors.New("permission denied")

// serverConfig builds the per-connection x/crypto/ssh configuration. It is
// per connection so the callbacks can record who logged in on c.
func (c *conn) serverConfig() *gossh.ServerConfig {
	cfg := &gossh.ServerConfig{
		Config: gossh.Config{
			// AES-GCM first: with AES-NI it costs a fraction of the CPU of
			// x/crypto's chacha20-poly1305, which stays for clients without it.
			Ciphers:      []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM, gossh.CipherChaCha20Poly1305},
			KeyExchanges: modernKex,
			MACs:         []string{gossh.HMACSHA256ETM, gossh.HMACSHA512ETM},
		},
		MaxAuthTries:  3,
		ServerVersion: "SSH-2.0-Sallyport",
		KeyboardInteractiveCallback: func(meta gossh.ConnMetadata, challenge gossh.KeyboardInteractiveChallenge) (*gossh.Permissions, error) {
			ask := func(ctx context.Context, instruction string, prompts []Prompt) ([]string, error) {
				return askKI(challenge, instruction, prompts)
			}
			answers, err := ask(c.ctx, "", []Prompt{{Text: "Password: "}})
			if err != nil {
				return nil, errLoginRefused
			}
			return c.authenticate(meta.User(), []byte(answers[0]), ask)
		},
		PasswordCallback: func(meta gossh.ConnMetadata, password []byte) (*gossh.Permissions, error) {
			ask := func(context.Context, string, []Prompt) ([]string, error) { return nil, ErrNotInteractive }
			if len(password) > maxAnswerLen {
				return nil, errLoginRefused
			}
			return c.authenticate(meta.User(), password, ask)
		},
	}
	for _, k := range c.srv.cfg.HostSigners {
		cfg.AddHostKey(k)
	}
	return cfg
}

// modernKex is the key-exchange list offered on both hops: the post-quantum
// hybrid first, then elliptic-curve Diffie-Hellman; no finite-field groups.
var modernKex = []string{
	gossh.KeyExchangeMLKEM768X25519,
	gossh.KeyExchangeCurve25519,
	gossh.KeyExchangeECDHP256,
	gossh.KeyExchangeECDHP384,
	gossh.KeyExchangeECDHP521,
}

// askKI puts one keyboard-interactive round to the client, bounding answers.
func askKI(challenge gossh.KeyboardInteractiveChallenge, instruction string, prompts []Prompt) ([]string, error) {
	qs := make([]string, len(prompts))
	echo := make([]bool, len(prompts))
	for i, p := range prompts {
		qs[i], echo[i] = p.Text, p.Echo
	}
	answers, err := challenge("", instruction, qs, echo)
	if err != nil {
		return nil, err
	}
	if len(answers) != len(prompts) {
		return nil, fmt.Errorf("client gave %d answers to %d prompts", len(answers), len(prompts))
	}
	for _, a := range answers {
		if len(a) > maxAnswerLen {
			return nil, errors.New("answer too long")
		}
	}
	return answers, nil
}

// authenticate runs the whole login: rate limits, the authenticator, the
// choice of target, and the credential checkout. Every refusal returns
// errLoginRefused; the real cause goes to the log and the audit sink.
func (c *conn) authenticate(login string, password []byte, ask Asker) (*gossh.Permissions, error) {
	defer clear(password)
	cfg := &c.srv.cfg
	ctx := c.ctx
	log := c.log()
	ev := audit.Event{Kind: "login", User: login, Source: c.src.String()}
	userKey := login // the gateway user once parsed
	refuse := func(reason string, err error, count bool) (*gossh.Permissions, error) {
		if count {
			c.srv.srcLimit.fail(c.src.Addr().String())
			c.srv.userLimit.fail(userKey)
		}
		cfg.Metrics.login(false)
		ev.Outcome = "denied"
		ev.Attrs = append(ev.Attrs, auditReason(reason, err)...)
		cfg.Audit.Record(ctx, ev)
		return nil, errLoginRefused
	}

	// The per-user limit is keyed on the gateway user alone, so varying the
	// secret part of the login does not buy more guesses.
	user, secret, err := ParseLogin(login)
	if err != nil {
		return refuse("bad login name", nil, true)
	}
	userKey = user
	ev.User, ev.Secret = user, secret
	if !c.srv.srcLimit.allow(c.src.Addr().String()) || !c.srv.userLimit.allow(userKey) {
		log.Warn("failed-login limit reached; refusing without checking", "user", user)
		return refuse("rate limited", nil, false)
	}
	id, err := cfg.Auth.Authenticate(ctx, Login{User: user, Source: c.src, Password: password}, ask)
	if errors.Is(err, ErrUnavailable) {
		// An outage is not the user's fault: say so, and do not count it
		// against their login budget.
		c.tellUnavailable(ctx, ask)
		return refuse("authentication service unavailable", err, false)
	}
	if err != nil {
		return refuse("authentication failed", err, true)
	}
	if secret == "" {
		secret, err = c.menu(ctx, id, ask)
		if err != nil {
			return refuse("no target chosen", err, true)
		}
		ev.Secret = secret
	}
	// Check out now, so a secret that is unknown or not allowed looks like
	// any failed login. serve wipes the credential once the target is dialed.
	cred, err := cfg.Credentials.Checkout(ctx, id, c.src, secret)
	if errors.Is(err, ErrUnavailable) {
		c.tellUnavailable(ctx, ask)
		return refuse("credential service unavailable", err, false)
	}
	if err != nil {
		return refuse("checkout refused", err, true)
	}
	c.cred.Wipe()
	c.login, c.id, c.secret, c.cred = login, id, secret, cred
	cfg.Metrics.login(true)
	ev.Outcome = "ok"
	cfg.Audit.Record(ctx, ev)
	return &gossh.Permissions{}, nil
}

// unavailableMsg is what a user sees when a backing service (RADIUS, the
// vault) does not answer. It names no server and no cause.
const unavailableMsg = "Authentication service unavailable; please try again later."

// tellUnavailable shows unavailableMsg as a keyboard-interactive round with
// no prompts (OpenSSH prints it). Password-method clients cannot be told.
func (c *conn) tellUnavailable(ctx context.Context, ask Asker) {
	_, _ = ask(ctx, unavailableMsg, nil)
}

func auditReason(reason string, err error) []slog.Attr {
	attrs := []slog.Attr{slog.String("reason", reason)}
	if err != nil {
		attrs = append(attrs, slog.String("detail", err.Error()))
	}
	return attrs
}

// menu asks the user to pick one of the secrets they may use.
func (c *conn) menu(ctx context.Context, id Identity, ask Asker) (string, error) {
	names, err := c.srv.cfg.Credentials.List(ctx, id, c.src)
	if err != nil {
		return "", err
	}
	if len(names) == 0 {
		return "", errors.New("no secrets allowed")
	}
	if len(names) > maxMenu {
		names = names[:maxMenu]
	}
	var b strings.Builder
	b.WriteString("Targets you may use:\r\n")
	for i, n := range names {
		fmt.Fprintf(&b, "%4d) %s\r\n", i+1, n)
	}
	answers, err := ask(ctx, b.String(), []Prompt{{Text: "Target number: ", Echo: true}})
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSpace(answers[0]))
	if err != nil || n < 1 || n > len(names) {
		return "", errors.New("no valid choice")
	}
	return names[n-1], nil
}
