package rdptest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Exit codes of xfreerdp 2.x seen against the harness's servers and the
// gateway.
const (
	ExitSuccess          = 0   // +auth-only: the NLA login worked
	ExitLoggedOff        = 12  // the server ended the session (ERRINFO_LOGOFF_BY_USER)
	ExitConnectFailed    = 131 // nothing to connect to
	ExitNegotiation      = 133 // security negotiation failure (e.g. HYBRID_REQUIRED_BY_SERVER)
	ExitLogonFailure     = 134 // CredSSP reported a logon failure (STATUS_LOGON_FAILURE)
	ExitTransportFailure = 147 // the connection broke; freerdp-shadow-cli's answer to a wrong NLA password
)

// clientStopGrace is how long Stop waits after SIGINT before SIGKILL.
const clientStopGrace = 5 * time.Second

// Client is a running xfreerdp.
type Client struct {
	cmd   *exec.Cmd
	done  chan struct{}
	home  string
	out   *lockedBuffer
	stdin []byte // cleared once the client exited

	stopOnce sync.Once
	stopErr  error
}

// StartClient starts xfreerdp with args on display d, with a HOME of its
// own (it keeps known hosts and certificates there) and its output line
// buffered, so that what it printed before a signal is kept.
//
// A non-nil password is not put on the command line: StartClient adds
// /from-stdin:force and writes the password and a newline to xfreerdp's
// standard input, which xfreerdp 2.x reads before it connects when the
// user name came with /u: (a password that holds a newline cannot go this
// way). With a nil password the caller puts /p: in args, or none.
func StartClient(d *Display, password []byte, args ...string) (_ *Client, err error) {
	if err := needTools("xfreerdp", "stdbuf"); err != nil {
		return nil, err
	}
	if d == nil || d.Name == "" {
		return nil, errors.New("xfreerdp needs a running Display, even with +auth-only")
	}
	if bytes.ContainsAny(password, "\r\n") {
		return nil, errors.New("a password read from stdin cannot hold a line break")
	}
	home, err := os.MkdirTemp("", "rdptest-client-")
	if err != nil {
		return nil, err
	}
	c := &Client{home: home, out: &lockedBuffer{}, done: make(chan struct{})}
	all := append([]string{"-oL", "-eL", "xfreerdp"}, args...)
	if password != nil {
		all = append(all, "/from-stdin:force")
		c.stdin = append(append(make([]byte, 0, len(password)+1), password...), '\n')
	}
	c.cmd = exec.Command("stdbuf", all...) // #nosec G204 -- the FreeRDP client with the test's own arguments
	c.cmd.Env = []string{path, "HOME=" + home, "DISPLAY=" + d.Name}
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if c.stdin != nil {
		c.cmd.Stdin = bytes.NewReader(c.stdin)
	}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		_ = os.RemoveAll(home)
		clear(c.stdin)
		return nil, fmt.Errorf("start xfreerdp: %w", err)
	}
	go func() {
		_ = c.cmd.Wait()
		clear(c.stdin)
		_ = os.RemoveAll(c.home)
		close(c.done)
	}()
	return c, nil
}

// Done is closed when the client has exited.
func (c *Client) Done() <-chan struct{} { return c.done }

// Output returns what the client printed so far, stdout and stderr.
func (c *Client) Output() string { return c.out.String() }

// ExitCode is the client's exit status once Done is closed: -1 while it
// runs or when a signal ended it.
func (c *Client) ExitCode() int {
	select {
	case <-c.done:
		return c.cmd.ProcessState.ExitCode()
	default:
		return -1
	}
}

// Stop ends the client, if it still runs, by its PID: SIGINT (xfreerdp
// disconnects), then SIGKILL after 5 s. It returns the exit code (-1 when
// a signal ended it) and the output. The error says whether it needed
// SIGKILL.
func (c *Client) Stop() (exitCode int, output string, err error) {
	c.stopOnce.Do(func() {
		select {
		case <-c.done:
			return
		default:
		}
		if err := c.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
			c.stopErr = fmt.Errorf("signal xfreerdp %d: %w", c.cmd.Process.Pid, err)
		}
		select {
		case <-c.done:
		case <-time.After(clientStopGrace):
			_ = c.cmd.Process.Kill()
			<-c.done
			c.stopErr = fmt.Errorf("xfreerdp %d ignored SIGINT for %v and was killed", c.cmd.Process.Pid, clientStopGrace)
		}
	})
	<-c.done
	return c.cmd.ProcessState.ExitCode(), c.Output(), c.stopErr
}

// Wait waits until the client exits or ctx ends; then it stops the client
// (Stop) and the error wraps ctx's cause.
func (c *Client) Wait(ctx context.Context) (exitCode int, output string, err error) {
	select {
	case <-c.done:
		return c.cmd.ProcessState.ExitCode(), c.Output(), nil
	case <-ctx.Done():
	}
	code, out, err := c.Stop()
	return code, out, errors.Join(fmt.Errorf("xfreerdp stopped: %w", context.Cause(ctx)), err)
}

// RunClient runs xfreerdp with args on display d until it exits, or until
// ctx ends and Stop ends it (then err wraps ctx's cause). It returns the
// exit code and the output. Give ctx a deadline: against xrdp, a refused
// password leaves the client waiting at xrdp's login screen.
func RunClient(ctx context.Context, d *Display, args ...string) (exitCode int, output string, err error) {
	return RunClientPassword(ctx, d, nil, args...)
}

// RunClientPassword is RunClient with the password written to xfreerdp's
// standard input (see StartClient) rather than on its command line.
func RunClientPassword(ctx context.Context, d *Display, password []byte, args ...string) (exitCode int, output string, err error) {
	c, err := StartClient(d, password, args...)
	if err != nil {
		return -1, "", err
	}
	return c.Wait(ctx)
}

// lockedBuffer is the output a client writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
