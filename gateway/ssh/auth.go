package ssh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/names"
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
		// Called once the key exchange is done: the machine part of the
		// handshake is over, and a person may now take their time.
		PreAuthConnCallback: func(gossh.ServerPreAuthConn) { c.keyExchanged() },
		KeyboardInteractiveCallback: func(meta gossh.ConnMetadata, challenge gossh.KeyboardInteractiveChallenge) (*gossh.Permissions, error) {
			user, secret, ok := c.precheck(meta.User())
			ask := func(ctx context.Context, instruction string, prompts []Prompt) ([]string, error) {
				return askKI(challenge, instruction, prompts)
			}
			// The password is asked for even when precheck refused, so that
			// a refusal without checking looks like any other from outside.
			answers, err := ask(c.ctx, "", []Prompt{{Text: "Password: "}})
			if err != nil || !ok {
				return nil, errLoginRefused
			}
			return c.authenticate(user, secret, []byte(answers[0]), ask)
		},
		PasswordCallback: func(meta gossh.ConnMetadata, password []byte) (*gossh.Permissions, error) {
			defer clear(password)
			user, secret, ok := c.precheck(meta.User())
			if !ok || len(password) > maxAnswerLen {
				return nil, errLoginRefused
			}
			ask := func(context.Context, string, []Prompt) ([]string, error) { return nil, ErrNotInteractive }
			return c.authenticate(user, secret, password, ask)
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

// Reasons for logins refused without checking any credential. They name
// the counts of the tally, never per-attempt lines.
const (
	refusedTooLong   = "login_too_long"
	refusedMalformed = "login_malformed"
	refusedLimited   = "rate_limited"
)

// precheck is what every login attempt goes through before anything about
// it is stored, logged or checked: the login name's length and form, then
// the failed-login limiter, which may refuse it or make it wait. Refusals
// here are attack traffic: they are counted against the source and
// tallied, never logged one by one, and the name itself is never kept.
func (c *conn) precheck(login string) (user, secret string, ok bool) {
	s := c.srv
	refuse := func(reason string) (string, string, bool) {
		s.logins.Failed("", c.source)
		s.unchecked.Add(c.source, reason)
		s.cfg.Metrics.refusedUnchecked(reason)
		s.cfg.Metrics.login(false)
		return "", "", false
	}
	if len(login) > names.MaxLoginLen {
		return refuse(refusedTooLong)
	}
	login, c.rdp = splitRDP(login)
	user, secret, err := names.ParseLogin(login)
	if err != nil || c.rdp && secret == "" {
		return refuse(refusedMalformed)
	}
	d := s.logins.Check(user, c.source)
	if d.Delay > 0 {
		// The source is failing a lot: make it wait, for a refusal too.
		// This holds one of the source's own few pending slots, nobody
		// else's.
		t := time.NewTimer(d.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.ctx.Done():
			return "", "", false
		}
	}
	if !d.Allow {
		return refuse(refusedLimited)
	}
	return user, secret, true
}

// authenticate runs the rest of a login that passed precheck: the
// authenticator, the choice of target, and the credential checkout. Every
// refusal returns errLoginRefused; the real cause goes to the log and the
// audit sink. It wipes password.
func (c *conn) authenticate(user, secret string, password []byte, ask Asker) (*gossh.Permissions, error) {
	defer clear(password)
	cfg := &c.srv.cfg
	ctx := c.ctx
	ev := audit.Event{Kind: "login", User: user, Secret: secret, Source: c.src.String()}
	refuse := func(reason string, err error, count bool) (*gossh.Permissions, error) {
		if count {
			c.srv.logins.Failed(user, c.source)
		}
		cfg.Metrics.login(false)
		ev.Outcome = "denied"
		ev.Attrs = append(ev.Attrs, auditReason(reason, err)...)
		cfg.Audit.Record(ctx, ev)
		return nil, errLoginRefused
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
	// The user proved who they are from here: a known source from now on,
	// whatever they do next.
	c.srv.logins.Succeeded(user, c.source)
	if secret == "" {
		secret, err = c.menu(ctx, id, ask)
		if err != nil {
			return refuse("no target chosen", err, false)
		}
		ev.Secret = secret
	}
	if c.rdp {
		if cfg.RDPTokens == nil {
			return refuse("RDP token refused", errNoRDP, true)
		}
		err := c.issueRDPToken(ctx, id, secret)
		if errors.Is(err, ErrUnavailable) {
			c.tellUnavailable(ctx, ask)
			return refuse("credential service unavailable", err, false)
		}
		if err != nil {
			return refuse("RDP token refused", err, true)
		}
		c.id, c.secret = id, secret
		cfg.Metrics.login(true)
		ev.Kind, ev.Outcome = "rdp_token", "ok"
		ev.Attrs = append(ev.Attrs, slog.Time("expires", c.rdpExpires))
		cfg.Audit.Record(ctx, ev)
		return &gossh.Permissions{}, nil
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
	c.id, c.secret, c.cred = id, secret, cred
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
