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
// The vault then sends a fresh 32-byte nonce; the engine answers with its
// id and an ECDSA P-256 signature, made with its key (which may live in an
// HSM), over SHA-256 of the Transcript: a domain label, the nonce, the
// engine id and the TLS exporter of the connection (channel binding). A
// signature is therefore good on that one connection only, and a man in
// the middle cannot relay it. The vault's Authorizer checks it and names
// the engine's site.
//
// # Access rule
//
// An engine of site S may consume only "sallyport.S.work" and its own
// reply queue "sallyport.S.reply.<id>", declare only that reply queue (as
// Private), and publish only to "sallyport.S.requests" and
// "sallyport.S.results". Anything else is refused with
// connector.ErrForbidden; the session stays up.
//
// # Wire protocol
//
// Every WebSocket binary message is one frame: a 6-byte header (op,
// flags, request or consumer id) and the op's fields, each bounded and
// length-prefixed (see frame). The client sends requests (declare,
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
