package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/vault"
)

const ctlUsage = `usage: sallyport ctl [--data DIR] [--vault URL --token-file F --ca-file F] <command>

connection (defaults come from the data directory that 'sallyport dev' writes):
  --data DIR          data directory (default ./.sallyport): DIR/api.addr, DIR/admin.token, DIR/api.crt
  --vault URL         admin API address, e.g. https://127.0.0.1:8443 (default: DIR/api.addr)
  --token-file F      admin token file, mode 0600 (default: DIR/admin.token)
  --ca-file F         PEM certificate(s) to trust for the API (default: DIR/api.crt)

commands:
  user add NAME --password-stdin [--totp] [--groups g1,g2]
  user list [--json]
  user rm NAME
  user disable NAME | user enable NAME
  secret add NAME --host H [--port 22] --username U (--password-stdin | --private-key-file F)
                  (--host-key 'ssh-ed25519 AAAA...' | --pin-on-first-use) --allow alice[,bob,group:ops]
  secret add NAME --protocol rdp --host H [--port 3389] --username [DOMAIN\]U --password-stdin
                  (--cert-sha256 HEX | --pin-on-first-use) --allow alice[,bob,group:ops] [--site SITE] [--heartbeat 1h]
                  [--site SITE] [--heartbeat 1h] [--rotate 30d] [--rotate-after-use]
                  [--change-method self | privileged:SECRET | key] [--password-rule 'len=24,classes=ulds,exclude=@:/']
  secret list [--json]
  secret show NAME
  secret heartbeat NAME | secret rotate NAME     (now, on an engine of its site)
  secret history NAME [--json]
  secret rm NAME
  secret disable NAME | secret enable NAME
  site add NAME [--connector builtin | --connector amqps://user@host:5671/vhost --connector-secret-file F]
  site list [--json] | site show NAME | site rotate-key NAME | site ping NAME
  site set-connector NAME (builtin | amqps://user@host:5671/vhost) [--connector-secret-file F]
  engine list [--json] | engine approve ID | engine revoke ID

Secrets are never taken from the command line: --password-stdin reads the
first line of standard input. 'secret show' never prints the credential.
Removing or disabling a user or a secret also ends their live sessions
within seconds.
--port defaults to 22; the vault itself has no default port.

New names must not start with '-'. A name from before that rule is still
shown or removed after '--', e.g. 'sallyport ctl secret rm -- -old'.
`

// Input bounds for ctl.
const (
	ctlMaxPasswordLine = 4096     // bytes on the first line of stdin
	ctlMaxKeyFile      = 64 << 10 // private key file
	ctlMaxCAFile       = 1 << 20  // CA PEM file
	ctlMaxAddrFile     = 4096     // api.addr
	ctlTimeout         = 2 * time.Minute
)

// usageError is a command-line mistake: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// ctlMain runs `sallyport ctl`; args are the arguments after "ctl". It
// returns the exit status: 0 ok, 1 error, 2 usage error.
func ctlMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := runCtl(args, stdin, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, ctlUsage)
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "sallyport ctl: %s\n\n%s", ue.msg, ctlUsage)
		return 2
	}
	fmt.Fprintf(stderr, "sallyport ctl: %s\n", err)
	return 1
}

// ctlEnv is what every command needs.
type ctlEnv struct {
	dataDir, vaultURL, tokenFile, caFile string
	stdin                                io.Reader
	stdout, stderr                       io.Writer
}

// client builds the API client from the connection flags and data directory.
func (e *ctlEnv) client() (*vault.Client, error) {
	addr := e.vaultURL
	if addr == "" {
		raw, err := readBounded(filepath.Join(e.dataDir, "api.addr"), ctlMaxAddrFile)
		if err != nil {
			return nil, fmt.Errorf("API address: %w (is 'sallyport dev' running? or pass --vault)", err)
		}
		addr, _, _ = strings.Cut(strings.TrimSpace(string(raw)), "\n")
	}
	tokenFile := e.tokenFile
	if tokenFile == "" {
		tokenFile = filepath.Join(e.dataDir, "admin.token")
	}
	caFile := e.caFile
	if caFile == "" {
		caFile = filepath.Join(e.dataDir, "api.crt")
	}
	token, err := vault.ReadToken(tokenFile)
	if err != nil {
		return nil, err
	}
	defer clear(token)
	ca, err := readBounded(caFile, ctlMaxCAFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	return vault.NewClient(strings.TrimSpace(addr), string(token), ca)
}

func runCtl(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sallyport ctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	env := &ctlEnv{stdin: stdin, stdout: stdout, stderr: stderr}
	fs.StringVar(&env.dataDir, "data", "./.sallyport", "data directory")
	fs.StringVar(&env.vaultURL, "vault", "", "admin API address")
	fs.StringVar(&env.tokenFile, "token-file", "", "admin token file")
	fs.StringVar(&env.caFile, "ca-file", "", "CA certificate file")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	rest := fs.Args()
	if len(rest) < 2 {
		if len(rest) == 1 && (rest[0] == "help" || rest[0] == "-h") {
			return flag.ErrHelp
		}
		return usagef("missing command")
	}
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	noun, verb, rest := rest[0], rest[1], rest[2:]
	switch noun + " " + verb {
	case "user add":
		return ctlUserAdd(ctx, env, rest)
	case "user list":
		return ctlUserList(ctx, env, rest)
	case "user rm":
		return ctlNamed(ctx, env, "user rm", rest, (*vault.Client).RemoveUser)
	case "secret add":
		return ctlSecretAdd(ctx, env, rest)
	case "secret list":
		return ctlSecretList(ctx, env, rest)
	case "secret show":
		return ctlSecretShow(ctx, env, rest)
	case "secret rm":
		return ctlNamed(ctx, env, "secret rm", rest, (*vault.Client).RemoveSecret)
	case "secret heartbeat":
		return ctlNamed(ctx, env, "secret heartbeat", rest, (*vault.Client).HeartbeatSecret)
	case "secret rotate":
		return ctlNamed(ctx, env, "secret rotate", rest, (*vault.Client).RotateSecret)
	case "secret history":
		return ctlSecretHistory(ctx, env, rest)
	case "user disable", "user enable":
		return ctlNamed(ctx, env, noun+" "+verb, rest, setDisabled((*vault.Client).SetUserDisabled, verb == "disable"))
	case "secret disable", "secret enable":
		return ctlNamed(ctx, env, noun+" "+verb, rest, setDisabled((*vault.Client).SetSecretDisabled, verb == "disable"))
	case "site add":
		return ctlSiteAdd(ctx, env, rest)
	case "site list":
		return ctlSiteList(ctx, env, rest)
	case "site show":
		return ctlSiteShow(ctx, env, rest)
	case "site set-connector":
		return ctlSiteSetConnector(ctx, env, rest)
	case "site rotate-key":
		return ctlSiteRotateKey(ctx, env, rest)
	case "site ping":
		return ctlSitePing(ctx, env, rest)
	case "engine list":
		return ctlEngineList(ctx, env, rest)
	case "engine approve":
		return ctlEngineSet("engine approve", (*vault.Client).ApproveEngine)(ctx, env, rest)
	case "engine revoke":
		return ctlEngineSet("engine revoke", (*vault.Client).RevokeEngine)(ctx, env, rest)
	}
	return usagef("unknown command %q", noun+" "+verb)
}

// flagError turns a flag-package error into a usage error (or ErrHelp).
func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return usageError{err.Error()}
}

// parseNamed parses a subcommand's flags around one positional NAME, which
// may come first ("secret add web01 --host h") or after the flags.
func parseNamed(fs *flag.FlagSet, args []string) (string, error) {
	pos, err := parsePositional(fs, args)
	if err != nil {
		return "", err
	}
	switch {
	case len(pos) > 1:
		return "", usagef("%s: unexpected argument %q", fs.Name(), pos[1])
	case len(pos) == 0:
		return "", usagef("%s: missing NAME", fs.Name())
	}
	return pos[0], nil
}

// parsePositional parses flags wherever they stand among the positional
// arguments (`site set-connector west amqp://… --connector-secret-file F`
// as well as flags first) and returns the positional ones in order.
func parsePositional(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, flagError(err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// parseNone parses a subcommand that takes no positional argument.
func parseNone(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// refuseFlagLike refuses a new name that starts with '-' before anything is
// read or sent, with the vault's own wording ("name: must not start with
// '-'"). Such a name only gets here after "--", and the vault would refuse
// it too; checking here saves reading a password for nothing. Lookups and
// removals do not call this: a legacy name must stay removable.
func refuseFlagLike(cmd, field, name string) error {
	if !names.LooksLikeFlag(name) {
		return nil
	}
	why := "must not start with '-'"
	if field == "groups" {
		why = "a group name " + why
	}
	return usagef("%s: %s: %s", cmd, field, why)
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// readPasswordLine reads the first line of r (without its line ending).
// It reads one byte at a time, so nothing past the line is consumed and no
// buffer it does not wipe ever holds the password; it never reads more than
// ctlMaxPasswordLine bytes.
func readPasswordLine(r io.Reader) ([]byte, error) {
	buf := make([]byte, 0, ctlMaxPasswordLine)
	var one [1]byte
	for {
		n, err := r.Read(one[:])
		if n == 1 {
			if one[0] == '\n' {
				break
			}
			if len(buf) == ctlMaxPasswordLine {
				clear(buf)
				return nil, fmt.Errorf("password on stdin is longer than %d bytes", ctlMaxPasswordLine)
			}
			buf = append(buf, one[0])
			continue
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			clear(buf)
			return nil, fmt.Errorf("read password from stdin: %w", err)
		}
	}
	one[0] = 0
	if n := len(buf); n > 0 && buf[n-1] == '\r' {
		buf[n-1] = 0
		buf = buf[:n-1]
	}
	if len(buf) == 0 {
		return nil, errors.New("no password on the first line of stdin")
	}
	return buf, nil
}

// readBounded reads a whole file of at most max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path) // #nosec G304 -- operator-chosen file
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		clear(raw)
		return nil, err
	}
	if int64(len(raw)) > max {
		clear(raw)
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return raw, nil
}

// printable replaces control characters in server-supplied text, so a
// hostile name cannot send escape sequences to the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

func ctlUserAdd(ctx context.Context, env *ctlEnv, args []string) error {
	fs := newFlagSet("user add")
	pwStdin := fs.Bool("password-stdin", false, "read the password from the first line of stdin")
	totp := fs.Bool("totp", false, "require a TOTP code too; prints the otpauth:// URI")
	groups := fs.String("groups", "", "comma-separated groups")
	name, err := parseNamed(fs, args)
	if err != nil {
		return err
	}
	if err := refuseFlagLike("user add", "name", name); err != nil {
		return err
	}
	for _, g := range splitList(*groups) {
		if err := refuseFlagLike("user add", "groups", g); err != nil {
			return err
		}
	}
	if !*pwStdin {
		return usagef("user add: --password-stdin is required (passwords are never taken from the command line)")
	}
	password, err := readPasswordLine(env.stdin)
	if err != nil {
		return err
	}
	spec := vault.UserSpec{Name: name, Password: password, TOTP: *totp, Groups: splitList(*groups)}
	defer spec.Wipe()
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	uri, err := c.AddUser(ctx, spec)
	if err != nil {
		return fmt.Errorf("user add %s: %w", name, err)
	}
	if *totp {
		fmt.Fprintln(env.stdout, uri)
		fmt.Fprintln(env.stderr, "Add this otpauth:// URI to the user's authenticator app (e.g. as a QR code); it is shown only once.")
	}
	return nil
}

func ctlUserList(ctx context.Context, env *ctlEnv, args []string) error {
	asJSON, err := parseList("user list", args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	users, err := c.ListUsers(ctx)
	if err != nil {
		return fmt.Errorf("user list: %w", err)
	}
	if asJSON {
		return writeJSONRows(env.stdout, users)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTOTP\tGROUPS\tSTATE\tCREATED")
	for _, u := range users {
		groups := strings.Join(u.Groups, ",")
		if groups == "" {
			groups = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", printable(u.Name), yesNo(u.TOTP), printable(groups), state(u.Disabled), u.Created.Local().Format(time.RFC3339))
	}
	return tw.Flush()
}

func state(disabled bool) string {
	if disabled {
		return "disabled"
	}
	return "enabled"
}

// ctlNamed runs a command that takes one NAME and calls the API once:
// `user rm`, `secret rm`, `user|secret disable|enable`.
func ctlNamed(ctx context.Context, env *ctlEnv, cmd string, args []string, call func(c *vault.Client, ctx context.Context, name string) error) error {
	name, err := parseNamed(newFlagSet(cmd), args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := call(c, ctx, name); err != nil {
		return fmt.Errorf("%s %s: %w", cmd, name, err)
	}
	return nil
}

// setDisabled adapts a Set…Disabled client method for ctlNamed.
func setDisabled(set func(*vault.Client, context.Context, string, bool) error, disabled bool) func(*vault.Client, context.Context, string) error {
	return func(c *vault.Client, ctx context.Context, name string) error { return set(c, ctx, name, disabled) }
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func ctlSecretAdd(ctx context.Context, env *ctlEnv, args []string) error {
	fs := newFlagSet("secret add")
	host := fs.String("host", "", "target host name or IP address")
	// The default lives here, not in the vault: the API refuses a missing
	// or zero port, so ctl always sends one (22, or 3389 for RDP, unless
	// --port says else).
	port := fs.Int("port", 0, "target port (default 22, or 3389 with --protocol rdp)")
	protocol := fs.String("protocol", "ssh", "how the target is reached: ssh or rdp")
	certSHA := fs.String("cert-sha256", "", "rdp: the SHA-256 of the target's TLS certificate, hex (colons allowed)")
	username := fs.String("username", "", "account on the target")
	pwStdin := fs.Bool("password-stdin", false, "read the target password from the first line of stdin")
	keyFile := fs.String("private-key-file", "", "file holding the target account's private key (not passphrase-protected)")
	hostKey := fs.String("host-key", "", "ssh: the target's host key, 'ssh-ed25519 AAAA...'")
	pin := fs.Bool("pin-on-first-use", false, "trust and record the first host key (or RDP certificate) the gateway sees")
	allow := fs.String("allow", "", "comma-separated users and group:NAME entries who may use the secret")
	site := fs.String("site", "", "the site whose engines reach the target (default: default)")
	heartbeat := fs.String("heartbeat", "", "check that the credential logs in this often (e.g. 1h; default never)")
	rotate := fs.String("rotate", "", "change the credential this often (e.g. 30d; default never)")
	afterUse := fs.Bool("rotate-after-use", false, "change the credential once the last session on it has ended")
	method := fs.String("change-method", "", "self (passwd), privileged:SECRET (chpasswd as another secret) or key (default: self for a password, key for a key)")
	rule := fs.String("password-rule", "", "rule for new passwords, e.g. 'len=24,classes=ulds,exclude=@:/'")
	name, err := parseNamed(fs, args)
	if err != nil {
		return err
	}
	if err := refuseFlagLike("secret add", "name", name); err != nil {
		return err
	}
	isRDP := *protocol == vault.ProtocolRDP
	portSet := false
	fs.Visit(func(f *flag.Flag) { portSet = portSet || f.Name == "port" })
	if !portSet {
		*port = 22
		if isRDP {
			*port = 3389
		}
	}
	switch {
	case *protocol != vault.ProtocolSSH && !isRDP:
		return usagef("secret add: --protocol must be ssh or rdp")
	case *host == "":
		return usagef("secret add: --host is required")
	case *username == "":
		return usagef("secret add: --username is required")
	case *pwStdin == (*keyFile != ""):
		return usagef("secret add: give exactly one of --password-stdin and --private-key-file")
	case isRDP && *keyFile != "":
		return usagef("secret add: an RDP target takes a password (--password-stdin), not a key")
	case isRDP && *hostKey != "":
		return usagef("secret add: an RDP target is pinned by --cert-sha256, not --host-key")
	case isRDP && (*certSHA != "") == *pin:
		return usagef("secret add: give exactly one of --cert-sha256 and --pin-on-first-use")
	case !isRDP && *certSHA != "":
		return usagef("secret add: --cert-sha256 is for --protocol rdp")
	case !isRDP && (*hostKey != "") == *pin:
		return usagef("secret add: give exactly one of --host-key and --pin-on-first-use")
	case len(splitList(*allow)) == 0:
		return usagef("secret add: --allow is required")
	case *port < 1 || *port > 65535:
		return usagef("secret add: --port must be 1..65535")
	}
	spec := vault.SecretSpec{
		Name: name, Protocol: *protocol, Host: *host, Port: *port, Username: *username,
		HostKey: strings.TrimSpace(*hostKey), CertSHA256: strings.TrimSpace(*certSHA), PinOnFirstUse: *pin, Allow: splitList(*allow), Site: *site,
		RotateAfterUse: *afterUse, ChangeMethod: *method, PasswordRule: *rule,
	}
	if spec.Heartbeat, err = parseInterval("heartbeat", *heartbeat); err != nil {
		return err
	}
	if spec.Rotate, err = parseInterval("rotate", *rotate); err != nil {
		return err
	}
	defer spec.Wipe()
	if *pwStdin {
		if spec.Password, err = readPasswordLine(env.stdin); err != nil {
			return err
		}
	} else if spec.PrivateKey, err = readBounded(*keyFile, ctlMaxKeyFile); err != nil {
		return fmt.Errorf("private key file: %w", err)
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.AddSecret(ctx, spec); err != nil {
		return fmt.Errorf("secret add %s: %w", name, err)
	}
	return nil
}

func ctlSecretList(ctx context.Context, env *ctlEnv, args []string) error {
	asJSON, err := parseList("secret list", args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	list, err := c.ListSecrets(ctx)
	if err != nil {
		return fmt.Errorf("secret list: %w", err)
	}
	if asJSON {
		return writeJSONRows(env.stdout, list)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSITE\tTARGET\tKIND\tHOST KEY\tALLOW\tSTATE\tHEARTBEAT\tROTATED\tNEXT")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", printable(s.Name), printable(s.Site), printable(target(s)), printable(s.Kind),
			printable(hostKeySummary(s)), printable(strings.Join(s.Allow, ",")), state(s.Disabled),
			printable(lastHeartbeat(s.Maintenance)), when(s.Maintenance.LastRotation), printable(nextDue(s.Maintenance)))
	}
	return tw.Flush()
}

// parseInterval reads a maintenance interval: Go's duration syntax, or a
// whole number of days ("30d"); "" is never (0).
func parseInterval(flagName, v string) (time.Duration, error) {
	if v == "" || v == "0" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 1 || n > 3650 {
			return 0, usagef("--%s: %q: want a duration such as 12h or 30d", flagName, v)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, usagef("--%s: %q: want a duration such as 12h or 30d", flagName, v)
	}
	return d, nil
}

func every(d vault.Duration) string {
	if d == 0 {
		return "never"
	}
	if x := time.Duration(d); x%(24*time.Hour) == 0 {
		return strconv.Itoa(int(x/(24*time.Hour))) + "d"
	}
	return time.Duration(d).String()
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.RFC3339)
}

// lastHeartbeat is "ok 2026-11-29T12:00:00Z (engine 1a2b)" or "-".
func lastHeartbeat(m vault.Maintenance) string {
	if m.LastHeartbeat == "" {
		return "-"
	}
	s := m.LastHeartbeat + " " + when(m.LastHeartbeatAt)
	if m.LastHeartbeatEngine != "" {
		s += " (engine " + m.LastHeartbeatEngine + ")"
	}
	return s
}

// nextDue names what is due next, or the rotation under way.
func nextDue(m vault.Maintenance) string {
	if m.Rotation != "" {
		return "rotation under way (" + m.Rotation + ")"
	}
	var parts []string
	if !m.NextHeartbeat.IsZero() {
		parts = append(parts, "heartbeat "+when(m.NextHeartbeat))
	}
	if !m.NextRotation.IsZero() {
		parts = append(parts, "rotation "+when(m.NextRotation))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func ctlSecretHistory(ctx context.Context, env *ctlEnv, args []string) error {
	fs := newFlagSet("secret history")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	name, err := parseNamed(fs, args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	h, err := c.SecretHistory(ctx, name)
	if err != nil {
		return fmt.Errorf("secret history %s: %w", name, err)
	}
	if *asJSON {
		return writeJSONRows(env.stdout, h)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tOUTCOME\tENGINE\tROTATION\tDETAIL")
	for _, e := range h {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", when(e.At), printable(e.Event), printable(e.Outcome),
			printable(dash(e.Engine)), printable(dash(e.Rotation)), printable(dash(e.Detail)))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func target(s vault.SecretInfo) string {
	return s.Username + "@" + s.Host + ":" + strconv.Itoa(s.Port)
}

func hostKeySummary(s vault.SecretInfo) string {
	switch {
	case s.HostKeyFingerprint != "" && s.PinOnFirstUse:
		return s.HostKeyFingerprint + " (pinned on first use)"
	case s.HostKeyFingerprint != "":
		return s.HostKeyFingerprint
	case s.PinOnFirstUse:
		return "(pin on first use, not yet seen)"
	}
	return "-"
}

func ctlSecretShow(ctx context.Context, env *ctlEnv, args []string) error {
	name, err := parseNamed(newFlagSet("secret show"), args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.ShowSecret(ctx, name)
	if err != nil {
		return fmt.Errorf("secret show %s: %w", name, err)
	}
	hostKey, keyRow := s.HostKey, "host key"
	if s.Protocol == vault.ProtocolRDP {
		hostKey, keyRow = s.CertSHA256, "certificate sha256"
	}
	if hostKey == "" {
		hostKey = "-"
	}
	protocol := s.Protocol
	if protocol == "" {
		protocol = vault.ProtocolSSH
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	for _, row := range [][2]string{
		{"name", s.Name},
		{"protocol", protocol},
		{"host", s.Host},
		{"port", strconv.Itoa(s.Port)},
		{"username", s.Username},
		{"kind", s.Kind},
		{keyRow, hostKey},
		{"fingerprint", hostKeySummary(s)},
		{"pin on first use", yesNo(s.PinOnFirstUse)},
		{"site", s.Site},
		{"state", state(s.Disabled)},
		{"allow", strings.Join(s.Allow, ",")},
		{"heartbeat every", every(s.Maintenance.Heartbeat)},
		{"rotate every", every(s.Maintenance.Rotate)},
		{"rotate after use", yesNo(s.Maintenance.RotateAfterUse)},
		{"change method", s.Maintenance.ChangeMethod},
		{"password rule", s.Maintenance.PasswordRule},
		{"last heartbeat", lastHeartbeat(s.Maintenance)},
		{"last rotation", when(s.Maintenance.LastRotation)},
		{"next", nextDue(s.Maintenance)},
		{"created", s.Created.Local().Format(time.RFC3339)},
		{"updated", s.Updated.Local().Format(time.RFC3339)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], printable(row[1]))
	}
	return tw.Flush()
}
