package amqp

import (
	"context"
	"fmt"
)

// QueueDepth returns how many messages wait on queue, ready for a
// consumer, by a passive declaration on a channel of its own (a queue that
// does not exist closes that channel, not the ones in use).
func (c *Conn) QueueDepth(ctx context.Context, queue string) (int, error) {
	s, err := c.session(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("amqp: depth of %s: %w", queue, err)
	}
	type answer struct {
		n   int
		err error
	}
	done := make(chan answer, 1)
	go func() {
		ch, err := s.ac.Channel()
		if err != nil {
			done <- answer{err: err}
			return
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		done <- answer{n: q.Messages, err: err}
	}()
	select {
	case a := <-done:
		if a.err != nil {
			return 0, fmt.Errorf("amqp: depth of %s: %w", queue, a.err)
		}
		return a.n, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("amqp: depth of %s: %w", queue, ctx.Err())
	}
}
