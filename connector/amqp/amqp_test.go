package amqp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/connector/connectortest"
	"github.com/sallyport/sallyport/internal/rabbitmqtest"
	"github.com/sallyport/sallyport/names"
)

// contractMaxLength bounds the contract's queues: above the most any of
// its tests publishes to one queue (40), so only the full-queue test
// meets it.
const contractMaxLength = 64

func dial(t testing.TB, cfg Config) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestContract(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  func() Config
	}{
		{"classic", func() Config { c := tb.config(); c.QueueType = QueueClassic; return c }},
		{"quorum", func() Config { c := tb.config(); c.QueueType = QueueQuorum; return c }},
		{"tls", tb.tlsConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exact := contractMaxLength
			if tc.cfg().QueueType == QueueQuorum {
				// A quorum queue takes one more than x-max-length before
				// it refuses (see TestFullConcurrent): its bound holds,
				// not to the message.
				exact = 0
			}
			connectortest.Run(t, connectortest.Options{
				New: func(t *testing.T) connector.Connector {
					cfg := tc.cfg()
					cfg.MaxLength = contractMaxLength
					return dial(t, cfg)
				},
				MaxLength: exact,
			})
		})
	}
}

func TestTLSIsUsed(t *testing.T) {
	c := dial(t, tb.tlsConfig())
	s, err := c.session(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.ac.ConnectionState(); !st.HandshakeComplete || st.Version < tls.VersionTLS12 {
		t.Fatalf("TLS state %+v", st)
	}
}

func TestRefusals(t *testing.T) {
	const secret = "Hunter2-never-shown"
	otherCA := func() *x509.CertPool {
		pool, err := rabbitmqtest.WriteTLSFiles(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return pool
	}()
	for _, tc := range []struct {
		name string
		cfg  func() Config
		want string
	}{
		{"password in URL", func() Config {
			c := tb.config()
			c.URL = fmt.Sprintf("amqp://%s:%s@127.0.0.1:%d/", tb.user, secret, tb.amqpPort)
			return c
		}, "holds a password"},
		{"password in amqps URL", func() Config {
			c := tb.tlsConfig()
			c.URL = fmt.Sprintf("amqps://%s:%s@localhost:%d/", tb.user, secret, tb.tlsPort)
			return c
		}, "holds a password"},
		{"amqps without TLS config", func() Config { c := tb.tlsConfig(); c.TLS = nil; return c }, "pin the broker's CA"},
		{"amqps without pinned CA", func() Config { c := tb.tlsConfig(); c.TLS = &tls.Config{MinVersion: tls.VersionTLS12}; return c }, "RootCAs is nil"},
		{"amqps skipping verification", func() Config {
			c := tb.tlsConfig()
			c.TLS.InsecureSkipVerify = true // #nosec G402 -- the refusal under test
			return c
		}, "InsecureSkipVerify is refused"},
		{"amqps with another CA", func() Config { c := tb.tlsConfig(); c.TLS.RootCAs = otherCA; return c }, "TLS handshake"},
		{"TLS config on amqp", func() Config {
			c := tb.config()
			c.TLS = &tls.Config{RootCAs: tb.ca, MinVersion: tls.VersionTLS12}
			return c
		}, "use amqps"},
		{"wrong password", func() Config { c := tb.config(); c.Password = []byte(secret); return c }, "refused user"},
		{"wrong password over TLS", func() Config { c := tb.tlsConfig(); c.Password = []byte(secret); return c }, "refused user"},
		{"no password", func() Config { c := tb.config(); c.Password = nil; return c }, "Password is empty"},
		{"no user", func() Config { c := tb.config(); c.URL = fmt.Sprintf("amqp://127.0.0.1:%d/", tb.amqpPort); return c }, "names no user"},
		{"query parameters", func() Config { c := tb.config(); c.URL += "?heartbeat=5"; return c }, "query parameters"},
		{"bad queue type", func() Config { c := tb.config(); c.QueueType = "stream"; return c }, "queue type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := Dial(ctx, tc.cfg())
			if err == nil {
				_ = c.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), string(tb.pass)) {
				t.Fatalf("error shows a password: %q", err)
			}
		})
	}
}

func TestConfigRedacts(t *testing.T) {
	cfg := tb.config()
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg)} {
		if strings.Contains(s, string(tb.pass)) {
			t.Fatalf("Config prints its password: %s", s)
		}
	}
}

// TestClosedWipesPassword: Close clears the Conn's copy of the password.
func TestCloseWipesPassword(t *testing.T) {
	c := dial(t, tb.config())
	pw := c.cfg.Password
	_ = c.Close()
	if !bytes.Equal(pw, make([]byte, len(pw))) {
		t.Fatal("the password is still in memory after Close")
	}
	if err := c.Declare(context.Background(), "x", connector.Shared); !errors.Is(err, connector.ErrClosed) {
		t.Fatalf("Declare after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func uniqueQueue(t testing.TB) string {
	return fmt.Sprintf("test.%s.%d", strings.NewReplacer("/", ".", " ", "_").Replace(t.Name()), time.Now().UnixNano())
}

// TestFullConcurrent: publishes racing for the last places of a queue:
// exactly MaxLength are taken, the rest refused with ErrFull, and a
// consumed message frees a place.
func TestFullConcurrent(t *testing.T) {
	for _, qt := range []string{QueueClassic, QueueQuorum} {
		t.Run(qt, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cfg := tb.config()
			cfg.QueueType, cfg.MaxLength = qt, 10
			c := dial(t, cfg)
			q := uniqueQueue(t)
			var ok, full atomic.Int32
			var wg sync.WaitGroup
			for i := range 25 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					switch err := c.Publish(ctx, q, []byte(fmt.Sprint(i)), time.Minute); {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, connector.ErrFull):
						full.Add(1)
					default:
						t.Errorf("publish: %v", err)
					}
				}()
			}
			wg.Wait()
			switch qt {
			case QueueClassic:
				if ok.Load() != 10 || full.Load() != 15 {
					t.Fatalf("%d taken, %d refused; want 10 and 15", ok.Load(), full.Load())
				}
			case QueueQuorum:
				// A quorum queue tells its publishers it is full only
				// once it is over its bound: what was in flight then
				// is taken. It refuses from then on.
				t.Logf("quorum queue of 10: %d taken, %d refused", ok.Load(), full.Load())
				if ok.Load() < 10 {
					t.Fatalf("only %d taken", ok.Load())
				}
				if err := c.Publish(ctx, q, []byte("over"), time.Minute); !errors.Is(err, connector.ErrFull) {
					t.Fatalf("publish to a full quorum queue: %v", err)
				}
				return
			}
			got := make(chan struct{}, 1)
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- c.Consume(cctx, q, 1, func(_ context.Context, d connector.Delivery) {
					_ = d.Ack()
					select {
					case got <- struct{}{}:
					default:
					}
				})
			}()
			<-got
			stop()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := c.Publish(ctx, q, []byte("again"), time.Minute); err != nil {
				t.Fatalf("publish after a message was consumed: %v", err)
			}
		})
	}
}

// TestDeadLetter: with DeadLetter, rejected and expired messages of a
// Shared queue end up on "<queue>.dead".
func TestDeadLetter(t *testing.T) {
	for _, qt := range []string{QueueClassic, QueueQuorum} {
		t.Run(qt, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cfg := tb.config()
			cfg.QueueType, cfg.DeadLetter = qt, true
			c := dial(t, cfg)
			q := uniqueQueue(t)
			if err := c.Declare(ctx, q, connector.Shared); err != nil {
				t.Fatal(err)
			}
			if err := c.Declare(ctx, q, connector.Shared); err != nil {
				t.Fatalf("declaring again: %v", err)
			}
			if err := c.Publish(ctx, q, []byte("expires"), 50*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			if err := c.Publish(ctx, q, []byte("rejected"), time.Minute); err != nil {
				t.Fatal(err)
			}
			cctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- c.Consume(cctx, q, 1, func(_ context.Context, d connector.Delivery) { _ = d.Reject(false) })
			}()
			dead := make(chan string, 4)
			dctx, dstop := context.WithCancel(ctx)
			ddone := make(chan error, 1)
			go func() {
				ddone <- c.Consume(dctx, q+DeadLetterSuffix, 4, func(_ context.Context, d connector.Delivery) {
					dead <- string(d.Body())
					_ = d.Ack()
				})
			}()
			seen := map[string]bool{}
			for len(seen) < 2 {
				select {
				case s := <-dead:
					seen[s] = true
				case <-ctx.Done():
					t.Fatalf("dead letters %v; want expires and rejected", seen)
				}
			}
			if !seen["expires"] || !seen["rejected"] {
				t.Fatalf("dead letters %v", seen)
			}
			stop()
			dstop()
			if err := errors.Join(<-done, <-ddone); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPrivate: reply queues are Private, whoever uses them first, and
// go away unused.
func TestPrivate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vault := dial(t, tb.config())
	cfg := tb.config()
	cfg.PrivateExpires = 1500 * time.Millisecond
	var logs syncBuffer
	cfg.Log = slogTo(&logs)
	engine := dial(t, cfg)
	reply := names.ReplyQueue(fmt.Sprint("s", time.Now().UnixNano()%1e6), "0123456789abcdef")

	// The vault replies before the engine declared its queue: the
	// queue is made Private (with the vault's expiry), and the engine's
	// declaration, with another expiry, accepts it with a warning.
	if err := vault.Publish(ctx, reply, []byte("early reply"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := engine.Declare(ctx, reply, connector.Private); err != nil {
		t.Fatalf("engine declares its reply queue after the vault used it: %v", err)
	}
	if !strings.Contains(logs.String(), "exists with other arguments") {
		t.Fatalf("no warning for a queue declared with other arguments:\n%s", logs.String())
	}
	if err := engine.Declare(ctx, reply, connector.Private); err != nil {
		t.Fatalf("declaring again: %v", err)
	}
	got := make(chan string, 1)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- engine.Consume(cctx, reply, 1, func(_ context.Context, d connector.Delivery) { got <- string(d.Body()); _ = d.Ack() })
	}()
	if s := <-got; s != "early reply" {
		t.Fatalf("got %q", s)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A Private queue the engine made goes away once unused.
	reply2 := reply + "0"
	if err := engine.Declare(ctx, reply2, connector.Private); err != nil {
		t.Fatal(err)
	}
	reply = reply2
	s, err := vault.session(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A look (passive declare) counts as a use: look less often than
	// the expiry.
	deadline := time.Now().Add(20 * time.Second)
	for {
		time.Sleep(2 * time.Second)
		ch, err := s.ac.Channel()
		if err != nil {
			t.Fatal(err)
		}
		_, err = ch.QueueDeclarePassive(reply, false, false, false, false, nil)
		_ = ch.Close()
		if err != nil {
			break // gone
		}
		if time.Now().After(deadline) {
			t.Fatal("an unused Private queue is still there")
		}
	}
}

func TestOversizeRefused(t *testing.T) {
	cfg := tb.config()
	cfg.MaxMessageSize = 1024
	c := dial(t, cfg)
	err := c.Publish(context.Background(), uniqueQueue(t), make([]byte, 1025), time.Minute)
	if err == nil || !strings.Contains(err.Error(), "over the 1024-byte message limit") {
		t.Fatalf("publish over the limit: %v", err)
	}
}

// TestOversizeDelivery: a message over the receiving side's limit ends
// the connection before its body is read; the message stays queued.
func TestOversizeDelivery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	big := dial(t, tb.config())
	q := uniqueQueue(t)
	if err := big.Publish(ctx, q, make([]byte, 64<<10), time.Minute); err != nil {
		t.Fatal(err)
	}
	cfg := tb.config()
	cfg.MaxMessageSize = 4096
	var logs syncBuffer
	cfg.Log = slogTo(&logs)
	small := dial(t, cfg)
	cctx, stop := context.WithTimeout(ctx, 2*time.Second)
	defer stop()
	var handled atomic.Int32
	_ = small.Consume(cctx, q, 1, func(_ context.Context, d connector.Delivery) { handled.Add(1); _ = d.Ack() })
	if handled.Load() != 0 {
		t.Fatal("a message over the limit was delivered")
	}
	if !strings.Contains(logs.String(), "over the 4096-byte limit") {
		t.Fatalf("the connection loss does not say why:\n%s", logs.String())
	}
}

// TestStaleSettle: a delivery whose connection went cannot be settled
// (ErrSettled); the broker delivers it again, Redelivered set, on the
// connection the Conn made by itself.
func TestStaleSettle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := tb.config()
	cfg.BackoffMin = 20 * time.Millisecond
	c := dial(t, cfg)
	q := uniqueQueue(t)
	if err := c.Publish(ctx, q, []byte("job"), time.Minute); err != nil {
		t.Fatal(err)
	}
	type seen struct {
		redelivered bool
		ackErr      error
	}
	got := make(chan seen, 4)
	hold := make(chan struct{})
	var later atomic.Bool
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, q, 1, func(_ context.Context, d connector.Delivery) {
			if !later.Swap(true) {
				<-hold // the connection is cut meanwhile
			}
			got <- seen{d.Redelivered(), d.Ack()}
		})
	}()
	time.Sleep(300 * time.Millisecond)
	s, err := c.session(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = s.ac.Close() // as a broker or network would
	for c.reconnects.Load() == 0 && time.Since(start) < 20*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("reconnected %v after the connection was cut", time.Since(start).Round(time.Millisecond))
	close(hold)
	a := <-got
	if !errors.Is(a.ackErr, connector.ErrSettled) {
		t.Fatalf("Ack of a delivery whose connection went: %v, want ErrSettled", a.ackErr)
	}
	b := <-got
	if !b.redelivered || b.ackErr != nil {
		t.Fatalf("second delivery: redelivered %v, ack %v", b.redelivered, b.ackErr)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPermissions: a site's credentials, limited to its queue prefix for
// configure, write and read, are enough for everything the connector does
// on the site's queues (dead-lettering included), and another site's
// queues are connector.ErrForbidden, publishing to them included.
func TestPermissions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	site := fmt.Sprint("p", time.Now().UnixNano()%1e6)
	user, pass := "site-"+site, hex.EncodeToString(tb.pass[:8])+"x"
	prefix := strings.ReplaceAll(names.QueuePrefix(site), ".", `\.`)
	for _, args := range [][]string{
		{"add_user", user, pass},
		{"set_permissions", "-p", "/", user, "^" + prefix, "^" + prefix, "^" + prefix},
	} {
		if _, err := tb.ctl(time.Minute, "rabbitmqctl", append([]string{"-q"}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	admin := dial(t, tb.config())
	other := names.WorkQueue(site + "x")
	if err := admin.Declare(ctx, other, connector.Shared); err != nil {
		t.Fatal(err)
	}

	cfg := tb.config()
	cfg.URL = fmt.Sprintf("amqp://%s@127.0.0.1:%d/", user, tb.amqpPort)
	cfg.Password = []byte(pass)
	cfg.DeadLetter = true
	c := dial(t, cfg)
	own := names.WorkQueue(site)
	if err := c.Declare(ctx, own, connector.Shared); err != nil {
		t.Fatalf("declare its own queue: %v", err)
	}
	if err := c.Publish(ctx, own, []byte("mine"), time.Minute); err != nil {
		t.Fatalf("publish to its own queue: %v", err)
	}
	if err := c.Publish(ctx, names.ResultQueue(site), []byte("mine"), time.Minute); err != nil {
		t.Fatalf("publish to its own undeclared queue: %v", err)
	}
	got := make(chan string, 1)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, own, 1, func(_ context.Context, d connector.Delivery) { got <- string(d.Body()); _ = d.Ack() })
	}()
	if s := <-got; s != "mine" {
		t.Fatalf("got %q", s)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	for name, op := range map[string]func() error{
		"declare":            func() error { return c.Declare(ctx, other, connector.Shared) },
		"publish":            func() error { return c.Publish(ctx, other, []byte("theirs"), time.Minute) },
		"publish undeclared": func() error { return c.Publish(ctx, names.RequestQueue(site+"x"), []byte("theirs"), time.Minute) },
		"consume": func() error {
			return c.Consume(ctx, other, 1, func(_ context.Context, d connector.Delivery) { _ = d.Ack() })
		},
	} {
		if err := op(); !errors.Is(err, connector.ErrForbidden) {
			t.Errorf("%s another site's queue: %v, want ErrForbidden", name, err)
		}
	}
	if err := c.Publish(ctx, own, []byte("still works"), time.Minute); err != nil {
		t.Fatalf("publish after refusals: %v", err)
	}
}

// TestBlockedPublish: a broker that blocks publishers (a memory alarm)
// does not hold Publish past its context, and publishing resumes when
// the alarm clears.
func TestBlockedPublish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var logs syncBuffer
	cfg := tb.config()
	cfg.Log = slogTo(&logs)
	c := dial(t, cfg)
	q := uniqueQueue(t)
	if err := c.Publish(ctx, q, []byte("before"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.ctl(time.Minute, "rabbitmqctl", "-q", "set_vm_memory_high_watermark", "absolute", "1"); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if _, err := tb.ctl(time.Minute, "rabbitmqctl", "-q", "set_vm_memory_high_watermark", "0.4"); err != nil {
			t.Error(err)
		}
	}
	defer restore()
	for i := range 3 {
		pctx, stop := context.WithTimeout(ctx, time.Second)
		start := time.Now()
		err := c.Publish(pctx, q, []byte("blocked"), time.Minute)
		stop()
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("publish %d while the broker blocks publishers: %v", i, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("publish held %v past a 1 s context", d)
		}
	}
	restore()
	if err := c.Publish(ctx, q, []byte("after"), time.Minute); err != nil {
		t.Fatalf("publish once the alarm cleared: %v", err)
	}
	if !strings.Contains(logs.String(), "amqp broker blocks publishing") {
		t.Errorf("the block was not logged:\n%s", logs.String())
	}
}
