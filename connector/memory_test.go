package connector

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestMemory(t *testing.T) {
	m := NewMemory(2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, b := range []string{"a", "b"} {
		if err := m.Publish(ctx, "q", []byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	// Full queue: Publish waits for its context.
	short, c2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer c2()
	if err := m.Publish(short, "q", []byte("c")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish to a full queue: %v", err)
	}
	got := make(chan string, 2)
	done := make(chan error, 1)
	go func() {
		done <- m.Consume(ctx, "q", func(_ context.Context, b []byte) { got <- string(b) })
	}()
	if a, b := <-got, <-got; a != "a" || b != "b" {
		t.Fatalf("got %q %q, want a b in order", a, b)
	}
	_ = m.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Consume after Close: %v", err)
	}
	if err := m.Publish(ctx, "q", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
}
