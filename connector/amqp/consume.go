package amqp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sallyport/sallyport/connector"
)

// maxPrefetch is the most basic.qos can ask for (a 16-bit count).
const maxPrefetch = 1<<16 - 1

// Consume implements connector.Connector. It holds one channel with
// basic.qos(prefetch); each delivery's handler runs in its own goroutine,
// at most prefetch at a time, across reconnections too. When the
// connection goes, Consume subscribes again on the next one; the
// deliveries it had are redelivered by the broker (Redelivered set), and
// settling the stale ones returns connector.ErrSettled. A subscription
// the broker ends (its queue deleted) is renewed after a backoff, the
// queue declared again. Consume returns an error only for what retrying
// cannot mend: connector.ErrForbidden, or a precondition the broker
// refuses (406).
func (c *Conn) Consume(ctx context.Context, queue string, prefetch int, handle func(context.Context, connector.Delivery)) error {
	prefetch = min(max(prefetch, 1), maxPrefetch)
	if c.isClosed() {
		return connector.ErrClosed
	}
	// Handlers get a context that also ends when the Conn closes.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	unwatch := context.AfterFunc(c.ctx, cancel)
	defer unwatch()

	slots := make(chan struct{}, prefetch)
	var handlers sync.WaitGroup
	defer handlers.Wait()

	var stale *session
	wait := c.cfg.BackoffMin
	for {
		s, err := c.session(hctx, stale)
		if err != nil {
			return c.consumeEnd(ctx, queue, err)
		}
		started := time.Now()
		err = c.consumeOn(hctx, s, queue, prefetch, slots, &handlers, handle)
		if hctx.Err() != nil {
			return c.consumeEnd(ctx, queue, err)
		}
		if s.goneWithin(hctx) {
			stale = s // the supervisor reconnects; subscribe again then
			continue
		}
		if hctx.Err() != nil {
			return c.consumeEnd(ctx, queue, err)
		}
		var ae *amqp091.Error
		if errors.Is(err, connector.ErrForbidden) || (errors.As(err, &ae) && ae.Code == amqp091.PreconditionFailed) {
			return err
		}
		// The connection lives but the subscription ended: the queue was
		// deleted, or the channel failed. Declare it again, after a while.
		s.forget(queue)
		c.log.Warn("amqp consumer ended by the broker; subscribing again", "queue", queue, "err", err)
		if time.Since(started) > time.Minute {
			wait = c.cfg.BackoffMin
		}
		d := wait/2 + rand.N(wait/2+1) // #nosec G404 -- jitter, not a secret
		if !c.sleep(hctx, d) {
			return c.consumeEnd(ctx, queue, err)
		}
		wait = min(wait*2, c.cfg.BackoffMax)
	}
}

// consumeEnd is what Consume returns once it stops: ErrClosed after
// Close, nil when its context ended, else err.
func (c *Conn) consumeEnd(ctx context.Context, queue string, err error) error {
	switch {
	case c.isClosed():
		return connector.ErrClosed
	case ctx.Err() != nil:
		return nil
	}
	return fmt.Errorf("amqp: consume %s: %w", queue, err)
}

// consumeOn subscribes to queue on s and hands its deliveries to handle
// until ctx ends (nil, once this channel's handlers have returned) or the
// subscription ends (an error; its handlers are left to finish, tracked
// by handlers).
func (c *Conn) consumeOn(ctx context.Context, s *session, queue string, prefetch int, slots chan struct{}, handlers *sync.WaitGroup, handle func(context.Context, connector.Delivery)) error {
	if err := s.ensure(ctx, queue); err != nil {
		return err
	}
	ch, err := s.ac.Channel()
	if err != nil {
		return fmt.Errorf("amqp: consume %s: open a channel: %w", queue, err)
	}
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if err := ch.Qos(prefetch, 0, false); err != nil {
		_ = ch.Close()
		return fmt.Errorf("amqp: consume %s: qos: %w", queue, err)
	}
	tag := "sallyport." + strconv.FormatUint(c.consumerIDs.Add(1), 10)
	msgs, err := ch.Consume(queue, tag, false, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return queueError("consume", queue, err)
	}
	var mine sync.WaitGroup // this channel's handlers
	for {
		select {
		case <-ctx.Done():
			// Stop the deliveries, let the handlers settle what they
			// have, then close: the broker puts back what is left.
			_ = ch.Cancel(tag, false)
			mine.Wait()
			_ = ch.Close()
			return nil
		case d, ok := <-msgs:
			if !ok {
				_ = ch.Close()
				var why error = errors.New("subscription cancelled by the broker")
				select {
				case e := <-closed:
					if e != nil {
						why = e
					}
				default:
				}
				return fmt.Errorf("amqp: consume %s: %w", queue, why)
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				continue // d is left unsettled: closing the channel puts it back
			}
			if ch.IsClosed() {
				<-slots // stale: the broker delivers it again
				continue
			}
			handlers.Add(1)
			mine.Add(1)
			go func() {
				defer handlers.Done()
				defer mine.Done()
				defer func() { <-slots }()
				dl := &delivery{d: d}
				handle(ctx, dl)
				if dl.settle() {
					_ = d.Reject(true)
				}
			}()
		}
	}
}

// delivery is a connector.Delivery over an amqp091 delivery.
type delivery struct {
	d       amqp091.Delivery
	settled atomic.Bool
}

func (d *delivery) settle() bool { return d.settled.CompareAndSwap(false, true) }

// Body implements connector.Delivery.
func (d *delivery) Body() []byte { return d.d.Body }

// Redelivered implements connector.Delivery: the AMQP redelivered flag.
func (d *delivery) Redelivered() bool { return d.d.Redelivered }

// Ack implements connector.Delivery (basic.ack). After the channel that
// carried the delivery is gone it returns connector.ErrSettled: the
// broker delivers the message again.
func (d *delivery) Ack() error {
	if !d.settle() {
		return connector.ErrSettled
	}
	if err := d.d.Ack(false); err != nil {
		return fmt.Errorf("%w: %w", connector.ErrSettled, err)
	}
	return nil
}

// Reject implements connector.Delivery (basic.reject).
func (d *delivery) Reject(requeue bool) error {
	if !d.settle() {
		return connector.ErrSettled
	}
	if err := d.d.Reject(requeue); err != nil {
		return fmt.Errorf("%w: %w", connector.ErrSettled, err)
	}
	return nil
}
