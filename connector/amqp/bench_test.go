package amqp

import (
	"context"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/sallyport/sallyport/connector"
)

// benchBody is a sealed-size message: a 1 KiB work item.
const benchBody = 1024

// benchMaxLength lets a benchmark's queue hold everything it publishes.
const benchMaxLength = 1 << 24

// BenchmarkThroughput publishes b.N persistent 1 KiB messages with
// publisher confirms and consumes them with manual acks, through Conn and
// through amqp091-go directly (one channel, confirms pipelined 256 deep),
// on the same node in the same run (three interleaved rounds), and
// reports both rates and their ratio:
//
//	go test -run '^$' -bench Throughput -benchtime 50000x ./connector/amqp/
func BenchmarkThroughput(b *testing.B) {
	body := make([]byte, benchBody)
	_, _ = rand.Read(body)
	// Interleaved rounds, so that a load that comes and goes on the
	// machine weighs on both alike.
	const rounds = 3
	var raw, conn float64
	for range rounds {
		raw += rawRate(b, body, max(b.N/rounds, 1)) / rounds
		conn += connRate(b, body, max(b.N/rounds, 1)) / rounds
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(raw, "raw_msgs/s")
	b.ReportMetric(conn, "conn_msgs/s")
	b.ReportMetric(conn/raw, "conn/raw")
}

// connRate publishes n messages through a Conn from 64 goroutines while
// one Consume (prefetch 256) acks them; it returns messages per second.
func connRate(b *testing.B, body []byte, n int) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cfg := tb.config()
	cfg.MaxLength = benchMaxLength
	c := dial(b, cfg)
	q := uniqueQueue(b)
	if err := c.Declare(ctx, q, connector.Shared); err != nil {
		b.Fatal(err)
	}
	var got atomic.Int64
	done := make(chan struct{})
	cctx, stop := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- c.Consume(cctx, q, 256, func(_ context.Context, d connector.Delivery) {
			if err := d.Ack(); err != nil {
				b.Error(err)
			}
			if got.Add(1) == int64(n) {
				close(done)
			}
		})
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := c.Publish(ctx, q, body, time.Hour); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatalf("consumed %d of %d", got.Load(), n)
	}
	rate := float64(n) / time.Since(start).Seconds()
	stop()
	if err := <-consumed; err != nil {
		b.Fatal(err)
	}
	return rate
}

// rawRate does what connRate does with amqp091-go alone: the same queue
// arguments, persistent messages, confirms and manual acks.
func rawRate(b *testing.B, body []byte, n int) float64 {
	conn, err := tb.rawDial()
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	q := uniqueQueue(b)
	cfg := tb.config().withDefaults()
	cfg.MaxLength = benchMaxLength
	durable, args := queueArgs(cfg, q, connector.Shared)
	pub, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pub.QueueDeclare(q, durable, false, false, false, args); err != nil {
		b.Fatal(err)
	}
	if err := pub.Confirm(false); err != nil {
		b.Fatal(err)
	}
	sub, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := sub.Qos(256, 0, false); err != nil {
		b.Fatal(err)
	}
	msgs, err := sub.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for i := 0; i < n; i++ {
			d, ok := <-msgs
			if !ok {
				b.Error("deliveries ended")
				return
			}
			if err := d.Ack(false); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	start := time.Now()
	window := make([]*amqp091.DeferredConfirmation, 0, 256)
	wait := func() {
		for _, dc := range window {
			if !dc.Wait() {
				b.Error("nack")
			}
		}
		window = window[:0]
	}
	for range n {
		dc, err := pub.PublishWithDeferredConfirm("", q, true, false, amqp091.Publishing{
			DeliveryMode: amqp091.Persistent, Body: body, Expiration: "3600000",
		})
		if err != nil {
			b.Fatal(err)
		}
		if window = append(window, dc); len(window) == cap(window) {
			wait()
		}
	}
	wait()
	<-consumed
	return float64(n) / time.Since(start).Seconds()
}
