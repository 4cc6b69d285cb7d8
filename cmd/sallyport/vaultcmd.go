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
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/connector/builtin"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/vault"
)

// vaultOptions are `sallyport vault`'s settings.
type vaultOptions struct {
	cfg                    *config.File
	data                   string
	apiAddr, connectorAddr string
	connectorURL           string
	tlsNames               []string
	amqpCA                 *x509.CertPool
}

func vaultMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sallyport vault", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var df daemonFlags
	df.register(fs, "./.sallyport-vault")
	apiAddr := fs.String("api-addr", ":8443", "admin and engine callback API (HTTPS) listen address")
	connectorAddr := fs.String("connector-addr", ":8671", "built-in site connector (TLS WebSocket) listen address; empty: none")
	connectorURL := fs.String("connector-url", "", "how engines reach the built-in connector (default: the host they reach the API on, with the connector port)")
	tlsNames := fs.String("tls-name", "", "host names and addresses the TLS certificate must cover, comma-separated (besides localhost)")
	amqpCA := fs.String("amqp-ca-file", "", "PEM CA of the RabbitMQ brokers of amqps:// sites")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "sallyport vault: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, log, err := df.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sallyport vault: %v\n", err)
		return 2
	}
	o := vaultOptions{cfg: cfg, data: df.data, apiAddr: *apiAddr, connectorAddr: *connectorAddr, connectorURL: *connectorURL}
	if *tlsNames != "" {
		o.tlsNames = splitList(*tlsNames)
	}
	if *amqpCA != "" {
		if o.amqpCA, _, err = readCAFile(*amqpCA); err != nil {
			fmt.Fprintf(stderr, "sallyport vault: %v\n", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runVault(ctx, o, log, stderr); err != nil {
		fmt.Fprintf(stderr, "sallyport vault: %v\n", err)
		return 1
	}
	return 0
}

// vaultStack is a started vault daemon and what it needs closed after it.
type vaultStack struct {
	daemon   *vault.Daemon
	keys     hsm.Provider
	queues   *connector.Memory
	apiURL   string
	registry *prometheus.Registry
	release  func()
}

// startVault opens the keys and the store and starts serving. dev passes
// connectorAddr "" (its engine uses the queues in process).
func startVault(ctx context.Context, o vaultOptions, log *slog.Logger) (_ *vaultStack, err error) {
	if err := prepareDataDir(o.data); err != nil {
		return nil, err
	}
	release, err := lockData(o.data)
	if err != nil {
		return nil, err
	}
	st := &vaultStack{release: release}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	if st.keys, err = openKeys(o.cfg, o.data, log); err != nil {
		return nil, err
	}
	dbPath := filepath.Join(o.data, "vault.db")
	_, statErr := os.Stat(dbPath)
	if err := ensureSoftKeys(ctx, o.cfg, st.keys, nil, errors.Is(statErr, os.ErrNotExist)); err != nil {
		return nil, err
	}
	tokenSHA, err := vault.EnsureToken(filepath.Join(o.data, "admin.token"))
	if err != nil {
		return nil, err
	}
	cert, err := vault.EnsureTLSCert(filepath.Join(o.data, "api.crt"), filepath.Join(o.data, "api.key"), o.tlsNames)
	if err != nil {
		return nil, err
	}
	apiLn, err := admit.Listen("tcp", o.apiAddr)
	if err != nil {
		return nil, fmt.Errorf("api listener: %w", err)
	}
	apiDoor, err := admit.NewListener(apiLn, apiAdmission(log))
	if err != nil {
		_ = apiLn.Close()
		return nil, err
	}
	var connLn net.Listener
	if o.connectorAddr != "" {
		if connLn, err = admit.Listen("tcp", o.connectorAddr); err != nil {
			_ = apiDoor.Close()
			return nil, fmt.Errorf("connector listener: %w", err)
		}
	}
	st.apiURL = "https://" + apiLn.Addr().String()
	if err := os.WriteFile(filepath.Join(o.data, "api.addr"), []byte(st.apiURL+"\n"), 0o600); err != nil {
		_ = apiDoor.Close()
		return nil, err
	}
	reg := newRegistry()
	st.registry = reg
	st.queues = connector.NewMemory(0)
	st.daemon, err = vault.NewDaemon(ctx, vault.DaemonConfig{
		DBPath: dbPath, Keys: st.keys, APIListener: apiDoor, Cert: cert, TokenSHA256: tokenSHA,
		ConnectorListener: connLn, Queues: st.queues, ConnectorURL: o.connectorURL,
		Builtin: func(v *vault.Vault) vault.BuiltinServer {
			return builtin.NewServer(builtin.ServerConfig{Queues: st.queues, Auth: v, Log: log.With("component", "builtin")})
		},
		DialAMQP: dialAMQP(o.amqpCA, log), Registry: reg, Metrics: metricsHandler(reg),
		Log: log, Audit: audit.Log{L: log},
		Options: []vault.Option{vault.WithMaintenanceTimings(maintenanceTimings(o.cfg))},
	})
	if err != nil {
		_ = apiDoor.Close()
		if connLn != nil {
			_ = connLn.Close()
		}
		return nil, err
	}
	return st, nil
}

// maintenanceTimings takes the vault's scheduler settings from the
// configuration (checked and defaulted by config).
func maintenanceTimings(c *config.File) vault.MaintenanceTimings {
	m := c.Maintenance
	if m == nil {
		return vault.MaintenanceTimings{}
	}
	return vault.MaintenanceTimings{HeartbeatTTL: m.HeartbeatTTL, ChangeTTL: m.ChangeTTL, ResendGrace: m.ResendGrace,
		AfterUseDelay: m.AfterUseDelay, HostChanges: m.HostChanges}
}

func (st *vaultStack) close() {
	if st.queues != nil {
		_ = st.queues.Close()
	}
	if st.keys != nil {
		_ = st.keys.Close()
	}
	if st.release != nil {
		st.release()
	}
}

func runVault(ctx context.Context, o vaultOptions, log *slog.Logger, stderr io.Writer) error {
	st, err := startVault(ctx, o, log)
	if err != nil {
		return err
	}
	defer st.close()
	errc := make(chan error, 1)
	go func() { errc <- st.daemon.Run(ctx) }()
	connector := "none"
	if o.connectorAddr != "" {
		connector = o.connectorAddr
	}
	fmt.Fprintf(stderr, "sallyport vault: ready api=%s connector=%s data=%s\n", st.apiURL, connector, o.data)
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("shutting down after a failure", "err", runErr)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := st.daemon.Shutdown(shutCtx); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// apiAdmission is the admin API's door: a few admins and the engines'
// check-ins, never a crowd.
func apiAdmission(log *slog.Logger) admit.Config {
	return admit.Config{Name: "api", MaxPending: 64, MaxPerSource: 8, Rate: 10, Burst: 20, Timeout: 30 * time.Second, Log: log}
}
