package connector

import (
	"bytes"
	"context"
	"sync"
	"time"
)

// DefaultMaxLength bounds a Memory queue when NewMemory is given no bound.
const DefaultMaxLength = 10_000

// Memory is an in-process connector with a broker's semantics (see the
// package doc): what `sallyport dev` and unit tests use, and the queue
// store behind the built-in connector. Messages do not survive a restart.
type Memory struct {
	maxLen int
	now    func() time.Time

	mu     sync.Mutex
	queues map[string]*memQueue
	done   chan struct{}
	closed bool

	expired int64 // messages dropped unread because they expired
}

type memQueue struct {
	kind   QueueKind
	items  []*memItem // FIFO; requeued items go to the front
	notify chan struct{}
}

type memItem struct {
	body        []byte
	expiry      time.Time
	redelivered bool
}

// NewMemory returns a memory connector whose queues hold at most maxLen
// messages each (0: DefaultMaxLength); a publish beyond that is ErrFull.
func NewMemory(maxLen int) *Memory {
	if maxLen <= 0 {
		maxLen = DefaultMaxLength
	}
	return &Memory{maxLen: maxLen, now: time.Now, queues: map[string]*memQueue{}, done: make(chan struct{})}
}

// queue returns name's queue, creating it as kind; callers hold m.mu.
func (m *Memory) queue(name string, kind QueueKind) *memQueue {
	q, ok := m.queues[name]
	if !ok {
		q = &memQueue{kind: kind, notify: make(chan struct{})}
		m.queues[name] = q
	}
	return q
}

// Declare implements Connector.
func (m *Memory) Declare(_ context.Context, queue string, kind QueueKind) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.queue(queue, kind)
	return nil
}

// Publish implements Connector. The body is copied.
func (m *Memory) Publish(_ context.Context, queue string, body []byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	q := m.queue(queue, Shared)
	if len(q.items) >= m.maxLen {
		return ErrFull
	}
	it := &memItem{body: bytes.Clone(body)}
	if ttl > 0 {
		it.expiry = m.now().Add(ttl)
	}
	q.items = append(q.items, it)
	q.wake()
	return nil
}

// wake tells every waiting consumer that the queue changed; callers hold
// m.mu.
func (q *memQueue) wake() {
	close(q.notify)
	q.notify = make(chan struct{})
}

// next takes the next unexpired message of queue, waiting for one until
// ctx ends or m closes.
func (m *Memory) next(ctx context.Context, queue string) (*memItem, error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		q := m.queue(queue, Shared)
		now := m.now()
		for len(q.items) > 0 {
			it := q.items[0]
			q.items[0] = nil
			q.items = q.items[1:]
			if !it.expiry.IsZero() && !now.Before(it.expiry) {
				m.expired++
				clear(it.body)
				continue
			}
			m.mu.Unlock()
			return it, nil
		}
		wait := q.notify
		m.mu.Unlock()
		select {
		case <-wait:
		case <-m.done:
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// requeue puts it back at the front of queue, marked redelivered.
func (m *Memory) requeue(queue string, it *memItem) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	it.redelivered = true
	q := m.queue(queue, Shared)
	q.items = append([]*memItem{it}, q.items...)
	q.wake()
}

// Consume implements Connector.
func (m *Memory) Consume(ctx context.Context, queue string, prefetch int, handle func(context.Context, Delivery)) error {
	if prefetch <= 0 {
		prefetch = 1
	}
	slots := make(chan struct{}, prefetch)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		case <-m.done:
			return ErrClosed
		}
		it, err := m.next(ctx, queue)
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			d := &memDelivery{m: m, queue: queue, it: it}
			handle(ctx, d)
			d.mu.Lock()
			settled := d.settled
			d.settled = true
			d.mu.Unlock()
			if !settled {
				m.requeue(queue, it)
			}
		}()
	}
}

// Close implements Connector. Queued messages are lost.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		close(m.done)
	}
	return nil
}

// Depth returns how many messages wait on queue.
func (m *Memory) Depth(queue string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q, ok := m.queues[queue]; ok {
		return len(q.items)
	}
	return 0
}

// Expired returns how many messages expired before anyone read them.
func (m *Memory) Expired() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.expired
}

// Delete removes queue and what waits on it (a Private queue whose
// consumer is gone for good).
func (m *Memory) Delete(queue string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q, ok := m.queues[queue]; ok {
		q.items = nil
		q.wake()
		delete(m.queues, queue)
	}
}

type memDelivery struct {
	m     *Memory
	queue string
	it    *memItem

	mu      sync.Mutex
	settled bool
}

func (d *memDelivery) Body() []byte      { return d.it.body }
func (d *memDelivery) Redelivered() bool { return d.it.redelivered }

func (d *memDelivery) settle() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return false
	}
	d.settled = true
	return true
}

// Ack implements Delivery.
func (d *memDelivery) Ack() error {
	if !d.settle() {
		return ErrSettled
	}
	return nil
}

// Reject implements Delivery.
func (d *memDelivery) Reject(requeue bool) error {
	if !d.settle() {
		return ErrSettled
	}
	if requeue {
		d.m.requeue(d.queue, d.it)
	}
	return nil
}

var _ Connector = (*Memory)(nil)

// Session returns a connection to m: a Connector over m's queues whose
// Close ends only its own consumers and publishes, as a client's
// disconnection does on a broker (its unsettled messages are put back).
// The built-in connector gives each engine one.
func (m *Memory) Session() *MemorySession {
	return &MemorySession{m: m, done: make(chan struct{})}
}

// MemorySession is one connection to a Memory; see Memory.Session.
type MemorySession struct {
	m    *Memory
	once sync.Once
	done chan struct{}
}

func (s *MemorySession) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Declare implements Connector.
func (s *MemorySession) Declare(ctx context.Context, queue string, kind QueueKind) error {
	if s.closed() {
		return ErrClosed
	}
	return s.m.Declare(ctx, queue, kind)
}

// Publish implements Connector.
func (s *MemorySession) Publish(ctx context.Context, queue string, body []byte, ttl time.Duration) error {
	if s.closed() {
		return ErrClosed
	}
	return s.m.Publish(ctx, queue, body, ttl)
}

// Consume implements Connector.
func (s *MemorySession) Consume(ctx context.Context, queue string, prefetch int, handle func(context.Context, Delivery)) error {
	if s.closed() {
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := s.m.Consume(ctx, queue, prefetch, handle)
	if s.closed() {
		return ErrClosed
	}
	return err
}

// QueueDepth returns how many messages wait on queue (0 for a queue that
// does not exist).
func (s *MemorySession) QueueDepth(_ context.Context, queue string) (int, error) {
	if s.closed() {
		return 0, ErrClosed
	}
	return s.m.Depth(queue), nil
}

// Close implements Connector: it ends this session's consumers only.
func (s *MemorySession) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

var _ Connector = (*MemorySession)(nil)
