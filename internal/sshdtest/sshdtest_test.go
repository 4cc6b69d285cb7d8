package sshdtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestServer checks the harness the way its users rely on it: accounts log
// in with the real client by password, keyboard-interactive and key, a
// wrong credential is denied, root gets in by key only, and Close leaves
// no account, group or directory behind.
func TestServer(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	ctx := context.Background()
	priv, pub := newKey(t)

	a := s.AddAccount(t)
	kbd := s.AddAccount(t, KbdInteractiveOnly())
	s.Authorize(t, a, pub)
	s.AuthorizeRoot(t, pub)

	// A refused password costs pam_unix's fail delay (about 2 s a try):
	// the logins run side by side.
	t.Run("logins", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			login func() error
			want  error // nil: the login works
		}{
			{"password", func() error { return s.SSHPassword(ctx, a.Name, a.Password) }, nil},
			{"keyboard-interactive", func() error { return s.SSHPassword(ctx, kbd.Name, kbd.Password) }, nil},
			{"key", func() error { return s.SSHKey(ctx, a.Name, priv) }, nil},
			{"root key", func() error { return s.SSHKey(ctx, "root", priv) }, nil},
			{"wrong password", func() error { return s.SSHPassword(ctx, a.Name, RandomPassword()) }, ErrDenied},
			{"key not authorized", func() error { return s.SSHKey(ctx, kbd.Name, priv) }, ErrDenied},
			{"account outside the harness", func() error { return s.SSHPassword(ctx, "nobody", RandomPassword()) }, ErrDenied},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				err := tc.login()
				if tc.want == nil && err != nil {
					t.Fatalf("login failed: %v\nsshd log:\n%s", err, s.LogTail(15))
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
			})
		}
	})

	t.Run("sudoers drop-in", func(t *testing.T) {
		s.AllowSudo(t, a, "/usr/sbin/chpasswd", false)
		if _, err := os.Stat("/etc/sudoers.d/sshdtest_" + a.Name); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Stat("/etc/sudoers.d/sshdtest_" + a.Name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sudoers drop-in left behind: %v", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{s.group, s.kbdGroup} {
		if groupExists(g) {
			t.Errorf("group %s left behind", g)
		}
	}
	if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s left behind", s.dir)
	}
}

func TestRandomPassword(t *testing.T) {
	for range 100 {
		p := string(RandomPassword())
		if len(p) != 24 {
			t.Fatalf("length %d", len(p))
		}
		for _, set := range []string{upper, lower, digits, symbols} {
			if !strings.ContainsAny(p, set) {
				t.Fatalf("%q lacks one of %q", p, set)
			}
		}
		if strings.ContainsAny(p, ": \n") {
			t.Fatalf("%q holds a separator", p)
		}
	}
}

func TestRedacts(t *testing.T) {
	pw := redacttest.Secret(24)
	redacttest.Check(t, []redacttest.Case{
		{Name: "Account", Value: &Account{Name: "sptx", Home: "/home/sptx", Password: pw}, Secret: pw},
	})
}

func newKey(t *testing.T) (private []byte, authorized string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "sshdtest")
	if err != nil {
		t.Fatal(err)
	}
	pk, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
}
