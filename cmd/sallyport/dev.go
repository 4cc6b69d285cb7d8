package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/engine"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/vault"
)

const (
	devSite         = "dev"
	devRequestQueue = "vault.requests"
)

func devMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sallyport dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "./.sallyport", "data directory (keystore, database, admin token)")
	sshAddr := fs.String("ssh-addr", "127.0.0.1:2222", "SSH proxy listen address")
	apiAddr := fs.String("api-addr", "127.0.0.1:8443", "admin API (HTTPS) listen address")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	idle := fs.Duration("idle-timeout", gw.DefaultIdleTimeout, "close SSH sessions idle this long")
	maxSession := fs.Duration("max-session", gw.DefaultMaxSessionTime, "close SSH sessions after this long")
	cfgPath := fs.String("config", "", "configuration file (YAML): authentication mode, RADIUS servers")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "sallyport dev: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "sallyport dev: bad --log-level %q\n", *logLevel)
		return 2
	}
	cfg, err := config.Parse(nil, ".")
	if err != nil {
		fmt.Fprintf(stderr, "sallyport dev: %v\n", err)
		return 2
	}
	if *cfgPath != "" {
		c, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintf(stderr, "sallyport dev: %v\n", err)
			return 2
		}
		cfg = c
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runDev(ctx, devOptions{cfg: cfg, data: *data, sshAddr: *sshAddr, apiAddr: *apiAddr, idle: *idle, maxSession: *maxSession}, log, stderr); err != nil {
		fmt.Fprintf(stderr, "sallyport dev: %v\n", err)
		return 1
	}
	return 0
}

type devOptions struct {
	cfg                    *config.File
	data, sshAddr, apiAddr string
	idle, maxSession       time.Duration
}

func runDev(ctx context.Context, o devOptions, log *slog.Logger, stderr io.Writer) error {
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(o.data, 0o700); err != nil { // #nosec G302 -- a directory needs x
		return err
	}
	sink := audit.Log{L: log}

	release, err := lockData(o.data)
	if err != nil {
		return err
	}
	defer release()
	keys, err := openKeys(o.cfg, o.data, log)
	if err != nil {
		return err
	}
	defer keys.Close()
	dbPath := filepath.Join(o.data, "vault.db")
	_, statErr := os.Stat(dbPath)
	fresh := errors.Is(statErr, os.ErrNotExist)
	if o.cfg.Keys.Provider == config.KeysSoft {
		// The development bootstrap: keys are made on first use. A vault
		// that exists never gets a fresh KEK, which could open nothing.
		if err := keys.EnsureSigner(ctx, hsm.LabelSSHHostKey); err != nil {
			return err
		}
		if fresh {
			if err := keys.EnsureAESKey(ctx, hsm.LabelKEK); err != nil {
				return err
			}
		}
	} else if ok, err := keys.HasKey(ctx, hsm.LabelSSHHostKey); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("the SSH host key %q is not on %s: create the keys with `sallyport keys init --config FILE`",
			hsm.LabelSSHHostKey, providerName(o.cfg))
	}
	hostSigner, err := keys.Signer(ctx, hsm.LabelSSHHostKey)
	if err != nil {
		return err
	}
	hostKey, err := gossh.NewSignerFromSigner(hostSigner)
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(o.data, "ssh_host_key.pub"), gossh.MarshalAuthorizedKey(hostKey.PublicKey()), 0o600); err != nil {
		return err
	}

	v, err := vault.Open(ctx, dbPath, keys, log, sink)
	if err != nil {
		return err
	}
	defer v.Close()
	tokenSHA, err := vault.EnsureToken(filepath.Join(o.data, "admin.token"))
	if err != nil {
		return err
	}
	cert, err := vault.EnsureTLSCert(filepath.Join(o.data, "api.crt"), filepath.Join(o.data, "api.key"), nil)
	if err != nil {
		return err
	}
	siteKey, err := v.SiteKey(ctx, devSite)
	if err != nil {
		return err
	}
	defer clear(siteKey)

	// The vault and the engine talk only through the queue, as they would
	// across sites.
	queue := connector.NewMemory(1024)
	defer queue.Close()
	creds := engine.NewCredentials(queue, devSite, siteKey, devRequestQueue, log)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		// The heap that survived the last collection, and how many there
		// were: what a memory-growth alert should watch, not the heap
		// in use, which at GOGC=400 swings with the garbage.
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/(heap/live|cycles/total):`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	auth, closeAuth, err := gatewayAuth(o.cfg, v, reg, log)
	if err != nil {
		return err
	}
	defer closeAuth()
	door := o.cfg.Gateway
	gateway, err := gw.NewServer(gw.Config{
		HostSigners:        []gossh.Signer{hostKey},
		Auth:               auth,
		Credentials:        creds,
		Grants:             creds,
		Log:                log,
		Audit:              sink,
		Metrics:            gw.NewMetrics(reg),
		IdleTimeout:        o.idle,
		MaxSessionTime:     o.maxSession,
		KeyExchangeTimeout: door.KeyExchangeTimeout,
		HandshakeTimeout:   door.LoginTimeout,
		DialTimeout:        door.DialTimeout,
		RecheckEvery:       door.RecheckInterval,
		Admission:          door.AdmissionConfig(),
		Logins:             door.LoginConfig(),
		Ready:              newReadiness(keys).Ready,
	})
	if err != nil {
		return err
	}

	sshLn, err := admit.Listen("tcp", o.sshAddr)
	if err != nil {
		return fmt.Errorf("ssh listener: %w", err)
	}
	apiLn, err := admit.Listen("tcp", o.apiAddr)
	if err != nil {
		_ = sshLn.Close()
		return fmt.Errorf("api listener: %w", err)
	}
	// The admin API gets the same door as SSH, sized for a few admins:
	// connections that have not presented the token are capped per source
	// and in all, and closed after 30 s.
	apiDoor, err := admit.NewListener(apiLn, apiAdmission(log))
	if err != nil {
		_ = sshLn.Close()
		_ = apiLn.Close()
		return err
	}
	apiURL := "https://" + apiLn.Addr().String()
	if err := os.WriteFile(filepath.Join(o.data, "api.addr"), []byte(apiURL+"\n"), 0o600); err != nil {
		_ = sshLn.Close()
		_ = apiDoor.Close()
		return err
	}
	api := &http.Server{
		ConnContext:       admit.WithConn,
		Handler:           vault.NewAPI(v, tokenSHA, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), log),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	// The queue's two ends run until the gateway has drained: a signal
	// stops new logins first, and sessions still logging in can check out
	// their credential meanwhile.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	start := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && runCtx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		returnMemory(runCtx, 10*time.Second, 64<<20)
	}()
	start("credential broker", func() error { return v.ServeCredentials(runCtx, queue, devRequestQueue) })
	start("credential client", func() error { return creds.Run(runCtx) })
	start("ssh gateway", func() error {
		if err := gateway.Serve(sshLn); !errors.Is(err, gw.ErrServerClosed) {
			return err
		}
		return nil
	})
	start("admin api", func() error {
		if err := api.ServeTLS(apiDoor, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})

	fmt.Fprintf(stderr, "sallyport dev: ready ssh=%s api=%s data=%s\n", sshLn.Addr(), apiURL, o.data)
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining SSH sessions")
	case runErr = <-errc:
		log.Error("shutting down after a failure", "err", runErr)
	}
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer shutCancel()
	if err := gateway.Shutdown(shutCtx); err != nil {
		log.Warn("sessions still open at the deadline were closed", "err", err)
	}
	_ = api.Shutdown(shutCtx)
	cancel()
	wg.Wait()
	return runErr
}

// apiAdmission is the admin API's door: a few admins, never a crowd.
func apiAdmission(log *slog.Logger) admit.Config {
	return admit.Config{Name: "api", MaxPending: 64, MaxPerSource: 8, Rate: 10, Burst: 20, Timeout: 30 * time.Second, Log: log}
}
