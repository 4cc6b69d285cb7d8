package rdptest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Display numbers StartDisplay tries: away from the low numbers a desktop
// uses and from xrdp-sesman's sessions, which start at :20 and go up.
const (
	firstDisplay = 100
	displaySpan  = 800
)

// Display is a running Xvfb: the X display the FreeRDP tools need (even
// xfreerdp +auth-only opens one) and the screen freerdp-shadow-cli shares.
type Display struct {
	// Name is the DISPLAY value, like ":197".
	Name string

	dir string
	log string
	p   *process
}

// StartDisplay starts Xvfb on a free display number: one with neither a
// socket in /tmp/.X11-unix nor a lock file in /tmp, tried in turn from a
// random start, and the next one when another X server takes it first. It
// returns once Xvfb has written its display number to -displayfd, which
// it does when it accepts clients. Xvfb runs with -noreset: without it the
// server resets when its last client leaves, and a client connecting
// during the reset (a shadow server restarted on the same display) fails
// to open the display.
func StartDisplay() (_ *Display, err error) {
	if err := needTools("Xvfb"); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "rdptest-display-")
	if err != nil {
		return nil, err
	}
	d := &Display{dir: dir, log: filepath.Join(dir, "xvfb.log")}
	defer func() {
		if err != nil {
			_ = d.Close()
		}
	}()
	first, err := rand.Int(rand.Reader, big.NewInt(displaySpan))
	if err != nil {
		return nil, err
	}
	for i := range displaySpan {
		n := firstDisplay + (int(first.Int64())+i)%displaySpan
		if displayTaken(n) {
			continue
		}
		ok, err := d.try(n)
		if err != nil {
			return nil, err
		}
		if ok {
			return d, nil
		}
	}
	return nil, fmt.Errorf("no free X display between :%d and :%d", firstDisplay, firstDisplay+displaySpan-1)
}

// displayTaken says whether display n has a socket or lock file.
func displayTaken(n int) bool {
	for _, p := range []string{fmt.Sprintf("/tmp/.X11-unix/X%d", n), fmt.Sprintf("/tmp/.X%d-lock", n)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			return true
		}
	}
	return false
}

// try starts Xvfb on display n and waits until it is ready. It returns
// false when Xvfb exits because another server holds n.
func (d *Display) try(n int) (bool, error) {
	if err := os.Remove(d.log); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return false, err
	}
	defer r.Close()
	cmd := exec.Command("Xvfb", ":"+strconv.Itoa(n), // #nosec G204 -- fixed program and arguments
		"-displayfd", "3", "-nolisten", "tcp", "-noreset", "-screen", "0", "1024x768x24")
	cmd.Env = []string{path}
	cmd.ExtraFiles = []*os.File{w} // fd 3
	p, err := start(cmd, d.log)
	_ = w.Close()
	if err != nil {
		return false, err
	}
	if err := r.SetReadDeadline(time.Now().Add(startTimeout)); err != nil {
		_ = p.stop(time.Second)
		return false, err
	}
	// Xvfb writes "n\n" once it accepts clients; the pipe ends when it exits.
	b, rerr := io.ReadAll(io.LimitReader(r, 16))
	if strings.TrimSpace(string(b)) == strconv.Itoa(n) {
		d.Name, d.p = ":"+strconv.Itoa(n), p
		return true, nil
	}
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		_ = p.stop(5 * time.Second)
		return false, fmt.Errorf("display :%d: Xvfb not ready after %v; log:\n%s", n, startTimeout, logTail(d.log, 20))
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.stop(time.Second)
	}
	log := logTail(d.log, 20)
	if strings.Contains(log, "already running") || strings.Contains(log, "already active") {
		return false, nil
	}
	return false, fmt.Errorf("display :%d: Xvfb failed to start; log:\n%s", n, log)
}

// LogTail returns the last n lines of Xvfb's output.
func (d *Display) LogTail(n int) string { return logTail(d.log, n) }

// Close stops Xvfb, which removes its socket and lock file, and removes
// the display's directory.
func (d *Display) Close() error {
	var errs []error
	if d.p != nil {
		errs = append(errs, d.p.stop(10*time.Second))
	}
	return errors.Join(append(errs, os.RemoveAll(d.dir))...)
}
