package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5" // #nosec G501 -- RADIUS Message-Authenticator is HMAC-MD5 by definition (RFC 3579)
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2869"

	"github.com/sallyport/sallyport/internal/sshdtest"
	"github.com/sallyport/sallyport/radius"
)

// The RADIUS client against a real FreeRADIUS 3.2 (the Debian package), with
// the configuration in test/freeradius: secret testing123 with
// require_message_authenticator = yes, bob with a password only, alice with a
// password and then a TOTP code (Access-Challenge with a single-use State).

const (
	frSecret     = "testing123"
	frTOTPSecret = "JBSWY3DPEHPK3PXP" // alice's, in test/freeradius/authorize
)

// freeRADIUS is a private FreeRADIUS started by the test on a free loopback
// UDP port, with its whole configuration under dir.
type freeRADIUS struct {
	Addr string // 127.0.0.1:port
	dir  string
	log  string
	cmd  *exec.Cmd
	done chan struct{}

	// Set only with withRadSec: the RadSec (RADIUS over TLS) listener, which
	// requires a client certificate and uses the secret "radsec". The files
	// are PEM under dir; key files are mode 0600.
	TLSAddr             string // 127.0.0.1:port (TCP)
	CAFile              string // CA of the server and client certificates
	ClientCertFile      string // client certificate the server accepts
	ClientKeyFile       string
	OtherCAFile         string // a CA that signed neither certificate
	OtherClientCertFile string // client certificate from OtherCAFile's CA
	OtherClientKeyFile  string
}

// frOptions are startFreeRADIUS's options; see frOption.
type frOptions struct {
	radsec     bool
	radsecIdle time.Duration // FreeRADIUS's idle_timeout; zero means 30 s
}

// frOption adjusts what startFreeRADIUS starts.
type frOption func(*frOptions)

// withRadSec also starts a RadSec listener (test/freeradius/site-radsec) on
// a free TCP port, with certificates generated for it; see the TLS fields of
// freeRADIUS.
func withRadSec() frOption { return func(o *frOptions) { o.radsec = true } }

// withRadSecIdleTimeout makes the RadSec listener that withRadSec starts
// close connections idle for d (whole seconds) instead of 30 s.
func withRadSecIdleTimeout(d time.Duration) frOption {
	return func(o *frOptions) { o.radsecIdle = d }
}

// freeradiusPath finds the FreeRADIUS daemon; its absence fails the test.
func freeradiusPath() (string, error) {
	if p, err := exec.LookPath("freeradius"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/freeradius"); err == nil {
		return "/usr/sbin/freeradius", nil
	}
	return "", errors.New("freeradius not found: install the freeradius and freeradius-utils packages (run test/setup.sh as root)")
}

// freeUDPPort returns a loopback UDP port that was free a moment ago.
func freeUDPPort() (int, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

// startFreeRADIUS builds a raddb under dir from the packaged one plus
// test/freeradius, and starts FreeRADIUS in the foreground on a free port.
// It waits (bounded) until the log says it is ready. On error it stops what
// it started.
func startFreeRADIUS(dir string, opts ...frOption) (_ *freeRADIUS, err error) {
	var o frOptions
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := freeradiusPath()
	if err != nil {
		return nil, err
	}
	const pkgConf = "/etc/freeradius/3.0"
	if _, err := os.Stat(filepath.Join(pkgConf, "radiusd.conf")); err != nil {
		return nil, fmt.Errorf("packaged FreeRADIUS configuration missing (install freeradius): %w", err)
	}
	raddb := filepath.Join(dir, "raddb")
	f := &freeRADIUS{dir: dir, log: filepath.Join(dir, "log", "radius.log")}
	for _, d := range []string{filepath.Join(dir, "log"), filepath.Join(dir, "run")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if _, err := sshdtest.RunTool(nil, "cp", "-a", pkgConf, raddb); err != nil {
		return nil, err
	}
	// Only the modules and the one virtual server the test needs.
	for _, sub := range []string{"sites-enabled", "mods-enabled"} {
		entries, err := os.ReadDir(filepath.Join(raddb, sub))
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if err := os.Remove(filepath.Join(raddb, sub, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	for _, m := range []string{"always", "pap", "files", "expr", "totp"} {
		if err := os.Symlink(filepath.Join("..", "mods-available", m), filepath.Join(raddb, "mods-enabled", m)); err != nil {
			return nil, err
		}
	}
	// Log and pid file under dir; stay root (no freerad user switch), so the
	// daemon can read the copied configuration.
	conf := filepath.Join(raddb, "radiusd.conf")
	b, err := os.ReadFile(conf)
	if err != nil {
		return nil, err
	}
	b = regexp.MustCompile(`(?m)^logdir = .*$`).ReplaceAll(b, []byte("logdir = "+filepath.Join(dir, "log")))
	b = regexp.MustCompile(`(?m)^run_dir = .*$`).ReplaceAll(b, []byte("run_dir = "+filepath.Join(dir, "run")))
	b = regexp.MustCompile(`(?m)^(\s*)(user|group) = freerad`).ReplaceAll(b, []byte("$1#$2 = freerad"))
	// One "Login OK"/"Login incorrect" line per request, with the
	// Calling-Station-Id ("cli ..."); never the password (auth_*pass stay no).
	b = regexp.MustCompile(`(?m)^(\s*)auth = no$`).ReplaceAll(b, []byte("${1}auth = yes"))
	if err := os.WriteFile(conf, b, 0o600); err != nil {
		return nil, err
	}
	port, err := freeUDPPort()
	if err != nil {
		return nil, err
	}
	f.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for _, c := range []struct{ src, dst string }{
		{"clients.conf", "clients.conf"},
		{"authorize", "mods-config/files/authorize"},
		{"mods-mfa_cache", "mods-enabled/mfa_cache"},
		{"site-gw", "sites-enabled/gw"},
	} {
		b, err := os.ReadFile(filepath.Join("freeradius", c.src))
		if err != nil {
			return nil, fmt.Errorf("test/freeradius/%s: %w", c.src, err)
		}
		if c.src == "site-gw" {
			if bytes.Count(b, []byte("@PORT@")) != 1 {
				return nil, errors.New("test/freeradius/site-gw must contain @PORT@ exactly once")
			}
			b = bytes.ReplaceAll(b, []byte("@PORT@"), []byte(strconv.Itoa(port)))
		}
		if err := os.WriteFile(filepath.Join(raddb, c.dst), b, 0o600); err != nil {
			return nil, err
		}
	}
	if o.radsec {
		if err := f.configureRadSec(raddb, o.radsecIdle); err != nil {
			return nil, fmt.Errorf("RadSec listener: %w", err)
		}
	}
	if _, err := sshdtest.RunTool(nil, bin, "-C", "-d", raddb); err != nil {
		return nil, fmt.Errorf("freeradius rejects its configuration: %w", err)
	}
	out, err := os.Create(filepath.Join(dir, "stdout.log"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	f.cmd = exec.Command(bin, "-f", "-d", raddb, "-l", f.log)
	f.cmd.Stdout, f.cmd.Stderr = out, out
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start freeradius: %w", err)
	}
	f.done = make(chan struct{})
	go func() { _ = f.cmd.Wait(); close(f.done) }()
	defer func() {
		if err != nil {
			_ = f.Close()
		}
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if b, _ := os.ReadFile(f.log); bytes.Contains(b, []byte("Ready to process requests")) {
			return f, nil
		}
		select {
		case <-f.done:
			return nil, fmt.Errorf("freeradius exited before it was ready; log:\n%s", f.LogTail(30))
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("freeradius not ready after 15s; log:\n%s", f.LogTail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close stops FreeRADIUS by its PID.
func (f *freeRADIUS) Close() error {
	return sshdtest.StopProcess(f.cmd.Process, f.done, 10*time.Second)
}

// LogTail returns the last n lines of FreeRADIUS's log and stdout.
func (f *freeRADIUS) LogTail(n int) string {
	b, _ := os.ReadFile(f.log)
	o, _ := os.ReadFile(filepath.Join(f.dir, "stdout.log"))
	return lastLines(append(b, o...), n)
}

// radiusAuth returns an Authenticator for servers, all with secret.
func radiusAuth(t *testing.T, timeout time.Duration, retries int, secret string, addrs ...string) *radius.Authenticator {
	t.Helper()
	cfg := radius.Config{Timeout: timeout, Retries: retries, NASIdentifier: "sallyport-e2e"}
	for _, a := range addrs {
		cfg.Servers = append(cfg.Servers, radius.Server{Addr: a, Secret: []byte(secret)})
	}
	c, err := radius.New(cfg, nil)
	if err != nil {
		t.Fatalf("radius.New: %v", err)
	}
	a, err := radius.NewAuthenticator(c, radius.AuthConfig{}, nil)
	if err != nil {
		t.Fatalf("radius.NewAuthenticator: %v", err)
	}
	return a
}

// recordingAsker answers every challenge with answer() and records the
// prompts it was shown.
type recordingAsker struct {
	mu      sync.Mutex
	prompts []radius.Prompt
	answer  func() string
}

func (r *recordingAsker) ask(_ context.Context, _ string, ps []radius.Prompt) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prompts = append(r.prompts, ps...)
	out := make([]string, len(ps))
	for i := range ps {
		out[i] = r.answer()
	}
	return out, nil
}

func (r *recordingAsker) seen() []radius.Prompt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]radius.Prompt(nil), r.prompts...)
}

func noAsker(t *testing.T) radius.Asker {
	return func(context.Context, string, []radius.Prompt) ([]string, error) {
		t.Error("unexpected challenge")
		return nil, errors.New("unexpected challenge")
	}
}

func radiusLogin(user, password string) radius.Login {
	return radius.Login{User: user, Password: []byte(password), Source: netip.MustParseAddrPort("127.0.0.1:40022")}
}

// wrongTOTPCode returns a 6-digit code that is none of the codes valid
// around now (FreeRADIUS's totp accepts a small window of steps).
func wrongTOTPCode(key []byte) string {
	step := totpStep(time.Now())
	valid := map[string]bool{}
	for s := step - 3; s <= step+3; s++ {
		valid[totpCode(key, s)] = true
	}
	for i := uint64(1000); ; i++ {
		if c := totpCode(key, step+i); !valid[c] {
			return c
		}
	}
}

// closedUDPAddr returns a loopback address where nothing listens: requests
// there draw ICMP port unreachable.
func closedUDPAddr(t *testing.T) string {
	t.Helper()
	p, err := freeUDPPort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}

// silentUDPAddr returns a loopback address bound by the test that never
// answers, so that only the client's timeouts can end an exchange.
func silentUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.LocalAddr().String()
}

// TestRADIUSFreeRADIUS runs package radius against a real FreeRADIUS that
// the test starts and stops.
func TestRADIUSFreeRADIUS(t *testing.T) {
	fr, err := startFreeRADIUS(t.TempDir())
	if err != nil {
		t.Fatalf("FreeRADIUS: %v", err)
	}
	t.Cleanup(func() {
		if err := fr.Close(); err != nil {
			t.Errorf("stopping FreeRADIUS: %v", err)
		}
		if t.Failed() {
			t.Logf("FreeRADIUS log tail:\n%s", fr.LogTail(60))
		}
	})
	totpKey, err := base32.StdEncoding.DecodeString(frTOTPSecret)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	t.Run("PAPAccept", func(t *testing.T) {
		a := radiusAuth(t, 2*time.Second, 1, frSecret, fr.Addr)
		id, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t))
		if err != nil {
			t.Fatalf("bob with the right password: %v", err)
		}
		if id.User != "bob" {
			t.Fatalf("identity user = %q, want bob", id.User)
		}
	})

	t.Run("PAPWrongPassword", func(t *testing.T) {
		a := radiusAuth(t, 2*time.Second, 1, frSecret, fr.Addr)
		_, err := a.Authenticate(ctx, radiusLogin("bob", "bobpasS"), noAsker(t))
		if !errors.Is(err, radius.ErrDenied) {
			t.Fatalf("bob with a wrong password: err = %v, want ErrDenied", err)
		}
	})

	t.Run("UnknownUser", func(t *testing.T) {
		a := radiusAuth(t, 2*time.Second, 1, frSecret, fr.Addr)
		_, err := a.Authenticate(ctx, radiusLogin("mallory", "bobpass"), noAsker(t))
		if !errors.Is(err, radius.ErrDenied) {
			t.Fatalf("unknown user: err = %v, want ErrDenied", err)
		}
	})

	t.Run("ChallengeTOTPAccept", func(t *testing.T) {
		a := radiusAuth(t, 2*time.Second, 1, frSecret, fr.Addr)
		code, _ := freshTOTPCode(totpKey)
		r := &recordingAsker{answer: func() string { return code }}
		id, err := a.Authenticate(ctx, radiusLogin("alice", "alicepass"), r.ask)
		if err != nil {
			t.Fatalf("alice with password and current TOTP code: %v", err)
		}
		if id.User != "alice" {
			t.Fatalf("identity user = %q, want alice", id.User)
		}
		ps := r.seen()
		if len(ps) != 1 || ps[0].Text != "Enter your one-time code" || ps[0].Echo {
			t.Fatalf("prompts = %+v, want one non-echoed %q", ps, "Enter your one-time code")
		}
	})

	t.Run("ChallengeWrongTOTP", func(t *testing.T) {
		a := radiusAuth(t, 2*time.Second, 1, frSecret, fr.Addr)
		r := &recordingAsker{answer: func() string { return wrongTOTPCode(totpKey) }}
		_, err := a.Authenticate(ctx, radiusLogin("alice", "alicepass"), r.ask)
		if !errors.Is(err, radius.ErrDenied) {
			t.Fatalf("alice with a wrong code: err = %v, want ErrDenied", err)
		}
		if n := len(r.seen()); n != 1 {
			t.Fatalf("alice was asked %d times, want 1 (the challenge must come before the code is refused)", n)
		}
	})

	t.Run("ChallengeWrongPassword", func(t *testing.T) {
		a := radiusAuth(t, 2*time.Second, 1, frSecret, fr.Addr)
		r := &recordingAsker{answer: func() string { return totpCode(totpKey, totpStep(time.Now())) }}
		_, err := a.Authenticate(ctx, radiusLogin("alice", "alicepasS"), r.ask)
		if !errors.Is(err, radius.ErrDenied) {
			t.Fatalf("alice with a wrong password: err = %v, want ErrDenied", err)
		}
		if n := len(r.seen()); n != 0 {
			t.Fatalf("alice was challenged %d times after a wrong password, want 0", n)
		}
	})

	// The server requires Message-Authenticator on requests (clients.conf):
	// a request without one, or with one made with another secret, is
	// dropped. These controls show that the accepts above prove the client
	// sends a valid Message-Authenticator; the client refuses replies
	// without a valid one, so they also prove FreeRADIUS's replies verify.
	t.Run("MessageAuthenticatorRequired", func(t *testing.T) {
		p := layeh.New(layeh.CodeAccessRequest, []byte(frSecret))
		if err := rfc2865.UserName_SetString(p, "bob"); err != nil {
			t.Fatal(err)
		}
		if err := rfc2865.UserPassword_SetString(p, "bobpass"); err != nil {
			t.Fatal(err)
		}
		if err := rfc2865.NASIdentifier_SetString(p, "sallyport-e2e"); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		resp, err := layeh.Exchange(cctx, p, fr.Addr)
		if err == nil {
			t.Fatalf("FreeRADIUS answered %v to a request without Message-Authenticator; the accepts above prove nothing", resp.Code)
		}
		// Positive control: the same request with a Message-Authenticator
		// (HMAC-MD5 over the packet with the attribute zeroed) is accepted.
		p.Add(rfc2869.MessageAuthenticator_Type, make(layeh.Attribute, 16))
		b, err := p.Encode()
		if err != nil {
			t.Fatal(err)
		}
		mac := hmac.New(md5.New, []byte(frSecret))
		mac.Write(b)
		if err := rfc2869.MessageAuthenticator_Set(p, mac.Sum(nil)); err != nil {
			t.Fatal(err)
		}
		cctx2, cancel2 := context.WithTimeout(ctx, 3*time.Second)
		defer cancel2()
		resp, err = layeh.Exchange(cctx2, p, fr.Addr)
		if err != nil {
			t.Fatalf("control request with Message-Authenticator: %v", err)
		}
		if resp.Code != layeh.CodeAccessAccept {
			t.Fatalf("control request with Message-Authenticator: %v, want Access-Accept", resp.Code)
		}
	})

	t.Run("WrongSecretUnavailable", func(t *testing.T) {
		a := radiusAuth(t, 500*time.Millisecond, 0, "not-"+frSecret, fr.Addr)
		start := time.Now()
		_, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t))
		if !errors.Is(err, radius.ErrUnavailable) {
			t.Fatalf("wrong shared secret: err = %v, want ErrUnavailable (FreeRADIUS must drop the request)", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("wrong shared secret took %v", d)
		}
	})

	t.Run("FailoverClosedPort", func(t *testing.T) {
		a := radiusAuth(t, 2*time.Second, 0, frSecret, closedUDPAddr(t), fr.Addr)
		if _, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t)); err != nil {
			t.Fatalf("bob via failover from a closed port: %v", err)
		}
	})

	t.Run("FailoverSilentServerChallenge", func(t *testing.T) {
		a := radiusAuth(t, 400*time.Millisecond, 1, frSecret, silentUDPAddr(t), fr.Addr)
		code, _ := freshTOTPCode(totpKey)
		r := &recordingAsker{answer: func() string { return code }}
		if _, err := a.Authenticate(ctx, radiusLogin("alice", "alicepass"), r.ask); err != nil {
			t.Fatalf("alice via failover from a silent server: %v", err)
		}
	})

	t.Run("AllServersDeadClosed", func(t *testing.T) {
		a := radiusAuth(t, 500*time.Millisecond, 1, frSecret, closedUDPAddr(t), closedUDPAddr(t))
		start := time.Now()
		_, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t))
		if !errors.Is(err, radius.ErrUnavailable) {
			t.Fatalf("all servers closed: err = %v, want ErrUnavailable", err)
		}
		// 2 servers x 2 transmissions x 500 ms, plus slack.
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("all servers closed: gave up after %v, want within the configured timeouts", d)
		}
	})

	t.Run("AllServersDeadSilent", func(t *testing.T) {
		a := radiusAuth(t, 300*time.Millisecond, 1, frSecret, silentUDPAddr(t), silentUDPAddr(t))
		start := time.Now()
		_, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t))
		d := time.Since(start)
		if !errors.Is(err, radius.ErrUnavailable) {
			t.Fatalf("all servers silent: err = %v, want ErrUnavailable", err)
		}
		// 2 servers x 2 transmissions x 300 ms = 1.2 s.
		if d < time.Second || d > 3*time.Second {
			t.Fatalf("all servers silent: gave up after %v, want about 1.2s", d)
		}
	})
}
