package connector

import (
	"context"
	"sync"
)

// Memory is an in-process connector: one buffered channel per queue. It is
// what `sallyport dev` uses; messages do not survive a restart.
type Memory struct {
	mu     sync.Mutex
	queues map[string]chan []byte
	done   chan struct{}
	once   sync.Once
	depth  int
}

// NewMemory returns a memory connector whose queues hold up to depth
// messages each before Publish blocks.
func NewMemory(depth int) *Memory {
	if depth <= 0 {
		depth = 1024
	}
	return &Memory{queues: map[string]chan []byte{}, done: make(chan struct{}), depth: depth}
}

func (m *Memory) queue(name string) chan []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.queues[name]
	if !ok {
		q = make(chan []byte, m.depth)
		m.queues[name] = q
	}
	return q
}

// Publish implements Connector.
func (m *Memory) Publish(ctx context.Context, queue string, body []byte) error {
	q := m.queue(queue)
	select {
	case <-m.done:
		return ErrClosed
	default:
	}
	select {
	case q <- body:
		return nil
	case <-m.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Consume implements Connector.
func (m *Memory) Consume(ctx context.Context, queue string, handle func(context.Context, []byte)) error {
	q := m.queue(queue)
	for {
		select {
		case body := <-q:
			handle(ctx, body)
		case <-m.done:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close implements Connector.
func (m *Memory) Close() error {
	m.once.Do(func() { close(m.done) })
	return nil
}

var _ Connector = (*Memory)(nil)
