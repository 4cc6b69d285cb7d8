package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/connector/amqp"
	"github.com/sallyport/sallyport/connector/builtin"
	"github.com/sallyport/sallyport/engine"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/vault"
)

// daemonFlags are the flags every daemon (dev, vault, engine) takes.
type daemonFlags struct {
	data, cfgPath, logLevel, logFormat string
}

func (d *daemonFlags) register(fs *flag.FlagSet, defData string) {
	fs.StringVar(&d.data, "data", defData, "data directory")
	fs.StringVar(&d.cfgPath, "config", "", "configuration file (YAML)")
	fs.StringVar(&d.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&d.logFormat, "log-format", "text", "log format: text or json (for a SIEM); secrets are redacted in both")
}

// load reads the configuration file (or the defaults) and makes the logger.
func (d *daemonFlags) load(stderr io.Writer) (*config.File, *slog.Logger, error) {
	log, err := newLogger(d.logFormat, d.logLevel, stderr)
	if err != nil {
		return nil, nil, err
	}
	if d.cfgPath == "" {
		cfg, err := config.Parse(nil, ".")
		return cfg, log, err
	}
	cfg, err := config.Load(d.cfgPath)
	return cfg, log, err
}

// newLogger makes a text or JSON logger at level.
func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("bad --log-level %q", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("bad --log-format %q: text or json", format)
}

// prepareDataDir creates dir 0700 (and makes an existing one 0700).
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700) // #nosec G302 -- a directory needs x
}

// ensureSoftKeys makes, in the soft keystore only, the keys a daemon needs
// on first start; with a token they must exist (`sallyport keys init`).
// makeKEK is for a vault whose database is new: an existing database never
// gets a fresh KEK, which could open nothing.
func ensureSoftKeys(ctx context.Context, cfg *config.File, keys hsm.Provider, signers []string, makeKEK bool) error {
	if cfg.Keys.Provider == config.KeysSoft {
		for _, l := range signers {
			if err := keys.EnsureSigner(ctx, l); err != nil {
				return err
			}
		}
		if makeKEK {
			return keys.EnsureAESKey(ctx, hsm.LabelKEK)
		}
		return nil
	}
	for _, l := range signers {
		if ok, err := keys.HasKey(ctx, l); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("the key %q is not on %s: create the keys with `sallyport keys init --config FILE`", l, providerName(cfg))
		}
	}
	return nil
}

// sshHostKey returns the gateway's host key and writes its public half to
// DIR/ssh_host_key.pub for clients to pin.
func sshHostKey(ctx context.Context, keys hsm.Provider, dir string) (gossh.Signer, error) {
	s, err := keys.Signer(ctx, hsm.LabelSSHHostKey)
	if err != nil {
		return nil, err
	}
	hostKey, err := gossh.NewSignerFromSigner(s)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ssh_host_key.pub"), gossh.MarshalAuthorizedKey(hostKey.PublicKey()), 0o600); err != nil {
		return nil, err
	}
	return hostKey, nil
}

// newRegistry is a metrics registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		// The heap that survived the last collection, and how many there
		// were: what a memory-growth alert should watch, not the heap
		// in use, which at GOGC=400 swings with the garbage.
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/(heap/live|cycles/total):`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// readCAFile reads a PEM CA bundle (bounded) into a pool.
func readCAFile(path string) (*x509.CertPool, []byte, error) {
	pemBytes, err := config.ReadPublicFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, nil, fmt.Errorf("CA file %s: no PEM certificate", path)
	}
	return pool, pemBytes, nil
}

// amqpTLS is the TLS configuration for amqps:// URLs: the broker's CA
// pinned from caFile. Plain amqp:// needs none.
func amqpTLS(url string, ca *x509.CertPool) (*tls.Config, error) {
	if !strings.HasPrefix(url, "amqps://") {
		return nil, nil
	}
	if ca == nil {
		return nil, errors.New("an amqps:// connector needs the broker's CA: --amqp-ca-file")
	}
	return &tls.Config{RootCAs: ca, MinVersion: tls.VersionTLS12}, nil
}

// dialAMQP is the vault's RabbitMQ dialer.
func dialAMQP(ca *x509.CertPool, log *slog.Logger) vault.DialFunc {
	return func(ctx context.Context, url string, secret []byte) (connector.Connector, error) {
		tc, err := amqpTLS(url, ca)
		if err != nil {
			return nil, err
		}
		return amqp.Dial(ctx, amqp.Config{URL: url, Password: secret, TLS: tc, DeadLetter: true, Log: log.With("component", "amqp")})
	}
}

// engineConnect is an engine's connector dialer: the vault's built-in
// connector, or RabbitMQ.
func engineConnect(ca *x509.CertPool, log *slog.Logger) engine.ConnectFunc {
	return func(ctx context.Context, s engine.ConnectorSettings) (connector.Connector, error) {
		switch s.Kind {
		case vault.ConnectorBuiltin:
			return builtin.Dial(ctx, builtin.ClientConfig{URL: s.URL, RootCAs: s.VaultCA, EngineID: s.Engine, Signer: s.Signer,
				Log: log.With("component", "builtin")})
		case vault.ConnectorAMQP:
			tc, err := amqpTLS(s.URL, ca)
			if err != nil {
				return nil, err
			}
			// The same queue settings as the vault's (dialAMQP): whoever
			// declares a queue first, it is the same queue.
			return amqp.Dial(ctx, amqp.Config{URL: s.URL, Password: s.Secret, TLS: tc, DeadLetter: true, Log: log.With("component", "amqp")})
		}
		return nil, fmt.Errorf("unknown connector kind %q", s.Kind)
	}
}

// gatewayConfig is the SSH gateway's configuration from the file; the
// engine fills in the credential source.
func gatewayConfig(cfg *config.File, hostKey gossh.Signer, auth gw.Authenticator, keys hsm.Provider, reg prometheus.Registerer,
	log *slog.Logger, idle, maxSession time.Duration) gw.Config {
	door := cfg.Gateway
	return gw.Config{
		HostSigners:        []gossh.Signer{hostKey},
		Auth:               auth,
		Log:                log,
		Metrics:            gw.NewMetrics(reg),
		IdleTimeout:        idle,
		MaxSessionTime:     maxSession,
		KeyExchangeTimeout: door.KeyExchangeTimeout,
		HandshakeTimeout:   door.LoginTimeout,
		DialTimeout:        door.DialTimeout,
		RecheckEvery:       door.RecheckInterval,
		Admission:          door.AdmissionConfig(),
		Logins:             door.LoginConfig(),
		Ready:              newReadiness(keys).Ready,
	}
}

// serveMetrics serves reg at /metrics on addr, plain HTTP, until closed.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metricsHandler(reg))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return srv, nil
}
