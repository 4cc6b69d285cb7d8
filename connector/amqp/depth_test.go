package amqp

import (
	"context"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
)

func TestQueueDepth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := dial(t, tb.config())
	queue := uniqueQueue(t)
	if err := c.Declare(ctx, queue, connector.Shared); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if n, err := c.QueueDepth(ctx, queue); err != nil || n != i {
			t.Fatalf("depth %d, %v; want %d", n, err, i)
		}
		if err := c.Publish(ctx, queue, []byte("x"), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.QueueDepth(ctx, queue+".missing"); err == nil {
		t.Fatal("the depth of a queue that does not exist")
	}
	// The refused passive declaration closed its own channel only.
	if err := c.Publish(ctx, queue, []byte("x"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if n, err := c.QueueDepth(ctx, queue); err != nil || n != 4 {
		t.Fatalf("depth %d, %v; want 4", n, err)
	}
}
