package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// askpassScript answers OpenSSH's prompts. The clients never have a tty, so
// SSH_ASKPASS_REQUIRE=force routes every prompt here, with the prompt text in
// $1. The answers are read from 0600 files in $SPT_ASKPASS_DIR so that no
// secret is ever in a process's argv; each prompt is appended to the
// "prompts" file so that tests can see what they were asked.
const askpassScript = `#!/bin/sh
printf '%s\n' "$1" >>"$SPT_ASKPASS_DIR/prompts"
case "$1" in
*assword*) exec cat "$SPT_ASKPASS_DIR/password" ;;
*[Cc]ode*) exec cat "$SPT_ASKPASS_DIR/code" ;;
esac
echo "askpass: no answer for prompt: $1" >&2
exit 1
`

// answers are what askpass replies in one client run.
type answers struct {
	Password string // for prompts containing "assword"
	Code     string // for prompts containing "code"; empty: such a prompt fails
}

// result is one finished client or CLI run.
type result struct {
	Cmd     string // for messages; never holds a secret
	Stdout  string
	Stderr  string
	Code    int      // exit code
	Prompts []string // what askpass was asked, in order
	Source  string   // client source address of runs through the gateway
}

func (r result) String() string {
	return fmt.Sprintf("$ %s\nexit code %d\nprompts: %q\nstdout:\n%s\nstderr:\n%s",
		r.Cmd, r.Code, r.Prompts, indent(r.Stdout), indent(r.Stderr))
}

func indent(s string) string {
	if s == "" {
		return "    (empty)"
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// command is one run of a client or CLI.
type command struct {
	Path  string
	Args  []string
	Stdin string
	// StdinAfter, if set, holds Stdin back until it is closed.
	StdinAfter <-chan struct{}
	Env        []string      // added to the cleaned environment
	Answers    *answers      // nil: no askpass (prompts fail)
	Timeout    time.Duration // zero: 30 s
}

// run runs c to completion and fails the test if it could not start or did
// not finish within its timeout; any exit code is a result, not an error.
func run(t *testing.T, c command) result {
	t.Helper()
	r, err := runCommand(c)
	if err != nil {
		t.Fatalf("%v\n%s", err, r)
	}
	return r
}

func runCommand(c command) (r result, _ error) {
	r.Cmd = filepath.Base(c.Path) + " " + strings.Join(c.Args, " ")
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Env = append(cleanEnv(), c.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	if c.Stdin != "" {
		cmd.Stdin = strings.NewReader(c.Stdin)
	}
	if c.StdinAfter != nil {
		cmd.Stdin = &gatedReader{gate: c.StdinAfter, r: strings.NewReader(c.Stdin)}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	if c.Answers != nil {
		dir, err := writeAnswers(*c.Answers)
		if err != nil {
			return r, err
		}
		defer os.RemoveAll(dir)
		cmd.Env = append(cmd.Env,
			"SSH_ASKPASS="+env.askpass(),
			"SSH_ASKPASS_REQUIRE=force",
			"SPT_ASKPASS_DIR="+dir)
		defer func() {
			b, _ := os.ReadFile(filepath.Join(dir, "prompts"))
			if s := strings.TrimRight(string(b), "\n"); s != "" {
				r.Prompts = strings.Split(s, "\n")
			}
		}()
	}

	err := cmd.Run()
	r.Stdout, r.Stderr = stdout.String(), stderr.String()
	r.Code = -1
	if cmd.ProcessState != nil {
		r.Code = cmd.ProcessState.ExitCode()
	}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return r, fmt.Errorf("%s: did not finish within %v", r.Cmd, timeout)
	case err == nil, errors.As(err, &exitErr):
		return r, nil
	default:
		return r, fmt.Errorf("%s: %w", r.Cmd, err)
	}
}

// writeAnswers puts a's values in 0600 files of a fresh 0700 directory.
func writeAnswers(a answers) (string, error) {
	dir, err := os.MkdirTemp(env.dir, "askpass-")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "password"), []byte(a.Password), 0o600); err != nil {
		return "", err
	}
	if a.Code != "" {
		if err := os.WriteFile(filepath.Join(dir, "code"), []byte(a.Code), 0o600); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// cleanEnv is the test's environment without anything that would make the
// OpenSSH clients use an agent, a display or another askpass.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "SSH_AUTH_SOCK", name == "DISPLAY", strings.HasPrefix(name, "SSH_ASKPASS"):
			continue
		}
		out = append(out, kv)
	}
	return out
}

// askpass returns the path of the askpass script, writing it on first use.
func (s *suite) askpass() string {
	s.askpassOnce.Do(func() {
		p := filepath.Join(s.dir, "askpass.sh")
		if err := os.WriteFile(p, []byte(askpassScript), 0o700); err != nil {
			panic(fmt.Sprintf("write askpass script: %v", err))
		}
		s.askpassFile = p
	})
	return s.askpassFile
}

// clientOptions are the options every OpenSSH client run uses: no user
// config, strict host key checking against knownHosts, and prompts answered
// exactly once. BatchMode=no comes first because ssh keeps the first value
// it sees and sftp -b appends BatchMode=yes, which would disable askpass.
func clientOptions(knownHosts, preferredAuth string) []string {
	return []string{
		"-F", "/dev/null",
		"-o", "BatchMode=no",
		"-o", "UserKnownHostsFile=" + knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UpdateHostKeys=no",
		"-o", "PreferredAuthentications=" + preferredAuth,
		"-o", "NumberOfPasswordPrompts=1",
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "ConnectTimeout=10",
		"-o", "LogLevel=ERROR",
	}
}

// clientTool returns the path of an OpenSSH client or fails the test.
func clientTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("OpenSSH client %s not found (run test/setup.sh as root): %v", name, err)
	}
	return p
}

// gatedReader reads nothing until gate is closed, then r.
type gatedReader struct {
	gate <-chan struct{}
	r    io.Reader
}

func (g *gatedReader) Read(p []byte) (int, error) {
	<-g.gate
	return g.r.Read(p)
}
