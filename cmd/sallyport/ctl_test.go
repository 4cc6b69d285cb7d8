package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/vault"
)

// ctlEnvForTest is a vault API over TLS and a data directory laid out the
// way `sallyport dev` leaves it.
type ctlTestEnv struct {
	dir string
	v   *vault.Vault
}

func startCtlEnv(t *testing.T) *ctlTestEnv {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	keys, err := hsm.OpenSoft(filepath.Join(dir, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.EnsureAESKey(context.Background(), hsm.LabelKEK); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(context.Background(), filepath.Join(dir, "vault.db"), keys, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	sum, err := vault.EnsureToken(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := vault.EnsureTLSCert(filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(vault.NewAPI(v, sum, nil, log))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	if err := os.WriteFile(filepath.Join(dir, "api.addr"), []byte(srv.URL+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &ctlTestEnv{dir: dir, v: v}
}

type ctlResult struct {
	code           int
	stdout, stderr string
}

// run calls ctlMain with --data pointing at the environment.
func (e *ctlTestEnv) run(stdin string, args ...string) ctlResult {
	var out, errOut bytes.Buffer
	code := ctlMain(append([]string{"--data", e.dir}, args...), strings.NewReader(stdin), &out, &errOut)
	return ctlResult{code, out.String(), errOut.String()}
}

func hostKeyLine(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " root@target"
}

func TestCtlUsersAndSecrets(t *testing.T) {
	e := startCtlEnv(t)
	const userPW = "Gateway-User-Pa55word"
	const targetPW = "Target-Acc0unt-Pa55word"
	var transcript strings.Builder
	must := func(stdin string, args ...string) ctlResult {
		t.Helper()
		r := e.run(stdin, args...)
		transcript.WriteString(r.stdout + r.stderr)
		if r.code != 0 {
			t.Fatalf("ctl %v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
		}
		return r
	}

	r := must(userPW+"\n", "user", "add", "alice@corp.example", "--password-stdin", "--totp", "--groups", "ops, dba")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "otpauth://totp/Sallyport:alice@corp.example?secret=") {
		t.Fatalf("stdout should be the otpauth URI alone: %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "authenticator") {
		t.Errorf("no hint on stderr: %q", r.stderr)
	}
	// The NAME may come after the flags too; CRLF line endings are fine.
	r = must(userPW+"\r\nignored second line\n", "user", "add", "--password-stdin", "bob")
	if r.stdout != "" {
		t.Errorf("user add without --totp printed %q", r.stdout)
	}
	if _, _, err := e.v.VerifyPassword(context.Background(), "bob", []byte(userPW)); err != nil {
		t.Fatalf("bob's password did not arrive intact: %v", err)
	}

	r = must("", "user", "list")
	if !strings.Contains(r.stdout, "NAME") || !strings.Contains(r.stdout, "alice@corp.example") || !strings.Contains(r.stdout, "dba,ops") {
		t.Fatalf("user list:\n%s", r.stdout)
	}

	hk := hostKeyLine(t)
	must(targetPW+"\n", "secret", "add", "web01", "--host", "127.0.0.1", "--port", "2222", "--username", "root",
		"--password-stdin", "--host-key", hk, "--allow", "alice@corp.example,group:ops")
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(block)
	keyFile := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	must("", "secret", "add", "db01", "--host", "db01.corp.example", "--username", "postgres",
		"--private-key-file", keyFile, "--pin-on-first-use", "--allow", "bob")

	r = must("", "secret", "list")
	for _, want := range []string{"NAME", "web01", "root@127.0.0.1:2222", "SHA256:", "db01", "pin on first use", "alice@corp.example,group:ops"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("secret list lacks %q:\n%s", want, r.stdout)
		}
	}
	r = must("", "secret", "show", "web01")
	for _, want := range []string{"name:", "web01", "2222", "ssh-ed25519 AAAA", "password", "allow:"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("secret show lacks %q:\n%s", want, r.stdout)
		}
	}
	must("", "secret", "show", "db01")

	// Disabling keeps everything and shows in the lists; enabling undoes it.
	must("", "user", "disable", "bob")
	if _, _, err := e.v.VerifyPassword(context.Background(), "bob", []byte(userPW)); err == nil {
		t.Fatal("a disabled user's password still verifies")
	}
	if r = must("", "user", "list"); !strings.Contains(r.stdout, "disabled") {
		t.Fatalf("user list does not show bob disabled:\n%s", r.stdout)
	}
	must("", "user", "enable", "bob")
	if _, _, err := e.v.VerifyPassword(context.Background(), "bob", []byte(userPW)); err != nil {
		t.Fatalf("an enabled user's password does not verify: %v", err)
	}
	must("", "secret", "disable", "db01")
	if r = must("", "secret", "show", "db01"); !strings.Contains(r.stdout, "disabled") {
		t.Fatalf("secret show does not say disabled:\n%s", r.stdout)
	}
	must("", "secret", "enable", "db01")
	if r = e.run("", "secret", "disable", "nosuch"); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("disabling a missing secret: %+v", r)
	}

	must("", "secret", "rm", "web01")
	must("", "user", "rm", "bob")

	r = e.run("", "secret", "rm", "web01")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "sallyport ctl: ") || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("removing a missing secret: %+v", r)
	}
	r = e.run(userPW+"\n", "user", "add", "alice@corp.example", "--password-stdin")
	if r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("duplicate user: %+v", r)
	}
	transcript.WriteString(r.stdout + r.stderr)

	all := transcript.String()
	for _, s := range []string{userPW, targetPW, string(keyPEM[40:80])} {
		if strings.Contains(all, s) {
			t.Fatal("a secret appears in ctl output")
		}
	}
}

func TestCtlUsageErrors(t *testing.T) {
	e := startCtlEnv(t)
	hk := hostKeyLine(t)
	tests := []struct {
		name  string
		stdin string
		args  []string
		code  int
	}{
		{"no command", "", nil, 2},
		{"half a command", "", []string{"user"}, 2},
		{"unknown command", "", []string{"user", "frob"}, 2},
		{"password in argv", "", []string{"user", "add", "alice", "--password", "hunter22"}, 2},
		{"no --password-stdin", "", []string{"user", "add", "alice"}, 2},
		{"no name", "pw\n", []string{"user", "add", "--password-stdin"}, 2},
		{"two names", "", []string{"user", "rm", "a", "b"}, 2},
		{"list takes no name", "", []string{"secret", "list", "x"}, 2},
		{"secret without host", "pw\n", []string{"secret", "add", "s", "--username", "u", "--password-stdin", "--host-key", hk, "--allow", "a"}, 2},
		{"both credentials", "pw\n", []string{"secret", "add", "s", "--host", "h", "--username", "u", "--password-stdin", "--private-key-file", "f", "--host-key", hk, "--allow", "a"}, 2},
		{"both host key modes", "pw\n", []string{"secret", "add", "s", "--host", "h", "--username", "u", "--password-stdin", "--host-key", hk, "--pin-on-first-use", "--allow", "a"}, 2},
		{"no allow", "pw\n", []string{"secret", "add", "s", "--host", "h", "--username", "u", "--password-stdin", "--pin-on-first-use"}, 2},
		{"bad port", "pw\n", []string{"secret", "add", "s", "--host", "h", "--port", "0", "--username", "u", "--password-stdin", "--pin-on-first-use", "--allow", "a"}, 2},
		{"empty password", "\n", []string{"user", "add", "carol", "--password-stdin"}, 1},
		{"short password", "short\n", []string{"user", "add", "carol", "--password-stdin"}, 1},
		{"bad host key", "pw-pw-pw\n", []string{"secret", "add", "s", "--host", "h", "--username", "u", "--password-stdin", "--host-key", "ssh-ed25519 nope", "--allow", "a"}, 1},
		{"missing key file", "", []string{"secret", "add", "s", "--host", "h", "--username", "u", "--private-key-file", "/nonexistent/key", "--pin-on-first-use", "--allow", "a"}, 1},
		{"help", "", []string{"-h"}, 0},
		{"subcommand help", "", []string{"secret", "add", "-h"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run(tt.stdin, tt.args...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tt.code, r.stdout, r.stderr)
			}
			if tt.code != 0 && !strings.HasPrefix(r.stderr, "sallyport ctl: ") {
				t.Fatalf("stderr lacks the prefix: %q", r.stderr)
			}
			if strings.Contains(r.stdout+r.stderr, "hunter22") {
				t.Fatal("the argv password was echoed")
			}
		})
	}
}

// TestCtlSecretPort: ctl keeps the friendly default (it sends 22 itself,
// since the vault has no default) and refuses --port 0.
func TestCtlSecretPort(t *testing.T) {
	e := startCtlEnv(t)
	add := []string{"secret", "add", "web01", "--host", "h", "--username", "u", "--password-stdin", "--pin-on-first-use", "--allow", "a"}
	if r := e.run("pw-pw-pw\n", add...); r.code != 0 {
		t.Fatalf("secret add without --port: %+v", r)
	}
	if info, err := e.v.ShowSecret(context.Background(), "web01"); err != nil || info.Port != 22 {
		t.Fatalf("stored %+v, %v; want port 22", info, err)
	}
	add[2] = "web02"
	r := e.run("pw-pw-pw\n", append(add, "--port", "0")...)
	if r.code != 2 || !strings.Contains(r.stderr, "--port must be 1..65535") {
		t.Fatalf("--port 0: %+v", r)
	}
}

// TestCtlFlagLikeNames: ctl refuses new names that start with '-' with the
// vault's wording before it reads stdin or calls the API, while "--" still
// lets it show and remove a legacy row with such a name.
func TestCtlFlagLikeNames(t *testing.T) {
	e := startCtlEnv(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"secret", "add", "--host", "h", "--username", "u", "--password-stdin", "--pin-on-first-use", "--allow", "a", "--", "-rf"},
			"secret add: name: must not start with '-'"},
		{[]string{"user", "add", "--password-stdin", "--", "-alice"}, "user add: name: must not start with '-'"},
		{[]string{"user", "add", "alice", "--password-stdin", "--groups", "ops,-dba"}, "user add: groups: a group name must not start with '-'"},
		// Without "--" the flag package refuses it as an unknown flag.
		{[]string{"secret", "rm", "-rf"}, "flag provided but not defined: -rf"},
	} {
		stdin := &countingReader{r: strings.NewReader("password1\n")}
		var out, errOut bytes.Buffer
		code := ctlMain(append([]string{"--data", e.dir}, tt.args...), stdin, &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), tt.want) {
			t.Errorf("ctl %v: exit %d, stderr %q; want 2 and %q", tt.args, code, errOut.String(), tt.want)
		}
		if stdin.n != 0 {
			t.Errorf("ctl %v read stdin before refusing the name", tt.args)
		}
	}
	if users, err := e.v.ListUsers(context.Background()); err != nil || len(users) != 0 {
		t.Fatalf("a refused user was created: %+v, %v", users, err)
	}

	// Legacy rows, as an older version would have stored them.
	db, err := sql.Open("sqlite", filepath.Join(e.dir, "vault.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		`INSERT INTO users (name, password_hash, created) VALUES ('-old', 'x', 0)`,
		`INSERT INTO secrets (name, host, port, username, kind, wrapped_dek, credential, pin_on_first_use, created, updated)
			VALUES ('-rf', 'h', 22, 'root', 'password', x'00', x'00', 1, 0, 0)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if r := e.run("", "secret", "show", "--", "-rf"); r.code != 0 || !strings.Contains(r.stdout, "-rf") {
		t.Fatalf("secret show -- -rf: %+v", r)
	}
	for _, args := range [][]string{{"secret", "rm", "--", "-rf"}, {"user", "rm", "--", "-old"}} {
		if r := e.run("", args...); r.code != 0 {
			t.Fatalf("ctl %v: %+v", args, r)
		}
	}
	if r := e.run("", "secret", "show", "--", "-rf"); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("legacy secret still there: %+v", r)
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestCtlConnectionSettings(t *testing.T) {
	e := startCtlEnv(t)
	// Explicit flags instead of the data directory.
	addr, _ := os.ReadFile(filepath.Join(e.dir, "api.addr"))
	var out, errOut bytes.Buffer
	code := ctlMain([]string{"--data", t.TempDir(), "--vault", strings.TrimSpace(string(addr)),
		"--token-file", filepath.Join(e.dir, "admin.token"), "--ca-file", filepath.Join(e.dir, "api.crt"), "user", "list"},
		strings.NewReader(""), &out, &errOut)
	if code != 0 {
		t.Fatalf("explicit connection flags: exit %d: %s", code, errOut.String())
	}
	// No data directory: a clear error.
	code = ctlMain([]string{"--data", t.TempDir(), "user", "list"}, strings.NewReader(""), &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "api.addr") {
		t.Fatalf("missing api.addr: exit %d: %s", code, errOut.String())
	}
	// A token file others can read is refused.
	if err := os.Chmod(filepath.Join(e.dir, "admin.token"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := e.run("", "user", "list"); r.code != 1 || !strings.Contains(r.stderr, "chmod 600") {
		t.Fatalf("loose token file: %+v", r)
	}
}

func TestReadPasswordLine(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"secret\n", "secret", true},
		{"secret\r\nmore", "secret", true},
		{"no newline", "no newline", true},
		{"\n", "", false},
		{"", "", false},
		{strings.Repeat("x", ctlMaxPasswordLine) + "\n", strings.Repeat("x", ctlMaxPasswordLine), true},
		{strings.Repeat("x", ctlMaxPasswordLine+1), "", false},
	}
	for _, tt := range tests {
		r := strings.NewReader(tt.in)
		got, err := readPasswordLine(r)
		if (err == nil) != tt.ok || string(got) != tt.want {
			t.Errorf("readPasswordLine(%.20q) = %.20q, %v", tt.in, got, err)
		}
		if err != nil && strings.Contains(err.Error(), "xxxx") {
			t.Error("error echoes the input")
		}
	}
	// Nothing past the first line is consumed.
	r := strings.NewReader("first\nsecond\n")
	if _, err := readPasswordLine(r); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "second\n" {
		t.Fatalf("consumed past the line: %q left", rest)
	}
}

// FuzzReadPasswordLine: stdin is untrusted input; the reader never panics,
// never returns more than the bound, an empty password or a line ending.
func FuzzReadPasswordLine(f *testing.F) {
	f.Add([]byte("secret\n"))
	f.Add([]byte("a\r\n"))
	f.Add([]byte("\r"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readPasswordLine(bytes.NewReader(in))
		if err != nil {
			return
		}
		if len(got) == 0 || len(got) > ctlMaxPasswordLine || bytes.ContainsRune(got, '\n') {
			t.Fatalf("readPasswordLine(%q) = %q", in, got)
		}
		if !bytes.HasPrefix(in, got) {
			t.Fatalf("result %q is not the start of %q", got, in)
		}
	})
}

// TestParsePositional: flags may stand before, between or after the
// positional arguments, which keep their order.
func TestParsePositional(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  string
		file string
	}{
		{[]string{"west", "amqp://h/", "--connector-secret-file", "f"}, "west amqp://h/", "f"},
		{[]string{"--connector-secret-file", "f", "west", "amqp://h/"}, "west amqp://h/", "f"},
		{[]string{"west", "--connector-secret-file=f", "amqp://h/"}, "west amqp://h/", "f"},
		{[]string{"west", "builtin"}, "west builtin", ""},
		{nil, "", ""},
	} {
		fs := newFlagSet("site set-connector")
		file := fs.String("connector-secret-file", "", "")
		pos, err := parsePositional(fs, tc.args)
		if err != nil || strings.Join(pos, " ") != tc.pos || *file != tc.file {
			t.Errorf("%q: %q, file %q, %v", tc.args, pos, *file, err)
		}
	}
	fs := newFlagSet("site set-connector")
	if _, err := parsePositional(fs, []string{"west", "--no-such-flag"}); err == nil {
		t.Error("an unknown flag after the arguments was accepted")
	}
}

func TestParseInterval(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "0": 0, "1h": time.Hour, "90m": 90 * time.Minute, "30d": 30 * 24 * time.Hour} {
		if got, err := parseInterval("rotate", in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"-1h", "d", "1.5d", "0d", "9999d", "soon", "1y"} {
		if _, err := parseInterval("rotate", in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
