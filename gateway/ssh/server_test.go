package ssh

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/workitem"
)

// fakeTarget is an in-process SSH server standing in for a target host. The
// command "exit N" exits with N; "env" prints the environment it was given;
// anything else is echoed to stdout and, upper-cased, to stderr.
type fakeTarget struct {
	addr    string
	hostKey gossh.Signer
	l       net.Listener
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

// dropAll cuts every connection the target has accepted, as a crash would.
func (ft *fakeTarget) dropAll() {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	for _, c := range ft.conns {
		c.Close()
	}
}

func newFakeTarget(t *testing.T, password string) *fakeTarget {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	hk, _ := gossh.NewSignerFromKey(priv)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ft := &fakeTarget{addr: l.Addr().String(), hostKey: hk, l: l}
	cfg := &gossh.ServerConfig{PasswordCallback: func(m gossh.ConnMetadata, p []byte) (*gossh.Permissions, error) {
		if m.User() == "root" && string(p) == password {
			return nil, nil
		}
		return nil, errors.New("no")
	}}
	cfg.AddHostKey(hk)
	ft.wg.Add(1)
	go func() {
		defer ft.wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			ft.wg.Add(1)
			go func() {
				defer ft.wg.Done()
				ft.serve(nc, cfg)
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); ft.wg.Wait() })
	return ft
}

func (ft *fakeTarget) serve(nc net.Conn, cfg *gossh.ServerConfig) {
	defer nc.Close()
	ft.mu.Lock()
	ft.conns = append(ft.conns, nc)
	ft.mu.Unlock()
	_, chans, reqs, err := gossh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	go gossh.DiscardRequests(reqs)
	for nch := range chans {
		ch, creqs, err := nch.Accept()
		if err != nil {
			return
		}
		go func() {
			var env []string
			for r := range creqs {
				switch r.Type {
				case "env":
					var kv struct{ K, V string }
					_ = gossh.Unmarshal(r.Payload, &kv)
					env = append(env, kv.K+"="+kv.V)
					_ = r.Reply(true, nil)
				case "exec":
					var cmd struct{ C string }
					_ = gossh.Unmarshal(r.Payload, &cmd)
					_ = r.Reply(true, nil)
					code := 0
					switch {
					case strings.HasPrefix(cmd.C, "exit "):
						fmt.Sscan(cmd.C[5:], &code)
					case cmd.C == "env":
						fmt.Fprint(ch, strings.Join(env, ","))
					case cmd.C == "cat":
						var buf bytes.Buffer
						_, _ = buf.ReadFrom(ch)
						_, _ = ch.Write(buf.Bytes())
					default:
						fmt.Fprint(ch, cmd.C)
						fmt.Fprint(ch.Stderr(), strings.ToUpper(cmd.C))
					}
					_ = ch.CloseWrite()
					_, _ = ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, uint32(code)))
					_ = ch.Close()
				default:
					if r.WantReply {
						_ = r.Reply(false, nil)
					}
				}
			}
		}()
	}
}

type fakeAuth struct{ users map[string]string }

func (a fakeAuth) Authenticate(_ context.Context, l Login, _ Asker) (Identity, error) {
	if pw, ok := a.users[l.User]; ok && pw == string(l.Password) {
		return Identity{User: l.User}, nil
	}
	return Identity{}, ErrDenied
}

type fakeCreds struct {
	mu      sync.Mutex
	secrets map[string]workitem.Credential
	allow   map[string][]string // secret → users
	pinned  [][]byte
}

func (f *fakeCreds) Checkout(_ context.Context, id Identity, _ netip.AddrPort, secret string) (*workitem.Credential, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.secrets[secret]
	if !ok {
		return nil, ErrDenied
	}
	for _, u := range f.allow[secret] {
		if u == id.User {
			c.Password = bytes.Clone(c.Password)
			return &c, nil
		}
	}
	return nil, ErrDenied
}

func (f *fakeCreds) List(_ context.Context, id Identity, _ netip.AddrPort) ([]string, error) {
	var out []string
	for s, us := range f.allow {
		for _, u := range us {
			if u == id.User {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

func (f *fakeCreds) PinHostKey(_ context.Context, _ Identity, _ netip.AddrPort, secret string, key []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pinned = append(f.pinned, key)
	c := f.secrets[secret]
	c.HostKey, c.PinOnFirstUse = key, false
	f.secrets[secret] = c
	return nil
}

type fixture struct {
	srv    *Server
	addr   string
	target *fakeTarget
	creds  *fakeCreds
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	ft := newFakeTarget(t, "target-pw")
	host, portS, _ := net.SplitHostPort(ft.addr)
	var port int
	fmt.Sscan(portS, &port)
	creds := &fakeCreds{
		secrets: map[string]workitem.Credential{
			"web01":  {Secret: "web01", Host: host, Port: port, Username: "root", Password: []byte("target-pw"), HostKey: ft.hostKey.PublicKey().Marshal()},
			"wrongk": {Secret: "wrongk", Host: host, Port: port, Username: "root", Password: []byte("target-pw"), HostKey: otherKey(t)},
			"tofu":   {Secret: "tofu", Host: host, Port: port, Username: "root", Password: []byte("target-pw"), PinOnFirstUse: true},
		},
		allow: map[string][]string{"web01": {"alice"}, "wrongk": {"alice"}, "tofu": {"alice"}},
	}
	hk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := gossh.NewSignerFromSigner(hk)
	cfg := Config{Log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})), HostSigners: []gossh.Signer{signer}, Auth: fakeAuth{users: map[string]string{"alice": "alice-pw", "bob": "bob-pw"}}, Credentials: creds}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return &fixture{srv: srv, addr: l.Addr().String(), target: ft, creds: creds}
}

func otherKey(t *testing.T) []byte {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := gossh.NewSignerFromKey(priv)
	return s.PublicKey().Marshal()
}

// dial logs in with keyboard-interactive, answering prompts from answers in order.
func (f *fixture) dial(login string, answers ...string) (*gossh.Client, error) {
	return f.dialFrom("127.0.0.1", login, answers...)
}

// mustDial is dial for logins that must succeed; the connection is closed
// when the test ends.
func (f *fixture) mustDial(t *testing.T, login string, answers ...string) *gossh.Client {
	t.Helper()
	c, err := f.dial(login, answers...)
	if err != nil {
		t.Fatalf("login %s: %v", login, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialFrom is dial from a chosen loopback source address.
func (f *fixture) dialFrom(src, login string, answers ...string) (*gossh.Client, error) {
	cfg := &gossh.ClientConfig{
		User:            login,
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), // #nosec G106 -- test client against the test's own server
		Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
			out := make([]string, len(qs))
			for i := range qs {
				if len(answers) == 0 {
					return nil, errors.New("out of answers")
				}
				out[i], answers = answers[0], answers[1:]
			}
			return out, nil
		})},
		Timeout: 10 * time.Second,
	}
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	nc, err := d.Dial("tcp", f.addr)
	if err != nil {
		return nil, err
	}
	sc, chans, reqs, err := gossh.NewClientConn(nc, f.addr, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return gossh.NewClient(sc, chans, reqs), nil
}

// waitClosed fails the test with msg unless c's connection ends soon.
func waitClosed(t *testing.T, c *gossh.Client, msg string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal(msg)
	}
}

func run(t *testing.T, c *gossh.Client, cmd string) (stdout, stderr string, code int) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var o, e bytes.Buffer
	s.Stdout, s.Stderr = &o, &e
	err = s.Run(cmd)
	var ee *gossh.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitStatus()
	case err != nil:
		t.Fatalf("run %q: %v", cmd, err)
	}
	return o.String(), e.String(), code
}

func TestExecThroughProxy(t *testing.T) {
	f := newFixture(t, nil)
	c := f.mustDial(t, "alice@web01", "alice-pw")
	if o, e, code := run(t, c, "hello"); o != "hello" || e != "HELLO" || code != 0 {
		t.Fatalf("got %q %q %d", o, e, code)
	}
	if _, _, code := run(t, c, "exit 7"); code != 7 {
		t.Fatalf("exit code %d, want 7", code)
	}
}

func TestStdinRoundTrip(t *testing.T) {
	f := newFixture(t, nil)
	c := f.mustDial(t, "alice@web01", "alice-pw")
	s, _ := c.NewSession()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	s.Stdin = bytes.NewReader(payload)
	var out bytes.Buffer
	s.Stdout = &out
	if err := s.Run("cat"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), payload) {
		t.Fatalf("got %d bytes back, want %d identical", out.Len(), len(payload))
	}
}

func TestEnvAllowList(t *testing.T) {
	f := newFixture(t, nil)
	c := f.mustDial(t, "alice@web01", "alice-pw")
	s, _ := c.NewSession()
	if err := s.Setenv("LANG", "C.UTF-8"); err != nil {
		t.Fatalf("LANG refused: %v", err)
	}
	if err := s.Setenv("LD_PRELOAD", "/tmp/x.so"); err == nil {
		t.Fatal("LD_PRELOAD was accepted")
	}
	out, err := s.Output("env")
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "LANG=C.UTF-8" {
		t.Fatalf("target saw env %q", out)
	}
}

func TestRefusalsLookAlike(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct{ login, pw string }{
		{"alice@web01", "wrong"},
		{"alice@nosuch", "alice-pw"},
		{"bob@web01", "bob-pw"}, // not allowed
		{"mallory@web01", "x"},  // unknown user
		{"@web01", "x"},         // malformed
	} {
		_, err := f.dial(tc.login, tc.pw)
		if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
			t.Errorf("%s: got %v, want an authentication failure", tc.login, err)
		}
	}
}

func TestMenu(t *testing.T) {
	f := newFixture(t, nil)
	// alice may use three secrets; sorted order is not guaranteed by the fake,
	// so pick by reading the menu.
	var chosen string
	cfg := &gossh.ClientConfig{
		User:            "alice",
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), // #nosec G106 -- test
		Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(_, instr string, qs []string, _ []bool) ([]string, error) {
			if len(qs) == 1 && strings.HasPrefix(qs[0], "Password") {
				return []string{"alice-pw"}, nil
			}
			for _, line := range strings.Split(instr, "\r\n") {
				if strings.HasSuffix(line, " web01") {
					chosen = strings.TrimSpace(strings.Split(line, ")")[0])
				}
			}
			return []string{chosen}, nil
		})},
	}
	c, err := gossh.Dial("tcp", f.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if chosen == "" {
		t.Fatal("menu did not list web01")
	}
	if o, _, _ := run(t, c, "menu-ok"); o != "menu-ok" {
		t.Fatalf("got %q", o)
	}
}

func TestHostKeyMismatch(t *testing.T) {
	f := newFixture(t, nil)
	c := f.mustDial(t, "alice@wrongk", "alice-pw")
	_, e, code := run(t, c, "hello")
	if code != 1 || !strings.Contains(e, "does not match the pinned key") {
		t.Fatalf("got stderr %q code %d", e, code)
	}
}

func TestPinOnFirstUse(t *testing.T) {
	f := newFixture(t, nil)
	for i := 0; i < 2; i++ {
		c, err := f.dial("alice@tofu", "alice-pw")
		if err != nil {
			t.Fatal(err)
		}
		if o, _, _ := run(t, c, "x"); o != "x" {
			t.Fatalf("login %d: got %q", i, o)
		}
		c.Close()
	}
	if len(f.creds.pinned) != 1 || !bytes.Equal(f.creds.pinned[0], f.target.hostKey.PublicKey().Marshal()) {
		t.Fatalf("pinned %d keys, want the target's once", len(f.creds.pinned))
	}
}

func TestForwardingRefused(t *testing.T) {
	f := newFixture(t, nil)
	c := f.mustDial(t, "alice@web01", "alice-pw")
	if _, err := c.Dial("tcp", f.target.addr); err == nil {
		t.Fatal("direct-tcpip was allowed")
	}
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Fatal("tcpip-forward was allowed")
	}
	s, _ := c.NewSession()
	defer s.Close()
	if ok, _ := s.SendRequest("auth-agent-req@openssh.com", true, nil); ok {
		t.Fatal("agent forwarding was allowed")
	}
	if ok, _ := s.SendRequest("subsystem", true, gossh.Marshal(struct{ S string }{"nfs"})); ok {
		t.Fatal("a subsystem other than sftp was allowed")
	}
}

func TestRateLimit(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Logins.PairBurst = 2; c.Logins.PairEvery = time.Hour })
	for i := 0; i < 2; i++ {
		if _, err := f.dial("alice@web01", "wrong"); err == nil {
			t.Fatal("wrong password accepted")
		}
	}
	if _, err := f.dial("alice@web01", "alice-pw"); err == nil {
		t.Fatal("right password accepted while rate limited")
	}
	// The limit is alice's at this source, not the source's.
	if _, err := f.dial("bob@nosuch", "bob-pw"); err == nil {
		t.Fatal("bob logged in to a secret he may not use")
	}
	if _, err := f.dialFrom("127.0.0.2", "alice@web01", "alice-pw"); err != nil {
		t.Fatalf("alice from another source: %v", err)
	}
}

func TestRateLimitPerUserIgnoresSecret(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Logins.PairBurst = 2
		c.Logins.PairEvery = time.Hour
		c.Logins.UserBurst = 3
		c.Logins.UserEvery = time.Hour
	})
	// Varying the secret part must not reset the pair's budget.
	for _, login := range []string{"alice@a", "alice@b"} {
		if _, err := f.dialFrom("127.0.0.10", login, "wrong"); err == nil {
			t.Fatal("wrong password accepted")
		}
	}
	if _, err := f.dialFrom("127.0.0.10", "alice@web01", "alice-pw"); err == nil {
		t.Fatal("right password accepted while the pair is rate limited")
	}
	// alice logs in from her usual place; then strangers guess at her name.
	if _, err := f.dialFrom("127.0.0.30", "alice@web01", "alice-pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.dialFrom("127.0.0.11", "alice@web01", "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	if _, err := f.dialFrom("127.0.0.20", "alice@web01", "alice-pw"); err == nil {
		t.Fatal("right password accepted from a new source while the user's budget is spent")
	}
	if _, err := f.dialFrom("127.0.0.30", "alice@web01", "alice-pw"); err != nil {
		t.Fatalf("alice locked out of her known source by strangers' guesses: %v", err)
	}
}

func TestSessionOutlivesHandshakeTimeout(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.HandshakeTimeout = 300 * time.Millisecond })
	c := f.mustDial(t, "alice@web01", "alice-pw")
	time.Sleep(900 * time.Millisecond)
	if o, _, _ := run(t, c, "later"); o != "later" {
		t.Fatalf("got %q", o)
	}
}

func TestMaxSessionTime(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxSessionTime = 300 * time.Millisecond })
	c, err := f.dial("alice@web01", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	// Keep it busy: only the maximum session time may end it.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if s, err := c.NewSession(); err == nil {
					_ = s.Run("busy")
					s.Close()
				}
			}
		}
	}()
	waitClosed(t, c, "connection outlived its maximum session time")
}

func TestTargetGoneClosesClient(t *testing.T) {
	f := newFixture(t, nil)
	c := f.mustDial(t, "alice@web01", "alice-pw")
	if o, _, _ := run(t, c, "up"); o != "up" {
		t.Fatalf("got %q", o)
	}
	f.target.dropAll()
	waitClosed(t, c, "client connection outlived its target")
}

type downAuth struct{}

func (downAuth) Authenticate(context.Context, Login, Asker) (Identity, error) {
	return Identity{}, fmt.Errorf("%w: radius timed out", ErrUnavailable)
}

func TestServiceUnavailableIsToldAndNotCounted(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Auth = downAuth{}
		c.Logins = admit.LoginConfig{PairBurst: 1, SourceBurst: 1, UserBurst: 1, PairEvery: time.Hour, SourceEvery: time.Hour, UserEvery: time.Hour}
	})
	for i := 0; i < 3; i++ { // more than the burst: outages must not lock anyone out
		var told string
		cfg := &gossh.ClientConfig{
			User:            "alice@web01",
			HostKeyCallback: gossh.InsecureIgnoreHostKey(), // #nosec G106 -- test
			Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(_, instr string, qs []string, _ []bool) ([]string, error) {
				if len(qs) == 0 {
					told = instr
				}
				return make([]string, len(qs)), nil
			})},
		}
		if _, err := gossh.Dial("tcp", f.addr, cfg); err == nil {
			t.Fatal("logged in while the authentication service is down")
		}
		if !strings.Contains(told, "unavailable") {
			t.Fatalf("attempt %d: user was told %q, want the unavailable message", i, told)
		}
	}
	if d := f.srv.logins.Check("alice", netip.MustParsePrefix("127.0.0.1/32")); !d.Allow || d.Delay != 0 {
		t.Fatalf("an outage counted against the login budget: %+v", d)
	}
}

func TestIdleTimeout(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.IdleTimeout = 200 * time.Millisecond })
	c, err := f.dial("alice@web01", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c, "idle connection was not closed")
}

func TestShutdownDrains(t *testing.T) {
	f := newFixture(t, nil)
	c, err := f.dial("alice@web01", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	// A session in progress survives a graceful shutdown until it ends.
	if o, _, _ := run(t, c, "before"); o != "before" {
		t.Fatalf("got %q", o)
	}
	shut := make(chan error, 1)
	go func() { shut <- f.srv.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	if o, _, _ := run(t, c, "still-here"); o != "still-here" {
		t.Fatalf("got %q", o)
	}
	if _, err := f.dial("alice@web01", "alice-pw"); err == nil {
		t.Fatal("new connection accepted during shutdown")
	}
	c.Close()
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	// A deadline that passes closes what is left.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
