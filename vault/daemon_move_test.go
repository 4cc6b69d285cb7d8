package vault

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// TestDaemonMovesWork: work queued for a site's engines on the connector
// it left goes to the connector it went to, byte for byte; what expired
// on the way is dropped and counted.
func TestDaemonMovesWork(t *testing.T) {
	const urlX = "amqps://sallyport@rabbit-x.test:5671/"
	x := newGatedConn(true)
	env := newDaemonEnv(t, map[string]*gatedConn{urlX: x})
	v := env.d.Vault()
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "lyon", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: urlX}}); err != nil {
		t.Fatal(err)
	}
	env.run(t)
	key, version, err := v.SiteKey(ctx, "lyon")
	if err != nil {
		t.Fatal(err)
	}
	queue := names.WorkQueue("lyon")
	if err := x.Declare(ctx, queue, connector.Shared); err != nil {
		t.Fatal(err)
	}
	seal := func(expiry time.Time) []byte {
		b, err := workitem.Seal(key, workitem.Header{Site: "lyon", ID: workitem.NewID(), Kind: workitem.KindPing,
			KeyVersion: uint32(version), Expiry: expiry}, []byte(`{"sent":1}`)) // #nosec G115 -- small
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var want [][]byte
	for range 5 {
		item := seal(env.clk.now().Add(time.Minute))
		want = append(want, item)
		if err := x.Publish(ctx, queue, item, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	// Expired by the vault's clock, though the broker still holds it.
	if err := x.Publish(ctx, queue, seal(env.clk.now().Add(-time.Second)), time.Hour); err != nil {
		t.Fatal(err)
	}

	if err := v.SetSiteConnector(ctx, "lyon", ConnectorSpec{Kind: ConnectorBuiltin}); err != nil {
		t.Fatal(err)
	}
	env.d.SyncSites()
	env.waitServed(t, "lyon", ConnectorBuiltin+" ")
	deadline := time.Now().Add(10 * time.Second)
	for x.Depth(queue) != 0 || env.queues.Depth(queue) != len(want) {
		if time.Now().After(deadline) {
			t.Fatalf("left %d on the old connector, %d on the new, want 0 and %d", x.Depth(queue), env.queues.Depth(queue), len(want))
		}
		time.Sleep(10 * time.Millisecond)
	}
	var mu sync.Mutex
	var got [][]byte
	cctx, cancel := context.WithCancel(ctx)
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		_ = env.queues.Consume(cctx, queue, 16, func(_ context.Context, d connector.Delivery) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, bytes.Clone(d.Body()))
			_ = d.Ack()
			if len(got) == len(want) {
				cancel()
			}
		})
	}()
	<-consumed
	mu.Lock()
	defer mu.Unlock()
	sortBytes := func(b [][]byte) { slices.SortFunc(b, bytes.Compare) }
	sortBytes(got)
	sortBytes(want)
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatal("the moved items differ from those queued")
	}
	if n := counterValue(env.d.items.WithLabelValues("lyon", "ping", "moved")); n != 5 {
		t.Errorf("moved counted %v, want 5", n)
	}
	if n := counterValue(env.d.items.WithLabelValues("lyon", "ping", "expired_in_move")); n != 1 {
		t.Errorf("expired_in_move counted %v, want 1", n)
	}
}

// TestDaemonNewBrokerPassword: a site whose broker password alone changed
// is served on a connection made with the new password.
func TestDaemonNewBrokerPassword(t *testing.T) {
	const urlX = "amqps://sallyport@rabbit-x.test:5671/"
	env := newDaemonEnv(t, map[string]*gatedConn{urlX: newGatedConn(true)})
	v := env.d.Vault()
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "nice", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: urlX, Secret: []byte("old-Broker-Pw1")}}); err != nil {
		t.Fatal(err)
	}
	env.run(t)
	if err := v.SetSiteConnector(ctx, "nice", ConnectorSpec{Kind: ConnectorAMQP, URL: urlX, Secret: []byte("new-Broker-Pw2")}); err != nil {
		t.Fatal(err)
	}
	env.d.SyncSites()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(env.dialer.dialed(), urlX+" new-Broker-Pw2") {
		if time.Now().After(deadline) {
			t.Fatalf("dialled %q; want a dial with the new password", strings.Join(env.dialer.dialed(), ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
