package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// TestWorkerRejects feeds the worker good and bad work items: it answers
// the good ping once and drops the rest, counted by reason, and nothing it
// drops goes back to the queue except an item under a key it lacks.
func TestWorkerRejects(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := connector.NewMemory(64)
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, testSite)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	clock := func() time.Time { return now }
	creds := NewCredentials(mem, testSite, testEngine, testKey, slog.New(slog.DiscardHandler))
	w := newWorker(mem, testSite, testEngine, creds, slog.New(slog.DiscardHandler), clock)
	w.count = m.count
	siteKey := bytes.Repeat([]byte{7}, 32)
	otherSiteKey := bytes.Repeat([]byte{8}, 32)
	w.setSiteKeys(map[int][]byte{2: siteKey})

	ping := func(key []byte, site string, version uint32, expiry time.Time) (string, []byte) {
		id := workitem.NewID()
		body, _ := json.Marshal(workitem.Ping{Sent: now.UnixNano()})
		sealed, err := workitem.Seal(key, workitem.Header{Site: site, ID: id, Kind: workitem.KindPing, KeyVersion: version, Expiry: expiry}, body)
		if err != nil {
			t.Fatal(err)
		}
		return id, sealed
	}
	later := now.Add(time.Minute)
	goodID, good := ping(siteKey, testSite, 2, later)
	tampered := bytes.Clone(good)
	tampered[len(tampered)-1] ^= 1
	_, expired := ping(siteKey, testSite, 2, now.Add(-time.Second))
	_, otherSite := ping(otherSiteKey, "dc2", 1, later)
	// Another site's item relabelled as this site's: the header is
	// authenticated, so no key of this site opens it.
	_, forged := ping(otherSiteKey, testSite, 2, later)
	_, unknownKey := ping(siteKey, testSite, 9, later)
	reply, _ := workitem.Seal(siteKey, workitem.Header{Site: testSite, ID: workitem.NewID(), Kind: workitem.KindCredentialReply,
		Engine: testEngine, KeyVersion: 2, Expiry: later}, []byte("{}"))
	newVersion := append([]byte{0xff}, good[1:]...)

	results := names.ResultQueue(testSite)
	if err := mem.Declare(ctx, results, connector.Shared); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var pongs []workitem.Pong
	go func() {
		_ = mem.Consume(ctx, results, 8, func(_ context.Context, d connector.Delivery) {
			defer d.Ack()
			h, body, err := workitem.Open(testKey.Bytes, d.Body(), time.Now())
			if err != nil || h.Kind != workitem.KindPong || h.Engine != testEngine {
				t.Errorf("result %+v: %v", h, err)
				return
			}
			var p workitem.Pong
			if err := json.Unmarshal(body, &p); err != nil {
				t.Error(err)
			}
			mu.Lock()
			pongs = append(pongs, p)
			mu.Unlock()
		})
	}()

	queue := names.WorkQueue(testSite)
	if err := mem.Declare(ctx, queue, connector.Shared); err != nil {
		t.Fatal(err)
	}
	for _, item := range [][]byte{good, good, tampered, expired, otherSite, forged, unknownKey, reply, newVersion, []byte("junk")} {
		if err := mem.Publish(ctx, queue, item, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _ = w.Run(ctx) }()

	want := map[[2]string]float64{
		{"ping", "ok"}:                     1,
		{"ping", "replayed"}:               1,
		{"ping", "failed_authentication"}:  2, // tampered, forged
		{"ping", "expired"}:                1,
		{"ping", "unexpected"}:             1, // another site's
		{"ping", "stale_key"}:              2, // put back once, then dropped
		{"credential-reply", "unexpected"}: 1,
		{"unknown", "malformed"}:           2, // a newer version, junk
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := map[[2]string]float64{}
		for k := range want {
			got[k] = counterValue(m.items.WithLabelValues(k[0], k[1]))
		}
		mu.Lock()
		n := len(pongs)
		mu.Unlock()
		if equalCounts(got, want) && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counts %v, want %v; %d pongs, want 1", got, want, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	if pongs[0].PingID != goodID {
		t.Errorf("pong for %s, want %s", pongs[0].PingID, goodID)
	}
	mu.Unlock()
	if d := mem.Depth(queue); d != 0 {
		t.Errorf("%d items left in the work queue", d)
	}
	families, err := reg.Gather()
	exported := false
	for _, f := range families {
		exported = exported || f.GetName() == "sallyport_engine_items_total"
	}
	if err != nil || !exported {
		t.Errorf("sallyport_engine_items_total not exported (%v)", err)
	}
}

func equalCounts(a, b map[[2]string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestWorkerFetchesNewerKey: an item under a site key version newer than
// the worker has makes it fetch the keys once, then it is answered; an
// older unknown version does not.
func TestWorkerFetchesNewerKey(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := connector.NewMemory(64)
	m, _ := newMetrics(nil, testSite)
	creds := NewCredentials(mem, testSite, testEngine, testKey, slog.New(slog.DiscardHandler))
	w := newWorker(mem, testSite, testEngine, creds, slog.New(slog.DiscardHandler), time.Now)
	w.count = m.count
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	w.setSiteKeys(map[int][]byte{1: k1})
	var mu sync.Mutex
	n := 0
	w.refresh = func(context.Context) {
		mu.Lock()
		defer mu.Unlock()
		n++
		w.setSiteKeys(map[int][]byte{1: k1, 2: k2})
	}
	seal := func(key []byte, version uint32) []byte {
		body, _ := json.Marshal(workitem.Ping{Sent: time.Now().UnixNano()})
		b, err := workitem.Seal(key, workitem.Header{Site: testSite, ID: workitem.NewID(), Kind: workitem.KindPing, KeyVersion: version, Expiry: time.Now().Add(time.Minute)}, body)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	queue := names.WorkQueue(testSite)
	if err := mem.Declare(ctx, queue, connector.Shared); err != nil {
		t.Fatal(err)
	}
	if err := mem.Declare(ctx, names.ResultQueue(testSite), connector.Shared); err != nil {
		t.Fatal(err)
	}
	for _, item := range [][]byte{seal(k2, 2), seal(k1, 0)} {
		if err := mem.Publish(ctx, queue, item, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _ = w.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for counterValue(m.items.WithLabelValues("ping", "ok")) != 1 || counterValue(m.items.WithLabelValues("ping", "stale_key")) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("ok %v, stale %v", counterValue(m.items.WithLabelValues("ping", "ok")), counterValue(m.items.WithLabelValues("ping", "stale_key")))
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if n != 1 {
		t.Fatalf("%d key fetches, want 1 (only for the newer version)", n)
	}
}
