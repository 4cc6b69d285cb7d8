package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The SSH proxy, end to end: OpenSSH clients log in to `sallyport dev` as a
// gateway user and land on the sshd target as its account, with a password
// or key the gateway injected from its vault.

// markerCommand returns shell input that prints a marker only when a shell
// runs it (the marker is computed, so an echo of the input does not contain
// it) and the marker itself.
func markerCommand() (cmd, marker string) {
	a, b := 1000+randIntn(9000), 1000+randIntn(9000)
	return fmt.Sprintf("echo spt-marker-$((%d+%d))", a, b), fmt.Sprintf("spt-marker-%d", a+b)
}

// hasLine reports whether out has a line that is exactly want (ignoring
// surrounding white space and the \r of a pty).
func hasLine(out, want string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == want {
			return true
		}
	}
	return false
}

func TestShellInjectedPassword(t *testing.T) {
	g := env.Gateway(t)
	tgt := g.target
	secret := g.Name("shell")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{g.Alice.Name}})

	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"no pty", []string{"-T"}},
		{"pty", []string{"-tt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo, marker := markerCommand()
			before := tgt.LogCount("Accepted password for " + tgt.User)
			r := g.SSH(t, sshRun{
				Login:   g.Alice.Name + "@" + secret,
				Answers: g.Alice.Answers(),
				Flags:   tc.flags,
				Stdin:   echo + "; whoami; exit 5\n",
			})
			if !strings.Contains(r.Stdout, marker) || !hasLine(r.Stdout, tgt.User) || r.Code != 5 {
				t.Fatalf("want %s, a line %q and exit code 5:\n%s\ngateway log tail:\n%s", marker, tgt.User, r, g.LogTail(20))
			}
			if !tgt.WaitLogCount("Accepted password for "+tgt.User, before) {
				t.Errorf("the target's sshd logged no password login for %s:\n%s", tgt.User, tgt.LogTail(20))
			}
		})
	}
}

func TestExecInjectedPassword(t *testing.T) {
	g := env.Gateway(t)
	secret := g.Name("exec")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{g.Alice.Name}})

	r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Command: "id -un; exit 7"})
	if strings.TrimSpace(r.Stdout) != g.target.User || r.Code != 7 {
		t.Fatalf("want exactly %q and exit code 7:\n%s\ngateway log tail:\n%s", g.target.User, r, g.LogTail(20))
	}
	// The end-of-suite scan also covers this output in every encoding.
	if show := g.MustCtl(t, "", "secret", "show", secret); strings.Contains(show.Stdout+show.Stderr, g.target.Password) {
		t.Errorf("secret show prints the password")
	}
}

func TestExecInjectedPrivateKey(t *testing.T) {
	g := env.Gateway(t)
	tgt := g.target
	secret := g.Name("key")
	g.AddSecret(t, secretSpec{Name: secret, KeyFile: tgt.ClientKeyFile, Allow: []string{g.Alice.Name}})

	before := tgt.LogCount("Accepted publickey for " + tgt.User)
	r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Command: "id -un; exit 7"})
	if strings.TrimSpace(r.Stdout) != tgt.User || r.Code != 7 {
		t.Fatalf("want exactly %q and exit code 7:\n%s\ngateway log tail:\n%s", tgt.User, r, g.LogTail(20))
	}
	if !tgt.WaitLogCount("Accepted publickey for "+tgt.User, before) {
		t.Errorf("the target's sshd logged no public key login for %s, so the key was not what got in:\n%s", tgt.User, tgt.LogTail(20))
	}
	// The end-of-suite scan checks this output for the key.
	g.MustCtl(t, "", "secret", "show", secret)
}

// TestSecretRemoved: a removed secret disappears from the list and refuses
// logins like any other refusal.
func TestSecretRemoved(t *testing.T) {
	g := env.Gateway(t)
	secret := g.Name("gone")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{g.Alice.Name}})
	listed := func() bool {
		for _, f := range strings.Fields(g.MustCtl(t, "", "secret", "list").Stdout) {
			if f == secret {
				return true
			}
		}
		return false
	}
	if !listed() {
		t.Fatalf("secret list does not show %s", secret)
	}
	if r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Command: "id -un"}); r.Code != 0 {
		t.Fatalf("login before removal:\n%s", r)
	}

	g.MustCtl(t, "", "secret", "rm", secret)
	if listed() {
		t.Errorf("secret list still shows %s after secret rm", secret)
	}
	echo, marker := markerCommand()
	r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Command: echo})
	if r.Code != 255 || !strings.Contains(r.Stderr, "Permission denied") || strings.Contains(r.Stdout, marker) {
		t.Fatalf("login to a removed secret: want Permission denied and exit code 255:\n%s", r)
	}
	g.CheckNotRateLimited(t, r)
}

// TestFileTransfer moves 100 MiB of random bytes up and down through the
// proxy with scp (legacy protocol: an exec of scp on the target; and the
// default SFTP protocol) and with sftp, checking SHA-256 on the target after
// the upload and locally after the download.
func TestFileTransfer(t *testing.T) {
	g := env.Gateway(t)
	tgt := g.target
	secret := g.Name("files")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{g.Alice.Name}})
	login := g.Alice.Name + "@" + secret

	dir := t.TempDir()
	src := filepath.Join(dir, "random.bin")
	want := writeRandomFile(t, src, 100<<20)
	const timeout = 5 * time.Minute

	for _, tc := range []struct {
		name     string
		transfer func(t *testing.T, remote, local string) (up, down result)
	}{
		{"scp legacy protocol", func(t *testing.T, remote, local string) (up, down result) {
			up = g.SCP(t, g.Alice.Answers(), timeout, "-O", "-q", src, g.Remote(login, remote))
			down = g.SCP(t, g.Alice.Answers(), timeout, "-O", "-q", g.Remote(login, remote), local)
			return up, down
		}},
		{"scp sftp protocol", func(t *testing.T, remote, local string) (up, down result) {
			up = g.SCP(t, g.Alice.Answers(), timeout, "-q", src, g.Remote(login, remote))
			down = g.SCP(t, g.Alice.Answers(), timeout, "-q", g.Remote(login, remote), local)
			return up, down
		}},
		{"sftp", func(t *testing.T, remote, local string) (up, down result) {
			up = g.SFTP(t, login, g.Alice.Answers(), timeout, fmt.Sprintf("put %s %s\n", src, remote))
			down = g.SFTP(t, login, g.Alice.Answers(), timeout, fmt.Sprintf("get %s %s\n", remote, local))
			return up, down
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			remote := "upload-" + randString(lowerAlnum, 8) + ".bin"
			local := filepath.Join(dir, "download-"+remote)
			t.Cleanup(func() { os.Remove(tgt.HomeFile(remote)); os.Remove(local) })

			up, down := tc.transfer(t, remote, local)
			if up.Code != 0 {
				t.Fatalf("upload failed:\n%s\ngateway log tail:\n%s", up, g.LogTail(20))
			}
			if got := fileSHA256(t, tgt.HomeFile(remote)); got != want {
				t.Errorf("uploaded file on the target: sha256 %s, want %s", got, want)
			}
			if down.Code != 0 {
				t.Fatalf("download failed:\n%s\ngateway log tail:\n%s", down, g.LogTail(20))
			}
			if got := fileSHA256(t, local); got != want {
				t.Errorf("downloaded file: sha256 %s, want %s", got, want)
			}
		})
	}
}

// writeRandomFile writes size random bytes to path and returns their SHA-256.
func writeRandomFile(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("sha256: %v", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestTargetHostKeyChanged: the target shows a host key other than the one
// pinned for the secret, so the proxy must not log in (and so must not send
// the password to a possible impostor), and must say why.
func TestTargetHostKeyChanged(t *testing.T) {
	g := env.Gateway(t)
	tgt := g.target
	otherKey, _, err := newKeyPair(filepath.Join(t.TempDir(), "other_host_key"), "not-the-target")
	if err != nil {
		t.Fatal(err)
	}
	secret := g.Name("moved")
	g.AddSecret(t, secretSpec{Name: secret, HostKey: otherKey, Allow: []string{g.Alice.Name}})

	echo, marker := markerCommand()
	accepted := tgt.LogCount("Accepted ")
	r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Command: echo})
	if r.Code == 0 || strings.Contains(r.Stdout, marker) {
		t.Fatalf("login went through to a target whose host key is not the pinned one:\n%s", r)
	}
	if !strings.Contains(r.Stderr, "does not match the pinned key") {
		t.Errorf("stderr does not say %q:\n%s", "does not match the pinned key", r)
	}
	t.Logf("client stderr: %s", strings.TrimSpace(r.Stderr))
	if n := tgt.LogCount("Accepted "); n != accepted {
		t.Errorf("the target's sshd accepted a login despite the host key mismatch:\n%s", tgt.LogTail(10))
	}
	line := g.WaitLog(t, fmt.Sprintf("with an error about the host key mismatch of secret %s", secret), func(line string) bool {
		l := strings.ToLower(line)
		return strings.Contains(line, secret) && strings.Contains(l, "error") && strings.Contains(l, "host key") &&
			(strings.Contains(l, "mismatch") || strings.Contains(l, "not match"))
	})
	t.Logf("gateway log: %s", line)
}

func TestHostKeyPinOnFirstUse(t *testing.T) {
	g := env.Gateway(t)
	tgt := g.target
	secret := g.Name("tofu")
	g.AddSecret(t, secretSpec{Name: secret, PinOnFirstUse: true, Allow: []string{g.Alice.Name}})
	login := func(t *testing.T) {
		t.Helper()
		r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Command: "id -un"})
		if strings.TrimSpace(r.Stdout) != tgt.User || r.Code != 0 {
			t.Fatalf("want %q and exit code 0:\n%s\ngateway log tail:\n%s", tgt.User, r, g.LogTail(20))
		}
	}

	login(t)
	line := g.WaitLog(t, fmt.Sprintf("saying the host key of secret %s was pinned", secret), func(line string) bool {
		return strings.Contains(line, secret) && strings.Contains(strings.ToLower(line), "pinned")
	})
	t.Logf("gateway log: %s", line)
	show := g.MustCtl(t, "", "secret", "show", secret)
	if !strings.Contains(show.Stdout, tgt.HostKeyFingerprint) {
		t.Errorf("secret show does not show the target's host key fingerprint %s:\n%s", tgt.HostKeyFingerprint, show)
	}
	t.Logf("secret show:\n%s", indent(show.Stdout))
	login(t)
}

// TestTOTP logs in as a user with a second factor: the right code is
// accepted once; the same code again and a wrong code are refused.
func TestTOTP(t *testing.T) {
	g := env.Gateway(t)
	user := g.AddUser(t, g.Name("carol"), true)
	secret := g.Name("otp")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{user.Name}})
	login := user.Name + "@" + secret
	code, step := freshTOTPCode(user.TOTPSecret)

	ok := t.Run("right code", func(t *testing.T) {
		r := g.SSH(t, sshRun{Login: login, Answers: answers{Password: user.Password, Code: code}, Command: "id -un"})
		if strings.TrimSpace(r.Stdout) != g.target.User || r.Code != 0 {
			t.Fatalf("want %q and exit code 0:\n%s\ngateway log tail:\n%s", g.target.User, r, g.LogTail(20))
		}
		if !slices.ContainsFunc(r.Prompts, func(p string) bool { return strings.Contains(strings.ToLower(p), "code") }) {
			t.Errorf("no prompt asked for a code: %q", r.Prompts)
		}
	})
	if !ok {
		t.Fatal("the right code was not accepted; the refusal cases would prove nothing")
	}

	// A wrong code is one no step near now would produce.
	near := map[string]bool{}
	for s := step - 3; s <= step+3; s++ {
		near[totpCode(user.TOTPSecret, s)] = true
	}
	wrong := code
	for near[wrong] {
		wrong = fmt.Sprintf("%06d", randIntn(1_000_000))
	}
	for _, tc := range []struct{ name, code string }{
		{"same code again", code},
		{"wrong code", wrong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo, marker := markerCommand()
			r := g.SSH(t, sshRun{Login: login, Answers: answers{Password: user.Password, Code: tc.code}, Command: echo})
			if r.Code != 255 || !strings.Contains(r.Stderr, "Permission denied") || strings.Contains(r.Stdout, marker) {
				t.Fatalf("want Permission denied and exit code 255:\n%s", r)
			}
			g.CheckNotRateLimited(t, r)
		})
	}
}

// TestRefusalsLookAlike: whatever check fails, the client sees the same
// refusal, so that nobody learns which users or secrets exist.
func TestRefusalsLookAlike(t *testing.T) {
	g := env.Gateway(t)
	secret := g.Name("guarded")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{g.Alice.Name}})
	bob := g.AddUser(t, g.Name("bob"), false)
	bobOnly := g.Name("bobonly")
	g.AddSecret(t, secretSpec{Name: bobOnly, Allow: []string{bob.Name}})

	ok := t.Run("control: allowed login works", func(t *testing.T) {
		echo, marker := markerCommand()
		r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Command: echo})
		if !strings.Contains(r.Stdout, marker) || r.Code != 0 {
			t.Fatalf("want %s and exit code 0:\n%s\ngateway log tail:\n%s", marker, r, g.LogTail(20))
		}
	})
	if !ok {
		t.Fatal("the allowed login failed; the refusal cases would prove nothing")
	}

	type seen struct {
		name    string
		denied  []string // stderr lines with "Permission denied", login replaced
		stderr  string   // all of stderr, login replaced
		prompts []string // askpass prompts, login replaced
	}
	var all []seen
	for _, tc := range []struct {
		name  string
		login string
		a     answers
	}{
		{"wrong gateway password", g.Alice.Name + "@" + secret, answers{Password: newGatewayPassword()}},
		{"unknown secret", g.Alice.Name + "@nosuch" + randString(lowerAlnum, 6), g.Alice.Answers()},
		{"secret not allowed for the user", g.Alice.Name + "@" + bobOnly, g.Alice.Answers()},
		{"unknown gateway user", "mallory" + randString(lowerAlnum, 6) + "@" + secret, answers{Password: newGatewayPassword()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo, marker := markerCommand()
			r := g.SSH(t, sshRun{Login: tc.login, Answers: tc.a, Command: echo})
			if strings.Contains(r.Stdout, marker) || strings.Contains(r.Stderr, marker) {
				t.Fatalf("the refused login ran a command:\n%s", r)
			}
			if r.Code != 255 {
				t.Errorf("exit code %d, want 255:\n%s", r.Code, r)
			}
			g.CheckNotRateLimited(t, r)
			anon := func(s string) string { return strings.ReplaceAll(s, tc.login+"@127.0.0.1", "<login>") }
			s := seen{name: tc.name, stderr: anon(r.Stderr)}
			for _, line := range strings.Split(r.Stderr, "\n") {
				if strings.Contains(line, "Permission denied") {
					s.denied = append(s.denied, anon(strings.TrimSpace(line)))
				}
			}
			for _, p := range r.Prompts {
				s.prompts = append(s.prompts, anon(p))
			}
			if len(s.denied) == 0 {
				t.Errorf("no %q on stderr:\n%s", "Permission denied", r)
			}
			t.Logf("prompts %q, stderr %q", s.prompts, s.stderr)
			all = append(all, s)
		})
	}

	for _, s := range all[1:] {
		first := all[0]
		if !slices.Equal(s.denied, first.denied) {
			t.Errorf("refusals differ: %s says %q, %s says %q", first.name, first.denied, s.name, s.denied)
		}
		if s.stderr != first.stderr {
			t.Errorf("client stderr differs between refusals:\n%s:\n%s\n%s:\n%s", first.name, indent(first.stderr), s.name, indent(s.stderr))
		}
		if !slices.Equal(s.prompts, first.prompts) {
			t.Errorf("prompts differ between refusals: %s was asked %q, %s was asked %q", first.name, first.prompts, s.name, s.prompts)
		}
	}
}
