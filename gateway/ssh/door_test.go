package ssh

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// recorder captures audit events and log output.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
	log    bytes.Buffer
}

func (r *recorder) Record(_ context.Context, e audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.Write(p)
}

func (r *recorder) kinds(kind string) []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []audit.Event
	for _, e := range r.events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func (r *recorder) logText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}

func (r *recorder) attach(c *Config) {
	c.Audit = r
	c.Log = slog.New(slog.NewTextHandler(r, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestLongLoginNeitherKeptNorLogged: login names over names.MaxLoginLen are
// refused before anything about them is stored or logged; the refusals are
// tallied per source, and they count against the source.
func TestLongLoginNeitherKeptNorLogged(t *testing.T) {
	rec := &recorder{}
	f := newFixture(t, rec.attach)
	long := "alice@" + strings.Repeat("x", 100<<10)
	for range 3 {
		if _, err := f.dial(long, "alice-pw"); err == nil {
			t.Fatal("a 100 KB login name was accepted")
		}
	}
	f.srv.unchecked.Flush()
	if strings.Contains(rec.logText(), strings.Repeat("x", 64)) {
		t.Fatal("the over-long name reached the log")
	}
	for _, e := range rec.events {
		if len(e.User)+len(e.Secret) > names.MaxLoginLen {
			t.Fatalf("the over-long name reached the audit sink (%s)", e.Kind)
		}
	}
	if !strings.Contains(rec.logText(), "login_too_long=3") {
		t.Fatalf("no tally of the refusals:\n%s", rec.logText())
	}
}

// TestKeyExchangeDeadline: a client that stalls before finishing the key
// exchange is dropped at the short deadline; one that finished it has the
// long login deadline.
func TestKeyExchangeDeadline(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.KeyExchangeTimeout = 300 * time.Millisecond; c.HandshakeTimeout = time.Minute })
	for _, banner := range []string{"", "SSH-2.0-stall\r\n"} {
		nc, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(nc, banner)
		start := time.Now()
		_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = io.Copy(io.Discard, nc)
		nc.Close()
		if err != nil {
			t.Fatalf("banner %q: connection not closed by the gateway: %v", banner, err)
		}
		t.Logf("banner %q: closed after %v", banner, time.Since(start).Round(time.Millisecond))
	}
	// Past the key exchange, a person may take longer than it.
	var waited atomic.Bool
	cfg := &gossh.ClientConfig{
		User:            "alice@web01",
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), // #nosec G106 -- test
		Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
			if len(qs) == 0 {
				return nil, nil
			}
			time.Sleep(time.Second) // slower than the key-exchange deadline
			waited.Store(true)
			return []string{"alice-pw"}, nil
		})},
	}
	c, err := gossh.Dial("tcp", f.addr, cfg)
	if err != nil {
		t.Fatalf("a slow typist was cut off by the key-exchange deadline: %v", err)
	}
	c.Close()
	if !waited.Load() {
		t.Fatal("the prompt was never answered")
	}
}

// TestOneSourceCannotStarveAnother holds every pending slot a source may
// have, and more, idle; a login from another address goes through.
func TestOneSourceCannotStarveAnother(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Admission.MaxPending = 8
		c.Admission.MaxPerSource = 4
		c.Admission.Rate = 1000
		c.Admission.Burst = 1000
	})
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		for range 20 {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			c, err := d.Dial("tcp", f.addr)
			if err != nil {
				continue // refused at once: what a flood should get
			}
			idle = append(idle, c)
		}
	}
	for i := range 3 {
		c, err := f.dial("alice@web01", "alice-pw")
		if err != nil {
			t.Fatalf("login %d from another address while two sources flood: %v", i, err)
		}
		c.Close()
	}
}

type flipGrants struct {
	mu      sync.Mutex
	revoked map[string]bool // secret → revoked
	calls   atomic.Int32
}

func (g *flipGrants) StillAllowed(_ context.Context, grants []Grant) ([]bool, error) {
	g.calls.Add(1)
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]bool, len(grants))
	for i, gr := range grants {
		out[i] = !g.revoked[gr.Secret]
	}
	return out, nil
}

func (g *flipGrants) revoke(secret string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.revoked == nil {
		g.revoked = map[string]bool{}
	}
	g.revoked[secret] = true
}

// TestRevocationEndsLiveSession: once the grant no longer holds, the live
// session gets a message on stderr and ends, and an audit event says why.
func TestRevocationEndsLiveSession(t *testing.T) {
	rec := &recorder{}
	grants := &flipGrants{}
	f := newFixture(t, func(c *Config) { rec.attach(c); c.Grants = grants; c.RecheckEvery = 50 * time.Millisecond })
	keep := f.mustDial(t, "alice@tofu", "alice-pw")
	c := f.mustDial(t, "alice@web01", "alice-pw")
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	s.Stderr = &stderr
	stdin, _ := s.StdinPipe()
	defer stdin.Close()
	if err := s.Start("cat"); err != nil {
		t.Fatal(err)
	}
	for grants.calls.Load() < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	grants.revoke("web01")
	waitClosed(t, c, "a session whose grant was revoked is still open")
	_ = s.Wait()
	if !strings.Contains(stderr.String(), "access to web01 has been revoked") {
		t.Fatalf("the user was not told why: stderr %q", stderr.String())
	}
	if evs := rec.kinds("session_revoked"); len(evs) != 1 || evs[0].Secret != "web01" || evs[0].User != "alice" {
		t.Fatalf("session_revoked events: %+v", evs)
	}
	// The other session, whose grant holds, lives on.
	if o, _, _ := run(t, keep, "still"); o != "still" {
		t.Fatalf("the unrevoked session: %q", o)
	}
}

// TestHostKeyTypeChanged: a target that now shows a key of another type
// than the pinned one is a mismatch, with the clear message and an audit
// event, not a failed login.
func TestHostKeyTypeChanged(t *testing.T) {
	rec := &recorder{}
	f := newFixture(t, rec.attach)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pinned, _ := gossh.NewPublicKey(&k.PublicKey)
	web := f.creds.secrets["web01"]
	web.Secret, web.HostKey = "typechg", pinned.Marshal() // the target's key is ed25519
	f.creds.secrets["typechg"] = web
	f.creds.allow["typechg"] = []string{"alice"}
	c := f.mustDial(t, "alice@typechg", "alice-pw")
	_, e, code := run(t, c, "hello")
	if code != 1 || !strings.Contains(e, "does not match the pinned key") {
		t.Fatalf("got stderr %q code %d", e, code)
	}
	if evs := rec.kinds("hostkey_mismatch"); len(evs) != 1 {
		t.Fatalf("hostkey_mismatch events: %d", len(evs))
	}
}

// TestSilentTargetTimesOut: a target that accepts TCP and says nothing, or
// only its banner, is "did not answer in time", every time.
func TestSilentTargetTimesOut(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.DialTimeout = 200 * time.Millisecond })
	for _, banner := range []string{"", "SSH-2.0-OpenSSH_9.2\r\n"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var held []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				nc, err := l.Accept()
				if err != nil {
					return
				}
				io.WriteString(nc, banner)
				mu.Lock()
				held = append(held, nc)
				mu.Unlock()
			}
		}()
		ap := netip.MustParseAddrPort(l.Addr().String())
		name := fmt.Sprintf("silent%d", len(banner))
		f.creds.secrets[name] = workitem.Credential{Secret: name, Host: "127.0.0.1", Port: int(ap.Port()), Username: "root", Password: []byte("pw"), HostKey: otherKey(t)}
		f.creds.allow[name] = []string{"alice"}
		for i := range 5 {
			c := f.mustDial(t, "alice@"+name, "alice-pw")
			_, e, code := run(t, c, "x")
			if code != 1 || !strings.Contains(e, "did not answer in time") {
				t.Fatalf("banner %q, try %d: got stderr %q code %d", banner, i, e, code)
			}
			c.Close()
		}
		l.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}
}

// TestRefusedRequestsDoNotFloodTheLog: an authenticated user who asks for
// forbidden things thousands of times gets a bounded number of log lines.
func TestRefusedRequestsDoNotFloodTheLog(t *testing.T) {
	rec := &recorder{}
	f := newFixture(t, rec.attach)
	c := f.mustDial(t, "alice@web01", "alice-pw")
	for range 200 {
		if _, err := c.Dial("tcp", "127.0.0.1:9"); err == nil {
			t.Fatal("direct-tcpip allowed")
		}
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(rec.logText(), "session ended") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(rec.logText(), "channel refused"); n != maxWarnings {
		t.Fatalf("%d 'channel refused' lines, want %d", n, maxWarnings)
	}
	if !strings.Contains(rec.logText(), fmt.Sprintf("warnings_not_logged=%d", 200-maxWarnings)) {
		t.Fatalf("the session end does not count the rest:\n%s", rec.logText())
	}
}
