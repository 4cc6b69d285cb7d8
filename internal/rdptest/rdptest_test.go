package rdptest

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/redacttest"
	"github.com/sallyport/sallyport/internal/sshdtest"
)

var shared Shared

func TestMain(m *testing.M) { os.Exit(Main(m, &shared)) }

// TestShadow checks the NLA target the way the gateway's tests use it:
// the certificate it presents is the one CertSHA256 gives, the real
// client logs in with the SAM password and is refused a wrong one, a
// password changed by SetPassword replaces the old one at once, and a
// full session shows up in the log.
func TestShadow(t *testing.T) {
	t.Parallel()
	d := shared.Display(t)
	s := shared.Shadow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cert, err := ServerCertificate(ctx, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(cert.Raw) != s.CertSHA256() {
		t.Fatal("the certificate the server presents is not the one in its HOME")
	}

	// authOnly logs in with +auth-only, the password on the command line
	// or through stdin, and returns the exit code.
	authOnly := func(t *testing.T, password []byte, stdin bool) int {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		args := []string{"/v:" + s.Addr(), "/u:" + s.User, "/sec:nla", "/cert:ignore", "+auth-only", "/log-level:WARN"}
		var code int
		var out string
		var err error
		if stdin {
			code, out, err = RunClientPassword(ctx, d, password, args...)
		} else {
			code, out, err = RunClient(ctx, d, append(args, "/p:"+string(password))...)
		}
		if err != nil {
			t.Fatalf("xfreerdp: %v\n%s\nshadow log:\n%s", err, out, s.LogTail(15))
		}
		if strings.Contains(out, string(password)) {
			t.Error("the client printed the password")
		}
		t.Logf("exit %d", code)
		return code
	}
	check := func(t *testing.T, password []byte, stdin bool, want int) {
		t.Helper()
		failures := s.AuthFailures()
		if got := authOnly(t, password, stdin); got != want {
			t.Fatalf("exit %d, want %d; shadow log:\n%s", got, want, s.LogTail(15))
		}
		if want == ExitTransportFailure && s.AuthFailures() <= failures {
			t.Fatalf("exit %d but the shadow log shows no refused login:\n%s", want, s.LogTail(15))
		}
	}

	// Logins mostly wait on the network and each other: two at a time.
	t.Run("logins", func(t *testing.T) {
		t.Run("right password", func(t *testing.T) { t.Parallel(); check(t, s.Password, false, ExitSuccess) })
		t.Run("wrong password", func(t *testing.T) {
			t.Parallel()
			check(t, sshdtest.RandomPassword(), false, ExitTransportFailure)
		})
	})
	if t.Failed() {
		return
	}
	old := append([]byte(nil), s.Password...)
	if err := s.SetPassword(sshdtest.RandomPassword()); err != nil {
		t.Fatal(err)
	}
	t.Run("after SetPassword", func(t *testing.T) {
		t.Run("old password", func(t *testing.T) { t.Parallel(); check(t, old, true, ExitTransportFailure) })
		t.Run("new password", func(t *testing.T) { t.Parallel(); check(t, s.Password, true, ExitSuccess) })
	})

	t.Run("session", func(t *testing.T) {
		before := s.Sessions()
		c, err := StartClient(d, s.Password, "/v:"+s.Addr(), "/u:"+s.User, "/sec:nla", "/cert:ignore", "/log-level:WARN")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Stop()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := s.WaitSessions(wctx, before+1); err != nil {
			t.Fatalf("%v\nclient output:\n%s", err, c.Output())
		}
		select {
		case <-c.Done():
			t.Fatalf("the client exited (%d) during the session:\n%s", c.ExitCode(), c.Output())
		default:
		}
		code, _, err := c.Stop()
		t.Logf("client stopped: exit %d, %v", code, err)
	})
}

// TestXrdp checks the TLS target: the certificate it presents is the
// harness's, an account's full session logs in through sesman and PAM
// and ends on its own with the client logged off, and a wrong password is
// refused in the log while the client waits at the login screen.
func TestXrdp(t *testing.T) {
	t.Parallel()
	d := shared.Display(t)
	x := shared.Xrdp(t)
	a := x.AddAccount(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cert, err := ServerCertificate(ctx, x.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(cert.Raw) != x.CertSHA256() {
		t.Fatal("the certificate xrdp presents is not the harness's")
	}
	args := []string{"/v:" + x.Addr(), "/u:" + a.Name, "/sec:tls", "/cert:ignore", "/log-level:WARN"}

	// Both mostly wait: on Xorg's start and on pam_unix's fail delay.
	t.Run("logins", func(t *testing.T) { xrdpLogins(ctx, t, d, x, a, args) })
}

func xrdpLogins(ctx context.Context, t *testing.T, d *Display, x *Xrdp, a *sshdtest.Account, args []string) {
	t.Run("session", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		code, out, err := RunClientPassword(ctx, d, a.Password, args...)
		if err != nil || code != ExitLoggedOff {
			t.Fatalf("exit %d (%v), want %d (logged off when the session ended)\n%s\nxrdp log:\n%s\nsesman log:\n%s",
				code, err, ExitLoggedOff, out, x.LogTail(15), x.SesmanLogTail(15))
		}
		if n := x.Logins(a.Name); n != 1 {
			t.Errorf("xrdp logged %d logins of %s, want 1:\n%s", n, a.Name, x.LogTail(20))
		}
		if n := x.Sessions(a.Name); n != 1 {
			t.Errorf("%d sessions of %s, want 1:\n%s", n, a.Name, x.SesmanLogTail(20))
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		c, err := StartClient(d, sshdtest.RandomPassword(), args...)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Stop()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := x.WaitLoginFailure(wctx, a.Name, 1); err != nil {
			t.Fatalf("%v\nclient output:\n%s", err, c.Output())
		}
		select {
		case <-c.Done():
			t.Fatalf("the client exited (%d); it should wait at xrdp's login screen:\n%s", c.ExitCode(), c.Output())
		default:
		}
	})
}

// TestSAM checks the SAM file the harness writes against winpr-hash's.
func TestSAM(t *testing.T) {
	for _, pw := range []string{"Test-Passw0rd!", "pässwörd-€-𝄞"} {
		out, err := exec.Command("winpr-hash", "-u", "someone", "-p", pw, "-f", "sam").Output()
		if err != nil {
			t.Fatalf("winpr-hash (run test/setup.sh as root): %v", err)
		}
		f := filepath.Join(t.TempDir(), "SAM")
		if err := writeSAM(f, "someone", []byte(pw)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(b)) != strings.TrimSpace(string(out)) {
			t.Errorf("password %q: wrote %q, winpr-hash says %q", pw, b, out)
		}
	}
}

// TestDisplay checks that Xvfb's socket is there once StartDisplay
// returns and gone after Close.
func TestDisplay(t *testing.T) {
	d, err := StartDisplay()
	if err != nil {
		t.Fatal(err)
	}
	sock := "/tmp/.X11-unix/X" + strings.TrimPrefix(d.Name, ":")
	if _, err := os.Stat(sock); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left behind: %v", sock, err)
	}
}

func TestClientRefusesLineBreak(t *testing.T) {
	if _, err := StartClient(&Display{Name: ":0"}, []byte("a\nb"), "/v:127.0.0.1:1"); err == nil {
		t.Fatal("a password with a line break went to stdin")
	}
}

func TestRedacts(t *testing.T) {
	pw := redacttest.Secret(24)
	redacttest.Check(t, []redacttest.Case{
		{Name: "Shadow", Value: &Shadow{Port: 3389, User: "sptn", Password: pw}, Secret: pw},
	})
}
