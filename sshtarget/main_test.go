package sshtarget

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// The package's tests share one real sshd, started by the first test that
// needs it and stopped by TestMain.
var sshd sshdtest.Shared

func TestMain(m *testing.M) { os.Exit(sshdtest.Main(m, &sshd)) }

// server returns the shared sshd.
func server(t *testing.T) *sshdtest.Server { t.Helper(); return sshd.Get(t) }

// testTimeout bounds an operation in the tests: generous, so that a slow
// machine does not fail them, but far below the test binary's timeout.
const testTimeout = 30 * time.Second

func passwordLogin(s *sshdtest.Server, user string, password []byte) Login {
	return Login{Host: "127.0.0.1", Port: s.Port, User: user, Password: password, HostKey: s.HostKey, Timeout: testTimeout}
}

func keyLogin(s *sshdtest.Server, user string, key []byte) Login {
	return Login{Host: "127.0.0.1", Port: s.Port, User: user, PrivateKey: key, HostKey: s.HostKey, Timeout: testTimeout}
}

// newKey makes a key pair with NewKey.
func newKey(t *testing.T) (private []byte, public string) {
	t.Helper()
	private, public, err := NewKey("sshtarget-test")
	if err != nil {
		t.Fatal(err)
	}
	return private, public
}

// wantSSHPassword checks with the real OpenSSH client that password logs
// in as user (works) or is refused (!works).
func wantSSHPassword(t *testing.T, s *sshdtest.Server, user string, password []byte, works bool, what string) {
	t.Helper()
	err := s.SSHPassword(context.Background(), user, password)
	checkSSH(t, s, err, works, what)
}

// wantSSHKey is wantSSHPassword for a private key.
func wantSSHKey(t *testing.T, s *sshdtest.Server, user string, key []byte, works bool, what string) {
	t.Helper()
	err := s.SSHKey(context.Background(), user, key)
	checkSSH(t, s, err, works, what)
}

func checkSSH(t *testing.T, s *sshdtest.Server, err error, works bool, what string) {
	t.Helper()
	switch {
	case works && err != nil:
		t.Errorf("ssh with the %s: %v\nsshd log:\n%s", what, err, s.LogTail(10))
	case !works && err == nil:
		t.Errorf("ssh with the %s logged in; want it refused", what)
	case !works && !isDenied(err):
		t.Errorf("ssh with the %s: %v; want permission denied", what, err)
	}
}

func isDenied(err error) bool {
	return err != nil && errors.Is(err, sshdtest.ErrDenied)
}
