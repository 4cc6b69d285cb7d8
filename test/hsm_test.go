package e2e

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// Keys on a real SoftHSM2 token: the gateway's host key and KEK on the
// token, migration from the soft keystore, an interrupted KEK rotation, and
// the errors an operator sees when the token is not what the configuration
// says.

const (
	softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"
	tokenPIN      = "24681357"
	tokenSOPIN    = "13579135"
)

// softHSM is a SoftHSM2 token directory of the test's own, with one token.
type softHSM struct {
	Conf  string // SOFTHSM2_CONF
	Label string
	dir   string
}

// newSoftHSM initialises a token labelled label in a fresh token directory
// and points SOFTHSM2_CONF (inherited by every child the test starts) at it.
func newSoftHSM(t *testing.T, label string) *softHSM {
	t.Helper()
	if _, err := os.Stat(softHSMModule); err != nil {
		t.Fatalf("SoftHSM2 is not installed (%v): run test/setup.sh as root", err)
	}
	dir := t.TempDir()
	h := &softHSM{Conf: filepath.Join(dir, "softhsm2.conf"), Label: label, dir: dir}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens)
	if err := os.WriteFile(h.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", h.Conf)
	// The test token's PINs on argv are fine here; the product never
	// takes a PIN on its command line.
	if out, err := sshdtest.RunTool(nil, "softhsm2-util", "--init-token", "--free", "--label", label,
		"--so-pin", tokenSOPIN, "--pin", tokenPIN); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return h
}

// config writes a configuration file naming the token, with the PIN in a
// 0600 file, and returns its path. extra is appended as is.
func (h *softHSM) config(t *testing.T, pin, module, extra string) string {
	t.Helper()
	pinFile := filepath.Join(t.TempDir(), "hsm.pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "sallyport.yaml")
	c := fmt.Sprintf("keys:\n  provider: pkcs11\n  pkcs11:\n    module: %s\n    token_label: %s\n    pin_file: %s\n%s", module, h.Label, pinFile, extra)
	if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// publicKey reads the public key of the key pair under label straight from
// the token with OpenSC's pkcs11-tool, independently of sallyport.
func (h *softHSM) publicKey(t *testing.T, label string) gossh.PublicKey {
	t.Helper()
	out := filepath.Join(t.TempDir(), "pub.der")
	if b, err := sshdtest.RunTool(nil, "pkcs11-tool", "--module", softHSMModule, "--token-label", h.Label,
		"--login", "--pin", tokenPIN, "--read-object", "--type", "pubkey", "--label", label, "-o", out); err != nil {
		t.Fatalf("pkcs11-tool --read-object %s: %v\n%s", label, err, b)
	}
	der, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatalf("the token's %s public key: %v", label, err)
	}
	k, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sallyport runs the binary with args and returns its result.
func sallyport(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	if env.buildErr != nil {
		t.Fatalf("sallyport binary is missing: %v", env.buildErr)
	}
	c := cliCommand(env.bin, args...)
	c.Timeout = timeout
	return run(t, c)
}

// mustSallyport is sallyport that fails the test unless it exits 0.
func mustSallyport(t *testing.T, args ...string) result {
	t.Helper()
	r := sallyport(t, 2*time.Minute, args...)
	if r.Code != 0 {
		t.Fatalf("sallyport failed:\n%s", r)
	}
	return r
}

// TestHSMGateway runs the SSH injection flow with the host key and the KEK
// on SoftHSM2: OpenSSH pins the key read from the token, and logs in with a
// secret whose data key only the token's KEK unwraps.
func TestHSMGateway(t *testing.T) {
	h := newSoftHSM(t, "sallyport-gw")
	cfg := h.config(t, tokenPIN, softHSMModule, "")
	dir := t.TempDir()
	data := filepath.Join(dir, "gw", "data")
	r := mustSallyport(t, "keys", "init", "--data", data, "--config", cfg)
	for _, label := range []string{"sallyport-kek", "sallyport-ssh-host", "sallyport-audit", "sallyport-engine"} {
		if !strings.Contains(r.Stdout, label+": created in token") {
			t.Fatalf("keys init did not create %s:\n%s", label, r)
		}
	}
	tokenKey := h.publicKey(t, "sallyport-ssh-host")
	fp := gossh.FingerprintSHA256(tokenKey)
	if !strings.Contains(r.Stdout, "SSH host key fingerprint: "+fp) {
		t.Fatalf("keys init printed another fingerprint than the token's %s:\n%s", fp, r)
	}
	if again := mustSallyport(t, "keys", "init", "--data", data, "--config", cfg); !strings.Contains(again.Stdout, "sallyport-ssh-host: present in token") {
		t.Fatalf("a second keys init must keep the keys:\n%s", again)
	}

	g := startGatewayOrFail(t, dir, cfg)
	defer g.finish(t)
	// The key the gateway wrote out is the token's.
	if got := readHostKey(t, g); gossh.FingerprintSHA256(got) != fp {
		t.Fatalf("the gateway serves %s, the token holds %s", gossh.FingerprintSHA256(got), fp)
	}
	// OpenSSH trusts exactly the key read from the token.
	if err := os.WriteFile(g.KnownHosts, []byte(knownHostsLine(g.SSHPort, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(tokenKey))))), 0o600); err != nil {
		t.Fatal(err)
	}
	user := g.AddUser(t, "hsmuser", false)
	secret := g.Name("hsmweb")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{user.Name}})
	loginOK := func() (result, bool) {
		out := g.SSH(t, sshRun{Login: user.Name + "@" + secret, Answers: user.Answers(), Command: "echo hsm-ok $(id -un)"})
		return out, out.Code == 0 && strings.TrimSpace(out.Stdout) == "hsm-ok "+g.target.User
	}
	if out, ok := loginOK(); !ok {
		t.Fatalf("login through the HSM-keyed gateway:\n%s\nlog tail:\n%s", out, g.LogTail(20))
	}

	// The token goes away: the gateway neither crashes nor serves; it
	// comes back by itself once the token is back.
	tokenDirs, err := filepath.Glob(filepath.Join(h.dir, "tokens", "*"))
	if err != nil || len(tokenDirs) != 1 {
		t.Fatalf("token directories: %v, %v", tokenDirs, err)
	}
	away := filepath.Join(h.dir, "removed-token")
	if err := os.Rename(tokenDirs[0], away); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // past the gateway's one-second readiness cache
	if out, ok := loginOK(); ok || out.Code != 255 {
		t.Fatalf("a login succeeded with the token removed:\n%s", out)
	}
	g.WaitLog(t, "that it is not ready", func(l string) bool { return strings.Contains(l, "not ready") })
	if err := g.exited(); err != nil {
		t.Fatalf("the gateway died when the token was removed: %v\n%s", err, g.LogTail(30))
	}
	if err := os.Rename(away, tokenDirs[0]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, ok := loginOK()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no login within 30 s of the token coming back:\n%s\nlog tail:\n%s", out, g.LogTail(30))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// startGatewayOrFail starts `sallyport dev --config cfg` with its data in
// dir/gw/data.
func startGatewayOrFail(t *testing.T, dir, cfg string) *gateway {
	t.Helper()
	g, err := startGateway(env.bin, filepath.Join(dir, "gw"), env.Target(t), "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// finish stops g, scanning for leaks and races.
func (g *gateway) finish(t *testing.T) {
	t.Helper()
	for _, p := range g.finalChecks(g.target, secretNeedles("the token PIN", []byte(tokenPIN))...) {
		t.Error(p)
	}
}

func readHostKey(t *testing.T, g *gateway) gossh.PublicKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(g.dataDir, "ssh_host_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	k, _, _, _, err := gossh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestHSMMigrateAndRotate starts on the soft keystore, migrates to the
// token (host key kept, every secret still opens), then kills a KEK
// rotation half-way, resumes it, and logs in with every secret.
func TestHSMMigrateAndRotate(t *testing.T) {
	h := newSoftHSM(t, "sallyport-mig")
	dir := t.TempDir()
	g, err := startGateway(env.bin, filepath.Join(dir, "gw"), env.Target(t))
	if err != nil {
		t.Fatal(err)
	}
	user := g.AddUser(t, "miguser", false)
	// Its TOTP seed is sealed under the KEK too; it logs in once, at the end
	// (a code is single-use).
	totpUser := g.AddUser(t, "migtotp", true)
	const n = 12
	var secrets []string
	for i := 0; i < n; i++ {
		s := g.Name("mig")
		g.AddSecret(t, secretSpec{Name: s, Allow: []string{user.Name, totpUser.Name}})
		secrets = append(secrets, s)
	}
	softKey := readHostKey(t, g)
	knownHosts := g.KnownHosts
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	data := g.dataDir

	cfg := h.config(t, tokenPIN, softHSMModule, "")
	r := mustSallyport(t, "keys", "migrate", "--data", data, "--config", cfg)
	if !strings.Contains(r.Stdout, "sallyport-ssh-host: moved to token") || !strings.Contains(r.Stdout, "migrated to token") {
		t.Fatalf("keys migrate:\n%s", r)
	}
	if got := h.publicKey(t, "sallyport-ssh-host"); gossh.FingerprintSHA256(got) != gossh.FingerprintSHA256(softKey) {
		t.Fatal("the host key on the token is not the one clients know")
	}
	if again := mustSallyport(t, "keys", "migrate", "--data", data, "--config", cfg); !strings.Contains(again.Stdout, "nothing to migrate") {
		t.Fatalf("a second migrate must find nothing to do:\n%s", again)
	}
	// The soft keystore no longer opens the vault: it needs the token.
	gone := filepath.Join(data, "keystore.json")
	if err := os.Rename(gone, gone+".old"); err != nil {
		t.Fatal(err)
	}

	login := func(t *testing.T, g *gateway, secret string) {
		t.Helper()
		out := g.SSH(t, sshRun{Login: user.Name + "@" + secret, Answers: user.Answers(), Command: "echo hsm-ok"})
		if out.Code != 0 || strings.TrimSpace(out.Stdout) != "hsm-ok" {
			t.Fatalf("login with %s:\n%s\nlog tail:\n%s", secret, out, g.LogTail(20))
		}
	}

	t.Run("AfterMigration", func(t *testing.T) {
		g := startGatewayOrFail(t, dir, cfg)
		defer g.finish(t)
		g.KnownHosts = knownHosts // the clients' old pin still holds
		g.gwPasswords = append(g.gwPasswords, user.Password, totpUser.Password)
		login(t, g, secrets[0])
		login(t, g, secrets[n-1])
	})

	t.Run("RotationKilledAndResumed", func(t *testing.T) {
		// One value per step, killed after the first: most are left.
		cmd := exec.Command(env.bin, "keys", "rotate-kek", "--data", data, "--config", cfg, "--batch", "1")
		cmd.Env = append(cleanEnv(), "GORACE=atexit_sleep_ms=0")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		killed := false
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "re-wrapped ") {
				_ = cmd.Process.Kill()
				killed = true
				break
			}
		}
		go func() { _, _ = io.Copy(io.Discard, stdout) }()
		_ = cmd.Wait()
		if !killed {
			t.Fatalf("rotate-kek printed no progress before exiting; stderr:\n%s", stderr.String())
		}
		st := mustSallyport(t, "keys", "status", "--data", data, "--config", cfg)
		left := unfinished(t, st.Stdout)
		// n data keys, the default site's key and the dev engine's key
		// (and what else the gateway holds) were to be re-wrapped.
		if left <= 0 || left >= n+4 {
			t.Fatalf("after the kill, want a rotation half-way, got:\n%s", st)
		}
		// A gateway started now still opens everything (both KEKs are on
		// the token), and says the rotation is unfinished.
		g := startGatewayOrFail(t, dir, cfg)
		g.KnownHosts = knownHosts
		g.gwPasswords = append(g.gwPasswords, user.Password, totpUser.Password)
		login(t, g, secrets[n-1])
		g.WaitLog(t, "a warning that the rotation is unfinished", func(l string) bool { return strings.Contains(l, "rotation is unfinished") })
		g.finish(t)

		r := mustSallyport(t, "keys", "rotate-kek", "--data", data, "--config", cfg, "--destroy-old")
		if !strings.Contains(r.Stdout, "resuming the rotation") || !strings.Contains(r.Stdout, "destroyed the old key-encryption key") {
			t.Fatalf("resumed rotation:\n%s", r)
		}
		if st := mustSallyport(t, "keys", "status", "--data", data, "--config", cfg); strings.Contains(st.Stdout, "unfinished") {
			t.Fatalf("rotation still unfinished:\n%s", st)
		}
		g = startGatewayOrFail(t, dir, cfg)
		defer g.finish(t)
		g.KnownHosts = knownHosts
		g.gwPasswords = append(g.gwPasswords, user.Password, totpUser.Password)
		for _, s := range secrets {
			login(t, g, s)
		}
		code, _ := freshTOTPCode(totpUser.TOTPSecret)
		out := g.SSH(t, sshRun{Login: totpUser.Name + "@" + secrets[0], Answers: answers{Password: totpUser.Password, Code: code}, Command: "echo hsm-ok"})
		if out.Code != 0 || strings.TrimSpace(out.Stdout) != "hsm-ok" {
			t.Fatalf("TOTP login after migration and rotation:\n%s\nlog tail:\n%s", out, g.LogTail(20))
		}
	})
}

// unfinished parses "rotation to X unfinished: N values left".
func unfinished(t *testing.T, out string) int {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(line, " unfinished: "); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(rest, " values left"))
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// TestHSMStartupErrors: every way the token can differ from the
// configuration stops the gateway with a clear message and a non-zero exit,
// and never falls back to the soft keystore.
func TestHSMStartupErrors(t *testing.T) {
	h := newSoftHSM(t, "sallyport-err")
	good := h.config(t, tokenPIN, softHSMModule, "")
	notModule := filepath.Join(t.TempDir(), "not-a-module.so")
	if err := os.WriteFile(notModule, []byte("not a library"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := &softHSM{Label: "no-such-token"}
	for _, tc := range []struct {
		name, config, want string
	}{
		{"WrongPIN", h.config(t, "97531864", softHSMModule, ""), "wrong PIN"},
		{"MissingModule", h.config(t, tokenPIN, "/nonexistent/libpkcs11.so", ""), "/nonexistent/libpkcs11.so"},
		{"NotAModule", h.config(t, tokenPIN, notModule, ""), notModule},
		{"MissingToken", missing.config(t, tokenPIN, softHSMModule, ""), "no-such-token"},
		{"MissingKey", good, "keys init"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, want := tc.config, tc.want
			data := filepath.Join(t.TempDir(), "data")
			r := sallyport(t, time.Minute, "dev", "--data", data, "--config", cfg, "--ssh-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0")
			if r.Code == 0 || !strings.Contains(r.Stderr, want) {
				t.Fatalf("want a non-zero exit naming %q:\n%s", want, r)
			}
			if strings.Contains(r.Stderr, "ready") {
				t.Fatalf("the gateway came up:\n%s", r)
			}
			if _, err := os.Stat(filepath.Join(data, "keystore.json")); err == nil {
				t.Fatal("a soft keystore was created: no fallback is allowed")
			}
		})
	}
}

// TestNoCgoBuild builds sallyport without cgo: it works on the soft
// keystore and says clearly that it cannot use a token.
func TestNoCgoBuild(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "sallyport-nocgo")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sallyport")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	h := &softHSM{Label: "any"}
	cfg := h.config(t, tokenPIN, softHSMModule, "")
	r := run(t, command{Path: bin, Args: []string{"keys", "init", "--data", filepath.Join(t.TempDir(), "d"), "--config", cfg}})
	if r.Code == 0 || !strings.Contains(r.Stderr, "CGO_ENABLED=0") {
		t.Fatalf("a cgo-less binary must refuse pkcs11 clearly:\n%s", r)
	}
	r = run(t, command{Path: bin, Args: []string{"keys", "init", "--data", filepath.Join(t.TempDir(), "d")}})
	if r.Code != 0 || !strings.Contains(r.Stdout, "sallyport-kek: created in the soft keystore") {
		t.Fatalf("a cgo-less binary must work on the soft keystore:\n%s", r)
	}
}
