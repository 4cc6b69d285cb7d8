package vault

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// gatedConn is a RabbitMQ stand-in: a memory connector whose consumers
// wait until open is closed, so that items published to it stay queued
// until then.
type gatedConn struct {
	*connector.Memory
	open chan struct{}
}

func newGatedConn(opened bool) *gatedConn {
	g := &gatedConn{Memory: connector.NewMemory(0), open: make(chan struct{})}
	if opened {
		close(g.open)
	}
	return g
}

func (g *gatedConn) Consume(ctx context.Context, queue string, prefetch int, handle func(context.Context, connector.Delivery)) error {
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil
	}
	return g.Memory.Consume(ctx, queue, prefetch, handle)
}

// closed reports whether the daemon released (closed) the connection.
func (g *gatedConn) closed() bool {
	return errors.Is(g.Memory.Declare(context.Background(), "probe", connector.Shared), connector.ErrClosed)
}

// amqpDialer is the daemon's DialAMQP: one gatedConn per broker URL.
type amqpDialer struct {
	mu      sync.Mutex
	brokers map[string]*gatedConn
	dials   []string // "URL secret"
}

func (a *amqpDialer) dial(_ context.Context, url string, secret []byte) (connector.Connector, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dials = append(a.dials, url+" "+string(secret))
	g, ok := a.brokers[url]
	if !ok {
		return nil, fmt.Errorf("no broker at %s", url)
	}
	return g, nil
}

func (a *amqpDialer) dialed() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.dials...)
}

// fakeBuiltin stands in for connector/builtin's server.
type fakeBuiltin struct {
	mu           sync.Mutex
	disconnected []string
	shutdowns    int
	onShutdown   func()
}

func (f *fakeBuiltin) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "not here", http.StatusNotFound)
}

func (f *fakeBuiltin) Disconnect(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disconnected = append(f.disconnected, id)
}

func (f *fakeBuiltin) Shutdown(context.Context) error {
	f.mu.Lock()
	hook := f.onShutdown
	f.shutdowns++
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	return nil
}

// daemonEnv is a Daemon on loopback with soft keys, the built-in
// connector's queues in memory, and RabbitMQ brokers faked by gatedConns.
type daemonEnv struct {
	d       *Daemon
	queues  *connector.Memory
	builtin *fakeBuiltin
	dialer  *amqpDialer
	apiAddr string
	cert    tls.Certificate
	clk     *clock
	runErr  chan error
}

func newDaemonEnv(t *testing.T, brokers map[string]*gatedConn) *daemonEnv {
	t.Helper()
	dir := t.TempDir()
	keys, err := hsm.OpenSoft(filepath.Join(dir, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.EnsureAESKey(context.Background(), hsm.LabelKEK); err != nil {
		t.Fatal(err)
	}
	cert, err := EnsureTLSCert(filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	connLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &daemonEnv{queues: connector.NewMemory(0), builtin: &fakeBuiltin{}, dialer: &amqpDialer{brokers: brokers},
		apiAddr: apiLn.Addr().String(), cert: cert, clk: &clock{t: time.Now()}}
	e.d, err = NewDaemon(context.Background(), DaemonConfig{
		DBPath: filepath.Join(dir, "data", "vault.db"), Keys: keys, APIListener: apiLn, Cert: cert,
		TokenSHA256: sha256.Sum256([]byte(testToken)), ConnectorListener: connLn,
		Builtin: func(*Vault) BuiltinServer { return e.builtin }, Queues: e.queues,
		DialAMQP: e.dialer.dial, SitePoll: time.Hour, Log: discardLogger(),
		Options: []Option{WithClock(e.clk.now)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.d.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if e.runErr != nil {
			select {
			case <-e.runErr:
			case <-ctx.Done():
				t.Error("Run did not return after Shutdown")
			}
		}
		e.queues.Close()
		for _, b := range brokers {
			b.Close()
		}
	})
	return e
}

// run starts the daemon and waits until it serves every site.
func (e *daemonEnv) run(t *testing.T) {
	t.Helper()
	e.runErr = make(chan error, 1)
	go func() { e.runErr <- e.d.Run(context.Background()) }()
	sites, err := e.d.Vault().ListSites(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		e.waitServed(t, s.Name, s.Connector+" "+s.ConnectorURL)
	}
}

// waitServed waits until site is served on the connector named key (kind
// and URL).
func (e *daemonEnv) waitServed(t *testing.T, site, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.d.sitesMu.Lock()
		s := e.d.sites[site]
		ok := s != nil && strings.HasPrefix(s.connector, key+" ") // then the password's stamp
		e.d.sitesMu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("site %s is not served on %q", site, key)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// apiClient trusts the daemon's certificate.
func (e *daemonEnv) apiClient(t *testing.T) *http.Client {
	t.Helper()
	leaf, err := x509.ParseCertificate(e.cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
}

// pongingEngine answers the pings of site's work queue on conn as engine,
// the way an engine does, until the test ends.
func pongingEngine(t *testing.T, v *Vault, conn connector.Connector, site, engine string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = conn.Consume(ctx, names.WorkQueue(site), 4, func(ctx context.Context, dl connector.Delivery) {
			defer func() { _ = dl.Ack() }()
			peek, err := workitem.Peek(dl.Body())
			if err != nil || peek.Kind != workitem.KindPing {
				return
			}
			siteKey, err := v.siteKeyAt(ctx, site, int(peek.KeyVersion))
			if err != nil {
				return
			}
			h, _, err := workitem.Open(siteKey, dl.Body(), time.Now())
			if err != nil || h.Site != site {
				return
			}
			key, version, _, err := v.engineKeyOf(ctx, engine)
			if err != nil {
				return
			}
			body, _ := json.Marshal(workitem.Pong{PingID: h.ID, Received: time.Now().UnixNano(), Version: "engine-" + engine[:4]})
			sealed, err := workitem.Seal(key, workitem.Header{Site: site, ID: workitem.NewID(), Kind: workitem.KindPong, Engine: engine,
				KeyVersion: uint32(version), Expiry: time.Now().Add(30 * time.Second)}, body) // #nosec G115 -- test
			if err != nil {
				return
			}
			_ = conn.Publish(ctx, names.ResultQueue(site), sealed, 30*time.Second)
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func TestDaemon(t *testing.T) {
	broker := newGatedConn(true)
	const brokerURL = "amqps://sallyport@rabbit.test:5671/"
	env := newDaemonEnv(t, map[string]*gatedConn{brokerURL: broker})
	v := env.d.Vault()
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: brokerURL, Secret: []byte("broker-pw")}}); err != nil {
		t.Fatal(err)
	}
	if err := v.AddSite(ctx, SiteSpec{Name: "empty", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	home, paris := newTestEngine(t), newTestEngine(t)
	home.register(t, v, DefaultSite, true)
	paris.register(t, v, "paris", true)
	for _, s := range []struct{ name, site string }{{"home01", DefaultSite}, {"paris01", "paris"}} {
		spec := passwordSecret(t, s.name, "pw-"+s.name, "alice")
		spec.Site = s.site
		if err := v.AddSecret(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	env.run(t)

	t.Run("sites served", func(t *testing.T) {
		// One dial for the broker, with the stored password.
		if d := env.dialer.dialed(); len(d) != 1 || d[0] != brokerURL+" broker-pw" {
			t.Fatalf("dials %q", d)
		}
		for _, tt := range []struct {
			site, engine, secret string
			conn                 connector.Connector
		}{
			{DefaultSite, home.id, "home01", env.queues},
			{"paris", paris.id, "paris01", broker.Memory},
		} {
			a := newSiteAsker(t, v, tt.conn, tt.site, tt.engine)
			r := a.ask(t, workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Source: "192.0.2.1:1", Secret: tt.secret})
			if r.Credential == nil || string(r.Credential.Password) != "pw-"+tt.secret {
				t.Fatalf("site %s: %+v", tt.site, r)
			}
		}
		// Each site is served on its own connector only.
		if n := broker.Depth(names.RequestQueue(DefaultSite)) + env.queues.Depth(names.RequestQueue("paris")); n != 0 {
			t.Fatalf("%d requests on the wrong connector", n)
		}
	})

	t.Run("ping", func(t *testing.T) {
		pongingEngine(t, v, env.queues, DefaultSite, home.id)
		pongingEngine(t, v, broker.Memory, "paris", paris.id)
		for _, tt := range []struct{ site, engine string }{{DefaultSite, home.id}, {"paris", paris.id}} {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			r, err := env.d.Ping(pctx, tt.site)
			cancel()
			if err != nil || r.Site != tt.site || r.Engine != tt.engine || r.Version != "engine-"+tt.engine[:4] || r.RTT <= 0 {
				t.Fatalf("ping %s: %+v %v", tt.site, r, err)
			}
		}
		if _, err := env.d.Ping(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ping of a site that does not exist: %v", err)
		}
		// Nobody reads the empty site's work: the ping ends with its context.
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := env.d.Ping(pctx, "empty"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("ping with no engine: %v", err)
		}
	})

	t.Run("revocation disconnects", func(t *testing.T) {
		req, err := http.NewRequest("POST", "https://"+env.apiAddr+"/v1/engines/"+home.id+"/revoke", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := env.apiClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("revoke: %d", resp.StatusCode)
		}
		env.builtin.mu.Lock()
		got := append([]string(nil), env.builtin.disconnected...)
		env.builtin.mu.Unlock()
		if len(got) != 1 || got[0] != home.id {
			t.Fatalf("Disconnect calls %q, want [%s]", got, home.id)
		}
		if _, _, _, err := v.engineKeyOf(ctx, home.id); !errors.Is(err, ErrRevoked) {
			t.Fatalf("after revocation: %v", err)
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		// When the built-in connector shuts down, the API no longer
		// accepts and the store is still open.
		var apiDialErr, storeErr error
		env.builtin.mu.Lock()
		env.builtin.onShutdown = func() {
			var c net.Conn
			if c, apiDialErr = net.DialTimeout("tcp", env.apiAddr, time.Second); apiDialErr == nil {
				c.Close()
			}
			_, storeErr = v.ListSites(ctx)
		}
		env.builtin.mu.Unlock()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := env.d.Shutdown(sctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-env.runErr:
			if err != nil {
				t.Fatalf("Run returned %v", err)
			}
		case <-sctx.Done():
			t.Fatal("Run did not return")
		}
		env.runErr = nil
		env.builtin.mu.Lock()
		shutdowns := env.builtin.shutdowns
		env.builtin.mu.Unlock()
		if shutdowns != 1 || apiDialErr == nil || storeErr != nil {
			t.Fatalf("built-in connector shut down %d times; API dial during it: %v; store during it: %v", shutdowns, apiDialErr, storeErr)
		}
		// Then the site brokers stopped, the broker connection closed and
		// the store closed.
		env.d.sitesMu.Lock()
		served := len(env.d.sites)
		env.d.sitesMu.Unlock()
		if served != 0 || !broker.closed() {
			t.Fatalf("after shutdown: %d sites served, broker closed %v", served, broker.closed())
		}
		if _, err := v.ListSites(ctx); err == nil {
			t.Fatal("the store is still open")
		}
		if err := env.d.Shutdown(sctx); err != nil {
			t.Fatalf("a second Shutdown: %v", err)
		}
	})
}

// TestDaemonMoveSite: items queued on a connector a site leaves are still
// answered, once each, and the old connector is released after the grace.
func TestDaemonMoveSite(t *testing.T) {
	const urlX, urlY = "amqps://sallyport@rabbit-x.test:5671/", "amqps://sallyport@rabbit-y.test:5671/"
	x, y := newGatedConn(false), newGatedConn(true)
	env := newDaemonEnv(t, map[string]*gatedConn{urlX: x, urlY: y})
	v := env.d.Vault()
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: urlX}}); err != nil {
		t.Fatal(err)
	}
	e := newTestEngine(t)
	e.register(t, v, "paris", true)
	if err := v.AddSecret(ctx, SecretSpec{Name: "web01", Site: "paris", Host: "10.0.0.5", Port: 22, Username: "root",
		Password: []byte("Paris-Web01-Pw"), HostKey: authorizedLine(newHostKey(t)), Allow: []string{"alice"}}); err != nil {
		t.Fatal(err)
	}
	env.run(t)
	onX := newSiteAsker(t, v, x.Memory, "paris", e.id)
	checkout := workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Source: "192.0.2.1:1", Secret: "web01"}

	// Broker X is slow: what the engine asks there waits in its queue.
	const queued = 20
	var idsX []string
	for range queued {
		idsX = append(idsX, onX.send(t, checkout))
	}
	if d := x.Depth(names.RequestQueue("paris")); d != queued {
		t.Fatalf("%d requests queued on X, want %d", d, queued)
	}
	move := func(c ConnectorSpec, key string) {
		t.Helper()
		if err := v.SetSiteConnector(ctx, "paris", c); err != nil {
			t.Fatal(err)
		}
		env.d.SyncSites()
		env.waitServed(t, "paris", key)
	}
	ask := func(a *siteAsker, n int) []string {
		t.Helper()
		var ids []string
		for range n {
			ids = append(ids, a.send(t, checkout))
		}
		if missing := a.replies.waitAll(ids, 10*time.Second); len(missing) > 0 {
			t.Fatalf("%d of %d requests on the new connector not answered", len(missing), n)
		}
		return ids
	}

	// The site moves to the built-in connector, then (still within the
	// grace) to broker Y. Both answer what is asked there.
	move(ConnectorSpec{Kind: ConnectorBuiltin}, ConnectorBuiltin+" ")
	onBuiltin := newSiteAsker(t, v, env.queues, "paris", e.id)
	idsBuiltin := ask(onBuiltin, 5)
	move(ConnectorSpec{Kind: ConnectorAMQP, URL: urlY}, ConnectorAMQP+" "+urlY)
	onY := newSiteAsker(t, v, y.Memory, "paris", e.id)
	idsY := ask(onY, 5)
	if onX.replies.total() != 0 || x.closed() {
		t.Fatalf("broker X: %d replies before it was read, closed %v", onX.replies.total(), x.closed())
	}

	// X recovers: everything queued there before the moves is answered.
	close(x.open)
	if missing := onX.replies.waitAll(idsX, 15*time.Second); len(missing) > 0 {
		t.Fatalf("%d of %d requests queued on the connector the site left were lost", len(missing), queued)
	}
	for _, tt := range []struct {
		name string
		a    *siteAsker
		ids  []string
	}{{"X", onX, idsX}, {"builtin", onBuiltin, idsBuiltin}, {"Y", onY, idsY}} {
		for _, id := range tt.ids {
			if n := tt.a.replies.times(id); n != 1 {
				t.Fatalf("%s: request answered %d times", tt.name, n)
			}
			if r := tt.a.open(t, id); r.Credential == nil || string(r.Credential.Password) != "Paris-Web01-Pw" {
				t.Fatalf("%s: %+v", tt.name, r)
			}
		}
		if tt.a.replies.total() != len(tt.ids) {
			t.Fatalf("%s: %d replies for %d requests", tt.name, tt.a.replies.total(), len(tt.ids))
		}
	}
	if d := x.Depth(names.RequestQueue("paris")); d != 0 {
		t.Fatalf("%d requests left on X", d)
	}

	draining := func() int {
		env.d.sitesMu.Lock()
		defer env.d.sitesMu.Unlock()
		return len(env.d.sites["paris"].draining)
	}
	// Within the grace a sync keeps both connectors the site left.
	env.clk.set(env.clk.now().Add(SiteKeyGrace - time.Second))
	env.d.SyncSites()
	if n := draining(); n != 2 || x.closed() {
		t.Fatalf("within the grace: %d connectors drained (want X and builtin), X closed %v", n, x.closed())
	}
	// Past the grace the connectors the site left are released; the one
	// it is on stays.
	env.clk.set(env.clk.now().Add(2 * time.Second))
	env.d.SyncSites()
	if n := draining(); n != 0 || !x.closed() || y.closed() {
		t.Fatalf("past the grace: %d connectors drained, X closed %v, Y closed %v", n, x.closed(), y.closed())
	}
	env.waitServed(t, "paris", ConnectorAMQP+" "+urlY)
}
