package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/engine"
	"github.com/sallyport/sallyport/enroll"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/vault"
)

func devMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sallyport dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var df daemonFlags
	df.register(fs, "./.sallyport")
	sshAddr := fs.String("ssh-addr", "127.0.0.1:2222", "SSH proxy listen address")
	rdpAddr := fs.String("rdp-addr", "", "RDP proxy listen address, e.g. 127.0.0.1:3389 (default: no RDP proxy)")
	apiAddr := fs.String("api-addr", "127.0.0.1:8443", "admin API (HTTPS) listen address")
	idle := fs.Duration("idle-timeout", gw.DefaultIdleTimeout, "close SSH sessions idle this long")
	maxSession := fs.Duration("max-session", gw.DefaultMaxSessionTime, "close SSH sessions after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "sallyport dev: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, log, err := df.load(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sallyport dev: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := devOptions{cfg: cfg, data: df.data, sshAddr: *sshAddr, rdpAddr: *rdpAddr, apiAddr: *apiAddr, idle: *idle, maxSession: *maxSession}
	if err := runDev(ctx, o, log, stderr); err != nil {
		fmt.Fprintf(stderr, "sallyport dev: %v\n", err)
		return 1
	}
	return 0
}

type devOptions struct {
	cfg                    *config.File
	data, sshAddr, apiAddr string
	rdpAddr                string
	idle, maxSession       time.Duration
}

// runDev runs the vault and one engine of the default site in one process:
// the same daemons as `sallyport vault` and `sallyport engine`, the engine
// reaching the vault's queues in process instead of over a socket, and
// approved at start. It stops them in order: the engine drains its
// sessions while the vault still answers, then the vault stops.
func runDev(ctx context.Context, o devOptions, log *slog.Logger, stderr io.Writer) error {
	vst, err := startVault(ctx, vaultOptions{cfg: o.cfg, data: o.data, apiAddr: o.apiAddr}, log)
	if err != nil {
		return err
	}
	defer vst.close()
	vctx, vcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer vcancel()
	vaultErr := make(chan error, 1)
	go func() { vaultErr <- vst.daemon.Run(vctx) }()
	stopVault := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := vst.daemon.Shutdown(sctx); err != nil {
			log.Warn("vault shutdown", "err", err)
		}
	}

	if err := ensureSoftKeys(ctx, o.cfg, vst.keys, []string{hsm.LabelSSHHostKey, hsm.LabelEngineKey}, false); err != nil {
		stopVault()
		return err
	}
	if err := approveDevEngine(ctx, vst); err != nil {
		stopVault()
		return err
	}
	caPool, _, err := readCAFile(filepath.Join(o.data, "api.crt"))
	if err != nil {
		stopVault()
		return err
	}
	ready := make(chan string, 1)
	est, err := prepareEngine(ctx, engineOptions{
		cfg: o.cfg, data: filepath.Join(o.data, "engine"), vaultURL: vst.apiURL, vaultCA: caPool, site: vault.DefaultSite,
		name: "dev", sshAddr: o.sshAddr, rdpAddr: o.rdpAddr, poll: engine.DefaultPollInterval, idle: o.idle, maxSession: o.maxSession,
		keys: vst.keys, hostKeyDir: o.data, registry: vst.registry,
		connect: func(context.Context, engine.ConnectorSettings) (connector.Connector, error) {
			return vst.queues.Session(), nil
		},
		onServing: func(addr string) { ready <- addr },
	}, log, false)
	if err != nil {
		stopVault()
		return err
	}
	defer est.close()
	engineErr := make(chan error, 1)
	go func() { engineErr <- est.eng.Run(ctx) }()
	wg := sync.WaitGroup{}
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	wg.Go(func() { returnMemory(rctx, 10*time.Second, 64<<20) })

	var runErr error
	select {
	case addr := <-ready:
		fmt.Fprintf(stderr, "sallyport dev: ready ssh=%s api=%s data=%s%s\n", addr, vst.apiURL, o.data, rdpField(est.rdpAddr))
		select {
		case <-ctx.Done():
		case runErr = <-engineErr:
		case runErr = <-vaultErr:
		}
	case <-ctx.Done():
	case runErr = <-engineErr:
	case runErr = <-vaultErr:
	}
	if runErr != nil {
		log.Error("shutting down after a failure", "err", runErr)
	} else {
		log.Info("shutting down: draining SSH sessions")
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := est.eng.Shutdown(shutCtx); err != nil {
		log.Warn("sessions still open at the deadline were closed", "err", err)
	}
	stopVault()
	rcancel()
	wg.Wait()
	return runErr
}

// approveDevEngine registers and approves the in-process engine (its key
// is in the vault's keystore) before it first asks.
func approveDevEngine(ctx context.Context, vst *vaultStack) error {
	signer, err := vst.keys.Signer(ctx, hsm.LabelEngineKey)
	if err != nil {
		return err
	}
	der, err := enroll.MarshalPublicKey(signer.Public())
	if err != nil {
		return err
	}
	v := vst.daemon.Vault()
	info, err := v.RegisterEngine(ctx, vault.DefaultSite, der, "dev", "in-process")
	if err != nil {
		return fmt.Errorf("register the dev engine: %w", err)
	}
	if _, err := v.ApproveEngine(ctx, info.ID); err != nil {
		return fmt.Errorf("approve the dev engine: %w", err)
	}
	return nil
}
