package sshtarget

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// The package's tests share one real sshd, started by the first test that
// needs it. A refused login costs pam_unix's fail delay (about 2 s a try),
// so the tests that log in run in parallel.
var (
	srvOnce sync.Once
	srv     *sshdtest.Server
	srvErr  error
)

func TestMain(m *testing.M) {
	flag.Parse()
	// The logging-in tests mostly wait (on PAM's fail delay), not compute:
	// run more of them at once than there are CPUs, unless told otherwise.
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "8")
	}
	code := m.Run()
	if srv != nil {
		if err := srv.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: stop sshd: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// server returns the shared sshd. It fails, never skips, when sshd cannot
// start: test/setup.sh installs it and the tests run as root.
func server(t *testing.T) *sshdtest.Server {
	t.Helper()
	srvOnce.Do(func() { srv, srvErr = sshdtest.Start() })
	if srvErr != nil {
		t.Fatalf("start sshd: %v", srvErr)
	}
	return srv
}

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
