package sshtarget

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"
)

// TestRotateKey rotates a key on the real sshd and checks the result with
// the real OpenSSH client and in authorized_keys itself.
func TestRotateKey(t *testing.T) {
	t.Parallel()
	s := server(t)
	a := s.AddAccount(t)
	oldKey, oldPub := newKey(t)
	_, otherPub := newKey(t)
	oldBlob := strings.Fields(oldPub)[1]
	// Lines that must survive byte for byte, around two that hold the old key.
	keep := []string{
		"# managed by hand",
		`from="127.0.0.1",command="echo a b" ` + otherPub,
		"",
		"no-pty,restrict " + strings.Replace(otherPub, "sshtarget-test", "with  two spaces", 1),
	}
	for _, line := range []string{keep[0], keep[1], oldPub, keep[2], `from="127.0.0.0/8" ssh-ed25519 ` + oldBlob + " second copy", keep[3]} {
		s.Authorize(t, a, line)
	}

	newPriv, newPub := newKey(t)
	if err := RotateKey(context.Background(), keyLogin(s, a.Name, oldKey), newPriv, newPub); err != nil {
		t.Fatalf("RotateKey: %v\nsshd log:\n%s", err, s.LogTail(10))
	}
	wantSSHKey(t, s, a.Name, newPriv, true, "new key")
	wantSSHKey(t, s, a.Name, oldKey, false, "old key")

	ak := filepath.Join(a.Home, ".ssh", "authorized_keys")
	got, err := os.ReadFile(ak)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Join(append(keep, newPub), "\n") + "\n"; string(got) != want {
		t.Errorf("authorized_keys:\n%s\nwant:\n%s", got, want)
	}
	fi, err := os.Stat(ak)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o600 || int(st.Uid) != a.UID {
		t.Errorf("authorized_keys mode %v owner %d, want 0600 and %d", fi.Mode().Perm(), st.Uid, a.UID)
	}
	if m, _ := filepath.Glob(ak + ".*"); len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}

	t.Run("invalid", func(t *testing.T) {
		otherPriv, _ := newKey(t)
		l := keyLogin(s, a.Name, newPriv)
		for _, tc := range []struct {
			name  string
			login Login
			priv  []byte
			pub   string
		}{
			{"public key of another key", l, otherPriv, newPub},
			{"same key", l, newPriv, newPub},
			{"two lines", l, otherPriv, newPub + "\n" + newPub},
			{"not a key", l, otherPriv, "hello"},
			{"password login", passwordLogin(s, a.Name, a.Password), otherPriv, newPub},
		} {
			if err := RotateKey(context.Background(), tc.login, tc.priv, tc.pub); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: RotateKey = %v, want ErrInvalid", tc.name, err)
			}
		}
		wantSSHKey(t, s, a.Name, newPriv, true, "key after refused rotations")
	})
}

// TestKeyScripts runs RotateKey's scripts with the local /bin/sh on the
// cases a target's authorized_keys may present.
func TestKeyScripts(t *testing.T) {
	const (
		blob  = "AAAAC3NzaC1lZDI1NTE5AAAAIOldKeyOldKeyOldKeyOldKeyOldKeyOldKeyOld"
		other = "AAAAC3NzaC1lZDI1NTE5AAAAIOtherOtherOtherOtherOtherOtherOtherOthe"
		nblob = "AAAAC3NzaC1lZDI1NTE5AAAAINewNewNewNewNewNewNewNewNewNewNewNewNewN"
	)
	newLine := "ssh-ed25519 " + nblob + " new"
	for _, tc := range []struct {
		name   string
		before *string // nil: no ~/.ssh at all
		add    string  // authorized_keys after adding newLine
		remove string  // after removing blob from add
	}{
		{"no .ssh", nil,
			newLine + "\n",
			newLine + "\n"},
		{"empty", ptr(""),
			newLine + "\n",
			newLine + "\n"},
		{"no final newline", ptr("ssh-ed25519 " + blob + " old"),
			"ssh-ed25519 " + blob + " old\n" + newLine + "\n",
			newLine + "\n"},
		{"CRLF and options", ptr("command=\"a b\" ssh-ed25519 " + blob + "\r\n# c\\d *\r\nssh-ed25519 " + other + "\r\n"),
			"command=\"a b\" ssh-ed25519 " + blob + "\r\n# c\\d *\r\nssh-ed25519 " + other + "\r\n" + newLine + "\n",
			"# c\\d *\r\nssh-ed25519 " + other + "\r\n" + newLine + "\n"},
		{"prefix of the blob is another key", ptr("ssh-ed25519 " + blob + "X\n"),
			"ssh-ed25519 " + blob + "X\n" + newLine + "\n",
			"ssh-ed25519 " + blob + "X\n" + newLine + "\n"},
		{"new key already there", ptr("restrict ssh-ed25519 " + nblob + "\n"),
			"restrict ssh-ed25519 " + nblob + "\n",
			"restrict ssh-ed25519 " + nblob + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			ak := filepath.Join(home, ".ssh", "authorized_keys")
			if tc.before != nil {
				if err := os.Mkdir(filepath.Join(home, ".ssh"), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(ak, []byte(*tc.before), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			sh(t, home, addKeyScript, nblob+"\n"+newLine+"\n")
			if got := read(t, ak); got != tc.add {
				t.Fatalf("after add:\n%q\nwant\n%q", got, tc.add)
			}
			for _, p := range []struct {
				path string
				mode os.FileMode
			}{{filepath.Join(home, ".ssh"), 0o700}, {ak, 0o600}} {
				if fi, err := os.Stat(p.path); err != nil || fi.Mode().Perm() != p.mode {
					t.Fatalf("%s: %v %v, want mode %v", p.path, fi.Mode(), err, p.mode)
				}
			}
			sh(t, home, removeKeyScript, blob+"\n")
			if got := read(t, ak); got != tc.remove {
				t.Fatalf("after remove:\n%q\nwant\n%q", got, tc.remove)
			}
			if fi, err := os.Stat(ak); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("after remove: %v %v", fi.Mode(), err)
			}
			if m, _ := filepath.Glob(ak + ".*"); len(m) > 0 {
				t.Fatalf("temporary files left: %v", m)
			}
		})
	}
	for _, s := range []string{addKeyScript, removeKeyScript} {
		if strings.ContainsAny(s, "'\n") {
			t.Errorf("script holds a quote or line break, which shCommand cannot carry: %s", s)
		}
	}
}

// sh runs script the way a target does: the login shell (here sh) runs
// shCommand's text.
func sh(t *testing.T, home, script, stdin string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", shCommand(script))
	cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin"}
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("script: %v: %s", err, out)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path) // #nosec G304 -- a test's own temporary file
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func ptr(s string) *string { return &s }

func TestNewKey(t *testing.T) {
	priv, pub, err := NewKey("ops@example")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pk, comment, _, rest, err := ssh.ParseAuthorizedKey([]byte(pub))
	if err != nil || len(rest) > 0 {
		t.Fatalf("public line %q: %v", pub, err)
	}
	if comment != "ops@example" || pk.Type() != ssh.KeyAlgoED25519 || !bytes.Equal(pk.Marshal(), signer.PublicKey().Marshal()) {
		t.Fatalf("public line %q does not match the private key", pub)
	}
	if !bytes.HasPrefix(priv, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Fatalf("private key is not in OpenSSH form")
	}
	if _, pub2, _ := NewKey(""); strings.Count(pub2, " ") != 1 {
		t.Fatalf("no comment: %q", pub2)
	}
	if _, _, err := NewKey("a\nb"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("comment with a line break: %v", err)
	}
}
