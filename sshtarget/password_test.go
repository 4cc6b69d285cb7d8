package sshtarget

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// TestChangeSelf changes passwords with passwd on the real sshd and checks
// the result with the real OpenSSH client.
func TestChangeSelf(t *testing.T) {
	t.Parallel()
	s := server(t)
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		opts []sshdtest.AccountOption
	}{
		{"password login", nil},
		{"keyboard-interactive login", []sshdtest.AccountOption{sshdtest.KbdInteractiveOnly()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := s.AddAccount(t, tc.opts...)
			next := sshdtest.RandomPassword()
			if err := ChangeSelf(ctx, passwordLogin(s, a.Name, a.Password), next); err != nil {
				t.Fatalf("ChangeSelf: %v\nsshd log:\n%s", err, s.LogTail(10))
			}
			wantSSHPassword(t, s, a.Name, next, true, "new password")
			wantSSHPassword(t, s, a.Name, a.Password, false, "old password")
			if got, err := Check(ctx, passwordLogin(s, a.Name, next)); got != OK {
				t.Errorf("Check with the new password = %s (%v)", got, err)
			}
		})
	}

	t.Run("wrong login password", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		err := ChangeSelf(ctx, passwordLogin(s, a.Name, sshdtest.RandomPassword()), sshdtest.RandomPassword())
		if Classify(err) != Rejected {
			t.Fatalf("ChangeSelf = %v, want rejected", err)
		}
		wantSSHPassword(t, s, a.Name, a.Password, true, "unchanged password")
	})

	// Logged in by key, passwd is answered a wrong current password: passwd
	// itself must refuse, and the password stay.
	t.Run("wrong current password", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		key, pub := newKey(t)
		s.Authorize(t, a, pub)
		next := sshdtest.RandomPassword()
		err := changeSelf(ctx, keyLogin(s, a.Name, key), sshdtest.RandomPassword(), next)
		if err == nil || errors.Is(err, ErrUnconfirmed) {
			t.Fatalf("changeSelf = %v, want a definite failure", err)
		}
		t.Logf("error: %v", err)
		checkNoSecret(t, err.Error(), Login{Password: next})
		wantSSHPassword(t, s, a.Name, a.Password, true, "unchanged password")
		wantSSHPassword(t, s, a.Name, next, false, "refused new password")
	})

	// pam_unix's "obscure" check refuses a short password; passwd asks
	// for another, which ChangeSelf does not give.
	t.Run("new password refused by PAM", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		weak := []byte("ab1")
		err := ChangeSelf(ctx, passwordLogin(s, a.Name, a.Password), weak)
		if err == nil || errors.Is(err, ErrUnconfirmed) {
			t.Fatalf("ChangeSelf = %v, want a definite failure", err)
		}
		t.Logf("error: %v", err)
		wantSSHPassword(t, s, a.Name, a.Password, true, "unchanged password")
	})

	t.Run("invalid", func(t *testing.T) {
		a := s.AddAccount(t)
		key, _ := newKey(t)
		for _, tc := range []struct {
			name  string
			login Login
			next  []byte
		}{
			{"line break", passwordLogin(s, a.Name, a.Password), []byte("Abc-123\nxyz")},
			{"NUL", passwordLogin(s, a.Name, a.Password), []byte("Abc-123\x00xyz")},
			{"empty", passwordLogin(s, a.Name, a.Password), nil},
			{"same as current", passwordLogin(s, a.Name, a.Password), a.Password},
			{"key login", keyLogin(s, a.Name, key), sshdtest.RandomPassword()},
		} {
			if err := ChangeSelf(ctx, tc.login, tc.next); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: ChangeSelf = %v, want ErrInvalid", tc.name, err)
			}
		}
	})
}

// TestChangePrivileged sets passwords with chpasswd from root and through
// sudo, and checks the result with the real OpenSSH client.
func TestChangePrivileged(t *testing.T) {
	t.Parallel()
	s := server(t)
	ctx := context.Background()
	rootKey, rootPub := newKey(t)
	s.AuthorizeRoot(t, rootPub)

	// changed sets a fresh account's password through priv and checks that
	// only the new one logs in.
	changed := func(t *testing.T, priv Login, sudo bool) {
		t.Helper()
		a := s.AddAccount(t)
		next := sshdtest.RandomPassword()
		if err := ChangePrivileged(ctx, priv, a.Name, next, sudo); err != nil {
			t.Fatalf("ChangePrivileged: %v\nsshd log:\n%s", err, s.LogTail(10))
		}
		wantSSHPassword(t, s, a.Name, next, true, "new password")
		wantSSHPassword(t, s, a.Name, a.Password, false, "old password")
	}
	// unchanged tries and checks that the old password stays.
	unchanged := func(t *testing.T, priv Login, sudo bool) error {
		t.Helper()
		a := s.AddAccount(t)
		next := sshdtest.RandomPassword()
		err := ChangePrivileged(ctx, priv, a.Name, next, sudo)
		if err == nil || errors.Is(err, ErrUnconfirmed) {
			t.Fatalf("ChangePrivileged = %v, want a definite failure", err)
		}
		t.Logf("error: %v", err)
		checkNoSecret(t, err.Error(), Login{Password: next})
		checkNoSecret(t, err.Error(), priv)
		wantSSHPassword(t, s, a.Name, a.Password, true, "unchanged password")
		wantSSHPassword(t, s, a.Name, next, false, "refused new password")
		return err
	}

	t.Run("root", func(t *testing.T) {
		t.Parallel()
		changed(t, keyLogin(s, "root", rootKey), false)
	})
	t.Run("sudo with the login's password", func(t *testing.T) {
		t.Parallel()
		admin := s.AddAccount(t)
		s.AllowSudo(t, admin, "/usr/sbin/chpasswd", false)
		changed(t, passwordLogin(s, admin.Name, admin.Password), true)
		// Again at once: sudo must ask again (no timestamp reuse), and be answered.
		changed(t, passwordLogin(s, admin.Name, admin.Password), true)
	})
	t.Run("sudo without a password, key login", func(t *testing.T) {
		t.Parallel()
		admin := s.AddAccount(t)
		key, pub := newKey(t)
		s.Authorize(t, admin, pub)
		s.AllowSudo(t, admin, "/usr/sbin/chpasswd", true)
		changed(t, keyLogin(s, admin.Name, key), true)
	})
	t.Run("sudo not allowed", func(t *testing.T) {
		t.Parallel()
		admin := s.AddAccount(t)
		unchanged(t, passwordLogin(s, admin.Name, admin.Password), true)
	})
	t.Run("sudo not allowed, key login", func(t *testing.T) {
		t.Parallel()
		admin := s.AddAccount(t)
		key, pub := newKey(t)
		s.Authorize(t, admin, pub)
		s.AllowSudo(t, admin, "/usr/sbin/chpasswd", false) // sudo -n cannot ask for the password
		unchanged(t, keyLogin(s, admin.Name, key), true)
	})
	// A NOPASSWD rule for a password login: sudo never asks, so the
	// privileged password is never sent, and chpasswd gets nothing.
	t.Run("sudo that does not ask", func(t *testing.T) {
		t.Parallel()
		admin := s.AddAccount(t)
		s.AllowSudo(t, admin, "/usr/sbin/chpasswd", true)
		l := passwordLogin(s, admin.Name, admin.Password)
		l.Timeout = 3 * time.Second
		err := unchanged(t, l, true)
		if !strings.Contains(err.Error(), "did not ask") {
			t.Errorf("error %q does not say sudo did not ask", err)
		}
	})
	t.Run("not root, no sudo", func(t *testing.T) {
		t.Parallel()
		admin := s.AddAccount(t)
		unchanged(t, passwordLogin(s, admin.Name, admin.Password), false)
	})
	t.Run("invalid account", func(t *testing.T) {
		for _, name := range []string{"", "a:b", "a\nb", "-r", "a b", "a$b", "$", strings.Repeat("a", 257)} {
			if err := ChangePrivileged(ctx, keyLogin(s, "root", rootKey), name, sshdtest.RandomPassword(), false); !errors.Is(err, ErrInvalid) {
				t.Errorf("account %q: %v, want ErrInvalid", name, err)
			}
		}
	})
}

func TestPromptIn(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want prompt
	}{
		{"Changing password for alice.\r\nCurrent password: ", promptCurrent},
		{"(current) UNIX password: ", promptCurrent},
		{"Old Password:", promptCurrent},
		{"Current Kerberos password: ", promptCurrent},
		{"New password: ", promptNew},
		{"Enter new UNIX password: ", promptNew},
		{"\r\nRetype new password: ", promptRetype},
		{"New password (again): ", promptRetype},
		{"Re-enter new password:", promptRetype},
		{"BAD PASSWORD: too short\r\nNew password: ", promptNew},
		{"Password: ", promptOther},
		{"Verification code: ", promptOther},
		{"Verify new password: ", promptRetype},
		{"Changing password for alice.\r\n", noPrompt},
		{"Current pass", noPrompt},
		{"New password: \r\n", noPrompt},
		{"", noPrompt},
	} {
		if got := promptIn([]byte(tc.out)); got != tc.want {
			t.Errorf("promptIn(%q) = %d, want %d", tc.out, got, tc.want)
		}
	}
}

func FuzzPromptIn(f *testing.F) {
	for _, s := range []string{"Current password: ", "New password: ", "Retype new password: ", "x\r\ny:", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, out []byte) {
		p := promptIn(out)
		last := out[bytes.LastIndexAny(out, "\r\n")+1:]
		if p != noPrompt && !bytes.HasSuffix(bytes.TrimRight(last, " \t"), []byte(":")) {
			t.Fatalf("promptIn(%q) = %d for a line not ending in ':'", out, p)
		}
	})
}

// TestPasswdDialog plays passwd's side of conversations that go wrong.
func TestPasswdDialog(t *testing.T) {
	cur, next := []byte("Cur-pass-123"), []byte("Next-pass-456")
	for _, tc := range []struct {
		name    string
		chunks  []string
		answers string
		err     string // "" for none
		refused bool
	}{
		{"ordinary", []string{"Changing password for a.\r\nCurrent pass", "word: ", "\r\nNew password: ", "\r\nRetype new password: ", "\r\npasswd: password updated successfully\r\n"},
			"Cur-pass-123\nNext-pass-456\nNext-pass-456\n", "", false},
		{"root: no current password", []string{"New password: ", "Retype new password: ", "ok\r\n"},
			"Next-pass-456\nNext-pass-456\n", "", false},
		{"new password refused", []string{"Current password: ", "New password: ", "BAD PASSWORD\r\nNew password: "},
			"Cur-pass-123\nNext-pass-456\n", "refused", true},
		{"refused after retype", []string{"New password: ", "Retype new password: ", "Sorry, passwords do not match.\r\nNew password: "},
			"Next-pass-456\nNext-pass-456\n", "refused", true},
		{"unknown prompt", []string{"Current password: ", "Token code: "},
			"Cur-pass-123\n", "unexpected", false},
		{"current asked twice", []string{"Current password: ", "Current password: "},
			"Cur-pass-123\n", "again", false},
		{"retype before new", []string{"Retype new password: "},
			"", "unexpected", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := passwdDialog{current: cur, next: next}
			var answers bytes.Buffer
			err := d.run(&chunkReader{chunks: tc.chunks}, &answers)
			if got := answers.String(); got != tc.answers {
				t.Errorf("answers %q, want %q", got, tc.answers)
			}
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("run: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("run = %v, want an error saying %q", err, tc.err)
			}
			if d.refused != tc.refused {
				t.Errorf("refused = %v", d.refused)
			}
		})
	}
	t.Run("too much output", func(t *testing.T) {
		d := passwdDialog{current: cur, next: next}
		err := d.run(&chunkReader{chunks: []string{strings.Repeat("x", maxOutput), "y"}}, io.Discard)
		if err == nil || len(d.out) > maxOutput {
			t.Fatalf("run = %v with %d bytes kept", err, len(d.out))
		}
	})
}

// chunkReader returns one chunk per Read, then EOF.
type chunkReader struct{ chunks []string }

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	if r.chunks[0] == "" {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

func TestCheckAccount(t *testing.T) {
	for _, ok := range []string{"alice", "svc_backup", "a.b-c", "HOST01$", "user@example.com", strings.Repeat("a", 256)} {
		if err := checkAccount(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}

func FuzzCheckAccount(f *testing.F) {
	for _, s := range []string{"alice", "a:b", "-x", "HOST$", "a\nb"} {
		f.Add(s)
	}
	const allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@"
	f.Fuzz(func(t *testing.T, name string) {
		if checkAccount(name) != nil {
			return
		}
		if name == "" || name[0] == '-' {
			t.Fatalf("accepted %q", name)
		}
		for i := 0; i < len(name); i++ {
			if !strings.Contains(allowed, name[i:i+1]) && (name[i] != '$' || i != len(name)-1) {
				t.Fatalf("accepted %q", name)
			}
		}
	})
}

func TestDetail(t *testing.T) {
	pw := []byte("Secret-pw-1234")
	got := detail([]byte("a\r\nb\r\n\r\nyou typed Secret-pw-1234\r\nd\x1b[0m\r\n"), pw)
	if strings.Contains(got, string(pw)) {
		t.Fatalf("detail shows the password: %s", got)
	}
	if want := `"b / you typed [REDACTED] / d?[0m"`; got != want {
		t.Fatalf("detail = %s, want %s", got, want)
	}
	if got := detail([]byte(strings.Repeat("x", 1000))); len(got) > 210 {
		t.Fatalf("detail of %d bytes", len(got))
	}
	if got := detail(nil); got != "no output" {
		t.Fatalf("detail(nil) = %s", got)
	}
}

func TestCapped(t *testing.T) {
	c := newCapped(10)
	for range 3 {
		if n, err := c.Write([]byte("abcdef")); n != 6 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got := string(c.Bytes()); got != "abcdefabcd" || !c.dropped {
		t.Fatalf("kept %q, dropped %v", got, c.dropped)
	}
}
