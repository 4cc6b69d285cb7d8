package radius

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
)

// radsecTestClient returns a RadSec client for addrs (secret testSecret)
// that is closed when the test ends. tc nil means the PKI's good client.
func radsecTestClient(t *testing.T, logs *syncBuffer, tc *tls.Config, timeout time.Duration, addrs ...string) *Client {
	t.Helper()
	if tc == nil {
		tc = testPKI(t).clientTLS()
	}
	cfg := Config{
		Timeout:       timeout,
		HoldDown:      time.Minute,
		NASIdentifier: "sallyport-test",
		NASIPAddress:  netip.MustParseAddr("192.0.2.7"),
		TLS:           tc,
	}
	for _, a := range addrs {
		cfg.Servers = append(cfg.Servers, Server{Addr: a, Secret: []byte(testSecret)})
	}
	var logger *slog.Logger
	if logs != nil {
		logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// noSecrets fails the test if the logs contain the shared secret or a
// password the tests use.
func noSecrets(t *testing.T, logs *syncBuffer) {
	t.Helper()
	out := logs.String()
	for _, s := range []string{testSecret, "hunter2", "bobpass", "alicepass"} {
		if strings.Contains(out, s) {
			t.Errorf("logs contain a secret (%q): %s", s, out)
		}
	}
}

// eventually waits (bounded) until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRadSecConfig(t *testing.T) {
	good := func() Config {
		return Config{
			Servers:       []Server{{Addr: "127.0.0.1:2083"}},
			NASIdentifier: "gw",
			TLS:           &tls.Config{},
		}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string // substring of the error; "" means valid
	}{
		{"empty secret means radsec", func(*Config) {}, ""},
		{"explicit secret", func(c *Config) { c.Servers[0].Secret = []byte("x") }, ""},
		{"empty secret without TLS", func(c *Config) { c.TLS = nil }, "empty shared secret"},
		{"skip verify", func(c *Config) { c.TLS.InsecureSkipVerify = true }, "InsecureSkipVerify is not allowed"},
		{"max TLS 1.1", func(c *Config) { c.TLS.MaxVersion = tls.VersionTLS11 }, "TLS 1.2"},
		{"max TLS 1.3", func(c *Config) { c.TLS.MaxVersion = tls.VersionTLS13 }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.want)
			}
			c2, err := New(c, nil)
			if (err == nil) != (tt.want == "") {
				t.Fatalf("New() error = %v, want it to agree with Validate", err)
			}
			if c2 != nil {
				_ = c2.Close()
			}
		})
	}

	t.Run("copies and hardens the TLS configuration", func(t *testing.T) {
		orig := &tls.Config{MinVersion: tls.VersionTLS10}
		c, err := New(Config{
			Servers:       []Server{{Addr: "127.0.0.1:2083"}, {Addr: "radius.example:2083", Secret: []byte("other")}},
			NASIdentifier: "gw",
			TLS:           orig,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if orig.MinVersion != tls.VersionTLS10 || orig.ServerName != "" {
			t.Error("New modified the caller's tls.Config")
		}
		if string(c.cfg.Servers[0].Secret) != DefaultRadSecSecret || string(c.cfg.Servers[1].Secret) != "other" {
			t.Error("empty secret not defaulted to radsec, or explicit secret changed")
		}
		for addr, name := range map[string]string{"127.0.0.1:2083": "127.0.0.1", "radius.example:2083": "radius.example"} {
			p := c.peers[addr]
			if p.tls == orig || p.tls.MinVersion != tls.VersionTLS12 || p.tls.ServerName != name {
				t.Errorf("%s: TLS MinVersion %x ServerName %q, want a copy with %x and %q", addr, p.tls.MinVersion, p.tls.ServerName, tls.VersionTLS12, name)
			}
		}
	})

	t.Run("keeps an explicit ServerName", func(t *testing.T) {
		c, err := New(Config{
			Servers:       []Server{{Addr: "10.0.0.1:2083"}},
			NASIdentifier: "gw",
			TLS:           &tls.Config{ServerName: "radius.example", MinVersion: tls.VersionTLS13},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if p := c.peers["10.0.0.1:2083"]; p.tls.ServerName != "radius.example" || p.tls.MinVersion != tls.VersionTLS13 {
			t.Errorf("ServerName %q MinVersion %x", p.tls.ServerName, p.tls.MinVersion)
		}
	})
}

func TestRadSecAcceptReject(t *testing.T) {
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
		if rfc2865.UserPassword_GetString(req) == "hunter2" {
			return r.reply(req, layeh.CodeAccessAccept, faultNone), false
		}
		return r.reply(req, layeh.CodeAccessReject, faultNone), false
	})
	var logs syncBuffer
	c := radsecTestClient(t, &logs, nil, 5*time.Second, r.addr())
	for _, tc := range []struct {
		pass string
		want layeh.Code
	}{{"hunter2", layeh.CodeAccessAccept}, {"wrong", layeh.CodeAccessReject}, {"hunter2", layeh.CodeAccessAccept}} {
		resp, err := c.Exchange(t.Context(), accessRequest("bob", tc.pass))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Code != tc.want {
			t.Fatalf("password %q: %v, want %v", tc.pass, resp.Code, tc.want)
		}
	}
	if n := r.conns(); n != 1 {
		t.Errorf("%d connections for three sequential requests, want 1 (reused)", n)
	}
	noSecrets(t, &logs)
}

func TestRadSecDefaultSecret(t *testing.T) {
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{secret: DefaultRadSecSecret}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
		return r.reply(req, layeh.CodeAccessAccept, faultNone), false
	})
	c, err := New(Config{Servers: []Server{{Addr: r.addr()}}, NASIdentifier: "gw", TLS: testPKI(t).clientTLS(), Timeout: 5 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2"))
	if err != nil || resp.Code != layeh.CodeAccessAccept {
		t.Fatalf("Exchange() = %v, %v", resp, err)
	}
}

// TestRadSecAuthenticateChallenge: a password and a one-time code over
// RadSec, with the answer sent to the server that issued the State.
func TestRadSecAuthenticateChallenge(t *testing.T) {
	handle := mfaServer(t)
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, n, _ int) ([]byte, bool) {
		resp := handle(req, n)
		return signReply(resp, req.Authenticator, r.secret, faultNone), false
	})
	c := radsecTestClient(t, nil, nil, 5*time.Second, r.addr())
	a, err := NewAuthenticator(c, AuthConfig{GroupsFromClass: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	asked := 0
	ask := func(_ context.Context, _ string, p []Prompt) ([]string, error) {
		asked++
		return []string{"123456"}, nil
	}
	login := Login{User: "alice", Password: []byte("alicepass"), Source: netip.MustParseAddrPort("198.51.100.9:40022")}
	id, err := a.Authenticate(t.Context(), login, ask)
	if err != nil {
		t.Fatal(err)
	}
	if id.User != "alice" || !slices.Equal(id.Groups, []string{"admins"}) || asked != 1 {
		t.Fatalf("Authenticate() = %+v after %d prompts", id, asked)
	}
	login.Password = []byte("nope")
	if _, err := a.Authenticate(t.Context(), login, ask); !errors.Is(err, ErrDenied) {
		t.Fatalf("wrong password: %v, want ErrDenied", err)
	}
}

// TestRadSecChallengeStaysOnServer: the answer to a challenge goes to the
// server that issued it, even when that server then falls silent.
func TestRadSecChallengeStaysOnServer(t *testing.T) {
	t.Parallel()
	var first, second *radsecResponder
	first = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, n, _ int) ([]byte, bool) {
		if n > 0 {
			return nil, false
		}
		resp := req.Response(layeh.CodeAccessChallenge)
		resp.Add(rfc2865.State_Type, layeh.Attribute("s"))
		return signReply(resp, req.Authenticator, first.secret, faultNone), false
	})
	second = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
		return second.reply(req, layeh.CodeAccessAccept, faultNone), false
	})
	c := radsecTestClient(t, nil, nil, time.Second, first.addr(), second.addr())
	a, err := NewAuthenticator(c, AuthConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(context.Context, string, []Prompt) ([]string, error) { return []string{"123456"}, nil }
	_, err = a.Authenticate(t.Context(), Login{User: "alice", Password: []byte("alicepass")}, ask)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Authenticate() error = %v, want ErrUnavailable", err)
	}
	if n := len(first.received()); n != 2 {
		t.Errorf("first server saw %d requests, want 2", n)
	}
	if n := len(second.received()); n != 0 {
		t.Errorf("second server saw %d requests, want 0", n)
	}
}

// TestRadSecMultiplexed: concurrent logins share one connection and each
// gets the reply to its own request, however the server orders them.
func TestRadSecMultiplexed(t *testing.T) {
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{async: true}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // replies out of order
		resp := req.Response(layeh.CodeAccessAccept)
		resp.Add(rfc2865.Class_Type, layeh.Attribute(rfc2865.UserName_GetString(req)))
		return signReply(resp, req.Authenticator, r.secret, faultNone), false
	})
	var logs syncBuffer
	c := radsecTestClient(t, &logs, nil, 10*time.Second, r.addr())
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			user := fmt.Sprintf("user%02d", i)
			resp, err := c.Exchange(t.Context(), accessRequest(user, "hunter2"))
			switch {
			case err != nil:
				errs <- err
			case rfc2865.Class_GetString(resp) != user:
				errs <- fmt.Errorf("%s got the reply meant for %q", user, rfc2865.Class_GetString(resp))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := r.conns(); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
	if got := len(r.received()); got != n {
		t.Errorf("server saw %d requests, want %d", got, n)
	}
	if strings.Contains(logs.String(), "dropped") {
		t.Errorf("replies dropped: %s", logs.String())
	}
}

// TestRadSecIdentifierLimit: at most 256 requests are outstanding on a
// connection; one more waits for a free identifier, or gives up with its
// ctx.
func TestRadSecIdentifierLimit(t *testing.T) {
	gate := make(chan struct{})
	var outstanding, maxOutstanding atomic.Int64
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{async: true}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
		o := outstanding.Add(1)
		for {
			m := maxOutstanding.Load()
			if o <= m || maxOutstanding.CompareAndSwap(m, o) {
				break
			}
		}
		<-gate
		outstanding.Add(-1)
		return r.reply(req, layeh.CodeAccessAccept, faultNone), false
	})
	c := radsecTestClient(t, nil, nil, time.Minute, r.addr())
	const n = 256 + 1
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); err != nil {
				errs <- err
			}
		})
	}
	eventually(t, "256 requests at the server", func() bool { return len(r.received()) >= 256 })
	// Every identifier is taken: another request cannot be sent.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	_, err := c.Exchange(ctx, accessRequest("bob", "hunter2"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("request beyond 256: %v, want context.DeadlineExceeded", err)
	}
	if got := len(r.received()); got != 256 {
		t.Errorf("server saw %d requests while 256 were unanswered, want 256", got)
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(r.received()); got != n {
		t.Errorf("server saw %d requests, want %d", got, n)
	}
	if m := maxOutstanding.Load(); m > 256 {
		t.Errorf("%d requests outstanding at once, want at most 256", m)
	}
	if got := r.conns(); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
}

// TestRadSecAbandonedIdentifiers: requests that got no reply keep their
// identifiers; when all 256 are held that way the connection is replaced.
func TestRadSecAbandonedIdentifiers(t *testing.T) {
	var answering atomic.Bool
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
		if !answering.Load() {
			return nil, false
		}
		return r.reply(req, layeh.CodeAccessAccept, faultNone), false
	})
	var logs syncBuffer
	c := radsecTestClient(t, &logs, nil, time.Minute, r.addr())
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 256 {
		wg.Go(func() {
			if _, err := c.Exchange(ctx, accessRequest("bob", "hunter2")); !errors.Is(err, context.Canceled) {
				t.Errorf("cancelled request: %v", err)
			}
		})
	}
	eventually(t, "256 requests at the server", func() bool { return len(r.received()) >= 256 })
	cancel()
	wg.Wait()
	answering.Store(true)
	resp, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2"))
	if err != nil || resp.Code != layeh.CodeAccessAccept {
		t.Fatalf("Exchange() = %v, %v", resp, err)
	}
	if got := r.conns(); got != 2 {
		t.Errorf("%d connections, want 2 (the jammed one replaced)", got)
	}
	if !strings.Contains(logs.String(), "identifiers are held by requests that got no reply") {
		t.Errorf("replacement not logged: %s", logs.String())
	}
}

func TestRadSecUntrustedServer(t *testing.T) {
	t.Parallel()
	p := testPKI(t)
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
		return r.reply(req, layeh.CodeAccessAccept, faultNone), false
	})
	tests := []struct {
		name string
		tls  *tls.Config
		addr string
	}{
		{"unknown CA", &tls.Config{RootCAs: p.otherCA.pool, Certificates: []tls.Certificate{p.client}}, r.addr()},
		{"name mismatch", &tls.Config{RootCAs: p.ca.pool, Certificates: []tls.Certificate{p.client}, ServerName: "radius.example"}, r.addr()},
		{"system roots", &tls.Config{Certificates: []tls.Certificate{p.client}}, r.addr()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncBuffer
			c := radsecTestClient(t, &logs, tt.tls, 5*time.Second, tt.addr)
			resp, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2"))
			if !errors.Is(err, ErrUnavailable) || resp != nil {
				t.Fatalf("Exchange() = %v, %v; want ErrUnavailable", resp, err)
			}
			if !strings.Contains(err.Error(), "certificate could not be verified") || !strings.Contains(err.Error(), tt.addr) {
				t.Errorf("error %q does not say the certificate of %s could not be verified", err, tt.addr)
			}
			out := logs.String()
			if !strings.Contains(out, "certificate could not be verified") || !strings.Contains(out, tt.addr) {
				t.Errorf("log does not name the certificate problem and the server: %s", out)
			}
			noSecrets(t, &logs)
		})
	}
	if n := len(r.received()); n != 0 {
		t.Errorf("an untrusted server received %d requests", n)
	}
	t.Run("localhost name", func(t *testing.T) {
		_, port, _ := strings.Cut(r.addr(), ":")
		c := radsecTestClient(t, nil, nil, 5*time.Second, "localhost:"+port)
		if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); err != nil {
			t.Fatalf("server by its DNS name: %v", err)
		}
	})
}

// TestRadSecMinimumVersion: the client never speaks below TLS 1.2, whatever
// its configuration says.
func TestRadSecMinimumVersion(t *testing.T) {
	t.Parallel()
	r := newRadSecResponder(t, rsOptions{tls: func(c *tls.Config) {
		c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	}}, nil)
	tc := testPKI(t).clientTLS()
	tc.MinVersion = tls.VersionTLS10
	c := radsecTestClient(t, nil, tc, 5*time.Second, r.addr())
	if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Exchange() error = %v, want ErrUnavailable", err)
	}
}

// TestRadSecClientCertificateRefused: a server that refuses the client's
// certificate (none, or one from a CA it does not trust) makes the server
// unavailable; with TLS 1.3 that shows only as the connection closing.
func TestRadSecClientCertificateRefused(t *testing.T) {
	t.Parallel()
	p := testPKI(t)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for name, certs := range map[string][]tls.Certificate{"none": nil, "other CA": {p.otherClient}} {
			t.Run(fmt.Sprintf("%s/%s", tls.VersionName(v), name), func(t *testing.T) {
				t.Parallel()
				var r *radsecResponder
				r = newRadSecResponder(t, rsOptions{tls: func(c *tls.Config) { c.MaxVersion = v }}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
					return r.reply(req, layeh.CodeAccessAccept, faultNone), false
				})
				var logs syncBuffer
				c := radsecTestClient(t, &logs, &tls.Config{RootCAs: p.ca.pool, Certificates: certs}, 5*time.Second, r.addr())
				if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); !errors.Is(err, ErrUnavailable) {
					t.Fatalf("Exchange() error = %v, want ErrUnavailable", err)
				}
				if n := len(r.received()); n != 0 {
					t.Errorf("server received %d requests from a refused client", n)
				}
				if out := logs.String(); !strings.Contains(out, "client certificate") || !strings.Contains(out, r.addr()) {
					t.Errorf("log does not suggest a refused client certificate at %s: %s", r.addr(), out)
				}
			})
		}
	}
}

// TestRadSecBadReplies: replies that fail a check are dropped and logged,
// and frames that break the stream close the connection; neither ever
// becomes an answer.
func TestRadSecBadReplies(t *testing.T) {
	t.Parallel()
	frame := func(length int, total int) []byte {
		b := make([]byte, total)
		b[0] = byte(layeh.CodeAccessAccept)
		binary.BigEndian.PutUint16(b[2:], uint16(length)) // #nosec G115 -- test lengths fit
		return b
	}
	tests := []struct {
		name    string
		out     func(r *radsecResponder, req *layeh.Packet) (out []byte, closeConn bool)
		wantLog string
	}{
		{"length below 20", func(*radsecResponder, *layeh.Packet) ([]byte, bool) { return frame(19, 40), false }, "frame length 19 outside 20..4096"},
		{"length zero", func(*radsecResponder, *layeh.Packet) ([]byte, bool) { return frame(0, 20), false }, "frame length 0 outside"},
		{"length above 4096", func(*radsecResponder, *layeh.Packet) ([]byte, bool) { return frame(4097, 4200), false }, "frame length 4097 outside"},
		{"length 65535", func(*radsecResponder, *layeh.Packet) ([]byte, bool) { return frame(65535, 100), false }, "frame length 65535 outside"},
		{"truncated then closed", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			b := r.reply(req, layeh.CodeAccessAccept, faultNone)
			return b[:len(b)-5], true
		}, "ended it inside a frame"},
		{"header only then closed", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			return r.reply(req, layeh.CodeAccessAccept, faultNone)[:3], true
		}, "ended it inside a frame"},
		{"truncated then stalled", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			b := r.reply(req, layeh.CodeAccessAccept, faultNone)
			return b[:len(b)-5], false
		}, "frame not completed in time"},
		{"missing Message-Authenticator", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			return r.reply(req, layeh.CodeAccessAccept, faultNoMsgAuth), false
		}, errNoMsgAuth.Error()},
		{"forged Message-Authenticator", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			return r.reply(req, layeh.CodeAccessAccept, faultBadMsgAuth), false
		}, errBadMsgAuth.Error()},
		{"Message-Authenticator over response authenticator", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			return r.reply(req, layeh.CodeAccessAccept, faultMsgAuthOldStyle), false
		}, "reply dropped"},
		{"wrong Response Authenticator", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			return r.reply(req, layeh.CodeAccessReject, faultBadRespAuth), false
		}, errRespAuth.Error()},
		{"unknown identifier", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			return r.reply(req, layeh.CodeAccessAccept, faultBadID), false
		}, "reply identifier matches no outstanding request"},
		{"request code", func(r *radsecResponder, req *layeh.Packet) ([]byte, bool) {
			return r.reply(req, layeh.CodeAccessRequest, faultNone), false
		}, errCode.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var r *radsecResponder
			r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) { return tt.out(r, req) })
			var logs syncBuffer
			c := radsecTestClient(t, &logs, nil, time.Second, r.addr())
			resp, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2"))
			if !errors.Is(err, ErrUnavailable) || resp != nil {
				t.Fatalf("Exchange() = %v, %v; want ErrUnavailable", resp, err)
			}
			eventually(t, "the log line", func() bool { return strings.Contains(logs.String(), tt.wantLog) })
			if !strings.Contains(logs.String(), "server="+r.addr()) {
				t.Errorf("log does not name the server: %s", logs.String())
			}
			noSecrets(t, &logs)
		})
	}

	// A bad reply does not end the wait: the genuine one after it counts.
	for _, f := range []fault{faultBadMsgAuth, faultNoMsgAuth, faultBadRespAuth, faultBadID} {
		t.Run(fmt.Sprintf("bad reply %d then genuine", f), func(t *testing.T) {
			t.Parallel()
			var r *radsecResponder
			r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
				forged := r.reply(req, layeh.CodeAccessAccept, f)
				return append(forged, r.reply(req, layeh.CodeAccessReject, faultNone)...), false
			})
			var logs syncBuffer
			c := radsecTestClient(t, &logs, nil, 5*time.Second, r.addr())
			resp, err := c.Exchange(t.Context(), accessRequest("bob", "wrong"))
			if err != nil || resp.Code != layeh.CodeAccessReject {
				t.Fatalf("Exchange() = %v, %v; want the genuine Access-Reject", resp, err)
			}
			if !strings.Contains(logs.String(), "reply dropped") {
				t.Errorf("bad reply not logged: %s", logs.String())
			}
		})
	}
}

// TestRadSecServerClosesConnection: servers close idle connections; a
// login after that, or one whose request crossed the close, still succeeds
// on a new connection. A connection closed before any reply is not retried.
func TestRadSecServerClosesConnection(t *testing.T) {
	t.Parallel()
	t.Run("after each reply", func(t *testing.T) {
		t.Parallel()
		var r *radsecResponder
		r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
			return r.reply(req, layeh.CodeAccessAccept, faultNone), true
		})
		c := radsecTestClient(t, nil, nil, 5*time.Second, r.addr())
		for i := range 3 {
			if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); err != nil {
				t.Fatalf("login %d: %v", i, err)
			}
		}
		if got := r.conns(); got != 3 {
			t.Errorf("%d connections, want 3", got)
		}
	})

	t.Run("while a request is on its way", func(t *testing.T) {
		t.Parallel()
		var r *radsecResponder
		r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, n, conn int) ([]byte, bool) {
			if conn == 0 && n == 1 {
				return nil, true // the second request meets the close
			}
			return r.reply(req, layeh.CodeAccessAccept, faultNone), false
		})
		var logs syncBuffer
		c := radsecTestClient(t, &logs, nil, 5*time.Second, r.addr())
		for i := range 2 {
			if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); err != nil {
				t.Fatalf("login %d: %v", i, err)
			}
		}
		if got := r.conns(); got != 2 {
			t.Errorf("%d connections, want 2", got)
		}
		if got := len(r.received()); got != 3 {
			t.Errorf("server saw %d requests, want 3", got)
		}
		if !strings.Contains(logs.String(), "reconnecting") {
			t.Errorf("reconnection not logged: %s", logs.String())
		}
	})

	t.Run("new connection closed without reply", func(t *testing.T) {
		t.Parallel()
		r := newRadSecResponder(t, rsOptions{}, func(*layeh.Packet, int, int) ([]byte, bool) { return nil, true })
		var good *radsecResponder
		good = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
			return good.reply(req, layeh.CodeAccessAccept, faultNone), false
		})
		c := radsecTestClient(t, nil, nil, 5*time.Second, r.addr())
		if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Exchange() error = %v, want ErrUnavailable", err)
		}
		if got := r.conns(); got != 1 {
			t.Errorf("%d connections, want 1 (no retry on a connection dialled for the request)", got)
		}
		c2 := radsecTestClient(t, nil, nil, 5*time.Second, r.addr(), good.addr())
		if _, err := c2.Exchange(t.Context(), accessRequest("bob", "hunter2")); err != nil {
			t.Fatalf("failover: %v", err)
		}
	})
}

func TestRadSecFailover(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		first func(t *testing.T) (addr string, seen func() int)
	}{
		{"closed port", func(t *testing.T) (string, func() int) { return closedTCPAddr(t), func() int { return -1 } }},
		{"no TLS handshake", func(t *testing.T) (string, func() int) {
			s := newSilentTCP(t)
			return s.ln.Addr().String(), s.accepted
		}},
		{"silent RadSec server", func(t *testing.T) (string, func() int) {
			s := newRadSecResponder(t, rsOptions{}, func(*layeh.Packet, int, int) ([]byte, bool) { return nil, false })
			return s.addr(), func() int { return len(s.received()) }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			first, seen := tt.first(t)
			var good *radsecResponder
			good = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
				return good.reply(req, layeh.CodeAccessAccept, faultNone), false
			})
			var logs syncBuffer
			c := radsecTestClient(t, &logs, nil, time.Second, first, good.addr())
			for call := 1; call <= 2; call++ {
				resp, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2"))
				if err != nil || resp.Code != layeh.CodeAccessAccept {
					t.Fatalf("call %d: Exchange() = %v, %v", call, resp, err)
				}
			}
			if n := len(good.received()); n != 2 {
				t.Errorf("second server saw %d requests, want 2", n)
			}
			// Hold-down: the dead first server is skipped on the second call.
			if n := seen(); n >= 0 && n != 1 {
				t.Errorf("dead server was tried %d times, want 1 (first call only)", n)
			}
			if !strings.Contains(logs.String(), "holding it down") {
				t.Errorf("failover not logged: %s", logs.String())
			}
		})
	}
}

// TestRadSecContext: ctx ending stops the wait at once, does not hold the
// server down and does not spoil the connection for later requests.
func TestRadSecContext(t *testing.T) {
	var answering atomic.Bool
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
		if !answering.Load() {
			return nil, false
		}
		return r.reply(req, layeh.CodeAccessAccept, faultNone), false
	})
	c := radsecTestClient(t, nil, nil, time.Hour, r.addr())
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"already cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			if _, err := c.Exchange(ctx, accessRequest("bob", "x")); !errors.Is(err, tt.want) {
				t.Fatalf("Exchange() error = %v, want %v", err, tt.want)
			}
		})
	}
	if len(c.order()) != 1 || !c.deadTill[r.addr()].IsZero() {
		t.Error("server held down after cancelled calls")
	}
	answering.Store(true)
	if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); err != nil {
		t.Fatal(err)
	}
	if got := r.conns(); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
}

// TestRadSecClose: Close ends requests under way, refuses new ones, and
// leaves no goroutine behind.
func TestRadSecClose(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		var r *radsecResponder
		r = newRadSecResponder(t, rsOptions{async: true}, func(req *layeh.Packet, _, _ int) ([]byte, bool) {
			if rfc2865.UserName_GetString(req) == "stuck" {
				return nil, false
			}
			return r.reply(req, layeh.CodeAccessAccept, faultNone), false
		})
		defer r.Close()
		silent := newSilentTCP(t)
		defer silent.Close()
		var logs syncBuffer
		c := radsecTestClient(t, &logs, nil, time.Hour, r.addr(), silent.ln.Addr().String())
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		// One request waits for a reply, another for a TLS handshake.
		stuck := make(chan error, 1)
		go func() {
			_, err := c.Exchange(t.Context(), accessRequest("stuck", "hunter2"))
			stuck <- err
		}()
		eventually(t, "the stuck request at the server", func() bool { return len(r.received()) == 21 })
		dialling := make(chan error, 1)
		go func() {
			_, _, err := c.exchange(t.Context(), accessRequest("bob", "hunter2"), silent.ln.Addr().String())
			dialling <- err
		}()
		eventually(t, "the handshake under way", func() bool { return silent.accepted() == 1 })

		closed := make(chan error, 1)
		go func() { closed <- c.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Close blocked")
		}
		for name, ch := range map[string]chan error{"waiting": stuck, "dialling": dialling} {
			select {
			case err := <-ch:
				if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "client closed") {
					t.Errorf("%s request after Close: %v, want ErrUnavailable (client closed)", name, err)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("%s request still blocked after Close", name)
			}
		}
		if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Exchange after Close: %v, want ErrUnavailable", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}()
	var now int
	deadline := time.Now().Add(20 * time.Second)
	for now = runtime.NumGoroutine(); now > before && time.Now().Before(deadline); now = runtime.NumGoroutine() {
		time.Sleep(20 * time.Millisecond)
	}
	if now > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after Close:\n%s", before, now, buf[:runtime.Stack(buf, true)])
	}
}

func TestRadSecCloseUDP(t *testing.T) {
	c := testClient(t, nil, "127.0.0.1:1812")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRadSecReplyNotLostToConnectionEnd: a reply the reader has accepted
// for a request is that request's, even if the connection ends at the same
// moment. A request that sees the connection end must find the reply
// already delivered, or it reports the connection lost and the request is
// sent again: a one-time code would then be used twice.
func TestRadSecReplyNotLostToConnectionEnd(t *testing.T) {
	t.Parallel()
	c := &Client{cfg: Config{Timeout: time.Second}, logger: slog.New(slog.DiscardHandler)}
	srv := Server{Addr: "127.0.0.1:2083", Secret: []byte(testSecret)}
	p := &radsecPeer{c: c, srv: srv}
	const id = 7
	wire, err := encode(accessRequest("bob", "123456"), srv)
	if err != nil {
		t.Fatal(err)
	}
	wire[1] = id
	signRequest(wire, srv.Secret)
	req, err := layeh.Parse(wire, srv.Secret)
	if err != nil {
		t.Fatal(err)
	}
	reply := signReply(req.Response(layeh.CodeAccessAccept), req.Authenticator, srv.Secret, faultNone)

	for i := range 5000 {
		a, b := net.Pipe()
		rc := &radsecConn{peer: p, raw: a, wsem: make(chan struct{}, 1), freed: make(chan struct{}), dead: make(chan struct{})}
		w := &radsecWaiter{req: wire, reply: make(chan *layeh.Packet, 1)}
		rc.slots[id] = w
		var wg sync.WaitGroup
		wg.Go(func() { rc.dispatch(reply) })
		wg.Go(func() { rc.fail(errors.New("connection reset")) })
		// What roundTrip does when it sees the connection end.
		<-rc.dead
		got := false
		select {
		case <-w.reply:
			got = true
		default:
		}
		wg.Wait()
		rc.mu.Lock()
		delivered := rc.replies
		rc.mu.Unlock()
		_ = b.Close()
		if delivered == 1 && !got {
			t.Fatalf("iteration %d: the reply was taken for the request, but the request saw only the connection end", i)
		}
	}
}

// TestRadSecSilentConnectionRedialled: a connection on which a request got
// no frame at all within the timeout (half-open: a firewall dropped it) is
// closed, so that the next request dials again instead of waiting on it.
func TestRadSecSilentConnectionRedialled(t *testing.T) {
	var r *radsecResponder
	r = newRadSecResponder(t, rsOptions{}, func(req *layeh.Packet, _, conn int) ([]byte, bool) {
		if conn == 0 {
			return nil, false // the first connection has gone silent
		}
		return r.reply(req, layeh.CodeAccessAccept, faultNone), false
	})
	var logs syncBuffer
	c := radsecTestClient(t, &logs, nil, 300*time.Millisecond, r.addr())
	if _, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("silent connection: %v, want ErrUnavailable", err)
	}
	resp, err := c.Exchange(t.Context(), accessRequest("bob", "hunter2"))
	if err != nil || resp.Code != layeh.CodeAccessAccept {
		t.Fatalf("after a silent connection: %v, %v; want an Accept on a new connection", resp, err)
	}
	if n := r.conns(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	if !strings.Contains(logs.String(), "the next request dials again") {
		t.Errorf("the closed connection was not logged:\n%s", logs.String())
	}
}
