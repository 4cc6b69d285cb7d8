package builtin_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"log/slog"
	"net/http"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/connector/builtin"
	"github.com/sallyport/sallyport/names"
)

// The vault mounts the server on its TLS 1.3 connector listener, cuts
// revoked engines off, and shuts the server down with its HTTP server.
func ExampleNewServer() {
	var (
		registry builtin.Authorizer // the vault's engine registry
		log      = slog.Default()
	)
	queues := connector.NewMemory(0)
	srv := builtin.NewServer(builtin.ServerConfig{Queues: queues, Auth: registry, Log: log})
	mux := http.NewServeMux()
	mux.Handle("/v1/connector", srv)
	hs := &http.Server{Addr: ":8671", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.ListenAndServeTLS("vault.crt", "vault.key") }()

	// After storing a revocation:
	srv.Disconnect("0123456789abcdef")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hs.Shutdown(ctx)  // stops accepting
	_ = srv.Shutdown(ctx) // closes the WebSockets, which hs does not track
}

// An engine dials the vault with the CA it pins and its key, which may
// live in an HSM, and consumes its site's work.
func ExampleDial() {
	var (
		vaultCA *x509.CertPool // from --ca-file
		signer  crypto.Signer  // hsm.Provider.Signer(ctx, hsm.LabelEngineKey)
		id      string         // enroll.EngineID of signer's key
	)
	ctx := context.Background()
	c, err := builtin.Dial(ctx, builtin.ClientConfig{
		URL: "wss://vault.example:8671/v1/connector", RootCAs: vaultCA, EngineID: id, Signer: signer,
	})
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.Consume(ctx, names.WorkQueue("paris"), 4, func(ctx context.Context, d connector.Delivery) {
		// … open and do the work item, publish its result, then:
		_ = d.Ack()
	})
}
