// Package connector carries sealed work items between the vault and the
// engines at a site. Three implementations: Memory (in-process, for
// `sallyport dev` and tests), the built-in connector the vault serves over
// a TLS WebSocket (package connector/builtin), and RabbitMQ (package
// connector/amqp).
//
// A connector moves opaque bytes; sealing and opening them is the job of
// package workitem, so a connector never sees a credential in the clear,
// and a broker that lets the wrong party read a queue gives it nothing.
//
// The semantics are those of a real broker, so that code written against
// Memory behaves the same over RabbitMQ:
//
//   - a message is settled exactly once, after the work it asks for is done
//     (and its reply published): Ack removes it, Reject drops it or puts it
//     back; one that its handler leaves unsettled, or whose consumer goes
//     away, is delivered again, with Redelivered set — handlers
//     de-duplicate by item id;
//   - a consumer holds at most prefetch unsettled messages, and its handler
//     runs for each in its own goroutine;
//   - every message expires after its TTL (the item's own expiry), and an
//     expired one is never delivered;
//   - a full queue refuses a publish with ErrFull instead of dropping
//     something silently;
//   - Publish returns once the connector has the message safe (a broker's
//     publisher confirm), and a lost connection is re-established with
//     backoff, under the same Publish and Consume calls.
package connector

import (
	"context"
	"errors"
	"time"
)

// Errors of every connector.
var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("connector: closed")
	// ErrFull means the queue is at its maximum length: the message was
	// not taken.
	ErrFull = errors.New("connector: queue full")
	// ErrSettled is returned when a delivery is settled twice, or after
	// the connection that brought it was lost (the broker delivers it
	// again).
	ErrSettled = errors.New("connector: delivery already settled or stale")
	// ErrForbidden is returned when the connector's credentials do not
	// allow the queue (the built-in connector binds engines to their
	// site's queues).
	ErrForbidden = errors.New("connector: queue not allowed")
)

// QueueKind says what a queue is for, which decides how it is declared.
type QueueKind int

const (
	// Shared is a durable queue with competing consumers: a site's
	// requests to the vault, its work for the engines, their results.
	Shared QueueKind = iota
	// Private is one consumer's queue: an engine's replies. A broker
	// removes it after it has gone unused for a while.
	Private
)

func (k QueueKind) String() string {
	switch k {
	case Shared:
		return "shared"
	case Private:
		return "private"
	}
	return "unknown"
}

// Delivery is one message handed to a consumer.
type Delivery interface {
	// Body is the message. It is valid until the handler returns.
	Body() []byte
	// Redelivered says the message was delivered before without being
	// acknowledged (its consumer died, or it was put back).
	Redelivered() bool
	// Ack settles the message as done.
	Ack() error
	// Reject settles the message as refused: requeue puts it back for
	// another try, otherwise it is dropped (or dead-lettered).
	Reject(requeue bool) error
}

// Connector publishes to and consumes from named queues. Implementations
// are safe for concurrent use.
type Connector interface {
	// Declare makes sure queue exists as kind asks. A queue first used
	// by Publish or Consume without a Declare is declared Shared, except
	// one named like an engine's reply queue (names.ReplyQueue), which
	// is Private: the vault may reply before the engine has declared it.
	Declare(ctx context.Context, queue string, kind QueueKind) error
	// Publish puts body on queue, to expire after ttl (ttl > 0), and
	// returns once the connector has it safe, or ctx ends. A full queue
	// returns ErrFull.
	Publish(ctx context.Context, queue string, body []byte, ttl time.Duration) error
	// Consume hands queue's messages to handle, each in its own goroutine,
	// at most prefetch unsettled at a time, until ctx ends (it then returns
	// nil once every handler has returned) or the connector closes
	// (ErrClosed). A delivery that handle leaves unsettled is put back.
	Consume(ctx context.Context, queue string, prefetch int, handle func(context.Context, Delivery)) error
	// Close stops every consumer and releases the connection.
	Close() error
}
