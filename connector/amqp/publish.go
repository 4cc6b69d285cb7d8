package amqp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sallyport/sallyport/connector"
)

// closeTimeout bounds closing a connection politely.
const closeTimeout = 5 * time.Second

// settleTime is how long an operation that failed on a channel waits to
// see whether the connection went with it.
const settleTime = time.Second

// errGone means the channel that carried a publish went before its
// confirm: whether the broker has the message is unknown.
var errGone = errors.New("amqp: channel closed before the broker confirmed")

// errReturned means the broker had no queue to route a message to (the
// queue or its exchange was deleted): it was returned, not stored.
var errReturned = errors.New("amqp: no such queue: the broker returned the message")

// Publish implements connector.Connector. The body is sent before Publish
// returns, so the caller may reuse it then. Publish waits for a lost
// connection to come back until ctx ends; a message whose confirm was lost
// with the connection is sent again (at least once).
func (c *Conn) Publish(ctx context.Context, queue string, body []byte, ttl time.Duration) error {
	if len(body) > c.cfg.MaxMessageSize {
		return fmt.Errorf("amqp: publish to %s: %d bytes is over the %d-byte message limit", queue, len(body), c.cfg.MaxMessageSize)
	}
	msg := amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: body}
	if ttl > 0 {
		msg.Expiration = strconv.FormatInt(max(ttl.Milliseconds(), 1), 10)
	}
	var stale *session
	sent := false // sent once already, on a channel that went before its confirm
	retries := 0
	for {
		s, err := c.session(ctx, stale)
		if err != nil {
			return fmt.Errorf("amqp: publish to %s: %w", queue, err)
		}
		if sent {
			c.republished.Add(1)
		}
		err = c.publishOn(ctx, s, queue, msg)
		switch {
		case err == nil, errors.Is(err, connector.ErrFull):
			return err
		case errors.Is(err, connector.ErrForbidden):
			return fmt.Errorf("amqp: publish to %s: %w", queue, err)
		case ctx.Err() != nil:
			if !errors.Is(err, ctx.Err()) {
				err = ctx.Err()
			}
			return fmt.Errorf("amqp: publish to %s: %w", queue, err)
		case errors.Is(err, connector.ErrClosed):
			return fmt.Errorf("amqp: publish to %s: %w", queue, err)
		case errors.Is(err, errReturned):
			s.forget(queue) // deleted behind our back: declare it again
		case s.goneWithin(ctx):
			// The connection went: wait for the next one and send again.
			stale = s
			sent = sent || errors.Is(err, errGone)
			continue
		case errors.Is(err, errGone):
			sent = true // the channel went, the connection stays: try another
		default:
			return err
		}
		if retries++; retries > 2 {
			return fmt.Errorf("amqp: publish to %s: %w", queue, err)
		}
	}
}

// publishOn publishes msg to queue over s and waits for the broker's
// confirm.
func (c *Conn) publishOn(ctx context.Context, s *session, queue string, msg amqp091.Publishing) error {
	if err := s.ensure(ctx, queue); err != nil {
		return err
	}
	if err := s.waitUnblocked(ctx); err != nil {
		return err
	}
	p, err := s.publisher()
	if err != nil {
		return err
	}
	msg.MessageId = c.messageID()
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, queue, queue, true, false, msg)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %w", errGone, err)
	}
	if dc == nil {
		return errors.New("amqp: publishing channel is not in confirm mode")
	}
	pd := p.register(dc.DeliveryTag, msg.MessageId)
	select {
	case <-pd.done:
		return pd.err
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return connector.ErrClosed
	}
}

// publisher is a confirm-mode channel with its own confirm tracker:
// unlike amqp091's DeferredConfirmation, it tells a nack (queue full)
// from a channel that closed, and sees basic.return (no such queue).
type publisher struct {
	ch *amqp091.Channel

	mu       sync.Mutex
	pending  map[uint64]*pendingPublish // by delivery tag
	early    map[uint64]bool            // confirms that came before register: ack
	returned map[string]bool            // message ids returned, until their confirm
	gone     bool
	goneErr  error // why: errGone, or connector.ErrForbidden
}

// goneError says why a publishing channel closed: amqp091 tells its
// close listeners before it closes the confirm listeners, so the reason,
// if any, is waiting. A refusal of the queue (403) is ErrForbidden: the
// message was not taken; anything else is errGone.
func goneError(closes <-chan *amqp091.Error) error {
	select {
	case e := <-closes:
		switch {
		case e == nil:
		case e.Code == amqp091.AccessRefused:
			return fmt.Errorf("%w (%s)", connector.ErrForbidden, e.Reason)
		case e.Code == amqp091.NotFound: // the queue's exchange was deleted
			return fmt.Errorf("%w (%s)", errReturned, e.Reason)
		}
	default:
	}
	return errGone
}

type pendingPublish struct {
	id   string
	done chan struct{}
	err  error // nil, connector.ErrFull, errReturned or errGone
}

func (pd *pendingPublish) settle(err error) {
	pd.err = err
	close(pd.done)
}

func newPublisher(s *session) (*publisher, error) {
	ch, err := s.ac.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp: open a publishing channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("amqp: put a channel in confirm mode: %w", err)
	}
	p := &publisher{
		ch:       ch,
		pending:  map[uint64]*pendingPublish{},
		early:    map[uint64]bool{},
		returned: map[string]bool{},
	}
	// amqp091 drops a notification a listener leaves unread for 5 s:
	// the tracker only ever holds p.mu briefly, and the buffers are deep.
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	returns := ch.NotifyReturn(make(chan amqp091.Return, 64))
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		p.track(confirms, returns, closes)
	}()
	return p, nil
}

func (p *publisher) isGone() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gone
}

// register returns the pending publish for tag, already settled if its
// confirm came first or the channel is gone.
func (p *publisher) register(tag uint64, id string) *pendingPublish {
	pd := &pendingPublish{id: id, done: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ack, ok := p.early[tag]; ok {
		delete(p.early, tag)
		pd.settle(p.outcome(id, ack))
		return pd
	}
	if p.gone {
		pd.settle(p.goneErr)
		return pd
	}
	p.pending[tag] = pd
	return pd
}

// outcome is the result of the publish id confirmed with ack; callers
// hold p.mu.
func (p *publisher) outcome(id string, ack bool) error {
	returned := p.returned[id]
	delete(p.returned, id)
	switch {
	case !ack:
		return connector.ErrFull
	case returned:
		return errReturned
	}
	return nil
}

// track settles pending publishes as their confirms come, until the
// channel closes.
func (p *publisher) track(confirms <-chan amqp091.Confirmation, returns <-chan amqp091.Return, closes <-chan *amqp091.Error) {
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			p.mu.Lock()
			p.returned[r.MessageId] = true
			p.mu.Unlock()
		case cf, ok := <-confirms:
			p.mu.Lock()
			if !ok {
				p.gone = true
				p.goneErr = goneError(closes)
				for tag, pd := range p.pending {
					delete(p.pending, tag)
					pd.settle(p.goneErr)
				}
				p.mu.Unlock()
				return
			}
			// amqp091 hands a return to its listener before the confirm
			// of the same message: any return for this one is queued.
		drain:
			for returns != nil {
				select {
				case r, ok := <-returns:
					if !ok {
						returns = nil
						break drain
					}
					p.returned[r.MessageId] = true
				default:
					break drain
				}
			}
			if pd, ok := p.pending[cf.DeliveryTag]; ok {
				delete(p.pending, cf.DeliveryTag)
				pd.settle(p.outcome(pd.id, cf.Ack))
			} else {
				p.early[cf.DeliveryTag] = cf.Ack
			}
			p.mu.Unlock()
		}
	}
}
