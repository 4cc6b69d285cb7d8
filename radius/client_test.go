package radius

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
)

const testSecret = "s3cret-shared-XYZ"

// syncBuffer is a log sink safe for the client's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testClient(t *testing.T, logs *syncBuffer, addrs ...string) *Client {
	t.Helper()
	cfg := Config{
		Timeout:       150 * time.Millisecond,
		Retries:       1,
		HoldDown:      time.Minute,
		NASIdentifier: "sallyport-test",
		NASIPAddress:  netip.MustParseAddr("192.0.2.7"),
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
	return c
}

func accessRequest(user, password string) *layeh.Packet {
	p := &layeh.Packet{Code: layeh.CodeAccessRequest}
	p.Add(rfc2865.UserName_Type, layeh.Attribute(user))
	p.Add(rfc2865.UserPassword_Type, layeh.Attribute(password))
	return p
}

// acceptAll answers every request with an Access-Accept.
func acceptAll(req *layeh.Packet, _ int) *layeh.Packet {
	return req.Response(layeh.CodeAccessAccept)
}

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		return Config{Servers: []Server{{Addr: "127.0.0.1:1812", Secret: []byte("x")}}, NASIdentifier: "gw"}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string // substring of the error; "" means valid
	}{
		{"ok", func(*Config) {}, ""},
		{"ok ip only", func(c *Config) { c.NASIdentifier = ""; c.NASIPAddress = netip.MustParseAddr("10.0.0.1") }, ""},
		{"no servers", func(c *Config) { c.Servers = nil }, "no servers"},
		{"no port", func(c *Config) { c.Servers[0].Addr = "127.0.0.1" }, "host:port"},
		{"port zero", func(c *Config) { c.Servers[0].Addr = "127.0.0.1:0" }, "invalid port"},
		{"empty secret", func(c *Config) { c.Servers[0].Secret = nil }, "empty shared secret"},
		{"duplicate", func(c *Config) { c.Servers = append(c.Servers, c.Servers[0]) }, "twice"},
		{"negative timeout", func(c *Config) { c.Timeout = -1 }, "timeout"},
		{"too many retries", func(c *Config) { c.Retries = MaxRetries + 1 }, "retries"},
		{"negative hold-down", func(c *Config) { c.HoldDown = -1 }, "hold-down"},
		{"no NAS id", func(c *Config) { c.NASIdentifier = "" }, "NASIdentifier or NASIPAddress"},
		{"ipv6 NAS", func(c *Config) { c.NASIPAddress = netip.MustParseAddr("::2") }, "IPv4"},
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
		})
	}
}

func TestServerRedactsSecret(t *testing.T) {
	s := Server{Addr: "r:1812", Secret: []byte(testSecret)}
	cfg := Config{Servers: []Server{s}}
	var logs syncBuffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "server", s)
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", s), logs.String()} {
		if strings.Contains(out, testSecret) || !strings.Contains(out, "REDACTED") {
			t.Errorf("secret not redacted: %s", out)
		}
	}
}

func TestExchangeAccept(t *testing.T) {
	r := newResponder(t, testSecret, faultNone, func(req *layeh.Packet, _ int) *layeh.Packet {
		if got := rfc2865.UserPassword_GetString(req); got != "hunter2" {
			t.Errorf("server decrypted password %q", got)
		}
		return req.Response(layeh.CodeAccessAccept)
	})
	c := testClient(t, nil, r.addr())
	resp, err := c.Exchange(context.Background(), accessRequest("bob", "hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Code != layeh.CodeAccessAccept {
		t.Fatalf("code %v", resp.Code)
	}
}

// TestExchangeDropsForgedReplies: a reply that fails any check is dropped and
// the call ends unavailable; it must never be taken as an answer.
func TestExchangeDropsForgedReplies(t *testing.T) {
	tests := []struct {
		name  string
		fault fault
	}{
		{"missing Message-Authenticator", faultNoMsgAuth},
		{"wrong Message-Authenticator", faultBadMsgAuth},
		{"wrong Response Authenticator", faultBadRespAuth},
		{"wrong identifier", faultBadID},
		{"other source port", faultOtherPort},
		{"Message-Authenticator over response authenticator", faultMsgAuthOldStyle},
	}
	for _, tt := range tests {
		for _, code := range []layeh.Code{layeh.CodeAccessAccept, layeh.CodeAccessReject, layeh.CodeAccessChallenge} {
			t.Run(tt.name+"/"+code.String(), func(t *testing.T) {
				t.Parallel()
				r := newResponder(t, testSecret, tt.fault, func(req *layeh.Packet, _ int) *layeh.Packet {
					return req.Response(code)
				})
				var logs syncBuffer
				c := testClient(t, &logs, r.addr())
				resp, err := c.Exchange(context.Background(), accessRequest("bob", "hunter2"))
				if !errors.Is(err, ErrUnavailable) || resp != nil {
					t.Fatalf("Exchange() = %v, %v; want ErrUnavailable", resp, err)
				}
				if n := len(r.received()); n != 2 {
					t.Errorf("server saw %d transmissions, want 2", n)
				}
				out := logs.String()
				if tt.fault != faultOtherPort && !strings.Contains(out, "reply dropped") {
					t.Errorf("drop not logged: %s", out)
				}
				if strings.Contains(out, testSecret) || strings.Contains(out, "hunter2") {
					t.Errorf("secret in logs: %s", out)
				}
			})
		}
	}
}

// TestExchangeKeepsWaitingAfterForgery: a forged accept arriving first does
// not end the wait; the genuine reply that follows is returned.
func TestExchangeKeepsWaitingAfterForgery(t *testing.T) {
	r := newResponder(t, testSecret, faultForgedThenGood, func(req *layeh.Packet, _ int) *layeh.Packet {
		return req.Response(layeh.CodeAccessReject)
	})
	c := testClient(t, nil, r.addr())
	resp, err := c.Exchange(context.Background(), accessRequest("bob", "wrong"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Code != layeh.CodeAccessReject {
		t.Fatalf("code %v, want the genuine Access-Reject", resp.Code)
	}
}

func TestExchangeRetransmitsSamePacket(t *testing.T) {
	r := newResponder(t, testSecret, faultNone, func(req *layeh.Packet, n int) *layeh.Packet {
		if n == 0 {
			return nil // lose the first copy
		}
		return req.Response(layeh.CodeAccessAccept)
	})
	c := testClient(t, nil, r.addr())
	if _, err := c.Exchange(context.Background(), accessRequest("bob", "hunter2")); err != nil {
		t.Fatal(err)
	}
	got := r.received()
	if len(got) != 2 {
		t.Fatalf("server saw %d transmissions, want 2", len(got))
	}
	if got[0][1] != got[1][1] || !bytes.Equal(got[0][4:20], got[1][4:20]) {
		t.Error("retransmission changed identifier or authenticator")
	}
	if !bytes.Equal(got[0], got[1]) {
		t.Error("retransmission is not byte-identical")
	}
}

func TestExchangeFailover(t *testing.T) {
	tests := []struct {
		name  string
		first func(t *testing.T) (addr string, seen func() int)
	}{
		{"closed port", func(t *testing.T) (string, func() int) { return closedAddr(t), func() int { return -1 } }},
		{"silent", func(t *testing.T) (string, func() int) {
			s := newResponder(t, testSecret, faultNone, func(*layeh.Packet, int) *layeh.Packet { return nil })
			return s.addr(), func() int { return len(s.received()) }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			first, seen := tt.first(t)
			good := newResponder(t, testSecret, faultNone, acceptAll)
			c := testClient(t, nil, first, good.addr())
			for call := 1; call <= 2; call++ {
				resp, err := c.Exchange(context.Background(), accessRequest("bob", "hunter2"))
				if err != nil || resp.Code != layeh.CodeAccessAccept {
					t.Fatalf("call %d: Exchange() = %v, %v", call, resp, err)
				}
			}
			if len(good.received()) != 2 {
				t.Errorf("second server saw %d requests, want 2", len(good.received()))
			}
			// Hold-down: the dead first server is skipped on the second call.
			if n := seen(); n >= 0 && n != 2 {
				t.Errorf("dead server saw %d transmissions, want 2 (first call only)", n)
			}
		})
	}
}

// TestExchangeAllDead: when every server is held down they are all tried
// again rather than failing without a packet sent.
func TestExchangeAllDead(t *testing.T) {
	s := newResponder(t, testSecret, faultNone, func(*layeh.Packet, int) *layeh.Packet { return nil })
	c := testClient(t, nil, s.addr())
	for call := 1; call <= 2; call++ {
		if _, err := c.Exchange(context.Background(), accessRequest("bob", "x")); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("call %d: %v, want ErrUnavailable", call, err)
		}
		if n := len(s.received()); n != 2*call {
			t.Fatalf("after call %d the server saw %d transmissions, want %d", call, n, 2*call)
		}
	}
}

func TestExchangeHonoursContext(t *testing.T) {
	s := newResponder(t, testSecret, faultNone, func(*layeh.Packet, int) *layeh.Packet { return nil })
	c := testClient(t, nil, s.addr())
	c.cfg.Timeout = time.Hour
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
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
	// A cancelled call must not hold the server down.
	if len(c.order()) != 1 || !c.deadTill[s.addr()].IsZero() {
		t.Error("server held down after a cancelled call")
	}
}

func TestExchangeRejectsOtherCodes(t *testing.T) {
	c := testClient(t, nil, "127.0.0.1:1812")
	if _, err := c.Exchange(context.Background(), &layeh.Packet{Code: layeh.CodeAccountingRequest}); err == nil {
		t.Fatal("Accounting-Request accepted")
	}
}

func TestExchangeConcurrent(t *testing.T) {
	r := newResponder(t, testSecret, faultNone, acceptAll)
	c := testClient(t, nil, r.addr())
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			_, err := c.Exchange(context.Background(), accessRequest("bob", "hunter2"))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// TestObserve reports one outcome per server tried: the silent first
// server as no_answer, then the second server's accept.
func TestObserve(t *testing.T) {
	silent := newResponder(t, testSecret, faultNone, func(*layeh.Packet, int) *layeh.Packet { return nil })
	good := newResponder(t, testSecret, faultNone, acceptAll)
	var mu sync.Mutex
	var got []string
	cfg := Config{
		Servers:       []Server{{Addr: silent.addr(), Secret: []byte(testSecret)}, {Addr: good.addr(), Secret: []byte(testSecret)}},
		Timeout:       100 * time.Millisecond,
		NASIdentifier: "sallyport-test",
		Observe: func(server, result string, d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			if d < 0 {
				t.Errorf("negative duration %v", d)
			}
			got = append(got, server+" "+result)
		},
	}
	c, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exchange(context.Background(), accessRequest("bob", "hunter2")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = c.Exchange(ctx, accessRequest("bob", "hunter2"))
	mu.Lock()
	defer mu.Unlock()
	want := []string{silent.addr() + " no_answer", good.addr() + " accept"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("observed %q, want %q", got, want)
	}
}

// TestExchangeFailoverAfterDNSTimeout: a server whose name cannot be
// resolved in time is a server that did not answer. The resolver's timeout
// error matches context.DeadlineExceeded, which must not be taken for the
// caller's deadline: the client fails over instead of giving up.
func TestExchangeFailoverAfterDNSTimeout(t *testing.T) {
	// Not parallel: it swaps the process's resolver for its duration.
	saved := net.DefaultResolver
	net.DefaultResolver = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, context.DeadlineExceeded // a DNS server that does not answer
	}}
	defer func() { net.DefaultResolver = saved }()

	good := newResponder(t, testSecret, faultNone, acceptAll)
	c := testClient(t, nil, "radius-a.example.net:1812", good.addr())
	resp, err := c.Exchange(context.Background(), accessRequest("bob", "hunter2"))
	if err != nil || resp.Code != layeh.CodeAccessAccept {
		t.Fatalf("Exchange() = %v, %v; want the second server's Access-Accept", resp, err)
	}
	if c.deadTill["radius-a.example.net:1812"].IsZero() {
		t.Error("the unresolvable server was not held down")
	}

	// With only the unresolvable server, the caller learns the service is
	// unavailable, not that its own deadline passed.
	c1 := testClient(t, nil, "radius-a.example.net:1812")
	_, err = c1.Exchange(context.Background(), accessRequest("bob", "hunter2"))
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Exchange() error = %v, want ErrUnavailable and not DeadlineExceeded", err)
	}
}
