// Package rdptest runs real RDP components for end-to-end tests, as root,
// on loopback: an Xvfb display (StartDisplay), FreeRDP's shadow server as
// an NLA target that checks a SAM file (StartShadow), xrdp with
// xrdp-sesman as a TLS target that logs throwaway Unix accounts in
// through PAM (StartXrdp), and the real xfreerdp client (RunClient,
// StartClient). Every process is a child of the test process, killed if
// the test process dies (Pdeathsig), waited for, and stopped by its PID;
// each server writes a log file that LogTail and WaitLog read.
// test/setup.sh installs the packages (xvfb, freerdp2-x11,
// freerdp2-shadow-x11, winpr-utils, xrdp, xorgxrdp).
//
// What the components do, seen with FreeRDP 2.11.7 and xrdp 0.9.21 on
// Debian 12:
//
//   - xfreerdp exits 0 after a successful +auth-only login with /sec:nla
//     (with /sec:tls +auth-only exits 0 whatever the password, so it
//     proves nothing there), 12 when the server logs the session off, 131
//     when it cannot connect, 133 on a security negotiation failure, 134
//     when the server reports a logon failure in CredSSP, and 147 on a
//     transport failure.
//   - freerdp-shadow-cli refuses a wrong NLA password by closing the
//     connection without a CredSSP error code, so the client exits 147,
//     not 134; the shadow log says why (ShadowAuthFailed). It reads its
//     SAM file again for every login.
//   - xrdp shows its own login screen after a refused password and the
//     client waits there: give it a deadline and read xrdp's log
//     (LoginFailures).
//
// One of each component per test package is enough; Shared starts them on
// first use and Main stops them.
//
// ServerCertificate uses gateway/rdp/pdu for the X.224 negotiation, so
// that package's own tests cannot import this one.
package rdptest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/sallyport/sallyport/gateway/rdp/pdu"
	"github.com/sallyport/sallyport/internal/sshdtest"
)

// path is the PATH every child gets.
const path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// startTimeout bounds how long a server may take to start. The machines
// the tests run on may be busy with other test packages.
const startTimeout = 60 * time.Second

// needTools fails with a hint to run test/setup.sh when a program is
// missing.
func needTools(tools ...string) error {
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found (run test/setup.sh as root): %w", t, err)
		}
	}
	return nil
}

// needRoot refuses to go on without root, which the servers need.
func needRoot(what string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("rdptest needs root: %s", what)
	}
	return nil
}

// process is a child process whose output goes to a file.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once Wait returned
}

// start starts cmd with its output appended to logPath, killed when the
// test process dies, and waits for it in the background.
func start(cmd *exec.Cmd, logPath string) (*process, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600) // #nosec G304 -- a log file in the harness's own directory
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// stop sends SIGTERM, waits up to grace and then kills.
func (p *process) stop(grace time.Duration) error {
	if p == nil {
		return nil
	}
	return sshdtest.StopProcess(p.cmd.Process, p.done, grace)
}

// exited says whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail returns the last n lines of a log file.
func logTail(file string, n int) string {
	b, _ := os.ReadFile(file) // #nosec G304 -- a log file in the harness's own directory
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logCount counts the lines of a log file that match.
func logCount(file string, match func(line string) bool) int {
	f, err := os.Open(file) // #nosec G304 -- a log file in the harness's own directory
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if match(sc.Text()) {
			n++
		}
	}
	return n
}

// contains matches the lines that hold substr.
func contains(substr string) func(string) bool {
	return func(line string) bool { return strings.Contains(line, substr) }
}

// suffix matches the lines that end with s (spaces and CR aside).
func suffix(s string) func(string) bool {
	return func(line string) bool { return strings.HasSuffix(strings.TrimRight(line, " \r"), s) }
}

// waitLog waits until at least n lines of file match, ctx ends, or done
// (the writer's exit) is closed. what names the wait in errors.
func waitLog(ctx context.Context, file string, n int, match func(string) bool, done <-chan struct{}, what string) error {
	for {
		if logCount(file, match) >= max(n, 1) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s (%d seen, want %d): %w; log:\n%s", what, logCount(file, match), max(n, 1), context.Cause(ctx), logTail(file, 20))
		case <-done:
			if logCount(file, match) >= max(n, 1) {
				return nil
			}
			return fmt.Errorf("waiting for %s: the process exited; log:\n%s", what, logTail(file, 20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// randomName returns prefix and 8 random lower-case letters and digits:
// a Unix account, group or SAM user name.
func randomName(prefix string) string {
	return prefix + strings.ToLower(rand.Text()[:8])
}

// ServerCertificate does what an RDP client does before it authenticates
// a server: the X.224 negotiation, offering TLS and CredSSP, then a TLS
// handshake. It returns the certificate the server presents, unverified;
// the caller pins or compares it. The server sees a client that goes away
// after the handshake (freerdp-shadow-cli logs a transport error).
func ServerCertificate(ctx context.Context, addr string) (*x509.Certificate, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	cr := pdu.ConnectionRequest{HasNegotiation: true, RequestedProtocols: pdu.ProtocolSSL | pdu.ProtocolHybrid}
	req, err := cr.Encode()
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(req); err != nil {
		return nil, fmt.Errorf("%s: send Connection Request: %w", addr, err)
	}
	frame, err := pdu.ReadTPKT(c, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: read Connection Confirm: %w", addr, err)
	}
	cc, err := pdu.ParseConnectionConfirm(frame)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	switch {
	case cc.Type == pdu.NegFailure:
		return nil, fmt.Errorf("%s: negotiation failure %s", addr, pdu.FailureString(cc.FailureCode))
	case cc.Type != pdu.NegResponse || cc.SelectedProtocol == pdu.ProtocolRDP:
		return nil, fmt.Errorf("%s: the server chose Standard RDP Security, which has no TLS certificate", addr)
	}
	// #nosec G402 -- the certificate is what this fetches, not what it trusts
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("%s: TLS handshake after selecting %s: %w", addr, pdu.ProtocolString(cc.SelectedProtocol), err)
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificate", addr)
	}
	return certs[0], nil
}

// dialAny reports whether anything accepts connections on one of addrs.
func dialAny(addrs ...string) bool {
	for _, a := range addrs {
		c, err := net.DialTimeout("tcp", a, time.Second)
		if err == nil {
			_ = c.Close()
			return true
		}
	}
	return false
}

// waitDial waits until one of addrs accepts connections, done is closed,
// or bound runs out: WaitPort for a server that may listen on ::1 rather
// than 127.0.0.1.
func waitDial(bound time.Duration, done <-chan struct{}, addrs ...string) error {
	deadline := time.Now().Add(bound)
	for {
		if dialAny(addrs...) {
			return nil
		}
		select {
		case <-done:
			return errors.New("process exited before accepting connections")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no listener on %s after %v", strings.Join(addrs, " or "), bound)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
