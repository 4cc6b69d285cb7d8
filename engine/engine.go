package engine

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/enroll"
	"github.com/sallyport/sallyport/gateway/rdp"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/names"
)

// Defaults for Config.
const (
	DefaultPollInterval    = 30 * time.Second
	DefaultPendingInterval = 5 * time.Second
	stateFile              = "engine-state.json"
	maxConfigBody          = 1 << 20
)

// ErrRevoked is returned by Run when the vault has revoked the engine.
var ErrRevoked = errors.New("engine: revoked by the vault")

// ConnectorSettings is what ConnectFunc needs to reach the site's
// connector: the vault's choice (kind, URL, broker password, already
// unwrapped: the callee wipes it when done) and the engine's identity (for
// the built-in connector, which authenticates engines by signature).
type ConnectorSettings struct {
	Kind   string
	URL    string
	Secret []byte
	Site   string
	Engine string
	Signer crypto.Signer
	// VaultCA is the pinned vault certificate pool (the built-in
	// connector is served by the vault).
	VaultCA *x509.CertPool
}

// ConnectFunc dials a site connector.
type ConnectFunc func(ctx context.Context, s ConnectorSettings) (connector.Connector, error)

// Config configures an Engine.
type Config struct {
	// VaultURL is the vault's API (https://host:8443).
	VaultURL string
	// VaultCA pins the vault's certificate: only these roots are trusted.
	VaultCA *x509.CertPool
	// Site is the engine's site.
	Site string
	// DataDir keeps the engine's state: the configuration last pulled,
	// whose keys are wrapped to the identity key.
	DataDir string
	// Keys holds the identity key (hsm.LabelEngineKey, made if missing).
	Keys hsm.Provider
	// Name is shown to the administrator who approves the engine.
	Name string
	// PollInterval is how often the configuration is pulled once approved.
	PollInterval time.Duration
	// Connect dials the site connector the vault names.
	Connect ConnectFunc
	// Gateway is the SSH gateway's configuration; the engine fills in its
	// credential source and grant checker. Its Auth may use
	// Engine.LocalUsers for local users.
	Gateway gw.Config
	// SSHListener is where the gateway serves.
	SSHListener net.Listener
	// RDP is the RDP gateway's configuration; the engine fills in its
	// credential source. Used only with RDPListener.
	RDP rdp.Config
	// RDPListener, if set, is where the RDP gateway serves, beside the
	// SSH one.
	RDPListener net.Listener
	// Log receives operational messages.
	Log *slog.Logger
	// Registry, if set, receives the engine's metrics.
	Registry prometheus.Registerer
	// OnServing, if set, is called once, when the gateway first serves.
	OnServing func()
	// Now replaces the clock in tests.
	Now func() time.Time
	// MaxChanges and HostChanges bound the credential changes the engine
	// makes at once, in all and per target host (0: DefaultMaxChanges,
	// DefaultHostChanges).
	MaxChanges, HostChanges int
}

// Engine is a running engine. Create it with New, run it with Run, stop it
// with Shutdown.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	hc      *http.Client
	signer  crypto.Signer
	pub     *ecdsa.PublicKey
	id      string
	fp      string
	link    *link
	metrics *metrics
	tasks   *taskRunner // shared by the connections the engine moves between

	mu       sync.Mutex
	applied  *enroll.EngineConfig // the configuration in force
	connID   []byte               // SHA-256 over the connector's kind, URL and secret
	conn     connector.Connector
	connStop context.CancelFunc
	connWG   *sync.WaitGroup
	creds    *Credentials
	work     *worker
	retiring sync.WaitGroup // connections left behind, until their grace ends
	gateway  *gw.Server
	gwDone   chan error
	rdp      *rdp.Server
	rdpDone  chan error

	pullNow chan chan struct{} // asks Run to pull the configuration now

	runCtx    context.Context
	runCancel context.CancelFunc
	stopped   chan struct{}
}

// New loads or makes the engine's identity key and prepares the engine.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	switch {
	case cfg.Keys == nil:
		return nil, errors.New("engine: no key provider")
	case cfg.VaultCA == nil:
		return nil, errors.New("engine: the vault's certificate must be pinned (--ca-file)")
	case !names.ValidSiteName(cfg.Site):
		return nil, fmt.Errorf("engine: %q is not a site name", cfg.Site)
	case cfg.Connect == nil:
		return nil, errors.New("engine: no connector dialer")
	case cfg.DataDir == "":
		return nil, errors.New("engine: no data directory")
	}
	u, err := url.Parse(cfg.VaultURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") {
		return nil, errors.New("engine: the vault address must look like https://host:port")
	}
	cfg.VaultURL = "https://" + u.Host
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("engine: data directory: %w", err)
	}
	if err := cfg.Keys.EnsureSigner(ctx, hsm.LabelEngineKey); err != nil {
		return nil, fmt.Errorf("engine: identity key: %w", err)
	}
	signer, err := cfg.Keys.Signer(ctx, hsm.LabelEngineKey)
	if err != nil {
		return nil, fmt.Errorf("engine: identity key: %w", err)
	}
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("engine: identity key is not ECDSA P-256")
	}
	id, err := enroll.EngineID(pub)
	if err != nil {
		return nil, err
	}
	fp, err := enroll.Fingerprint(pub)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:                 nil, // the engine talks to its vault directly
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: cfg.VaultCA, MinVersion: tls.VersionTLS13},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	m, err := newMetrics(cfg.Registry, cfg.Site)
	if err != nil {
		return nil, fmt.Errorf("engine: metrics: %w", err)
	}
	e := &Engine{
		metrics: m,
		cfg:     cfg, log: cfg.Log.With("engine", id), signer: signer, pub: pub, id: id, fp: fp,
		hc:      &http.Client{Transport: tr, Timeout: time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		link:    &link{},
		tasks:   newTaskRunner(cfg.MaxChanges, cfg.HostChanges),
		stopped: make(chan struct{}),
		pullNow: make(chan chan struct{}),
	}
	e.runCtx, e.runCancel = context.WithCancel(context.Background())
	return e, nil
}

// SetGateway sets the gateway's configuration (before Run): its Auth may
// need LocalUsers, which exists only once the engine does.
func (e *Engine) SetGateway(c gw.Config) { e.cfg.Gateway = c }

// ID is the engine's id; Fingerprint its key's fingerprint, for the
// administrator who approves it.
func (e *Engine) ID() string { return e.id }

// Fingerprint is the SHA-256 fingerprint of the engine's public key.
func (e *Engine) Fingerprint() string { return e.fp }

// LocalUsers is the vault's local-user check, for the gateway's LocalAuth:
// "unavailable" until the engine is connected.
func (e *Engine) LocalUsers() gw.LocalUsers { return e.link }

// Run registers the engine, waits for its approval, and serves until ctx
// ends or Shutdown is called (it then returns nil), or the vault revokes
// the engine (ErrRevoked). A vault that cannot be reached is retried; with
// a configuration pulled before, the engine serves meanwhile.
func (e *Engine) Run(ctx context.Context) error {
	defer close(e.stopped)
	stop := context.AfterFunc(ctx, e.runCancel)
	defer stop()
	ctx = e.runCtx
	if cached, err := e.loadState(); err == nil && cached.State == enroll.StateApproved {
		e.log.Info("starting from the configuration pulled before; checking with the vault")
		if err := e.apply(ctx, cached); err != nil {
			e.log.Warn("the saved configuration does not apply", "err", err)
		}
	}
	if err := e.register(ctx); err != nil {
		return e.stopAll(err)
	}
	waiting := false
	var pullWaiters []chan struct{}
	for {
		cfg, err := e.pull(ctx)
		switch {
		case ctx.Err() != nil:
			return e.stopAll(nil)
		case err != nil:
			e.log.Warn("configuration pull failed; retrying", "err", err)
		case cfg.State == enroll.StateRevoked:
			e.log.Error("the vault revoked this engine; stopping")
			_ = os.Remove(filepath.Join(e.cfg.DataDir, stateFile))
			return e.stopAll(ErrRevoked)
		case cfg.State == enroll.StatePending:
			if !waiting {
				e.log.Info("waiting for approval: sallyport ctl engine approve "+e.id, "fingerprint", e.fp)
				waiting = true
			}
		case cfg.State == enroll.StateApproved:
			if waiting {
				e.log.Info("approved")
				waiting = false
			}
			if err := e.apply(ctx, cfg); err != nil {
				e.log.Error("configuration does not apply", "err", err)
			} else if err := e.saveState(cfg); err != nil {
				e.log.Warn("configuration not saved", "err", err)
			}
		}
		for _, w := range pullWaiters {
			close(w)
		}
		pullWaiters = pullWaiters[:0]
		lastPull := time.Now()
		every := e.cfg.PollInterval
		if waiting || e.current() == nil {
			every = DefaultPendingInterval
		}
		select {
		case <-ctx.Done():
			return e.stopAll(nil)
		case <-time.After(jitter(every)):
		case w := <-e.pullNow:
			// Work sealed under a site key this engine does not have
			// yet: pull now, but at most once a second, so that items
			// naming made-up key versions cannot make it hammer the
			// vault.
			pullWaiters = append(pullWaiters, w)
			if wait := time.Second - time.Since(lastPull); wait > 0 {
				select {
				case <-ctx.Done():
					return e.stopAll(nil)
				case <-time.After(wait):
				}
			}
		}
	}
}

// jitter spreads d by ±10 %, so engines do not pull in step.
func jitter(d time.Duration) time.Duration {
	return d + time.Duration((rand.Float64()-0.5)*0.2*float64(d)) // #nosec G404 -- spreading load, not secrecy
}

// refreshKeys asks Run for a configuration pull now and waits (bounded)
// until it has been applied: the worker met an item under a site key
// version it does not have, as right after the vault rotated the key.
func (e *Engine) refreshKeys(ctx context.Context) {
	done := make(chan struct{})
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case e.pullNow <- done:
	case <-ctx.Done():
		return
	case <-t.C:
		return
	}
	t.Reset(15 * time.Second)
	select {
	case <-done:
	case <-ctx.Done():
	case <-t.C:
	}
}

func (e *Engine) current() *enroll.EngineConfig {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.applied
}

// register announces the engine's key to the vault (idempotent), retrying
// while the vault cannot be reached.
func (e *Engine) register(ctx context.Context) error {
	der, err := enroll.MarshalPublicKey(e.pub)
	if err != nil {
		return err
	}
	body, err := json.Marshal(enroll.RegisterRequest{Site: e.cfg.Site, PublicKey: der, Name: e.cfg.Name})
	if err != nil {
		return err
	}
	backoff := time.Second
	for {
		var out enroll.Registered
		status, err := e.call(ctx, http.MethodPost, "/v1/engine/register", body, &out)
		switch {
		case err == nil && status == http.StatusOK:
			e.log.Info("registered with the vault", "site", e.cfg.Site, "state", out.State, "fingerprint", e.fp)
			return nil
		case err == nil && status == http.StatusForbidden:
			return ErrRevoked
		case err == nil && status >= 400 && status < 500:
			return fmt.Errorf("engine: the vault refused the registration (HTTP %d)", status)
		}
		e.log.Warn("cannot reach the vault to register; retrying", "err", err, "status", status, "in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// pull fetches the engine's configuration.
func (e *Engine) pull(ctx context.Context) (*enroll.EngineConfig, error) {
	var cfg enroll.EngineConfig
	status, err := e.call(ctx, http.MethodGet, "/v1/engine/config", nil, &cfg)
	if err != nil {
		return nil, err
	}
	switch status {
	case http.StatusOK:
		e.metrics.lastPull.SetToCurrentTime()
		return &cfg, nil
	case http.StatusForbidden:
		return &enroll.EngineConfig{State: enroll.StateRevoked}, nil
	}
	return nil, fmt.Errorf("configuration pull: HTTP %d", status)
}

// call makes one signed callback request and decodes a 200 answer into out.
func (e *Engine) call(ctx context.Context, method, path string, body []byte, out any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, e.cfg.VaultURL+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if err := enroll.Sign(req, e.id, e.signer, body, e.cfg.Now()); err != nil {
		return 0, err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxConfigBody+1))
	if err != nil {
		return resp.StatusCode, err
	}
	if len(raw) > maxConfigBody {
		return resp.StatusCode, errors.New("answer too large")
	}
	if resp.StatusCode == http.StatusOK && out != nil {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("bad answer: %w", err)
		}
	}
	return resp.StatusCode, nil
}

// unwrap opens a key the vault wrapped to the identity key.
func (e *Engine) unwrap(label string, blob []byte) ([]byte, error) {
	return enroll.Unwrap(func(peer *ecdh.PublicKey) ([]byte, error) {
		return e.cfg.Keys.ECDH(context.Background(), hsm.LabelEngineKey, peer)
	}, e.pub, label, blob)
}

// apply puts an approved configuration in force: keys first, then the
// connector if it changed, then (once) the gateway.
func (e *Engine) apply(ctx context.Context, cfg *enroll.EngineConfig) error {
	if cfg.EngineKey == nil || len(cfg.SiteKeys) == 0 {
		return errors.New("an approved configuration without keys")
	}
	if cfg.ID != e.id || cfg.Site != e.cfg.Site {
		return fmt.Errorf("the configuration is for engine %s of site %s", cfg.ID, cfg.Site)
	}
	engineKey, err := e.unwrap(enroll.EngineKeyLabel(e.id, cfg.EngineKey.Version), cfg.EngineKey.Wrapped)
	if err != nil {
		return fmt.Errorf("engine key: %w", err)
	}
	defer clear(engineKey)
	siteKeys := map[int][]byte{}
	defer func() {
		for _, k := range siteKeys {
			clear(k)
		}
	}()
	for _, wk := range cfg.SiteKeys {
		k, err := e.unwrap(enroll.SiteKeyLabel(e.cfg.Site, wk.Version), wk.Wrapped)
		if err != nil {
			return fmt.Errorf("site key v%d: %w", wk.Version, err)
		}
		siteKeys[wk.Version] = k
	}
	var secret []byte
	if len(cfg.Connector.Secret) > 0 {
		if secret, err = e.unwrap(enroll.ConnectorSecretLabel(e.cfg.Site), cfg.Connector.Secret); err != nil {
			return fmt.Errorf("connector secret: %w", err)
		}
	}
	defer clear(secret)
	// The secret comes wrapped afresh at every pull; what identifies the
	// connector is its kind, its URL and the secret itself.
	conn := sha256.New()
	for _, f := range [][]byte{[]byte(cfg.Connector.Kind), []byte(cfg.Connector.URL), secret} {
		conn.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f)))) // #nosec G115 -- short fields
		conn.Write(f)
	}
	connID := conn.Sum(nil)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.conn == nil || subtle.ConstantTimeCompare(e.connID, connID) != 1 {
		if err := e.connectLocked(ctx, cfg, secret, Key{Bytes: engineKey, Version: cfg.EngineKey.Version}); err != nil {
			return err
		}
		e.connID = connID
	}
	e.creds.SetKey(Key{Bytes: engineKey, Version: cfg.EngineKey.Version})
	e.work.setSiteKeys(siteKeys)
	e.applied = cfg
	if e.gateway == nil {
		if err := e.startGatewayLocked(); err != nil {
			return err
		}
	}
	return nil
}

// connectLocked dials the site connector the configuration names and
// moves the engine's consumers to it; callers hold e.mu.
func (e *Engine) connectLocked(ctx context.Context, cfg *enroll.EngineConfig, secret []byte, key Key) error {
	// Bounded: a connector that cannot be reached now is tried again at
	// the next pull, and Shutdown does not wait behind it.
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := e.cfg.Connect(dctx, ConnectorSettings{
		Kind: cfg.Connector.Kind, URL: cfg.Connector.URL, Secret: secret,
		Site: e.cfg.Site, Engine: e.id, Signer: e.signer, VaultCA: e.cfg.VaultCA,
	})
	if err != nil {
		return fmt.Errorf("connector %s: %w", cfg.Connector.Kind, err)
	}
	creds := NewCredentials(conn, e.cfg.Site, e.id, key, e.log)
	creds.count, creds.observe = e.metrics.count, e.metrics.observe
	if e.creds != nil {
		creds.ShareWaiting(e.creds)
	}
	e.retireConnLocked()
	cctx, cancel := context.WithCancel(e.runCtx)
	e.conn, e.connStop, e.connWG = conn, cancel, &sync.WaitGroup{}
	e.creds = creds
	e.link.set(creds)
	w := newWorker(conn, e.cfg.Site, e.id, creds, e.log, e.cfg.Now)
	w.count = e.metrics.count
	w.refresh = e.refreshKeys
	w.tasks = e.tasks
	e.work = w
	e.connWG.Add(2)
	go func(wg *sync.WaitGroup) {
		defer wg.Done()
		e.keepConsuming(cctx, "replies", creds.Run)
	}(e.connWG)
	go func(wg *sync.WaitGroup) {
		defer wg.Done()
		e.keepConsuming(cctx, "work", w.Run)
	}(e.connWG)
	e.metrics.up.Set(1)
	e.log.Info("connected to the site connector", "connector", cfg.Connector.Kind)
	return nil
}

// keepConsuming runs a consumer until ctx ends, restarting it when it
// stops on an error (a connector that gave up reconnecting).
func (e *Engine) keepConsuming(ctx context.Context, what string, run func(context.Context) error) {
	backoff := time.Second
	for ctx.Err() == nil {
		err := run(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, connector.ErrClosed) {
			return
		}
		e.log.Warn("consumer stopped; restarting", "consumer", what, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// stopConnLocked stops the consumers and closes the connector; callers
// hold e.mu.
func (e *Engine) stopConnLocked() {
	if e.conn == nil {
		return
	}
	stopConn(e.conn, e.connStop, e.connWG, e.creds, e.work)
	e.conn, e.creds, e.work = nil, nil, nil
	e.metrics.up.Set(0)
}

// retireConnLocked takes the current connection out of use: new requests
// go to the next one, but this one keeps receiving, for as long as a
// request may wait for its reply, the replies to requests sent on it and
// the site's work still queued there. Then it is stopped. Callers hold
// e.mu.
func (e *Engine) retireConnLocked() {
	if e.conn == nil {
		return
	}
	conn, stop, wg, creds, work := e.conn, e.connStop, e.connWG, e.creds, e.work
	e.conn, e.creds, e.work = nil, nil, nil
	e.retiring.Add(1)
	go func() {
		defer e.retiring.Done()
		select {
		case <-time.After(creds.timeout + time.Second):
		case <-e.runCtx.Done():
		}
		stopConn(conn, stop, wg, creds, work)
	}()
}

func stopConn(conn connector.Connector, stop context.CancelFunc, wg *sync.WaitGroup, creds *Credentials, work *worker) {
	stop()
	wg.Wait()
	_ = conn.Close()
	creds.Close()
	work.close()
}

// startGatewayLocked starts the SSH gateway, and the RDP gateway if it
// has a listener; callers hold e.mu.
func (e *Engine) startGatewayLocked() error {
	if e.cfg.SSHListener == nil {
		return nil
	}
	gcfg := e.cfg.Gateway
	gcfg.Credentials, gcfg.Grants = e.link, e.link
	if gcfg.Log == nil {
		gcfg.Log = e.log
	}
	srv, err := gw.NewServer(gcfg)
	if err != nil {
		return err
	}
	if e.cfg.RDPListener != nil {
		rcfg := e.cfg.RDP
		rcfg.Credentials, rcfg.Grants = e.link, e.link
		if rcfg.Log == nil {
			rcfg.Log = e.log
		}
		if e.rdp, err = rdp.NewServer(rcfg); err != nil {
			return err
		}
	}
	e.gateway = srv
	e.gwDone = make(chan error, 1)
	go func() { e.gwDone <- srv.Serve(e.cfg.SSHListener) }()
	e.log.Info("SSH gateway serving", "addr", e.cfg.SSHListener.Addr().String())
	if e.rdp != nil {
		rs := e.rdp
		e.rdpDone = make(chan error, 1)
		go func() { e.rdpDone <- rs.Serve(e.cfg.RDPListener) }()
		e.log.Info("RDP gateway serving", "addr", e.cfg.RDPListener.Addr().String())
	}
	if e.cfg.OnServing != nil {
		e.cfg.OnServing()
	}
	return nil
}

// Shutdown stops the engine in order: the gateway stops accepting and its
// sessions drain (closed when ctx ends), then the consumers stop and the
// connector closes, then the keys are wiped. It waits for Run to return.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	g, r := e.gateway, e.rdp
	e.mu.Unlock()
	var err error
	if g != nil || r != nil {
		// Both gateways drain at once, under the same deadline.
		var wg sync.WaitGroup
		var rerr error
		if r != nil {
			wg.Go(func() { rerr = r.Shutdown(ctx) })
		}
		if g != nil {
			err = g.Shutdown(ctx)
		}
		wg.Wait()
		err = errors.Join(err, rerr)
	}
	e.runCancel()
	select {
	case <-e.stopped:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

// stopAll ends Run: gateway (if Shutdown did not), consumers, connector.
func (e *Engine) stopAll(cause error) error {
	e.mu.Lock()
	g, r := e.gateway, e.rdp
	e.mu.Unlock()
	if r != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if cause != nil {
			_ = r.Close()
		} else {
			_ = r.Shutdown(sctx)
		}
		cancel()
		<-e.rdpDone
	}
	if g != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if cause != nil {
			_ = g.Close() // revoked: no draining
		} else {
			_ = g.Shutdown(sctx)
		}
		cancel()
		<-e.gwDone
	}
	e.mu.Lock()
	e.stopConnLocked()
	e.link.set(nil)
	e.mu.Unlock()
	e.runCancel()
	e.retiring.Wait() // the run context has ended: they stop now
	if errors.Is(cause, context.Canceled) {
		return nil
	}
	return cause
}

// saveState keeps the configuration (its keys stay wrapped to the identity
// key) for a restart while the vault cannot be reached.
func (e *Engine) saveState(cfg *enroll.EngineConfig) error {
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	path := filepath.Join(e.cfg.DataDir, stateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (e *Engine) loadState() (*enroll.EngineConfig, error) {
	b, err := os.ReadFile(filepath.Join(e.cfg.DataDir, stateFile)) // #nosec G304 -- the engine's own data directory
	if err != nil {
		return nil, err
	}
	var cfg enroll.EngineConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// String describes the engine for logs.
func (e *Engine) String() string { return "engine " + e.id + " of site " + e.cfg.Site }
