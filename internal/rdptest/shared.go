package rdptest

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
)

// Shared is a test package's one display, shadow server and xrdp, each
// started by the first test that needs it and stopped by Main. The shadow
// server's password is shared too: a test that changes it (SetPassword)
// must not run beside tests that log in with it, or should start a Shadow
// of its own on Display.
type Shared struct {
	displayOnce, shadowOnce, xrdpOnce sync.Once

	display *Display
	shadow  *Shadow
	xrdp    *Xrdp

	displayErr, shadowErr, xrdpErr error
}

// Display returns the shared display, starting it on first use. It fails
// tb, never skips, when Xvfb cannot start: test/setup.sh installs it.
func (s *Shared) Display(tb testing.TB) *Display {
	tb.Helper()
	s.displayOnce.Do(func() { s.display, s.displayErr = StartDisplay() })
	if s.displayErr != nil {
		tb.Fatalf("start Xvfb: %v", s.displayErr)
	}
	return s.display
}

// Shadow returns the shared freerdp-shadow-cli, on the shared display,
// starting both on first use.
func (s *Shared) Shadow(tb testing.TB) *Shadow {
	tb.Helper()
	d := s.Display(tb)
	s.shadowOnce.Do(func() { s.shadow, s.shadowErr = StartShadow(d) })
	if s.shadowErr != nil {
		tb.Fatalf("start freerdp-shadow-cli: %v", s.shadowErr)
	}
	return s.shadow
}

// Xrdp returns the shared xrdp, starting it (and xrdp-sesman) on first
// use.
func (s *Shared) Xrdp(tb testing.TB) *Xrdp {
	tb.Helper()
	s.xrdpOnce.Do(func() { s.xrdp, s.xrdpErr = StartXrdp() })
	if s.xrdpErr != nil {
		tb.Fatalf("start xrdp: %v", s.xrdpErr)
	}
	return s.xrdp
}

// Close stops whatever s started: xrdp, the shadow server, the display.
func (s *Shared) Close() error {
	var errs []error
	if s.xrdp != nil {
		errs = append(errs, s.xrdp.Close())
	}
	if s.shadow != nil {
		errs = append(errs, s.shadow.Close())
	}
	if s.display != nil {
		errs = append(errs, s.display.Close())
	}
	return errors.Join(errs...)
}

// Main runs a package's tests for TestMain and then stops what s started:
// os.Exit(rdptest.Main(m, &shared)).
func Main(m *testing.M, s *Shared) int {
	code := m.Run()
	if err := s.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: stop RDP test servers: %v\n", err)
		code = 1
	}
	return code
}
