package radius

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
)

// DefaultMaxRounds is the number of Access-Request round trips allowed for
// one login when AuthConfig.MaxRounds is zero: the password plus up to four
// challenges.
const DefaultMaxRounds = 5

// maxPAPPassword is the longest User-Password RFC 2865 §5.2 allows.
const maxPAPPassword = 128

// defaultPrompt is shown when an Access-Challenge has no Reply-Message.
const defaultPrompt = "Response: "

// Login is what a gateway user presented: the gateway's login, restated here
// so that this package does not import the gateway.
type Login struct {
	// User is the gateway user name, sent as User-Name.
	User string
	// Source is the client's address, sent as Calling-Station-Id.
	Source netip.AddrPort
	// Password is the first secret the user typed. It is not kept.
	Password []byte
}

// String redacts the password.
func (l Login) String() string {
	return "radius.Login{" + l.User + " from " + l.Source.String() + " [REDACTED]}"
}

// GoString redacts the password under %#v.
func (l Login) GoString() string { return l.String() }

// LogValue redacts the password in slog records.
func (l Login) LogValue() slog.Value { return slog.StringValue(l.String()) }

// MarshalJSON redacts the password; no protocol carries a Login.
func (l Login) MarshalJSON() ([]byte, error) { return json.Marshal(l.String()) }

// Prompt is one question relayed to the user for an Access-Challenge.
type Prompt struct {
	// Text is the challenge's Reply-Message, stripped of control characters.
	Text string
	// Echo is whether the answer may be shown as typed; always false for
	// RADIUS, whose challenges ask for secrets.
	Echo bool
}

// Asker puts prompts to the user and returns one answer per prompt. The
// gateway adapts its keyboard-interactive round to this type.
type Asker func(ctx context.Context, instruction string, prompts []Prompt) ([]string, error)

// Identity is who an Access-Accept says the user is.
type Identity struct {
	// User is the name the user logged in with.
	User string
	// Groups come from the attributes AuthConfig selects, deduplicated.
	Groups []string
}

// AuthConfig chooses how an Authenticator reads groups and bounds challenges.
type AuthConfig struct {
	// GroupsFromClass takes groups from Class attributes (RFC 2865 §5.25),
	// as NPS and most FreeRADIUS setups send them.
	GroupsFromClass bool
	// GroupsFromFilterID takes groups from Filter-Id attributes.
	GroupsFromFilterID bool
	// MaxRounds bounds Access-Request round trips per login.
	// Zero means DefaultMaxRounds.
	MaxRounds int
}

// Authenticator logs users in with PAP and relays Access-Challenge rounds
// (one-time codes, push confirmations) to them.
type Authenticator struct {
	client *Client
	cfg    AuthConfig
	logger *slog.Logger
}

// NewAuthenticator returns an Authenticator that sends its requests through
// c. A nil logger discards.
func NewAuthenticator(c *Client, cfg AuthConfig, logger *slog.Logger) (*Authenticator, error) {
	if c == nil {
		return nil, errors.New("radius: nil client")
	}
	if cfg.MaxRounds < 0 {
		return nil, errors.New("radius: negative MaxRounds")
	}
	if cfg.MaxRounds == 0 {
		cfg.MaxRounds = DefaultMaxRounds
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Authenticator{client: c, cfg: cfg, logger: logger}, nil
}

// Authenticate runs one RADIUS login. It returns an error wrapping ErrDenied
// for every refusal and ErrUnavailable when no server answered. Neither the
// password nor a challenge answer appears in logs or errors.
func (a *Authenticator) Authenticate(ctx context.Context, login Login, ask Asker) (Identity, error) {
	if login.User == "" || len(login.User) > 253 || !utf8.ValidString(login.User) {
		return Identity{}, fmt.Errorf("%w: unusable user name", ErrDenied)
	}
	pw := append([]byte(nil), login.Password...)
	defer func() { clear(pw) }()
	var state []byte
	server := "" // after a challenge, the server that holds its State
	for round := 1; round <= a.cfg.MaxRounds; round++ {
		if len(pw) > maxPAPPassword {
			return Identity{}, fmt.Errorf("%w: password longer than %d bytes", ErrDenied, maxPAPPassword)
		}
		req, err := a.request(login, pw, state)
		if err != nil {
			return Identity{}, err
		}
		resp, from, err := a.client.exchange(ctx, req, server)
		if err != nil {
			return Identity{}, err
		}
		switch resp.Code {
		case layeh.CodeAccessAccept:
			return Identity{User: login.User, Groups: a.groups(resp)}, nil
		case layeh.CodeAccessReject:
			a.logger.Info("radius access reject", "user", login.User, "round", round)
			return Identity{}, ErrDenied
		case layeh.CodeAccessChallenge:
			if round == a.cfg.MaxRounds {
				// No round left to send the answer in: do not ask.
				a.logger.Info("radius login denied: too many challenge rounds", "user", login.User, "max_rounds", a.cfg.MaxRounds)
				return Identity{}, fmt.Errorf("%w: more than %d rounds", ErrDenied, a.cfg.MaxRounds)
			}
		default:
			return Identity{}, fmt.Errorf("%w: unexpected reply %v", ErrDenied, resp.Code)
		}
		server = from
		state = nil
		if s, ok := resp.Lookup(rfc2865.State_Type); ok {
			state = append([]byte(nil), s...)
		}
		if ask == nil {
			return Identity{}, fmt.Errorf("%w: challenge but no way to ask the user", ErrDenied)
		}
		answers, err := ask(ctx, "", []Prompt{{Text: challengePrompt(resp), Echo: false}})
		if err != nil {
			return Identity{}, fmt.Errorf("%w: challenge not answered: %w", ErrDenied, err)
		}
		if len(answers) != 1 {
			return Identity{}, fmt.Errorf("%w: %d answers to one prompt", ErrDenied, len(answers))
		}
		clear(pw)
		pw = []byte(answers[0])
	}
	// Unreachable: the last round either returns or denies above.
	return Identity{}, ErrDenied
}

// request builds one Access-Request. The User-Password attribute holds the
// plaintext: Client.Exchange encrypts it per server.
func (a *Authenticator) request(login Login, password, state []byte) (*layeh.Packet, error) {
	p := &layeh.Packet{Code: layeh.CodeAccessRequest}
	if err := rfc2865.UserName_SetString(p, login.User); err != nil {
		return nil, fmt.Errorf("%w: user name", ErrDenied)
	}
	p.Add(rfc2865.UserPassword_Type, layeh.Attribute(password))
	cfg := a.client.cfg
	if cfg.NASIdentifier != "" {
		p.Add(rfc2865.NASIdentifier_Type, layeh.Attribute(cfg.NASIdentifier))
	}
	if cfg.NASIPAddress.IsValid() {
		ip := cfg.NASIPAddress.Unmap().As4()
		p.Add(rfc2865.NASIPAddress_Type, layeh.Attribute(ip[:]))
	}
	if login.Source.IsValid() {
		// The address alone, as other RADIUS clients for remote logins
		// send it: servers match it against address lists and policies.
		p.Add(rfc2865.CallingStationID_Type, layeh.Attribute(login.Source.Addr().Unmap().String()))
	}
	if state != nil {
		p.Add(rfc2865.State_Type, layeh.Attribute(state))
	}
	return p, nil
}

// challengePrompt joins the Reply-Message attributes of a challenge; RFC 2865
// §5.18 lets a server split one message over several. Control characters
// other than newlines, and bidirectional-text controls (which can make a
// prompt display as something else), are removed so a server cannot drive
// the user's terminal or disguise a prompt.
func challengePrompt(p *layeh.Packet) string {
	var sb strings.Builder
	for _, avp := range p.Attributes {
		if avp.Type == rfc2865.ReplyMessage_Type {
			sb.Write(avp.Attribute)
		}
	}
	text := strings.Map(func(r rune) rune {
		if r == utf8.RuneError || (unicode.IsControl(r) && r != '\n') || unicode.Is(unicode.Bidi_Control, r) {
			return -1
		}
		return r
	}, sb.String())
	if strings.TrimSpace(text) == "" {
		return defaultPrompt
	}
	return text
}

// groups returns the configured group attributes of an Access-Accept, in
// order, without duplicates and without values that are not printable text
// (NPS puts binary session cookies in Class).
func (a *Authenticator) groups(p *layeh.Packet) []string {
	var out []string
	for _, avp := range p.Attributes {
		if !(a.cfg.GroupsFromClass && avp.Type == rfc2865.Class_Type) &&
			!(a.cfg.GroupsFromFilterID && avp.Type == rfc2865.FilterID_Type) {
			continue
		}
		g := string(avp.Attribute)
		if g == "" || !utf8.ValidString(g) || strings.IndexFunc(g, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
			continue
		}
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out
}
