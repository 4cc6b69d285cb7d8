package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/gateway/rdp"
	"github.com/sallyport/sallyport/hsm"
)

// rdpSetup is the RDP gateway's wiring: its listener, configuration and
// the token store it shares with the SSH gateway.
type rdpSetup struct {
	ln     net.Listener
	cfg    rdp.Config
	tokens *rdp.Tokens
}

// prepareRDP opens the RDP gateway's listener on addr and loads (or makes)
// its TLS certificate, whose key stays in the key provider; the
// certificate goes to DIR/rdp_cert.pem for clients to pin.
func prepareRDP(ctx context.Context, cfg *config.File, keys hsm.Provider, addr, dir string, reg prometheus.Registerer, log *slog.Logger,
	idle, maxSession time.Duration) (*rdpSetup, error) {
	if err := ensureSoftKeys(ctx, cfg, keys, []string{hsm.LabelRDPKey}, false); err != nil {
		return nil, err
	}
	signer, err := keys.Signer(ctx, hsm.LabelRDPKey)
	if err != nil {
		return nil, err
	}
	name, err := os.Hostname()
	if err != nil || name == "" {
		name = "sallyport"
	}
	cert, made, err := rdp.LoadOrCreateCertificate(filepath.Join(dir, "rdp_cert.pem"), signer, name, time.Now())
	if err != nil {
		return nil, fmt.Errorf("rdp certificate: %w", err)
	}
	fp := rdp.CertificateSHA256(cert.Certificate[0])
	if made {
		log.Warn("RDP gateway certificate created; clients may pin it", "certificate_sha256", fp)
	} else {
		log.Info("RDP gateway certificate", "certificate_sha256", fp)
	}
	ln, err := admit.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("rdp listener: %w", err)
	}
	door := cfg.Gateway
	tokens := rdp.NewTokens(rdp.TokenConfig{})
	return &rdpSetup{ln: ln, tokens: tokens, cfg: rdp.Config{
		Certificate:    cert,
		Tokens:         tokens,
		Log:            log,
		Audit:          audit.Log{L: log},
		Metrics:        rdp.NewMetrics(reg),
		IdleTimeout:    idle,
		MaxSessionTime: maxSession,
		DialTimeout:    door.DialTimeout,
		Admission:      door.AdmissionConfig(),
		Logins:         door.LoginConfig(),
	}}, nil
}

// rdpField is " rdp=ADDR" for the ready line, or nothing without an RDP
// gateway.
func rdpField(addr string) string {
	if addr == "" {
		return ""
	}
	return " rdp=" + addr
}
