package sshdtest

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
)

// Shared is a test package's one sshd, started by the first test that
// needs it (Get) and stopped by Main.
type Shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Get returns the shared sshd, starting it on first use. It fails tb,
// never skips, when sshd cannot start: test/setup.sh installs it and the
// tests run as root.
func (s *Shared) Get(tb testing.TB) *Server {
	tb.Helper()
	s.once.Do(func() { s.srv, s.err = Start() })
	if s.err != nil {
		tb.Fatalf("start sshd: %v", s.err)
	}
	return s.srv
}

// Main runs a package's tests for TestMain and stops s's sshd afterwards:
// os.Exit(sshdtest.Main(m, &shared)). A refused login costs pam_unix's
// fail delay (about 2 s a try), and tests that log in mostly wait rather
// than compute, so it runs 8 parallel tests at once unless -test.parallel
// says otherwise.
func Main(m *testing.M, s *Shared) int {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "8")
	}
	code := m.Run()
	if s.srv != nil {
		if err := s.srv.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: stop sshd: %v\n", err)
			code = 1
		}
	}
	return code
}
