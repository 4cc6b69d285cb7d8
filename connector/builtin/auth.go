package builtin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
)

// Authorizer decides whether an engine may connect; the vault implements
// it over its engine registry.
type Authorizer interface {
	// Authorize returns the site of engineID if that engine is approved,
	// not revoked, and signature is a valid ECDSA P-256 ASN.1 signature by
	// its key over SHA-256(message); otherwise an error (logged by the
	// server, never shown to the engine). message is the transcript of
	// this connection (see the package doc). An error that wraps
	// ErrUnavailable or ctx's error means "cannot decide now" and the
	// engine tries again later; any other is a refusal, after which the
	// engine's client gives up (ErrUnauthorized).
	Authorize(ctx context.Context, engineID string, message, signature []byte) (site string, err error)
}

// ErrUnavailable, wrapped by an Authorizer's error, says that the vault
// cannot decide now (its store is failing): the engine is not refused but
// asked to try again later.
var ErrUnavailable = errors.New("builtin: authorization unavailable")

// The protocol's labels (see the package doc).
const (
	// TranscriptLabel opens every transcript: a signature made for
	// anything else can never pass as a connector login, nor the reverse.
	TranscriptLabel = "sallyport builtin connector v1"
	// ExporterLabel is the TLS exporter label (RFC 8446 §7.5) of the
	// channel binding.
	ExporterLabel = "EXPORTER-sallyport-builtin-connector-v1"
	// NonceSize is the size of the server's nonce.
	NonceSize = 32
	// bindingSize is the size of the channel binding.
	bindingSize = 32
	// maxSignature bounds an ASN.1 ECDSA P-256 signature (72 bytes at
	// most) with room to spare.
	maxSignature = 128
)

// transcript returns the message an engine signs to log in on one
// connection (every length is one byte):
//
//	"sallyport builtin connector v1" 0x00
//	0x20 nonce      32 bytes, drawn by the server for this connection
//	len  engineID   16 lowercase hex digits
//	0x20 binding    32 bytes
//
// where binding is ExportKeyingMaterial(ExporterLabel, nil, 32) of the TLS
// 1.3 connection, which both ends compute alike only if they share one TLS
// session. So a signature is good for one connection only: it cannot be
// replayed later (new nonce, new session) nor relayed by a man in the
// middle, who would hold two TLS sessions with different exporters.
func transcript(nonce []byte, engineID string, binding []byte) ([]byte, error) {
	if len(nonce) != NonceSize || len(binding) != bindingSize || len(engineID) > maxName {
		return nil, errors.New("transcript: field out of bounds")
	}
	m := make([]byte, 0, len(TranscriptLabel)+1+1+len(nonce)+1+len(engineID)+1+len(binding))
	m = append(m, TranscriptLabel...)
	m = append(m, 0)
	for _, field := range [][]byte{nonce, []byte(engineID), binding} {
		m = append(m, uint8(len(field))) // #nosec G115 -- bounded above
		m = append(m, field...)
	}
	return m, nil
}

// channelBinding returns the TLS exporter of cs, which must be TLS 1.3.
func channelBinding(cs *tls.ConnectionState) ([]byte, error) {
	if cs == nil {
		return nil, errors.New("not a TLS connection")
	}
	if cs.Version != tls.VersionTLS13 {
		return nil, fmt.Errorf("TLS version %#x, need TLS 1.3", cs.Version)
	}
	b, err := cs.ExportKeyingMaterial(ExporterLabel, nil, bindingSize)
	if err != nil {
		return nil, fmt.Errorf("TLS exporter: %w", err)
	}
	return b, nil
}

// grant is what an authenticated engine may touch.
type grant struct {
	engineID string
	site     string
	anyQueue bool // tests only: no queue rule
}

// allows is the access rule: an engine of site S may consume
// "sallyport.S.work" and its own reply queue "sallyport.S.reply.<id>",
// declare that reply queue as Private and the site's other queues as
// Shared (as on a broker; they exist already), and publish only to
// "sallyport.S.requests" and "sallyport.S.results". Every name is parsed
// with names.ParseQueue, so nothing that is not a site queue passes. The
// Memory under the server would allow anything: this is the only check.
func (g grant) allows(o op, queue string, kind connector.QueueKind) bool {
	if g.anyQueue {
		return queue != ""
	}
	site, qkind, engine, ok := names.ParseQueue(queue)
	if !ok || site != g.site {
		return false
	}
	switch o {
	case opConsume:
		return qkind == names.QueueWork || (qkind == names.QueueReply && engine == g.engineID)
	case opDeclare:
		// The site's shared queues exist already (the vault declares
		// them); an engine declaring one, as it must on a broker,
		// changes nothing. Its reply queue is its own and private.
		if qkind == names.QueueReply {
			return engine == g.engineID && kind == connector.Private
		}
		return kind == connector.Shared
	case opPublish:
		return qkind == names.QueueRequests || qkind == names.QueueResults
	}
	return false
}

// logSafe bounds an untrusted name for a log line: printable ASCII,
// quoted, at most 80 bytes of the original.
func logSafe(s string) string {
	const max = 80
	if len(s) > max {
		return strconv.QuoteToASCII(s[:max]) + "…"
	}
	return strconv.QuoteToASCII(s)
}
