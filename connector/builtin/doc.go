// Package builtin is the site connector the vault serves itself, for
// deployments without RabbitMQ: engines dial out to the vault over a TLS
// 1.3 WebSocket (port 8671, path /v1/connector), and the vault is the
// broker, its queues an in-process *connector.Memory. Each authenticated
// connection is one Memory.Session, so the broker semantics are exactly
// Memory's; when a connection ends, what it held unsettled goes back to
// its queue.
//
// # Authentication
//
// The engine pins the vault's CA (its --ca-file) and speaks TLS 1.3 only.
// Once the WebSocket is up, the vault sends a fresh 32-byte nonce; the
// engine answers with its id and an ECDSA P-256 ASN.1 signature, made
// with its key (which may live in an HSM), over SHA-256 of this
// transcript (each length one byte):
//
//	"sallyport builtin connector v1" 0x00
//	0x20 nonce (32 bytes)
//	0x10 engine id (16 lowercase hex digits)
//	0x20 binding (32 bytes)
//
// where binding is the connection's TLS exporter,
// ExportKeyingMaterial("EXPORTER-sallyport-builtin-connector-v1", nil, 32),
// which both ends compute alike only if they share one TLS session. A
// signature is therefore good on that one connection only: a new
// connection has a new nonce and a new exporter, and a man in the middle
// holds two TLS sessions whose exporters differ. The vault's Authorizer
// checks the signature against the engine's registered key, that the
// engine is approved and not revoked, and names its site. The engine must
// authenticate within the handshake timeout (10 s).
//
// # Access rule
//
// An engine of site S may consume only "sallyport.S.work" and its own reply
// queue "sallyport.S.reply.<id>", publish only to "sallyport.S.requests"
// and "sallyport.S.results", and declare its reply queue (as Private) and
// its site's shared queues (as Shared: they exist already, so this changes
// nothing, but an engine declares them as it must on a broker). Every name
// is parsed with names.ParseQueue. Anything else is refused with
// connector.ErrForbidden, logged once per connection, and the session
// stays up.
//
// # Wire protocol
//
// Every WebSocket binary message is one frame: a 6-byte header (op,
// flags, request or consumer id) and the op's fields, each bounded and
// length-prefixed (frame.go). The client sends requests (declare,
// publish; answered ok or error), consumer starts and cancels (a consumer
// ends with a done frame), and settlements of deliveries; the server
// pushes deliveries, at most prefetch unsettled per consumer. Both ends
// ping; the client reconnects with jittered exponential backoff and
// resumes its consumers under the same Consume calls.
//
// # Mounting
//
//	srv := builtin.NewServer(builtin.ServerConfig{Queues: mem, Auth: registry, Log: log})
//	mux.Handle("/v1/connector", srv)            // on a TLS 1.3 listener
//	…
//	srv.Disconnect(engineID)                    // after storing a revocation
//	…
//	httpServer.Shutdown(ctx); srv.Shutdown(ctx) // WebSockets are srv's to close
//
// and on the engine:
//
//	signer, _ := keys.Signer(ctx, hsm.LabelEngineKey)
//	c, err := builtin.Dial(ctx, builtin.ClientConfig{URL: "wss://vault:8671/v1/connector",
//		RootCAs: pool, EngineID: id, Signer: signer, Log: log})
package builtin
