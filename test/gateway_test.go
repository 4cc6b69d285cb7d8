package e2e

import (
	"encoding/base32"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// readyLine is what `sallyport dev` prints once it serves SSH and its API.
const readyLine = "sallyport dev: ready"

// gateway is a running `sallyport dev` on two loopback ports, with its
// captured output, its admin CLI and the OpenSSH clients pointed at it.
type gateway struct {
	bin     string
	dir     string
	dataDir string

	SSHPort    int
	APIPort    int
	RDPPort    int    // 0 unless started with --rdp-addr
	KnownHosts string // pins the gateway's own SSH host key
	target     *sshdTarget

	Alice gatewayUser // created at start; tests create their other users

	*proc

	mu          sync.Mutex
	seq         int
	sources     int      // loopback source addresses handed out
	transcripts []string // every ctl and client output, for the leak scan
	gwPasswords []string // gateway users' passwords, for the leak scan
	notLimited  []string // sources whose logins must not have been rate limited
	moreNeedles []needle // other secrets the leak scan looks for
}

// AddNeedle adds a secret the end-of-run leak scan looks for.
func (g *gateway) AddNeedle(what string, secret []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.moreNeedles = append(g.moreNeedles, secretNeedles(what, secret)...)
}

// gatewayUser is a local gateway user and what it logs in with.
type gatewayUser struct {
	Name       string
	Password   string
	TOTPSecret []byte // nil unless added with --totp
}

// Answers are the askpass answers for u with no second factor.
func (u gatewayUser) Answers() answers { return answers{Password: u.Password} }

// startGateway starts `sallyport dev` with its data under dir and waits for
// its ready line. extra are more flags for `sallyport dev`, such as --config.
func startGateway(bin, dir string, target *sshdTarget, extra ...string) (_ *gateway, err error) {
	g := &gateway{bin: bin, dir: dir, dataDir: filepath.Join(dir, "data"), target: target}
	if err := os.MkdirAll(g.dataDir, 0o700); err != nil {
		return nil, err
	}
	if g.SSHPort, err = sshdtest.FreePort(); err != nil {
		return nil, err
	}
	for g.APIPort == 0 || g.APIPort == g.SSHPort {
		if g.APIPort, err = sshdtest.FreePort(); err != nil {
			return nil, err
		}
	}
	args := append([]string{"dev", "--data", g.dataDir,
		"--ssh-addr", "127.0.0.1:" + strconv.Itoa(g.SSHPort),
		"--api-addr", "127.0.0.1:" + strconv.Itoa(g.APIPort)}, extra...)
	if g.proc, err = startProc("sallyport dev", bin, filepath.Join(dir, "sallyport.log"), readyLine, args...); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			g.stop()
		}
	}()
	if err := g.waitReady(readyLine, 2*time.Minute); err != nil {
		sshUp := sshdtest.WaitPort(g.SSHPort, time.Second, g.done) == nil
		apiUp := sshdtest.WaitPort(g.APIPort, time.Second, g.done) == nil
		return nil, fmt.Errorf("%w\n(ssh port open: %v, api port open: %v)", err, sshUp, apiUp)
	}

	var missing []string
	for _, f := range []string{"admin.token", "api.crt", "api.addr", "ssh_host_key.pub"} {
		if _, err := os.Stat(filepath.Join(g.dataDir, f)); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("sallyport dev is ready but did not write %s in its data dir", strings.Join(missing, ", "))
	}
	if g.KnownHosts, err = pinHostKey(filepath.Join(g.dataDir, "ssh_host_key.pub"), g.SSHPort, filepath.Join(dir, "known_hosts")); err != nil {
		return nil, err
	}
	return g, nil
}

// addAlice creates gateway user alice, whom most tests log in as.
func (g *gateway) addAlice() error {
	g.Alice = gatewayUser{Name: "alice", Password: newGatewayPassword()}
	_, err := g.addUser(g.Alice, false)
	return err
}

func newGatewayPassword() string { return "Gw-" + randString(alnum, 20) + "-1a" }

// Name returns a fresh name with the given prefix for a secret or a user, so
// that tests never share them (also under -count=N).
func (g *gateway) Name(prefix string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seq++
	return fmt.Sprintf("%s%d", prefix, g.seq)
}

// nextSource returns a loopback address no earlier client run used. Every
// client run connects from its own source address so that the gateway's
// per-source failed-login limit never couples one test to another (the
// refusal tests would otherwise be refused by the limiter instead of by the
// check they mean to exercise).
func (g *gateway) nextSource() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sources++
	return fmt.Sprintf("127.0.%d.%d", 1+g.sources/250, 1+g.sources%250)
}

// clientArgs are the options of every client run through the gateway, from
// source; portFlag is -p for ssh and -P for scp and sftp.
func (g *gateway) clientArgs(portFlag, source string) []string {
	return append(clientOptions(g.KnownHosts, "keyboard-interactive,password"),
		"-o", "BindAddress="+source, portFlag, strconv.Itoa(g.SSHPort))
}

func (g *gateway) record(r result) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.transcripts = append(g.transcripts, r.Cmd+"\n"+r.Stdout+"\n"+r.Stderr)
}

// Ctl runs `sallyport ctl --data DIR args...` with stdin and returns its
// result whatever the exit code.
func (g *gateway) Ctl(t testing.TB, stdin string, args ...string) result {
	t.Helper()
	r, err := g.ctl(stdin, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, r)
	}
	return r
}

// MustCtl is Ctl that fails the test unless the command exits 0.
func (g *gateway) MustCtl(t testing.TB, stdin string, args ...string) result {
	t.Helper()
	r := g.Ctl(t, stdin, args...)
	if r.Code != 0 {
		t.Fatalf("sallyport ctl failed:\n%s\ngateway log tail:\n%s", r, g.LogTail(20))
	}
	return r
}

func (g *gateway) ctl(stdin string, args ...string) (result, error) {
	c := cliCommand(g.bin, append([]string{"ctl", "--data", g.dataDir}, args...)...)
	c.Stdin = stdin
	r, err := runCommand(c)
	g.record(r)
	return r, err
}

// cliCommand runs a short-lived sallyport command (ctl, keys).
func cliCommand(bin string, args ...string) command {
	c := command{Path: bin, Args: args}
	if _, set := os.LookupEnv("GORACE"); !set {
		// A -race binary sleeps 1 s at exit to catch late races; in a
		// short-lived CLI that is a second per call for nothing.
		c.Env = []string{"GORACE=atexit_sleep_ms=0"}
	}
	return c
}

// AddUser creates a gateway user with a fresh password (and a TOTP secret
// when totp is set) and returns it.
func (g *gateway) AddUser(t testing.TB, name string, totp bool, groups ...string) gatewayUser {
	t.Helper()
	u, err := g.addUser(gatewayUser{Name: name, Password: newGatewayPassword()}, totp, groups...)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func (g *gateway) addUser(u gatewayUser, totp bool, groups ...string) (gatewayUser, error) {
	g.mu.Lock()
	g.gwPasswords = append(g.gwPasswords, u.Password)
	g.mu.Unlock()
	args := []string{"user", "add", u.Name, "--password-stdin"}
	if totp {
		args = append(args, "--totp")
	}
	if len(groups) > 0 {
		args = append(args, "--groups", strings.Join(groups, ","))
	}
	r, err := g.ctl(u.Password+"\n", args...)
	if err == nil && r.Code != 0 {
		err = errors.New("exit code not 0")
	}
	if err != nil {
		return u, fmt.Errorf("add gateway user %s: %w\n%s", u.Name, err, r)
	}
	if totp {
		if u.TOTPSecret, err = parseOTPAuth(r.Stdout); err != nil {
			return u, fmt.Errorf("add gateway user %s --totp: %w\n%s", u.Name, err, r)
		}
	}
	return u, nil
}

// parseOTPAuth finds the otpauth:// URI in out and returns its decoded
// secret. It refuses parameters other than the RFC 6238 defaults this
// suite's generator implements.
func parseOTPAuth(out string) ([]byte, error) {
	i := strings.Index(out, "otpauth://")
	if i < 0 {
		return nil, errors.New("no otpauth:// URI on stdout")
	}
	uri := strings.Fields(out[i:])[0]
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("otpauth URI: %w", err)
	}
	q := u.Query()
	for param, want := range map[string]string{"algorithm": "SHA1", "digits": "6", "period": "30"} {
		if v := q.Get(param); v != "" && !strings.EqualFold(v, want) {
			return nil, fmt.Errorf("otpauth URI has %s=%s; the suite implements %s", param, v, want)
		}
	}
	secret := strings.ToUpper(strings.TrimRight(q.Get("secret"), "="))
	if secret == "" {
		return nil, errors.New("otpauth URI has no secret= parameter")
	}
	key, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(secret)
	if err != nil {
		return nil, fmt.Errorf("otpauth secret is not base32: %w", err)
	}
	return key, nil
}

// secretSpec describes a secret for `ctl secret add`. The target is always
// the suite's sshd and its account.
type secretSpec struct {
	Name          string
	KeyFile       string // log in with this private key; empty: the account's password
	HostKey       string // pinned host key; empty: the sshd's real one
	PinOnFirstUse bool   // no host key; pin whatever the target shows first
	Allow         []string
	Site          string // empty: the default site
}

// AddSecret adds s, failing the test if ctl refuses.
func (g *gateway) AddSecret(t testing.TB, s secretSpec) {
	t.Helper()
	args := []string{"secret", "add", s.Name,
		"--host", "127.0.0.1",
		"--port", strconv.Itoa(g.target.Port),
		"--username", g.target.User}
	stdin := ""
	if s.KeyFile != "" {
		args = append(args, "--private-key-file", s.KeyFile)
	} else {
		args = append(args, "--password-stdin")
		stdin = g.target.Password + "\n"
	}
	switch {
	case s.PinOnFirstUse:
		args = append(args, "--pin-on-first-use")
	case s.HostKey != "":
		args = append(args, "--host-key", s.HostKey)
	default:
		args = append(args, "--host-key", g.target.HostKeyPub)
	}
	args = append(args, "--allow", strings.Join(s.Allow, ","))
	if s.Site != "" {
		args = append(args, "--site", s.Site)
	}
	g.MustCtl(t, stdin, args...)
}

// sshRun is one ssh client run through the gateway.
type sshRun struct {
	// LogLevel replaces the client's LogLevel=ERROR; at INFO (OpenSSH's
	// default) ssh shows keyboard-interactive instructions.
	LogLevel string
	Login    string // what goes before "@127.0.0.1": "alice@web01"
	Answers  answers
	Flags    []string // ssh flags before the destination: -T, -tt
	Command  string   // remote command; empty: a shell
	Stdin    string
	// StdinAfter, if set, holds Stdin back until it is closed.
	StdinAfter <-chan struct{}
	Timeout    time.Duration // zero: 30 s
}

// SSH runs the ssh client through the gateway from a source address no
// other run uses.
func (g *gateway) SSH(t *testing.T, s sshRun) result {
	t.Helper()
	return g.SSHFrom(t, g.nextSource(), s)
}

// SSHFrom runs the ssh client through the gateway from src.
func (g *gateway) SSHFrom(t *testing.T, src string, s sshRun) result {
	t.Helper()
	r := run(t, g.sshCommand(src, s))
	r.Source = src
	g.record(r)
	return r
}

// sshCommand is the ssh client run s from src.
func (g *gateway) sshCommand(src string, s sshRun) command {
	args := append(g.clientArgs("-p", src), s.Flags...)
	if s.LogLevel != "" {
		for i, a := range args {
			if a == "LogLevel=ERROR" {
				args[i] = "LogLevel=" + s.LogLevel
			}
		}
	}
	args = append(args, s.Login+"@127.0.0.1")
	if s.Command != "" {
		args = append(args, s.Command)
	}
	return command{Path: sshPath, Args: args, Stdin: s.Stdin, StdinAfter: s.StdinAfter, Answers: &s.Answers, Timeout: s.Timeout}
}

// sshPath is the OpenSSH client; tests that need it fail early through
// clientTool when it is missing.
var sshPath = func() string {
	p, _ := exec.LookPath("ssh")
	return p
}()

// Remote names path on the target behind login, for scp.
func (g *gateway) Remote(login, path string) string { return login + "@127.0.0.1:" + path }

// SCP runs scp through the gateway; args are flags and paths (see Remote).
func (g *gateway) SCP(t *testing.T, a answers, timeout time.Duration, args ...string) result {
	t.Helper()
	src := g.nextSource()
	all := append(g.clientArgs("-P", src), args...)
	r := run(t, command{Path: clientTool(t, "scp"), Args: all, Answers: &a, Timeout: timeout})
	r.Source = src
	g.record(r)
	return r
}

// SFTP runs the sftp batch through the gateway as login.
func (g *gateway) SFTP(t *testing.T, login string, a answers, timeout time.Duration, batch string) result {
	t.Helper()
	f := filepath.Join(t.TempDir(), "batch")
	if err := os.WriteFile(f, []byte(batch), 0o600); err != nil {
		t.Fatal(err)
	}
	src := g.nextSource()
	all := append(g.clientArgs("-P", src), "-b", f, login+"@127.0.0.1")
	r := run(t, command{Path: clientTool(t, "sftp"), Args: all, Answers: &a, Timeout: timeout})
	r.Source = src
	g.record(r)
	return r
}

// WaitLog waits (bounded) for a gateway log line that match accepts, and
// fails the test with the log tail if none comes. Log lines may trail the
// client's exit, hence the wait; nothing is asserted about time.
func (g *gateway) WaitLog(t *testing.T, what string, match func(line string) bool) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, line := range strings.Split(string(g.Log()), "\n") {
			if match(line) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway log has no line %s; log tail:\n%s", what, g.LogTail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CheckNotRateLimited notes that r's login must not have been refused by
// the gateway's failed-login limit: a refusal test refused that way proves
// nothing about the check it meant to exercise. Such refusals are tallied
// per source every few seconds, so the end-of-suite checks look for them
// (rateLimitedSources), once the gateway has written its last tally.
func (g *gateway) CheckNotRateLimited(t *testing.T, r result) {
	t.Helper()
	if r.Source == "" {
		t.Fatal("CheckNotRateLimited: the run has no source address")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.notLimited = append(g.notLimited, r.Source)
}

// rateLimitedSources returns problems for the sources noted by
// CheckNotRateLimited that a tally line says were rate limited.
func (g *gateway) rateLimitedSources(log []byte) []string {
	g.mu.Lock()
	sources := append([]string(nil), g.notLimited...)
	g.mu.Unlock()
	var problems []string
	for _, line := range strings.Split(string(log), "\n") {
		if !strings.Contains(line, "logins refused without checking") || !strings.Contains(line, "rate_limited=") {
			continue
		}
		for _, src := range sources {
			if strings.Contains(line, "source="+src+" ") {
				problems = append(problems, fmt.Sprintf("a refusal test's login from %s was refused by the failed-login limit, not the check under test: %s", src, line))
			}
		}
	}
	return problems
}
