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
	"github.com/sallyport/sallyport/names"
)

// session is one AMQP connection and what was set up on it: the queues
// declared on it, the channel declarations go through, and the
// publishing channels.
type session struct {
	c    *Conn
	ac   *amqp091.Connection
	lost chan *amqp091.Error // receives (or closes) when ac goes: the supervisor's
	dead chan struct{}       // closed when ac goes: everyone else's

	// declSem (one slot) serialises declarations and owns declCh. It is
	// a channel, not a mutex, so that waiting for it honours a context.
	declSem chan struct{}
	declCh  *amqp091.Channel // nil until needed, or after an error closed it

	mu       sync.Mutex
	declared map[string]bool // queues ready on this connection

	pubMu sync.Mutex
	pubs  []*publisher // nil entries are opened on demand
	next  uint64       // round robin over pubs; under pubMu

	blockMu   sync.Mutex
	unblocked chan struct{} // closed while the broker takes publishes

	closeOnce sync.Once
	wg        sync.WaitGroup // the publishers' confirm trackers, declarations under way, watchers
}

func newSession(c *Conn, ac *amqp091.Connection) *session {
	s := &session{
		c:        c,
		ac:       ac,
		lost:     ac.NotifyClose(make(chan *amqp091.Error, 1)),
		dead:     make(chan struct{}),
		declSem:  make(chan struct{}, 1),
		declared: map[string]bool{},
		pubs:     make([]*publisher, c.cfg.PublishChannels),
	}
	s.unblocked = make(chan struct{})
	close(s.unblocked)
	closed := ac.NotifyClose(make(chan *amqp091.Error, 1))
	blocks := ac.NotifyBlocked(make(chan amqp091.Blocking, 4))
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		for range closed { // amqp091 closes it after the last error
		}
		close(s.dead)
	}()
	go func() {
		defer s.wg.Done()
		s.watchBlocks(blocks)
	}()
	return s
}

// watchBlocks follows connection.blocked and connection.unblocked: a
// broker short of memory or disk stops reading from publishers, and a
// publish sent then would hang in a write that no context can end, so
// Publish waits before sending instead.
func (s *session) watchBlocks(blocks <-chan amqp091.Blocking) {
	for b := range blocks { // closed with the connection
		s.blockMu.Lock()
		select {
		case <-s.unblocked:
			if b.Active {
				s.unblocked = make(chan struct{})
				s.c.log.Warn("amqp broker blocks publishing", "broker", s.c.ep.addr, "reason", b.Reason)
			}
		default:
			if !b.Active {
				close(s.unblocked)
				s.c.log.Info("amqp broker takes publishes again", "broker", s.c.ep.addr)
			}
		}
		s.blockMu.Unlock()
	}
}

// waitUnblocked waits until the broker takes publishes (or the connection
// goes: the publish then fails and is retried on the next one).
func (s *session) waitUnblocked(ctx context.Context) error {
	s.blockMu.Lock()
	unblocked := s.unblocked
	s.blockMu.Unlock()
	select {
	case <-unblocked:
		return nil
	case <-s.dead:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("broker blocks publishing: %w", ctx.Err())
	case <-s.c.ctx.Done():
		return connector.ErrClosed
	}
}

// goneWithin reports whether the connection is lost, waiting up to
// settleTime (or ctx) for it: an error on a channel often comes just
// before amqp091 notices that the whole connection went.
func (s *session) goneWithin(ctx context.Context) bool {
	t := time.NewTimer(settleTime)
	defer t.Stop()
	select {
	case <-s.dead:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return s.ac.IsClosed()
}

// close closes the connection (if it is still open) and waits for the
// goroutines that served it. Idempotent.
func (s *session) close() {
	s.closeOnce.Do(func() {
		_ = s.ac.CloseDeadline(time.Now().Add(closeTimeout))
		s.wg.Wait()
	})
}

// declaring runs f, which may use declCh, alone among declarations. The
// broker's answers have no context: f runs in a goroutine of the session
// (ended at the latest when the connection closes), and declaring returns
// when ctx ends even if f has not.
func (s *session) declaring(ctx context.Context, f func() error) error {
	select {
	case s.declSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.c.ctx.Done():
		return connector.ErrClosed
	}
	done := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.declSem }()
		done <- f()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.c.ctx.Done():
		return connector.ErrClosed
	}
}

// declChannel returns the channel for declarations; callers run under
// declaring.
func (s *session) declChannel() (*amqp091.Channel, error) {
	if s.declCh != nil && !s.declCh.IsClosed() {
		return s.declCh, nil
	}
	ch, err := s.ac.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp: open a channel: %w", err)
	}
	s.declCh = ch
	return ch, nil
}

func (s *session) isDeclared(queue string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.declared[queue]
}

func (s *session) markDeclared(queue string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.declared[queue] = true
}

// forget makes the next use of queue on this session declare it again
// (it was deleted behind our back).
func (s *session) forget(queue string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.declared, queue)
}

// implicitKind is how a queue first met in Publish or Consume is
// declared: an engine's reply queue is Private, anything else Shared.
func implicitKind(queue string) connector.QueueKind {
	if _, kind, _, ok := names.ParseQueue(queue); ok && kind == names.QueueReply {
		return connector.Private
	}
	return connector.Shared
}

// ensure makes sure queue exists before it is used on this session: as
// Declare declared it, or else as it already is on the broker, or else
// declared as implicitKind says.
func (s *session) ensure(ctx context.Context, queue string) error {
	if s.isDeclared(queue) {
		return nil
	}
	return s.declaring(ctx, func() error {
		if s.isDeclared(queue) {
			return nil
		}
		if kind, ok := s.c.kind(queue); ok {
			if err := s.declareOrAccept(queue, kind); err != nil {
				return err
			}
			s.markDeclared(queue)
			return nil
		}
		ch, err := s.declChannel()
		if err != nil {
			return err
		}
		_, err = ch.QueueDeclarePassive(queue, false, false, false, false, nil)
		var ae *amqp091.Error
		switch {
		case err == nil:
			// It exists: make sure of its exchange and binding too
			// (both idempotent).
			if err := s.exchangeLocked(queue, implicitKind(queue)); err != nil {
				return err
			}
			if ch, err = s.declChannel(); err != nil {
				return err
			}
			if err := ch.QueueBind(queue, queue, queue, false, nil); err != nil {
				return queueError("bind", queue, err)
			}
		case errors.As(err, &ae) && ae.Code == amqp091.NotFound:
			if err := s.declareLocked(queue, implicitKind(queue)); err != nil {
				return err
			}
		default:
			return queueError("look up", queue, err)
		}
		s.markDeclared(queue)
		return nil
	})
}

// declare declares queue as kind on this session. A queue that exists
// with other arguments is used as it is, with a warning: the other side
// of a site (vault or engine) may run with other settings, and refusing
// the queue would stop the site. RabbitMQ policies change the bounds of
// existing queues.
func (s *session) declare(ctx context.Context, queue string, kind connector.QueueKind) error {
	return s.declaring(ctx, func() error {
		if err := s.declareOrAccept(queue, kind); err != nil {
			return err
		}
		s.markDeclared(queue)
		return nil
	})
}

// declareOrAccept declares queue, or accepts it as it is if it exists
// with other arguments; callers run under declaring.
func (s *session) declareOrAccept(queue string, kind connector.QueueKind) error {
	err := s.declareLocked(queue, kind)
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.PreconditionFailed {
		ch, cerr := s.declChannel()
		if cerr != nil {
			return cerr
		}
		if _, perr := ch.QueueDeclarePassive(queue, false, false, false, false, nil); perr != nil {
			return err
		}
		s.c.log.Warn("amqp queue exists with other arguments; using it as it is", "queue", queue, "kind", kind.String(), "reason", ae.Reason)
		return nil
	}
	return err
}

// DeadLetterSuffix ends the name of the queue that holds a Shared queue's
// expired and rejected messages when Config.DeadLetter is set.
const DeadLetterSuffix = ".dead"

// queueArgs returns whether a queue of kind named queue is durable and
// the arguments (x-…) cfg declares it with; the broker's own policies may
// add to them.
func queueArgs(cfg Config, queue string, kind connector.QueueKind) (durable bool, args amqp091.Table) {
	if kind == connector.Private {
		return false, amqp091.Table{
			"x-queue-type": QueueClassic,
			"x-expires":    cfg.PrivateExpires.Milliseconds(),
			"x-max-length": int64(cfg.MaxLength),
			"x-overflow":   "reject-publish",
		}
	}
	args = amqp091.Table{
		"x-queue-type": cfg.QueueType,
		"x-max-length": int64(cfg.MaxLength),
		"x-overflow":   "reject-publish",
	}
	if cfg.DeadLetter {
		args["x-dead-letter-exchange"] = queue // its own exchange, which the dead-letter queue is bound to
		args["x-dead-letter-routing-key"] = queue + DeadLetterSuffix
	}
	return true, args
}

// deadLetterArgs are the arguments of a "<queue>.dead" queue: classic,
// bounded, dropping its oldest when full.
func deadLetterArgs(cfg Config) amqp091.Table {
	return amqp091.Table{
		"x-queue-type": QueueClassic,
		"x-max-length": int64(cfg.DeadLetterMaxLength),
	}
}

// declareLocked declares queue, its exchange and binding, and its
// dead-letter queue; callers run under declaring.
//
// Every queue has a direct exchange of the same name, bound to it by the
// queue's name, which is what Publish sends to (and dead-lettering goes
// through): RabbitMQ checks a publisher's write permission on the
// exchange only, so with the default exchange any user could write to
// any queue; this way one name prefix per site (names.QueuePrefix)
// covers all its permissions. A Private queue's exchange is auto-deleted
// with its queue.
func (s *session) declareLocked(queue string, kind connector.QueueKind) error {
	if err := s.exchangeLocked(queue, kind); err != nil {
		return err
	}
	ch, err := s.declChannel()
	if err != nil {
		return err
	}
	durable, args := queueArgs(s.c.cfg, queue, kind)
	if kind == connector.Shared && s.c.cfg.DeadLetter {
		dead := queue + DeadLetterSuffix
		if _, err := ch.QueueDeclare(dead, true, false, false, false, deadLetterArgs(s.c.cfg)); err != nil {
			return queueError("declare", dead, err)
		}
		if err := ch.QueueBind(dead, dead, queue, false, nil); err != nil {
			return queueError("bind", dead, err)
		}
	}
	if _, err := ch.QueueDeclare(queue, durable, false, false, false, args); err != nil {
		return queueError("declare", queue, err)
	}
	if err := ch.QueueBind(queue, queue, queue, false, nil); err != nil {
		return queueError("bind", queue, err)
	}
	return nil
}

// exchangeLocked declares queue's exchange (see declareLocked); one that
// exists already is used as it is. Callers run under declaring.
func (s *session) exchangeLocked(queue string, kind connector.QueueKind) error {
	ch, err := s.declChannel()
	if err != nil {
		return err
	}
	durable, autoDelete := kind == connector.Shared, kind == connector.Private
	err = ch.ExchangeDeclare(queue, amqp091.ExchangeDirect, durable, autoDelete, false, false, nil)
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.PreconditionFailed {
		if ch, err = s.declChannel(); err != nil {
			return err
		}
		err = ch.ExchangeDeclarePassive(queue, amqp091.ExchangeDirect, false, false, false, false, nil)
	}
	if err != nil {
		return queueError("declare the exchange of", queue, err)
	}
	return nil
}

// queueError explains a broker's refusal of an operation on queue.
func queueError(op, queue string, err error) error {
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp091.AccessRefused:
			return fmt.Errorf("amqp: %s queue %s: %w (%s)", op, queue, connector.ErrForbidden, ae.Reason)
		case amqp091.PreconditionFailed:
			return fmt.Errorf("amqp: %s queue %s: it exists with other arguments (type, length bound, expiry or dead-lettering); delete it or align the configuration: %w", op, queue, err)
		}
	}
	return fmt.Errorf("amqp: %s queue %s: %w", op, queue, err)
}

// publisher returns a publishing channel, opening one where needed.
func (s *session) publisher() (*publisher, error) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	i := s.next % uint64(len(s.pubs))
	s.next++
	if p := s.pubs[i]; p != nil && !p.isGone() {
		return p, nil
	}
	p, err := newPublisher(s)
	if err != nil {
		return nil, err
	}
	s.pubs[i] = p
	return p, nil
}

// messageID returns a fresh message id, which is how a returned message
// is matched with its publish.
func (c *Conn) messageID() string {
	return strconv.FormatUint(c.msgIDs.Add(1), 36)
}
