package main

import (
	"context"

	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/engine"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/hsm"
)

// engineOptions are `sallyport engine`'s settings.
type engineOptions struct {
	cfg        *config.File
	data       string
	vaultURL   string
	vaultCA    *x509.CertPool
	site, name string
	sshAddr    string
	// rdpAddr, if set, is where the RDP gateway listens.
	rdpAddr          string
	poll             time.Duration
	idle, maxSession time.Duration
	amqpCA           *x509.CertPool
	// connect overrides the connector dialer (dev: the vault's queues in
	// process).
	connect engine.ConnectFunc
	// sshListener, if set, is used instead of listening on sshAddr.
	sshListener net.Listener
	// onServing is called once the gateway serves, with its address.
	onServing func(addr string)
	// keys, if set, is the key provider to use (dev: the vault's);
	// otherwise the engine opens its own from cfg and data.
	keys hsm.Provider
	// hostKeyDir is where ssh_host_key.pub is written (default data).
	hostKeyDir string
	// registry, if set, receives the engine's metrics (dev: the vault's,
	// served by its API); otherwise the engine has its own.
	registry *prometheus.Registry
	// metricsAddr, if set, serves the engine's /metrics (plain HTTP).
	metricsAddr string
}

func engineMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sallyport engine", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var df daemonFlags
	df.register(fs, "./.sallyport-engine")
	vaultURL := fs.String("vault", "", "the vault's API, https://host:8443 (required)")
	caFile := fs.String("ca-file", "", "PEM certificate(s) to pin the vault's certificate to (required)")
	site := fs.String("site", "", "the engine's site (required)")
	name := fs.String("name", "", "a name shown to the administrator who approves the engine (default: the host name)")
	sshAddr := fs.String("ssh-addr", ":2222", "SSH gateway listen address")
	rdpAddr := fs.String("rdp-addr", "", "RDP gateway listen address, e.g. :3389 (default: no RDP gateway)")
	poll := fs.Duration("poll", engine.DefaultPollInterval, "how often the configuration is pulled from the vault")
	idle := fs.Duration("idle-timeout", gw.DefaultIdleTimeout, "close SSH sessions idle this long")
	maxSession := fs.Duration("max-session", gw.DefaultMaxSessionTime, "close SSH sessions after this long")
	amqpCA := fs.String("amqp-ca-file", "", "PEM CA of the site's RabbitMQ broker (amqps://)")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus /metrics on this address (plain HTTP: keep it on loopback or a management network)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 || *vaultURL == "" || *caFile == "" || *site == "" {
		fmt.Fprintln(stderr, "sallyport engine: --vault, --ca-file and --site are required, and nothing else")
		return 2
	}
	cfg, log, err := df.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sallyport engine: %v\n", err)
		return 2
	}
	o := engineOptions{cfg: cfg, data: df.data, vaultURL: *vaultURL, site: *site, name: *name, sshAddr: *sshAddr, rdpAddr: *rdpAddr,
		poll: *poll, idle: *idle, maxSession: *maxSession, metricsAddr: *metricsAddr}
	if o.vaultCA, _, err = readCAFile(*caFile); err != nil {
		fmt.Fprintf(stderr, "sallyport engine: %v\n", err)
		return 2
	}
	if *amqpCA != "" {
		if o.amqpCA, _, err = readCAFile(*amqpCA); err != nil {
			fmt.Fprintf(stderr, "sallyport engine: %v\n", err)
			return 2
		}
	}
	if o.name == "" {
		o.name, _ = os.Hostname()
	}
	o.onServing = func(addr string) { fmt.Fprintf(stderr, "sallyport engine: ready ssh=%s site=%s\n", addr, o.site) }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runEngine(ctx, o, log, stderr); err != nil {
		fmt.Fprintf(stderr, "sallyport engine: %v\n", err)
		return 1
	}
	return 0
}

// engineStack is a prepared engine and what it needs closed after it.
type engineStack struct {
	eng       *engine.Engine
	registry  *prometheus.Registry
	keys      hsm.Provider
	closeAuth func()
	release   func()
	sshAddr   string
	rdpAddr   string // "" without an RDP gateway
}

func (st *engineStack) close() {
	if st.closeAuth != nil {
		st.closeAuth()
	}
	if st.keys != nil {
		_ = st.keys.Close()
	}
	if st.release != nil {
		st.release()
	}
}

// prepareEngine opens the keys, builds the gateway and the engine.
func prepareEngine(ctx context.Context, o engineOptions, log *slog.Logger, lock bool) (_ *engineStack, err error) {
	st := &engineStack{}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	if err := prepareDataDir(o.data); err != nil {
		return nil, err
	}
	if lock {
		if st.release, err = lockData(o.data); err != nil {
			return nil, err
		}
	}
	keys := o.keys
	if keys == nil {
		if st.keys, err = openKeys(o.cfg, o.data, log); err != nil {
			return nil, err
		}
		keys = st.keys
	}
	if err := ensureSoftKeys(ctx, o.cfg, keys, []string{hsm.LabelSSHHostKey, hsm.LabelEngineKey}, false); err != nil {
		return nil, err
	}
	hostKeyDir := o.hostKeyDir
	if hostKeyDir == "" {
		hostKeyDir = o.data
	}
	hostKey, err := sshHostKey(ctx, keys, hostKeyDir)
	if err != nil {
		return nil, err
	}
	ln := o.sshListener
	if ln == nil {
		if ln, err = admit.Listen("tcp", o.sshAddr); err != nil {
			return nil, fmt.Errorf("ssh listener: %w", err)
		}
	}
	st.sshAddr = ln.Addr().String()
	reg := o.registry
	if reg == nil {
		reg = newRegistry()
	}
	st.registry = reg
	var rdpGW *rdpSetup
	if o.rdpAddr != "" {
		if rdpGW, err = prepareRDP(ctx, o.cfg, keys, o.rdpAddr, hostKeyDir, reg, log, o.idle, o.maxSession); err != nil {
			_ = ln.Close()
			return nil, err
		}
		st.rdpAddr = rdpGW.ln.Addr().String()
		// One failed-login budget for both ways in: a guesser gains
		// nothing by switching between SSH and RDP.
		if rdpGW.cfg.SharedLogins, err = admit.NewLogins(o.cfg.Gateway.LoginConfig()); err != nil {
			_ = ln.Close()
			_ = rdpGW.ln.Close()
			return nil, err
		}
	}
	closeListeners := func() {
		_ = ln.Close()
		if rdpGW != nil {
			_ = rdpGW.ln.Close()
		}
	}
	connect := o.connect
	if connect == nil {
		connect = engineConnect(o.amqpCA, log)
	}
	ecfg := engine.Config{
		VaultURL: o.vaultURL, VaultCA: o.vaultCA, Site: o.site, DataDir: o.data, Keys: keys, Name: o.name,
		PollInterval: o.poll, Connect: connect, SSHListener: ln, Log: log, Registry: reg,
		MaxChanges: engineChanges(o.cfg), HostChanges: hostChanges(o.cfg),
		OnServing: func() {
			if o.onServing != nil {
				o.onServing(st.sshAddr)
			}
		},
	}
	if rdpGW != nil {
		ecfg.RDP, ecfg.RDPListener = rdpGW.cfg, rdpGW.ln
	}
	eng, err := engine.New(ctx, ecfg)
	if err != nil {
		closeListeners()
		return nil, err
	}
	auth, closeAuth, err := gatewayAuth(o.cfg, eng.LocalUsers(), reg, log)
	if err != nil {
		closeListeners()
		return nil, err
	}
	st.closeAuth = closeAuth
	gcfg := gatewayConfig(o.cfg, hostKey, auth, keys, reg, log, o.idle, o.maxSession)
	gcfg.Audit = audit.Log{L: log}
	if rdpGW != nil {
		gcfg.RDPTokens, gcfg.RDPAddr, gcfg.SharedLogins = rdpGW.tokens, st.rdpAddr, rdpGW.cfg.SharedLogins
	}
	eng.SetGateway(gcfg)
	st.eng = eng
	return st, nil
}

func runEngine(ctx context.Context, o engineOptions, log *slog.Logger, stderr io.Writer) error {
	st, err := prepareEngine(ctx, o, log, true)
	if err != nil {
		return err
	}
	defer st.close()
	fmt.Fprintf(stderr, "sallyport engine: id %s fingerprint %s site %s ssh=%s%s\n", st.eng.ID(), st.eng.Fingerprint(), o.site, st.sshAddr, rdpField(st.rdpAddr))
	if o.metricsAddr != "" {
		ms, err := serveMetrics(o.metricsAddr, st.registry, log)
		if err != nil {
			return err
		}
		defer ms.Close()
	}
	errc := make(chan error, 1)
	go func() { errc <- st.eng.Run(ctx) }()
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining SSH sessions")
	case runErr = <-errc:
		if errors.Is(runErr, engine.ErrRevoked) {
			return runErr
		}
		log.Error("shutting down after a failure", "err", runErr)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := st.eng.Shutdown(shutCtx); err != nil {
		log.Warn("sessions still open at the deadline were closed", "err", err)
	}
	return runErr
}

// engineChanges and hostChanges are the engine's limits on concurrent
// credential changes (0: the engine's defaults).
func engineChanges(c *config.File) int {
	if c.Maintenance == nil {
		return 0
	}
	return c.Maintenance.EngineChanges
}

func hostChanges(c *config.File) int {
	if c.Maintenance == nil {
		return 0
	}
	return c.Maintenance.HostChanges
}
