package amqp

import (
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
	lost chan *amqp091.Error // receives (or closes) when ac goes

	declMu   sync.Mutex
	declCh   *amqp091.Channel // nil until needed, or after an error closed it
	declared map[string]bool

	pubMu sync.Mutex
	pubs  []*publisher // nil entries are opened on demand
	next  uint64       // round robin over pubs; under pubMu

	closeOnce sync.Once
	wg        sync.WaitGroup // the publishers' confirm trackers
}

func newSession(c *Conn, ac *amqp091.Connection) *session {
	return &session{
		c:        c,
		ac:       ac,
		lost:     ac.NotifyClose(make(chan *amqp091.Error, 1)),
		declared: map[string]bool{},
		pubs:     make([]*publisher, c.cfg.PublishChannels),
	}
}

// close closes the connection (if it is still open) and waits for the
// goroutines that served it. Idempotent.
func (s *session) close() {
	s.closeOnce.Do(func() {
		_ = s.ac.CloseDeadline(time.Now().Add(closeTimeout))
		s.wg.Wait()
	})
}

// declChannel returns the channel for declarations; callers hold declMu.
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
func (s *session) ensure(queue string) error {
	s.declMu.Lock()
	defer s.declMu.Unlock()
	if s.declared[queue] {
		return nil
	}
	if kind, ok := s.c.kind(queue); ok {
		if err := s.declareOrAccept(queue, kind); err != nil {
			return err
		}
		s.declared[queue] = true
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
	case errors.As(err, &ae) && ae.Code == amqp091.NotFound:
		if err := s.declareLocked(queue, implicitKind(queue)); err != nil {
			return err
		}
	default:
		return queueError("look up", queue, err)
	}
	s.declared[queue] = true
	return nil
}

// forget makes the next use of queue on this session declare it again
// (it was deleted behind our back).
func (s *session) forget(queue string) {
	s.declMu.Lock()
	defer s.declMu.Unlock()
	delete(s.declared, queue)
}

// declare declares queue as kind on this session. A queue that exists
// with other arguments is used as it is, with a warning: the other side
// of a site (vault or engine) may run with other settings, and refusing
// the queue would stop the site. RabbitMQ policies change the bounds of
// existing queues.
func (s *session) declare(queue string, kind connector.QueueKind) error {
	s.declMu.Lock()
	defer s.declMu.Unlock()
	if err := s.declareOrAccept(queue, kind); err != nil {
		return err
	}
	s.declared[queue] = true
	return nil
}

// declareOrAccept declares queue, or accepts it as it is if it exists
// with other arguments; callers hold declMu.
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
		args["x-dead-letter-exchange"] = "" // the default exchange: routes by queue name
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

// declareLocked declares queue (and its dead-letter queue); callers hold
// declMu.
func (s *session) declareLocked(queue string, kind connector.QueueKind) error {
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
	}
	if _, err := ch.QueueDeclare(queue, durable, false, false, false, args); err != nil {
		return queueError("declare", queue, err)
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
