// Package connector carries sealed work items between the vault and the
// engines at a site. Implementations: an in-process memory queue (used by
// `sallyport dev`), and later a built-in WebSocket connector and RabbitMQ.
//
// A connector moves opaque bytes; sealing and opening them is the job of
// package workitem, so a connector never sees a credential in the clear.
package connector

import (
	"context"
	"errors"
)

// ErrClosed is returned after Close.
var ErrClosed = errors.New("connector: closed")

// Connector publishes to and consumes from named queues.
type Connector interface {
	// Publish enqueues body on queue. It returns once the connector has
	// taken responsibility for the message, or ctx ends.
	Publish(ctx context.Context, queue string, body []byte) error
	// Consume calls handle for each message on queue, one at a time, until
	// ctx ends or the connector closes.
	Consume(ctx context.Context, queue string, handle func(ctx context.Context, body []byte)) error
	// Close stops every consumer.
	Close() error
}
