package vault

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/enroll"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// testEngine is an engine's identity: its P-256 key pair and its id.
type testEngine struct {
	priv *ecdsa.PrivateKey
	der  []byte // PKIX DER of the public key
	id   string
}

func newTestEngine(t testing.TB) *testEngine {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := enroll.MarshalPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	id, err := enroll.EngineID(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &testEngine{priv: k, der: der, id: id}
}

// unwrap opens a blob the vault wrapped to this engine's key.
func (e *testEngine) unwrap(label string, blob []byte) ([]byte, error) {
	return enroll.Unwrap(func(peer *ecdh.PublicKey) ([]byte, error) {
		priv, err := e.priv.ECDH()
		if err != nil {
			return nil, err
		}
		return priv.ECDH(peer)
	}, &e.priv.PublicKey, label, blob)
}

// register registers e with site on v, and approves it when approve is set.
func (e *testEngine) register(t testing.TB, v *Vault, site string, approve bool) EngineInfo {
	t.Helper()
	ctx := context.Background()
	info, err := v.RegisterEngine(ctx, site, e.der, "engine "+e.id[:4], "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != e.id {
		t.Fatalf("registered as %s, want %s", info.ID, e.id)
	}
	if approve {
		if info, err = v.ApproveEngine(ctx, e.id); err != nil {
			t.Fatal(err)
		}
	}
	return info
}

// serveSite runs v.ServeSite(conn, site) until the test ends.
func serveSite(t testing.TB, v *Vault, conn connector.Connector, site string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.ServeSite(ctx, conn, site, nil) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeSite(%s) returned %v after cancel", site, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("ServeSite(%s) did not return after cancel", site)
		}
	})
}

// siteAsker sends credential requests as one approved engine of a site over
// a connector, and opens the replies on its reply queue.
type siteAsker struct {
	conn    connector.Connector
	site    string
	engine  string
	key     []byte
	version int
	replies *replyCounter
}

// newSiteAsker starts consuming engine's reply queue on conn until the
// test ends.
func newSiteAsker(t testing.TB, v *Vault, conn connector.Connector, site, engine string) *siteAsker {
	t.Helper()
	key, version, keySite, err := v.engineKeyOf(context.Background(), engine)
	if err != nil || keySite != site {
		t.Fatalf("engine key of %s: site %q, %v", engine, keySite, err)
	}
	a := &siteAsker{conn: conn, site: site, engine: engine, key: key, version: version, replies: newReplyCounter()}
	a.replies.consume(t, conn, names.ReplyQueue(site, engine))
	return a
}

// send seals req under the engine's key and publishes it to the site's
// request queue; it returns the item id.
func (a *siteAsker) send(t testing.TB, req workitem.CredentialRequest) string {
	t.Helper()
	id := workitem.NewID()
	req.ReplyTo = names.ReplyQueue(a.site, a.engine)
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := workitem.Seal(a.key, workitem.Header{Site: a.site, ID: id, Kind: workitem.KindCredentialRequest, Engine: a.engine,
		KeyVersion: uint32(a.version), Expiry: time.Now().Add(time.Minute)}, body) // #nosec G115 -- test
	if err != nil {
		t.Fatal(err)
	}
	if err := a.conn.Publish(context.Background(), names.RequestQueue(a.site), sealed, time.Minute); err != nil {
		t.Fatal(err)
	}
	return id
}

// open waits for the reply to id and opens it.
func (a *siteAsker) open(t testing.TB, id string) workitem.CredentialReply {
	t.Helper()
	sealed, ok := a.replies.wait(id, 10*time.Second)
	if !ok {
		t.Fatalf("no reply to %s on site %s", id, a.site)
	}
	h, body, err := workitem.Open(a.key, sealed, time.Now())
	if err != nil {
		t.Fatalf("open reply: %v", err)
	}
	if h.ID != id || h.Site != a.site || h.Engine != a.engine || h.Kind != workitem.KindCredentialReply {
		t.Fatalf("reply header %+v", h)
	}
	reply, err := workitem.DecodeReply(body)
	if err != nil {
		t.Fatal(err)
	}
	return *reply
}

// ask sends req and returns the opened reply.
func (a *siteAsker) ask(t testing.TB, req workitem.CredentialRequest) workitem.CredentialReply {
	t.Helper()
	return a.open(t, a.send(t, req))
}

// replyCounter keeps every item that arrives on the queues it consumes,
// by item id, and how many times each id arrived.
type replyCounter struct {
	mu      sync.Mutex
	byID    map[string][]byte
	count   map[string]int
	arrived chan struct{} // closed and replaced on every arrival
}

func newReplyCounter() *replyCounter {
	return &replyCounter{byID: map[string][]byte{}, count: map[string]int{}, arrived: make(chan struct{})}
}

func (r *replyCounter) put(sealed []byte) {
	h, err := workitem.Peek(sealed)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byID[h.ID] = append([]byte(nil), sealed...)
	r.count[h.ID]++
	close(r.arrived)
	r.arrived = make(chan struct{})
}

// consume collects queue on conn into r until the test ends.
func (r *replyCounter) consume(t testing.TB, conn connector.Connector, queue string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = conn.Consume(ctx, queue, 8, func(_ context.Context, d connector.Delivery) {
			r.put(d.Body())
			_ = d.Ack()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// wait returns the item id, waiting up to d.
func (r *replyCounter) wait(id string, d time.Duration) ([]byte, bool) {
	deadline := time.After(d)
	for {
		r.mu.Lock()
		got, ok := r.byID[id]
		next := r.arrived
		r.mu.Unlock()
		if ok {
			return got, true
		}
		select {
		case <-next:
		case <-deadline:
			return nil, false
		}
	}
}

// waitAll waits up to d until every id has arrived; it returns the ids
// still missing.
func (r *replyCounter) waitAll(ids []string, d time.Duration) []string {
	deadline := time.After(d)
	for {
		r.mu.Lock()
		var missing []string
		for _, id := range ids {
			if _, ok := r.byID[id]; !ok {
				missing = append(missing, id)
			}
		}
		next := r.arrived
		r.mu.Unlock()
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-next:
		case <-deadline:
			return missing
		}
	}
}

// times returns how many times id arrived.
func (r *replyCounter) times(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count[id]
}

// total returns how many items arrived.
func (r *replyCounter) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.count {
		n += c
	}
	return n
}
