package e2e

// In-process benchmarks of the site connectors (`make bench`), each
// against the real alternative in the same run:
//
//   - BenchmarkCredentialRoundTrip: engine.Credentials → connector → the
//     vault's broker (vault.ServeSite) → connector → engine, over the
//     built-in connector and over RabbitMQ, against the in-process Memory
//     connector that `sallyport dev` uses.
//   - BenchmarkSealedItems: sealed 1 KiB work items, vault → RabbitMQ →
//     engine → sealed result → RabbitMQ → vault, through connector/amqp,
//     against amqp091-go moving the same bytes the same way.
//
// Knobs: SPT_BENCH_CHECKOUTS (round trips per connector, default 2000),
// SPT_BENCH_ITEMS (items per round and path, default 10000) and
// SPT_BENCH_ITEM_ROUNDS (default 3).

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/connector/amqp"
	"github.com/sallyport/sallyport/connector/builtin"
	"github.com/sallyport/sallyport/engine"
	"github.com/sallyport/sallyport/enroll"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/vault"
	"github.com/sallyport/sallyport/workitem"
)

// --- a vault in process --------------------------------------------------

// benchVault is a vault opened on a temporary directory with a soft
// keystore, as `sallyport vault` opens one, holding one site, one approved
// engine of it and one password secret that alice may check out there.
type benchVault struct {
	v        *vault.Vault
	site     string
	engineID string
	signer   *ecdsa.PrivateKey // the engine's identity key
	key      engine.Key        // the engine's own key, as the vault wrapped it
	secret   string
}

// discardLog formats records as the daemons do and throws them away, so
// that logging costs what it costs in production.
func discardLog() *slog.Logger {
	return slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func newBenchVault(b *testing.B, site string) *benchVault {
	b.Helper()
	ctx := context.Background()
	dir := b.TempDir()
	keys, err := hsm.OpenSoft(filepath.Join(dir, "keystore.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = keys.Close() })
	if err := keys.EnsureAESKey(ctx, hsm.LabelKEK); err != nil {
		b.Fatal(err)
	}
	log := discardLog()
	v, err := vault.Open(ctx, filepath.Join(dir, "vault.db"), keys, log, audit.Log{L: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = v.Close() })
	bv := &benchVault{v: v, site: site, secret: "bench-target"}
	if err := v.AddSite(ctx, vault.SiteSpec{Name: site, Connector: vault.ConnectorSpec{Kind: vault.ConnectorBuiltin}}); err != nil {
		b.Fatal(err)
	}
	if bv.signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		b.Fatal(err)
	}
	der, err := enroll.MarshalPublicKey(&bv.signer.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	info, err := v.RegisterEngine(ctx, site, der, "bench engine", "127.0.0.1:1")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := v.ApproveEngine(ctx, info.ID); err != nil {
		b.Fatal(err)
	}
	bv.engineID = info.ID
	// The engine key reaches the engine as it does in production: wrapped
	// to the engine's public key in its configuration.
	cfg, err := v.EngineConfigFor(ctx, info.ID, "wss://127.0.0.1:1/v1/connector")
	if err != nil {
		b.Fatal(err)
	}
	if cfg.EngineKey == nil {
		b.Fatal("approved engine's configuration has no engine key")
	}
	raw, err := enrollUnwrap(bv.signer, enroll.EngineKeyLabel(info.ID, cfg.EngineKey.Version), cfg.EngineKey.Wrapped)
	if err != nil {
		b.Fatal(err)
	}
	bv.key = engine.Key{Bytes: raw, Version: cfg.EngineKey.Version}
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	hk, err := gossh.NewPublicKey(pub)
	if err != nil {
		b.Fatal(err)
	}
	if err := v.AddSecret(ctx, vault.SecretSpec{
		Name: bv.secret, Host: "127.0.0.1", Port: 22, Username: "root",
		Password: []byte("Bench-" + randString(alnum, 24)), HostKey: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(hk))),
		Allow: []string{"alice"}, Site: site,
	}); err != nil {
		b.Fatal(err)
	}
	return bv
}

// siteKey returns the site's current key and version.
func (bv *benchVault) siteKey(b *testing.B) ([]byte, int) {
	b.Helper()
	k, ver, err := bv.v.SiteKey(context.Background(), bv.site)
	if err != nil {
		b.Fatal(err)
	}
	return k, ver
}

// serve runs the vault's broker for the site over conn until the
// benchmark ends.
func (bv *benchVault) serve(b *testing.B, conn connector.Connector) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bv.v.ServeSite(ctx, conn, bv.site, nil) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("ServeSite: %v", err)
		}
	})
}

// credentials starts the engine's link to the vault over conn, and waits
// until a checkout goes through (its reply queue is being consumed).
func (bv *benchVault) credentials(b *testing.B, conn connector.Connector) *engine.Credentials {
	b.Helper()
	c := engine.NewCredentials(conn, bv.site, bv.engineID, bv.key, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, connector.ErrClosed) {
			b.Errorf("Credentials.Run: %v", err)
		}
		c.Close()
	})
	deadline := time.Now().Add(time.Minute)
	for {
		err := bv.checkout(c, 2*time.Second)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			b.Fatalf("no checkout went through in a minute: %v", err)
		}
	}
}

var benchSource = netip.MustParseAddrPort("127.0.0.1:40022")

// checkout is one credential round trip, as the gateway makes it for a
// login.
func (bv *benchVault) checkout(c *engine.Credentials, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cred, err := c.Checkout(ctx, gw.Identity{User: "alice"}, benchSource, bv.secret)
	if err != nil {
		return err
	}
	if len(cred.Password) == 0 {
		return errors.New("checkout returned no password")
	}
	cred.Wipe()
	return nil
}

// startBuiltin serves the built-in connector as the vault does (a
// builtin.Server on the vault's Memory queues, behind TLS 1.3, engines
// authenticated by vault.Authorize) and returns the vault's side of the
// queues and an engine's client.
func (bv *benchVault) startBuiltin(b *testing.B) (vaultSide connector.Connector, engineSide connector.Connector) {
	b.Helper()
	queues := connector.NewMemory(0)
	srv := builtin.NewServer(builtin.ServerConfig{Queues: queues, Auth: bv.v, Log: discardLog()})
	mux := http.NewServeMux()
	mux.Handle("/v1/connector", srv)
	ts := httptest.NewUnstartedServer(mux)
	ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	ts.StartTLS()
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := builtin.Dial(ctx, builtin.ClientConfig{
		URL: "wss://" + ts.Listener.Addr().String() + "/v1/connector", RootCAs: pool,
		EngineID: bv.engineID, Signer: bv.signer, Log: discardLog(),
	})
	if err != nil {
		ts.Close()
		b.Fatal(err)
	}
	vs := queues.Session()
	b.Cleanup(func() {
		_ = client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		ts.Close()
		_ = vs.Close()
		_ = queues.Close()
	})
	return vs, client
}

// dialRabbit connects to the suite's RabbitMQ node through connector/amqp
// (the plain listener on loopback), with the product's defaults.
func dialRabbit(b *testing.B) *amqp.Conn {
	b.Helper()
	rb := env.Rabbit(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := amqp.Dial(ctx, amqp.Config{URL: rb.URL(), Password: append([]byte(nil), rb.Password...), Log: discardLog()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

// --- 1: credential round trips --------------------------------------------

// BenchmarkCredentialRoundTrip times credential checkouts, one at a time,
// as the gateway makes them for a login: engine.Credentials seals a
// request under the engine key and publishes it on the site's request
// queue; the vault's broker (vault.ServeSite) opens it, checks the engine
// and the allow list, audits, opens the stored password, seals the reply
// and publishes it to the engine's reply queue; Credentials opens it. The
// same vault, engine and secret run over three connectors: Memory (what
// `sallyport dev` uses, the reference), the built-in connector (a TLS 1.3
// WebSocket, vault.Authorize admitting the engine) and RabbitMQ (both
// ends through connector/amqp). Checkouts go in rounds of 100 per
// connector, the connectors taking turns, SPT_BENCH_CHECKOUTS (2000) per
// connector in all. It reports p50 and p99 per connector and their ratio
// to Memory's.
func BenchmarkCredentialRoundTrip(b *testing.B) {
	total := int(envInt(b, "SPT_BENCH_CHECKOUTS", 2000))
	bv := newBenchVault(b, "bench-rt")

	mem := connector.NewMemory(0)
	b.Cleanup(func() { _ = mem.Close() })
	memVault, memEngine := mem.Session(), mem.Session()
	b.Cleanup(func() { _ = memVault.Close(); _ = memEngine.Close() })
	bv.serve(b, memVault)
	builtinVault, builtinEngine := bv.startBuiltin(b)
	bv.serve(b, builtinVault)
	rabbitVault, rabbitEngine := dialRabbit(b), dialRabbit(b)
	bv.serve(b, rabbitVault)

	type path struct {
		name string
		c    *engine.Credentials
		d    []time.Duration
	}
	paths := []*path{
		{name: "memory", c: bv.credentials(b, memEngine)},
		{name: "builtin", c: bv.credentials(b, builtinEngine)},
		{name: "rabbitmq", c: bv.credentials(b, rabbitEngine)},
	}
	one := func(p *path) time.Duration {
		start := time.Now()
		if err := bv.checkout(p.c, 10*time.Second); err != nil {
			b.Fatalf("%s checkout: %v", p.name, err)
		}
		return time.Since(start)
	}
	for _, p := range paths { // warm up
		for range 100 {
			one(p)
		}
	}
	noteBackground(b)
	const round = 100
	for r := 0; r*round < total; r++ {
		for j := range paths {
			p := paths[(r+j)%len(paths)]
			for range min(round, total-r*round) {
				p.d = append(p.d, one(p))
			}
		}
	}
	ref := paths[0].d
	for _, p := range paths {
		p50, p99 := percentile(p.d, 50), percentile(p.d, 99)
		b.ReportMetric(ms(p50), p.name+"_p50_ms")
		b.ReportMetric(ms(p99), p.name+"_p99_ms")
		ratio := ""
		if p.name != "memory" {
			r50 := float64(p50) / float64(percentile(ref, 50))
			r99 := float64(p99) / float64(percentile(ref, 99))
			b.ReportMetric(r50, p.name+"/memory_p50")
			b.ReportMetric(r99, p.name+"/memory_p99")
			ratio = fmt.Sprintf("; vs memory %.2fx at p50, %.2fx at p99", r50, r99)
		}
		summarize(b, "checkout   %-8s %d round trips, one at a time: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms (goal p50 <= 5 ms)%s",
			p.name, len(p.d), ms(p50), ms(percentile(p.d, 90)), ms(p99), ratio)
	}
	b.ReportMetric(0, "ns/op")
}

// --- 2: sealed items per second --------------------------------------------

// Prefetches and lifetimes of the product's consumers, which the sealed
// path below uses too (engine/work.go, vault/broker.go, vault/daemon.go).
const (
	engineWorkPrefetch  = 8  // engine: workPrefetch
	vaultResultPrefetch = 16 // vault: maxInFlight, for the result consumer
	benchItemTTL        = 30 * time.Second
	benchResultTTL      = time.Minute
	benchPublishers     = 16 // vault-side goroutines publishing items
	// deepPrefetch and deepPublishers are the second configuration: what
	// the same path does when latency does not bound it.
	deepPrefetch   = 256
	deepPublishers = 128
	benchItemSize  = 1024
)

// BenchmarkSealedItems measures sealed 1 KiB work items per second end to
// end over RabbitMQ: the vault side seals each item under the site key
// and publishes it to the site's work queue through connector/amqp (16
// publishers); the engine side consumes them through connector/amqp
// (prefetch 8, as an engine does), opens and de-duplicates each, seals a
// result under its engine key and publishes it to the site's result
// queue, then acknowledges the item; the vault side consumes the results
// (prefetch 16, as the vault does), opens and de-duplicates them. The two
// sides are separate connections, as separate processes have. The handlers
// do what the engine's worker (engine/work.go) and the vault's result
// consumer (vault/daemon.go) do for a ping and its pong, with a 1 KiB item
// instead of a ping's few bytes.
//
// The baseline is amqp091-go doing the same broker work with the same
// bytes: two connections, the same queue type and arguments, persistent
// messages with the same expirations, publisher confirms, 16 publishers,
// prefetch 8 on the work queue with each result confirmed before its item
// is acknowledged, prefetch 16 on the result queue, manual acks. The two
// paths take turns, SPT_BENCH_ITEM_ROUNDS (3) rounds of SPT_BENCH_ITEMS
// (10000) items each.
//
// "engine" is the product's configuration. With 8 items in flight per
// engine, each waiting for its result's publisher confirm (the broker's
// fsync), the rate is bound by the broker's confirm latency, not by
// anyone's CPU. "deep" runs both paths again with prefetch 256 and 128
// publishers, so that the broker and the clients' CPU are the limit: that
// is where the connector's own cost would show.
func BenchmarkSealedItems(b *testing.B) {
	b.Run("engine", func(b *testing.B) { sealedItems(b, "bench-items", engineWorkPrefetch, benchPublishers) })
	b.Run("deep", func(b *testing.B) { sealedItems(b, "bench-deep", deepPrefetch, deepPublishers) })
}

// sealedItems runs BenchmarkSealedItems with the engine's prefetch and the
// number of goroutines publishing items given.
func sealedItems(b *testing.B, site string, prefetch, publishers int) {
	n := int(envInt(b, "SPT_BENCH_ITEMS", 10000))
	rounds := int(envInt(b, "SPT_BENCH_ITEM_ROUNDS", 3))
	bv := newBenchVault(b, site)
	siteKey, siteVersion := bv.siteKey(b)
	s := &sealedPath{
		site: bv.site, engineID: bv.engineID, engineKey: bv.key,
		siteKeys:    map[int][]byte{siteVersion: siteKey},
		siteVersion: siteVersion,
		vaultConn:   dialRabbit(b), engineConn: dialRabbit(b),
		prefetch:   prefetch,
		publishers: publishers,
	}
	s.start(b)
	itemLen, resultLen := s.sizes(b)
	raw := newRawPath(b, "rawbench."+site, itemLen, resultLen, s.prefetch, s.publishers)

	// Warm up both paths.
	if _, err := s.run(b, 1000); err != nil {
		b.Fatal(err)
	}
	if _, err := raw.run(b, 1000); err != nil {
		b.Fatal(err)
	}
	noteBackground(b)
	type result struct {
		rate            float64       // items/s
		procCPU, boxCPU time.Duration // this process's, the machine's CPU time per item
	}
	measure := func(run func(*testing.B, int) (time.Duration, error)) result {
		u0, s0, err := procCPU(os.Getpid())
		if err != nil {
			b.Fatal(err)
		}
		box0, err := machineBusy()
		if err != nil {
			b.Fatal(err)
		}
		d, err := run(b, n)
		if err != nil {
			b.Fatal(err)
		}
		u1, s1, err := procCPU(os.Getpid())
		if err != nil {
			b.Fatal(err)
		}
		box1, err := machineBusy()
		if err != nil {
			b.Fatal(err)
		}
		return result{rate: float64(n) / d.Seconds(), procCPU: (u1 - u0 + s1 - s0) / time.Duration(n), boxCPU: (box1 - box0) / time.Duration(n)}
	}
	var ours, base []result
	for r := range rounds {
		if r%2 == 0 {
			ours = append(ours, measure(s.run))
			base = append(base, measure(raw.run))
		} else {
			base = append(base, measure(raw.run))
			ours = append(ours, measure(s.run))
		}
	}
	summary := func(rs []result) (rate float64, rates string, proc, box time.Duration) {
		var xs []float64
		var ps, bs []time.Duration
		for _, r := range rs {
			xs, ps, bs = append(xs, r.rate), append(ps, r.procCPU), append(bs, r.boxCPU)
		}
		return median(xs), joinRates(xs), median(ps), median(bs)
	}
	o, oRounds, oProc, oBox := summary(ours)
	r, rRounds, rProc, rBox := summary(base)
	b.ReportMetric(o, "sealed_items/s")
	b.ReportMetric(r, "raw_items/s")
	b.ReportMetric(o/r, "sealed/raw")
	b.ReportMetric(float64(oProc.Microseconds()), "sealed_proc_us/item")
	b.ReportMetric(float64(rProc.Microseconds()), "raw_proc_us/item")
	b.ReportMetric(0, "ns/op")
	summarize(b, "items      sealed %d-byte items vault -> RabbitMQ -> engine -> %d-byte sealed result -> vault, engine prefetch %d, %d publishers, %d x %d: median %.0f items/s (rounds %s); raw amqp091-go, same bytes and flow: %.0f items/s (rounds %s); ratio %.2f (goal >= 0.8 and >= 10000/s)",
		itemLen, resultLen, s.prefetch, s.publishers, rounds, n, o, oRounds, r, rRounds, o/r)
	summarize(b, "items      CPU per item, median: sealed path %.0f us in this process (both ends), %.0f us on the whole machine (RabbitMQ included); raw %.0f us and %.0f us",
		float64(oProc.Microseconds()), float64(oBox.Microseconds()), float64(rProc.Microseconds()), float64(rBox.Microseconds()))
}

func joinRates(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.FormatFloat(x, 'f', 0, 64)
	}
	return strings.Join(s, ", ")
}

// sealedPath is the product's path for site work over one RabbitMQ node.
type sealedPath struct {
	site, engineID string
	engineKey      engine.Key
	siteKeys       map[int][]byte // the engine's copy, by version
	siteVersion    int
	keysMu         sync.RWMutex

	vaultConn, engineConn connector.Connector
	prefetch, publishers  int    // the engine's prefetch; goroutines publishing items
	body                  []byte // an item's plaintext, sized so the sealed item is benchItemSize

	// Per run.
	mu       sync.Mutex
	want     int64
	got      atomic.Int64
	done     chan struct{}
	failures atomic.Int64
	lastErr  atomic.Value
}

func (s *sealedPath) fail(err error) {
	s.failures.Add(1)
	s.lastErr.Store(err.Error())
}

// sizes fixes the item's plaintext so that a sealed item is 1 KiB, and
// returns the sealed sizes of an item and of its result.
func (s *sealedPath) sizes(b *testing.B) (item, result int) {
	b.Helper()
	probe, err := s.seal(nil)
	if err != nil {
		b.Fatal(err)
	}
	s.body = make([]byte, benchItemSize-len(probe))
	_, _ = rand.Read(s.body)
	sealed, err := s.seal(s.body)
	if err != nil {
		b.Fatal(err)
	}
	res, err := s.result(workitem.Header{ID: workitem.NewID()})
	if err != nil {
		b.Fatal(err)
	}
	return len(sealed), len(res)
}

// seal is what the vault does to put work on the site's queue.
func (s *sealedPath) seal(body []byte) ([]byte, error) {
	s.keysMu.RLock()
	key := s.siteKeys[s.siteVersion]
	s.keysMu.RUnlock()
	return workitem.Seal(key, workitem.Header{Site: s.site, ID: workitem.NewID(), Kind: workitem.KindPing,
		KeyVersion: uint32(s.siteVersion), Expiry: time.Now().Add(benchItemTTL)}, body) // #nosec G115 -- small counters
}

// result seals the engine's answer to h under the engine key (the
// worker's pong).
func (s *sealedPath) result(h workitem.Header) ([]byte, error) {
	out, err := json.Marshal(workitem.Pong{PingID: h.ID, Received: time.Now().UnixNano(), Version: "bench"})
	if err != nil {
		return nil, err
	}
	k := append([]byte(nil), s.engineKey.Bytes...)
	defer clear(k)
	return workitem.Seal(k, workitem.Header{
		Site: s.site, ID: workitem.NewID(), Kind: workitem.KindPong, Engine: s.engineID,
		KeyVersion: uint32(s.engineKey.Version), Expiry: time.Now().Add(benchResultTTL), // #nosec G115 -- small counters
	}, out)
}

// start runs the engine's work consumer and the vault's result consumer
// until the benchmark ends.
func (s *sealedPath) start(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	for _, q := range []string{names.WorkQueue(s.site), names.ResultQueue(s.site)} {
		if err := s.vaultConn.Declare(ctx, q, connector.Shared); err != nil {
			b.Fatal(err)
		}
	}
	engineReplays := workitem.NewReplayCache(1<<16, nil) // the engine's
	vaultReplays := workitem.NewReplayCache(0, nil)      // the vault's
	s.done = make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		err := s.engineConn.Consume(ctx, names.WorkQueue(s.site), s.prefetch, func(ctx context.Context, d connector.Delivery) {
			s.engineHandle(ctx, d, engineReplays)
		})
		if err != nil && ctx.Err() == nil {
			s.fail(fmt.Errorf("engine consumer: %w", err))
		}
	}()
	go func() {
		defer wg.Done()
		err := s.vaultConn.Consume(ctx, names.ResultQueue(s.site), vaultResultPrefetch, func(_ context.Context, d connector.Delivery) {
			s.vaultHandle(d, vaultReplays)
		})
		if err != nil && ctx.Err() == nil {
			s.fail(fmt.Errorf("vault consumer: %w", err))
		}
	}()
	b.Cleanup(func() { cancel(); wg.Wait() })
}

// engineHandle is the engine worker's handling of a work item.
func (s *sealedPath) engineHandle(ctx context.Context, d connector.Delivery, replays *workitem.ReplayCache) {
	sealed := d.Body()
	peek, err := workitem.Peek(sealed)
	if err != nil || peek.Site != s.site || !peek.Kind.SiteKeyed() {
		s.fail(fmt.Errorf("engine: unexpected item (%v)", err))
		_ = d.Ack()
		return
	}
	s.keysMu.RLock()
	key := append([]byte(nil), s.siteKeys[int(peek.KeyVersion)]...)
	s.keysMu.RUnlock()
	defer clear(key)
	h, body, err := workitem.Open(key, sealed, time.Now())
	if err != nil {
		s.fail(fmt.Errorf("engine: open: %w", err))
		_ = d.Ack()
		return
	}
	defer clear(body)
	if !replays.Take(h.ID, h.Expiry) {
		s.fail(errors.New("engine: replayed"))
		_ = d.Ack()
		return
	}
	res, err := s.result(h)
	if err == nil {
		err = s.engineConn.Publish(ctx, names.ResultQueue(s.site), res, benchResultTTL)
	}
	if err != nil {
		s.fail(fmt.Errorf("engine: result: %w", err))
		_ = d.Reject(true)
		return
	}
	_ = d.Ack()
}

// vaultHandle is the vault's handling of a result.
func (s *sealedPath) vaultHandle(d connector.Delivery, replays *workitem.ReplayCache) {
	defer func() { _ = d.Ack() }()
	msg := d.Body()
	peek, err := workitem.Peek(msg)
	if err != nil || peek.Site != s.site || peek.Engine != s.engineID || int(peek.KeyVersion) != s.engineKey.Version {
		s.fail(fmt.Errorf("vault: unexpected result (%v)", err))
		return
	}
	key := append([]byte(nil), s.engineKey.Bytes...) // the vault's engine-key cache hands out a copy
	defer clear(key)
	h, body, err := workitem.Open(key, msg, time.Now())
	if err != nil {
		s.fail(fmt.Errorf("vault: open: %w", err))
		return
	}
	defer clear(body)
	if !replays.Take(h.Site+"/"+h.Engine+"/"+h.ID, h.Expiry) || h.Kind != workitem.KindPong {
		s.fail(errors.New("vault: replayed or wrong kind"))
		return
	}
	var p workitem.Pong
	if err := workitem.DecodeJSON(body, &p); err != nil {
		s.fail(fmt.Errorf("vault: pong: %w", err))
		return
	}
	s.mu.Lock()
	want, done := s.want, s.done
	s.mu.Unlock()
	if s.got.Add(1) == want {
		close(done)
	}
}

// run pushes n items through and returns the time from the first publish
// to the last result handled.
func (s *sealedPath) run(b *testing.B, n int) (time.Duration, error) {
	s.mu.Lock()
	s.got.Store(0)
	s.want, s.done = int64(n), make(chan struct{})
	done := s.done
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range s.publishers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				sealed, err := s.seal(s.body)
				if err == nil {
					err = s.vaultConn.Publish(ctx, names.WorkQueue(s.site), sealed, benchItemTTL)
				}
				if err != nil {
					s.fail(fmt.Errorf("vault: publish: %w", err))
					return
				}
			}
		})
	}
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("sealed path: %d of %d results in time", s.got.Load(), n)
	}
	d := time.Since(start)
	wg.Wait()
	if f := s.failures.Load(); f > 0 {
		return d, fmt.Errorf("sealed path: %d failures, last: %v", f, s.lastErr.Load())
	}
	return d, err
}

// rawPath is amqp091-go alone doing the same broker work.
type rawPath struct {
	vaultConn, engineConn *amqp091.Connection
	vaultPub, enginePub   *amqp091.Channel
	publishers            int
	work, results         string
	item, result          []byte
	expiration            string
	resultExpiration      string

	mu   sync.Mutex
	want int64
	got  int64
	done chan struct{}
	errs chan error
}

func newRawPath(b *testing.B, prefix string, itemLen, resultLen, prefetch, publishers int) *rawPath {
	b.Helper()
	rb := env.Rabbit(b)
	p := &rawPath{publishers: publishers, work: prefix + ".work", results: prefix + ".results",
		item: make([]byte, itemLen), result: make([]byte, resultLen),
		expiration:       strconv.FormatInt(benchItemTTL.Milliseconds(), 10),
		resultExpiration: strconv.FormatInt(benchResultTTL.Milliseconds(), 10),
		errs:             make(chan error, 16)}
	_, _ = rand.Read(p.item)
	_, _ = rand.Read(p.result)
	var err error
	if p.vaultConn, err = rb.Dial(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.vaultConn.Close() })
	if p.engineConn, err = rb.Dial(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.engineConn.Close() })
	// The same arguments connector/amqp gives a Shared queue by default.
	args := amqp091.Table{"x-queue-type": amqp.DefaultQueueType, "x-max-length": int64(amqp.DefaultMaxLength), "x-overflow": "reject-publish"}
	ch, err := p.vaultConn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	for _, q := range []string{p.work, p.results} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil { // left by an earlier run
			b.Fatal(err)
		}
		if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		if ch, err := p.vaultConn.Channel(); err == nil {
			_, _ = ch.QueueDelete(p.work, false, false, false)
			_, _ = ch.QueueDelete(p.results, false, false, false)
		}
	})
	if p.vaultPub, err = confirmChannel(p.vaultConn); err != nil {
		b.Fatal(err)
	}
	if p.enginePub, err = confirmChannel(p.engineConn); err != nil {
		b.Fatal(err)
	}
	// The engine: prefetch 8, each item's result confirmed, then the item
	// acknowledged, up to 8 at once.
	work, err := consumeChannel(p.engineConn, p.work, prefetch)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		var inflight sync.WaitGroup
		for d := range work {
			inflight.Go(func() {
				if err := p.publish(p.enginePub, p.results, p.result, p.resultExpiration); err != nil {
					p.fail(err)
					_ = d.Reject(true)
					return
				}
				if err := d.Ack(false); err != nil {
					p.fail(err)
				}
			})
		}
		inflight.Wait()
	})
	// The vault: prefetch 16, acknowledge each result.
	results, err := consumeChannel(p.vaultConn, p.results, vaultResultPrefetch)
	if err != nil {
		b.Fatal(err)
	}
	wg.Go(func() {
		for d := range results {
			if err := d.Ack(false); err != nil {
				p.fail(err)
			}
			p.mu.Lock()
			p.got++
			if p.got == p.want {
				close(p.done)
			}
			p.mu.Unlock()
		}
	})
	b.Cleanup(func() { _ = p.engineConn.Close(); _ = p.vaultConn.Close(); wg.Wait() })
	return p
}

func confirmChannel(c *amqp091.Connection) (*amqp091.Channel, error) {
	ch, err := c.Channel()
	if err != nil {
		return nil, err
	}
	return ch, ch.Confirm(false)
}

func consumeChannel(c *amqp091.Connection, q string, prefetch int) (<-chan amqp091.Delivery, error) {
	ch, err := c.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return nil, err
	}
	return ch.Consume(q, "", false, false, false, false, nil)
}

func (p *rawPath) fail(err error) {
	select {
	case p.errs <- err:
	default:
	}
}

// publish sends body persistent, mandatory, with its expiration, and
// waits for the broker's confirm.
func (p *rawPath) publish(ch *amqp091.Channel, q string, body []byte, expiration string) error {
	dc, err := ch.PublishWithDeferredConfirm("", q, true, false, amqp091.Publishing{
		DeliveryMode: amqp091.Persistent, Body: body, Expiration: expiration,
	})
	if err != nil {
		return err
	}
	if !dc.Wait() {
		return errors.New("raw: publish nacked")
	}
	return nil
}

func (p *rawPath) run(b *testing.B, n int) (time.Duration, error) {
	publishers := p.publishers
	p.mu.Lock()
	p.got, p.want, p.done = 0, int64(n), make(chan struct{})
	done := p.done
	p.mu.Unlock()
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range publishers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := p.publish(p.vaultPub, p.work, p.item, p.expiration); err != nil {
					p.fail(err)
					return
				}
			}
		})
	}
	var err error
	select {
	case <-done:
	case err = <-p.errs:
	case <-time.After(5 * time.Minute):
		err = errors.New("raw path: timed out")
	}
	d := time.Since(start)
	wg.Wait()
	return d, err
}

// enrollUnwrap opens a key the vault wrapped to the engine's key k, as an
// engine with a soft keystore does.
func enrollUnwrap(k *ecdsa.PrivateKey, label string, blob []byte) ([]byte, error) {
	priv, err := k.ECDH()
	if err != nil {
		return nil, err
	}
	return enroll.Unwrap(func(peer *ecdh.PublicKey) ([]byte, error) { return priv.ECDH(peer) }, &k.PublicKey, label, blob)
}
