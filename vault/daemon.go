package vault

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// BuiltinServer is the server side of the built-in connector
// (connector/builtin): the vault serves it on its connector listener.
type BuiltinServer interface {
	http.Handler
	// Disconnect closes an engine's sessions at once (revocation).
	Disconnect(engineID string)
	// Shutdown closes every session.
	Shutdown(ctx context.Context) error
}

// DialFunc dials a RabbitMQ site connector; secret is the broker password
// (the callee must not keep it).
type DialFunc func(ctx context.Context, url string, secret []byte) (connector.Connector, error)

// DaemonConfig configures the vault daemon.
type DaemonConfig struct {
	// DBPath is the SQLite database.
	DBPath string
	// Keys holds the KEK.
	Keys hsm.Provider
	// APIListener serves the admin and engine callback API (HTTPS).
	APIListener net.Listener
	// Cert is the TLS certificate of the API and the built-in connector.
	Cert tls.Certificate
	// TokenSHA256 is the SHA-256 of the admin token.
	TokenSHA256 [32]byte
	// ConnectorListener, if set, serves the built-in connector (a TLS
	// WebSocket) made by Builtin over Queues; Builtin gets the vault, which
	// authorizes the engines' connections.
	ConnectorListener net.Listener
	Builtin           func(v *Vault) BuiltinServer
	// Queues are the built-in connector's queues. The daemon serves the
	// requests of every builtin site from them. Required.
	Queues *connector.Memory
	// ConnectorURL is how engines reach the built-in connector
	// (wss://host:8671/v1/connector). Empty: the host engines used for the
	// API, with ConnectorListener's port.
	ConnectorURL string
	// DialAMQP dials RabbitMQ for amqp sites; nil refuses them.
	DialAMQP DialFunc
	// Registry receives the daemon's metrics; nil: none.
	Registry prometheus.Registerer
	// Metrics is served at /metrics (behind the admin token); nil: none.
	Metrics http.Handler
	// MaintainEvery is how often the heartbeat and rotation scheduler
	// looks for due work (default 1 s).
	MaintainEvery time.Duration
	// SitePoll is how often the site list is checked for new sites and
	// changed connectors. Default 5 s.
	SitePoll time.Duration
	Log      *slog.Logger
	Audit    audit.Sink
	Options  []Option
}

// Daemon is `sallyport vault`: the store, the admin and callback API, the
// built-in connector, and a credential broker for every site on its
// connector. Create it with NewDaemon, run it with Run, stop it with
// Shutdown.
type Daemon struct {
	cfg     DaemonConfig
	log     *slog.Logger
	vault   *Vault
	api     *http.Server
	conns   *http.Server
	builtin BuiltinServer

	items    *prometheus.CounterVec
	pingRTT  prometheus.Histogram
	tasks    *prometheus.CounterVec
	pongs    *pongBook
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	sitesMu  sync.Mutex
	sites    map[string]*siteServer // by site
	amqpMu   sync.Mutex
	amqp     map[string]*sharedConn // by URL+secret hash
	shutOnce sync.Once
}

// siteServer serves one site on one connector.
type siteServer struct {
	connector string // kind, URL and secret stamp, to notice a change
	conn      connector.Connector
	ctx       context.Context // ends when the site stops on this connector
	cancel    context.CancelFunc
	done      chan struct{}
	// draining are the connectors the site left, each still served
	// until its own deadline, so that nothing queued there is lost (a
	// second move within the grace must not cut the first one short).
	draining []drainingServer
}

// drainingServer is a connector a site left, served until until.
type drainingServer struct {
	s     *siteServer
	until time.Time
	// moved is closed when the mover of the work queued there (to the
	// connector the site went to) has stopped.
	moved chan struct{}
}

// sharedConn is one broker connection shared by the sites on it.
type sharedConn struct {
	conn  connector.Connector
	users int
}

// NewDaemon opens the vault and prepares the servers.
func NewDaemon(ctx context.Context, cfg DaemonConfig) (*Daemon, error) {
	if cfg.Queues == nil || cfg.APIListener == nil {
		return nil, errors.New("vault daemon: queues and an API listener are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.SitePoll <= 0 {
		cfg.SitePoll = 5 * time.Second
	}
	v, err := Open(ctx, cfg.DBPath, cfg.Keys, cfg.Log, cfg.Audit, cfg.Options...)
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Log, vault: v, sites: map[string]*siteServer{}, amqp: map[string]*sharedConn{}, pongs: newPongBook()}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.items = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sallyport_vault_items_total",
		Help: "Work items the vault received from engines, by site, kind and outcome (ok, or why it was rejected).",
	}, []string{"site", "kind", "outcome"})
	d.tasks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sallyport_vault_tasks_total",
		Help: "Heartbeat, change and verify results from engines, by site, op and how the current credential fared.",
	}, []string{"site", "op", "outcome"})
	d.pingRTT = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sallyport_vault_ping_seconds",
		Help:    "Round trips of site pings: vault → site work queue → an engine → result queue → vault.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(d.items, d.pingRTT, d.tasks, newEngineCollector(v), newQueueCollector(d), newMaintenanceCollector(v))
	}
	api := NewAPI(v, cfg.TokenSHA256, cfg.Metrics, cfg.Log,
		WithRevokeHook(d.revoked), WithBuiltinURL(d.builtinURL), WithPinger(d.Ping), WithSitesChanged(d.SyncSites))
	d.api = &http.Server{
		Handler:           api,
		ConnContext:       admit.WithConn,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cfg.Cert}},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn),
	}
	if cfg.ConnectorListener != nil && cfg.Builtin != nil {
		d.builtin = cfg.Builtin(v)
		mux := http.NewServeMux()
		mux.Handle("/v1/connector", d.builtin)
		d.conns = &http.Server{
			Handler:           mux,
			TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cfg.Cert}},
			ReadHeaderTimeout: 10 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn),
		}
	}
	return d, nil
}

// Vault is the daemon's store.
func (d *Daemon) Vault() *Vault { return d.vault }

// Run serves until ctx ends or Shutdown; it returns the first server error.
func (d *Daemon) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, d.cancel)
	defer stop()
	errc := make(chan error, 3)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.api.ServeTLS(d.cfg.APIListener, "", ""); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("api: %w", err)
		}
	}()
	if d.conns != nil {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := d.conns.ServeTLS(d.cfg.ConnectorListener, "", ""); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("connector: %w", err)
			}
		}()
	}
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		d.watchSites()
	}()
	go func() {
		defer d.wg.Done()
		d.maintain()
	}()
	select {
	case <-d.ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// Shutdown stops in order: the API and the connector listener stop
// accepting, the site brokers stop, the connectors close, the store
// closes.
func (d *Daemon) Shutdown(ctx context.Context) error {
	var err error
	d.shutOnce.Do(func() {
		err = errors.Join(d.api.Shutdown(ctx))
		if d.conns != nil {
			err = errors.Join(err, d.conns.Shutdown(ctx))
			if d.builtin != nil {
				err = errors.Join(err, d.builtin.Shutdown(ctx))
			}
		}
		d.cancel()
		d.wg.Wait()
		d.sitesMu.Lock()
		for site, s := range d.sites {
			d.stopSite(s)
			delete(d.sites, site)
		}
		d.sitesMu.Unlock()
		d.amqpMu.Lock()
		for k, sc := range d.amqp {
			_ = sc.conn.Close()
			delete(d.amqp, k)
		}
		d.amqpMu.Unlock()
		err = errors.Join(err, d.vault.Close())
	})
	return err
}

// revoked is called after an engine's revocation.
func (d *Daemon) revoked(engineID string) {
	if d.builtin != nil {
		d.builtin.Disconnect(engineID)
	}
}

// builtinURL tells an engine where the built-in connector is: the
// configured URL, or the host it reached the API on, with the connector
// listener's port.
func (d *Daemon) builtinURL(r *http.Request) string {
	if d.cfg.ConnectorURL != "" {
		return d.cfg.ConnectorURL
	}
	if d.cfg.ConnectorListener == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	_, port, _ := net.SplitHostPort(d.cfg.ConnectorListener.Addr().String())
	return "wss://" + net.JoinHostPort(host, port) + "/v1/connector"
}

// watchSites keeps a broker running for every site on its connector.
func (d *Daemon) watchSites() {
	t := time.NewTicker(d.cfg.SitePoll)
	defer t.Stop()
	for {
		if err := d.syncSites(d.ctx); err != nil && d.ctx.Err() == nil {
			d.log.Warn("site brokers not updated", "err", err)
		}
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SyncSites starts brokers for new sites and moves changed ones now (the
// API calls it after a change, so nobody waits for the next poll).
func (d *Daemon) SyncSites() {
	if err := d.syncSites(d.ctx); err != nil && d.ctx.Err() == nil {
		d.log.Warn("site brokers not updated", "err", err)
	}
}

func (d *Daemon) syncSites(ctx context.Context) error {
	sites, err := d.vault.connectorStamps(ctx)
	if err != nil {
		return err
	}
	d.sitesMu.Lock()
	defer d.sitesMu.Unlock()
	now := d.vault.now()
	for _, s := range sites {
		key := s.stamp
		cur := d.sites[s.Name]
		if cur != nil {
			kept := cur.draining[:0]
			for _, old := range cur.draining {
				if now.After(old.until) {
					d.stopSite(old.s)
					continue
				}
				kept = append(kept, old)
			}
			clear(cur.draining[len(kept):])
			cur.draining = kept
		}
		if cur != nil && cur.connector == key {
			continue
		}
		next, err := d.startSite(ctx, s.Name)
		if err != nil {
			d.log.Error("site broker not started", "site", s.Name, "err", err)
			continue
		}
		next.connector = key
		if cur != nil {
			// Keep draining the old connector, and those it was still
			// draining: items queued there are answered until they would
			// have expired anyway.
			moved := make(chan struct{})
			go func() {
				defer close(moved)
				d.moveWork(cur.ctx, cur.conn, next.conn, s.Name)
			}()
			next.draining = append(cur.draining, drainingServer{s: cur, until: now.Add(SiteKeyGrace), moved: moved})
			cur.draining = nil
			d.log.Info("site moved to another connector; draining the old one", "site", s.Name, "connector", s.kind)
		}
		d.sites[s.Name] = next
	}
	return nil
}

// startSite connects a site's connector and starts its broker and result
// consumer.
func (d *Daemon) startSite(ctx context.Context, site string) (*siteServer, error) {
	spec, err := d.vault.siteConnector(ctx, site)
	if err != nil {
		return nil, err
	}
	defer spec.Wipe()
	var conn connector.Connector
	switch spec.Kind {
	case ConnectorBuiltin:
		conn = d.cfg.Queues.Session()
	case ConnectorAMQP:
		if d.cfg.DialAMQP == nil {
			return nil, errors.New("this vault cannot dial RabbitMQ")
		}
		if conn, err = d.sharedAMQP(ctx, spec.URL, spec.Secret); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown connector %q", spec.Kind)
	}
	sctx, cancel := context.WithCancel(d.ctx)
	s := &siteServer{conn: conn, ctx: sctx, cancel: cancel, done: make(chan struct{})}
	count := func(site, kind, outcome string) { d.items.WithLabelValues(site, kind, outcome).Inc() }
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		d.serveLoop(sctx, site, "requests", func(ctx context.Context) error { return d.vault.ServeSite(ctx, conn, site, count) })
	}()
	go func() {
		defer wg.Done()
		d.serveLoop(sctx, site, "results", func(ctx context.Context) error { return d.serveResults(ctx, conn, site, count) })
	}()
	go func() { wg.Wait(); close(s.done) }()
	d.log.Info("serving site", "site", site, "connector", spec.Kind)
	return s, nil
}

// serveLoop restarts a consumer that stopped on an error, with backoff.
func (d *Daemon) serveLoop(ctx context.Context, site, what string, run func(context.Context) error) {
	backoff := time.Second
	for ctx.Err() == nil {
		err := run(ctx)
		if ctx.Err() != nil || errors.Is(err, connector.ErrClosed) {
			return
		}
		d.log.Warn("site consumer stopped; restarting", "site", site, "consumer", what, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// moveWork moves the work queued for a site's engines on the connector it
// left to the one it went to, until ctx ends (the end of the drain):
// engines still on the old connector take what they can meanwhile, and
// what is left there would otherwise wait for engines that have moved.
// Each item is published on the new connector before it is acknowledged
// on the old one; an expired item is dropped, and counted.
func (d *Daemon) moveWork(ctx context.Context, from, to connector.Connector, site string) {
	queue := names.WorkQueue(site)
	d.serveLoop(ctx, site, "work mover", func(ctx context.Context) error {
		if err := from.Declare(ctx, queue, connector.Shared); err != nil {
			return err
		}
		if err := to.Declare(ctx, queue, connector.Shared); err != nil {
			return err
		}
		return from.Consume(ctx, queue, 16, func(ctx context.Context, dl connector.Delivery) {
			h, err := workitem.Peek(dl.Body())
			ttl := h.Expiry.Sub(d.vault.now())
			if err != nil || ttl <= 0 {
				d.items.WithLabelValues(site, h.Kind.String(), "expired_in_move").Inc()
				_ = dl.Ack()
				return
			}
			if err := to.Publish(ctx, queue, dl.Body(), ttl); err != nil {
				_ = dl.Reject(true)
				return
			}
			_ = dl.Ack()
			d.items.WithLabelValues(site, h.Kind.String(), "moved").Inc()
		})
	})
}

// stopSite stops a site's consumers and releases its connection.
func (d *Daemon) stopSite(s *siteServer) {
	for _, old := range s.draining {
		d.stopSite(old.s)
		<-old.moved
	}
	s.draining = nil
	s.cancel()
	<-s.done
	d.amqpMu.Lock()
	defer d.amqpMu.Unlock()
	for k, sc := range d.amqp {
		if sc.conn == s.conn {
			if sc.users--; sc.users == 0 {
				_ = sc.conn.Close()
				delete(d.amqp, k)
			}
			return
		}
	}
	_ = s.conn.Close() // a memory session
}

// sharedAMQP returns the broker connection for url (one per broker and
// credentials, shared by its sites).
func (d *Daemon) sharedAMQP(ctx context.Context, url string, secret []byte) (connector.Connector, error) {
	sum := sha256.Sum256(secret)
	key := url + "\x00" + hex.EncodeToString(sum[:])
	d.amqpMu.Lock()
	defer d.amqpMu.Unlock()
	if sc, ok := d.amqp[key]; ok {
		sc.users++
		return sc.conn, nil
	}
	conn, err := d.cfg.DialAMQP(ctx, url, secret)
	if err != nil {
		return nil, err
	}
	d.amqp[key] = &sharedConn{conn: conn, users: 1}
	return conn, nil
}

// serveResults takes what a site's engines send back on its result queue
// (pongs and task results), each sealed under its engine's key.
func (d *Daemon) serveResults(ctx context.Context, conn connector.Connector, site string, count ItemCounter) error {
	queue := names.ResultQueue(site)
	if err := conn.Declare(ctx, queue, connector.Shared); err != nil {
		return err
	}
	return conn.Consume(ctx, queue, maxInFlight, func(ctx context.Context, dl connector.Delivery) {
		if d.result(ctx, site, dl.Body(), count) {
			// Not applied for a passing reason (the store was busy):
			// after a pause, back to the queue for another try.
			select {
			case <-time.After(retryPause):
			case <-ctx.Done():
			}
			_ = dl.Reject(true)
			return
		}
		_ = dl.Ack()
	})
}

// retryPause is how long a result that could not be applied waits before
// it goes back to the queue.
const retryPause = time.Second

// result takes one message from a site's result queue; retry says it was
// not applied for a passing reason and should come again.
func (d *Daemon) result(ctx context.Context, site string, msg []byte, count ItemCounter) (retry bool) {
	v := d.vault
	peek, err := workitem.Peek(msg)
	if err != nil {
		v.reject(site, "unknown", rejectMalformed, count)
		return false
	}
	kind := peek.Kind.String()
	if peek.Site != site {
		v.reject(site, kind, rejectWrongSite, count)
		return false
	}
	key, version, engineSite, err := v.engineKeyOf(ctx, peek.Engine)
	if err != nil {
		v.reject(site, kind, rejectUnknownEngine, count, slog.String("engine", logSafe(peek.Engine)))
		return false
	}
	defer clear(key)
	if engineSite != site || int(peek.KeyVersion) != version { // #nosec G115 -- small counters
		v.reject(site, kind, rejectStaleKey, count)
		return false
	}
	h, body, err := workitem.Open(key, msg, v.now())
	if err != nil {
		v.reject(site, kind, rejectAuth, count)
		return false
	}
	defer clear(body)
	if !v.replays.Take(h.Site+"/"+h.Engine+"/"+h.ID, h.Expiry) {
		v.reject(site, kind, rejectReplay, count)
		return false
	}
	if h.Kind == workitem.KindTaskResult {
		if d.taskResult(ctx, site, h, body, count) {
			v.replays.Forget(h.Site + "/" + h.Engine + "/" + h.ID)
			return true
		}
		return false
	}
	if h.Kind != workitem.KindPong {
		v.reject(site, kind, rejectKind, count)
		return false
	}
	var p workitem.Pong
	if err := workitem.DecodeJSON(body, &p); err != nil {
		v.reject(site, kind, rejectBody, count)
		return false
	}
	if count != nil {
		count(site, kind, "ok")
	}
	d.pongs.deliver(p.PingID, PingResult{Engine: h.Engine, Site: site, Version: p.Version})
	return false
}

// PingResult is an engine's answer to a site ping.
type PingResult struct {
	Engine  string        `json:"engine"`
	Site    string        `json:"site"`
	Version string        `json:"version"`
	RTT     time.Duration `json:"rtt_ns"`
}

// pingTTL bounds how long a ping waits in a work queue.
const pingTTL = 30 * time.Second

// Ping sends a ping to site's work queue and waits (up to ctx) for an
// engine's answer.
func (d *Daemon) Ping(ctx context.Context, site string) (PingResult, error) {
	d.sitesMu.Lock()
	s := d.sites[site]
	d.sitesMu.Unlock()
	if s == nil {
		if ok, err := d.vault.siteExists(ctx, d.vault.db, site); err != nil || !ok {
			return PingResult{}, fmt.Errorf("site %q: %w", site, ErrNotFound)
		}
		return PingResult{}, fmt.Errorf("site %s is not served yet", site)
	}
	key, version, err := d.vault.SiteKey(ctx, site)
	if err != nil {
		return PingResult{}, err
	}
	defer clear(key)
	id := workitem.NewID()
	start := time.Now()
	body, err := json.Marshal(workitem.Ping{Sent: start.UnixNano()})
	if err != nil {
		return PingResult{}, err
	}
	sealed, err := workitem.Seal(key, workitem.Header{Site: site, ID: id, Kind: workitem.KindPing,
		KeyVersion: uint32(version), Expiry: start.Add(pingTTL)}, body) // #nosec G115 -- small counters
	if err != nil {
		return PingResult{}, err
	}
	wait := d.pongs.expect(id)
	defer d.pongs.forget(id)
	if err := s.conn.Declare(ctx, names.WorkQueue(site), connector.Shared); err != nil {
		return PingResult{}, err
	}
	if err := s.conn.Publish(ctx, names.WorkQueue(site), sealed, pingTTL); err != nil {
		return PingResult{}, fmt.Errorf("ping %s: %w", site, err)
	}
	select {
	case r := <-wait:
		r.RTT = time.Since(start)
		d.pingRTT.Observe(r.RTT.Seconds())
		return r, nil
	case <-ctx.Done():
		return PingResult{}, fmt.Errorf("ping %s: no engine answered: %w", site, ctx.Err())
	}
}

// pongBook routes pongs to the pings waiting for them.
type pongBook struct {
	mu      sync.Mutex
	waiting map[string]chan PingResult
}

func newPongBook() *pongBook { return &pongBook{waiting: map[string]chan PingResult{}} }

func (b *pongBook) expect(id string) <-chan PingResult {
	ch := make(chan PingResult, 1)
	b.mu.Lock()
	b.waiting[id] = ch
	b.mu.Unlock()
	return ch
}

func (b *pongBook) forget(id string) {
	b.mu.Lock()
	delete(b.waiting, id)
	b.mu.Unlock()
}

func (b *pongBook) deliver(id string, r PingResult) {
	b.mu.Lock()
	ch, ok := b.waiting[id]
	delete(b.waiting, id)
	b.mu.Unlock()
	if ok {
		ch <- r
	}
}
