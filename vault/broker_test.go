package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/enroll"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// brokerSite is the site the broker tests serve: the one every vault has.
const brokerSite = DefaultSite

var requestQueue = names.RequestQueue(brokerSite)

// brokerEnv runs ServeSite over a memory connector for one test, with one
// approved engine whose key seals the requests.
type brokerEnv struct {
	*testVault
	conn    *connector.Memory
	engine  string
	key     []byte
	version int
	counts  *itemCounts

	mu         sync.Mutex
	lastSealed []byte // the last item send published
	replies    *replies
}

// itemCounts records the broker's ItemCounter calls.
type itemCounts struct {
	mu sync.Mutex
	m  map[string]int // "kind/outcome"
}

func (c *itemCounts) count(_, kind, outcome string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[kind+"/"+outcome]++
}

func (c *itemCounts) get(kind, outcome string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[kind+"/"+outcome]
}

// approvedEngine registers and approves a fresh engine of site on v and
// returns its id, key and key version.
func approvedEngine(t testing.TB, v *testVault, site string) (string, []byte, int) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := enroll.MarshalPublicKey(&k.PublicKey)
	ctx := context.Background()
	info, err := v.RegisterEngine(ctx, site, der, "test engine", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.ApproveEngine(ctx, info.ID); err != nil {
		t.Fatal(err)
	}
	key, version, _, err := v.engineKeyOf(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	return info.ID, key, version
}

func startBroker(t *testing.T) *brokerEnv {
	t.Helper()
	v := newTestVault(t)
	id, key, version := approvedEngine(t, v, brokerSite)
	conn := connector.NewMemory(64)
	counts := &itemCounts{m: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.ServeSite(ctx, conn, brokerSite, counts.count) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeSite returned %v after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("ServeSite did not return after cancel")
		}
		conn.Close()
	})
	b := &brokerEnv{testVault: v, conn: conn, engine: id, key: key, version: version, counts: counts}
	b.collect(t)
	return b
}

// replyQueue is the test engine's own reply queue.
func (b *brokerEnv) replyQueue() string { return names.ReplyQueue(brokerSite, b.engine) }

// send seals req as the test engine (unless mutate changes the header or
// key) and publishes it. It returns the request id and the reply queue.
func (b *brokerEnv) send(t *testing.T, req workitem.CredentialRequest, mutate func(*workitem.Header, *[]byte)) (string, string) {
	t.Helper()
	id := workitem.NewID()
	if req.ReplyTo == "" {
		req.ReplyTo = b.replyQueue()
	}
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	h := workitem.Header{Site: brokerSite, ID: id, Kind: workitem.KindCredentialRequest, Engine: b.engine,
		KeyVersion: uint32(b.version), Expiry: time.Now().Add(30 * time.Second)} // #nosec G115 -- test
	key := b.key
	if mutate != nil {
		mutate(&h, &key)
	}
	sealed, err := workitem.Seal(key, h, body)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.conn.Publish(context.Background(), requestQueue, sealed, time.Minute); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.lastSealed = sealed
	b.mu.Unlock()
	return id, req.ReplyTo
}

// replies collects everything the broker sends to the test engine's reply
// queue, by item id: requests may be in flight together.
type replies struct {
	mu      sync.Mutex
	byID    map[string][]byte
	arrived chan struct{} // closed and replaced on every arrival
}

func (r *replies) put(sealed []byte) {
	h, err := workitem.Peek(sealed)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byID[h.ID] = bytes.Clone(sealed)
	close(r.arrived)
	r.arrived = make(chan struct{})
}

// wait returns the reply to id, waiting up to d.
func (r *replies) wait(id string, d time.Duration) ([]byte, bool) {
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

// collect consumes the test engine's reply queue into b.replies until the
// test ends.
func (b *brokerEnv) collect(t *testing.T) {
	b.replies = &replies{byID: map[string][]byte{}, arrived: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.conn.Consume(ctx, b.replyQueue(), 8, func(_ context.Context, d connector.Delivery) {
			b.replies.put(d.Body())
			_ = d.Ack()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// ask sends req and opens the reply.
func (b *brokerEnv) ask(t *testing.T, req workitem.CredentialRequest) workitem.CredentialReply {
	t.Helper()
	id, _ := b.send(t, req, nil)
	sealed, ok := b.replies.wait(id, 10*time.Second)
	if !ok {
		t.Fatalf("no reply to %s request", req.Op)
	}
	h, body, err := workitem.Open(b.key, sealed, time.Now())
	if err != nil {
		t.Fatalf("open reply: %v", err)
	}
	if h.Kind != workitem.KindCredentialReply || h.ID != id || h.Site != brokerSite || h.Engine != b.engine ||
		h.Expiry.Before(time.Now().Add(20*time.Second)) || h.Expiry.After(time.Now().Add(31*time.Second)) {
		t.Fatalf("reply header %+v", h)
	}
	reply, err := workitem.DecodeReply(body)
	if err != nil {
		t.Fatal(err)
	}
	return *reply
}

// expectNoReply sends req (altered by mutate) and checks nothing comes back.
func (b *brokerEnv) expectNoReply(t *testing.T, req workitem.CredentialRequest, mutate func(*workitem.Header, *[]byte)) {
	t.Helper()
	id, _ := b.send(t, req, mutate)
	if _, ok := b.replies.wait(id, 300*time.Millisecond); ok {
		t.Fatal("got a reply to an item that should have been dropped")
	}
}

const targetPassword = "T4rget-Passw0rd-Never-Logged"

func TestBrokerCheckout(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	hk := newHostKey(t)
	s := passwordSecret(t, "web01", targetPassword, "alice", "group:ops")
	s.HostKey = authorizedLine(hk)
	if err := b.AddSecret(ctx, s); err != nil {
		t.Fatal(err)
	}
	key := newPrivateKeyPEM(t)
	ks := passwordSecret(t, "db01", "", "carol")
	ks.Password, ks.PrivateKey = nil, bytes.Clone(key)
	if err := b.AddSecret(ctx, ks); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		req     workitem.CredentialRequest
		refused string
	}{
		{"allowed user", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Source: "192.0.2.1:5555", Secret: "web01"}, ""},
		{"allowed group", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "bob", Groups: []string{"dev", "ops"}, Source: "192.0.2.2:1", Secret: "web01"}, ""},
		{"not allowed", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "bob", Groups: []string{"dev"}, Source: "192.0.2.2:1", Secret: "web01"}, workitem.RefusedDenied},
		{"group name is not a user", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "ops", Secret: "web01"}, workitem.RefusedDenied},
		{"unknown secret", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Secret: "nope"}, workitem.RefusedDenied},
		{"invalid secret name", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Secret: "a@b"}, workitem.RefusedDenied},
		{"invalid user name", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "al ice", Secret: "web01"}, workitem.RefusedDenied},
		{"unknown op", workitem.CredentialRequest{Op: "rotate", User: "alice", Secret: "web01"}, workitem.RefusedDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply := b.ask(t, tt.req)
			if reply.Refused != tt.refused {
				t.Fatalf("refused = %q, want %q", reply.Refused, tt.refused)
			}
			if tt.refused != "" {
				if reply.Credential != nil || reply.Secrets != nil {
					t.Fatalf("a refusal carries data: %+v", reply)
				}
				return
			}
			c := reply.Credential
			if c == nil || c.Secret != "web01" || c.Host != s.Host || c.Port != 22 || c.Username != "root" ||
				string(c.Password) != targetPassword || c.PrivateKey != nil || c.PinOnFirstUse ||
				!bytes.Equal(c.HostKey, hk.Marshal()) {
				t.Fatalf("credential %+v", c)
			}
		})
	}

	reply := b.ask(t, workitem.CredentialRequest{Op: workitem.OpCheckout, User: "carol", Secret: "db01"})
	if reply.Credential == nil || !bytes.Equal(reply.Credential.PrivateKey, key) || reply.Credential.Password != nil {
		t.Fatalf("private-key checkout: %+v", reply)
	}

	ok, denied := 0, 0
	for _, e := range b.audit.find("checkout") {
		switch e.Outcome {
		case "ok":
			ok++
		case "denied":
			denied++
		}
		if e.Secret == "web01" && e.User == "alice" && e.Source != "192.0.2.1:5555" {
			t.Errorf("audit event lacks the source: %+v", e)
		}
	}
	if ok != 3 || denied != 5 {
		t.Errorf("audit: %d ok and %d denied checkouts, want 3 and 5", ok, denied)
	}
	assertNoSecretLogged(t, b.testVault, targetPassword, string(key[40:80]))
}

// assertNoSecretLogged scans the log and the audit events for each secret.
func assertNoSecretLogged(t *testing.T, v *testVault, secrets ...string) {
	t.Helper()
	logs := v.logs.String()
	v.audit.mu.Lock()
	events := fmt.Sprintf("%+v", v.audit.events)
	v.audit.mu.Unlock()
	for _, s := range secrets {
		if strings.Contains(logs, s) || strings.Contains(events, s) {
			t.Fatalf("a secret appears in the log or audit trail")
		}
	}
}

func TestBrokerList(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	for name, allow := range map[string][]string{
		"web03": {"alice"},
		"web01": {"group:ops"},
		"web02": {"bob", "group:ops", "alice"},
		"db01":  {"bob"},
	} {
		if err := b.AddSecret(ctx, passwordSecret(t, name, "pw-"+name, allow...)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		user   string
		groups []string
		want   []string
	}{
		{"alice", nil, []string{"web02", "web03"}},
		{"alice", []string{"ops"}, []string{"web01", "web02", "web03"}},
		{"carol", nil, []string{}},
		{"carol", []string{"group:ops", "Ops"}, []string{}},
	}
	for _, tt := range tests {
		reply := b.ask(t, workitem.CredentialRequest{Op: workitem.OpList, User: tt.user, Groups: tt.groups})
		if reply.Refused != "" || !slices.Equal(reply.Secrets, tt.want) && !(len(reply.Secrets) == 0 && len(tt.want) == 0) {
			t.Errorf("list(%s, %v) = %+v, want %v", tt.user, tt.groups, reply, tt.want)
		}
	}
}

func TestBrokerPinOnFirstUse(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	s := passwordSecret(t, "new01", targetPassword, "alice")
	s.HostKey, s.PinOnFirstUse = "", true
	if err := b.AddSecret(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := b.AddSecret(ctx, passwordSecret(t, "fixed01", "pw-fixed", "alice")); err != nil {
		t.Fatal(err)
	}
	checkout := func() *workitem.Credential {
		t.Helper()
		r := b.ask(t, workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Secret: "new01"})
		if r.Credential == nil || string(r.Credential.Password) != targetPassword {
			t.Fatalf("checkout: %+v", r)
		}
		return r.Credential
	}
	if c := checkout(); !c.PinOnFirstUse || c.HostKey != nil {
		t.Fatalf("before pinning: %+v", c)
	}
	k1, k2 := newHostKey(t), newHostKey(t)
	pin := func(user, secret string, key []byte) string {
		t.Helper()
		return b.ask(t, workitem.CredentialRequest{Op: workitem.OpPin, User: user, Secret: secret, HostKey: key}).Refused
	}
	steps := []struct {
		name, user, secret string
		key                []byte
		want               string
	}{
		{"not allowed user", "mallory", "new01", k1.Marshal(), workitem.RefusedDenied},
		{"garbage key", "alice", "new01", []byte("garbage"), workitem.RefusedDenied},
		{"no key", "alice", "new01", nil, workitem.RefusedDenied},
		{"first pin", "alice", "new01", k1.Marshal(), ""},
		{"same key again", "alice", "new01", k1.Marshal(), ""},
		{"different key", "alice", "new01", k2.Marshal(), workitem.RefusedConflict},
		{"secret with a fixed key", "alice", "fixed01", k1.Marshal(), workitem.RefusedDenied},
		{"unknown secret", "alice", "nope", k1.Marshal(), workitem.RefusedDenied},
	}
	for _, st := range steps {
		if got := pin(st.user, st.secret, st.key); got != st.want {
			t.Fatalf("%s: refused = %q, want %q", st.name, got, st.want)
		}
	}
	c := checkout()
	if c.PinOnFirstUse || !bytes.Equal(c.HostKey, k1.Marshal()) {
		t.Fatalf("after pinning: %+v", c)
	}
	info, err := b.ShowSecret(ctx, "new01")
	if err != nil || info.HostKeyFingerprint != ssh.FingerprintSHA256(k1) || !info.PinOnFirstUse {
		t.Fatalf("ShowSecret after pin: %+v, %v", info, err)
	}
	var pinned, conflicts int
	for _, e := range b.audit.find("hostkey_pinned") {
		fp := ""
		for _, a := range e.Attrs {
			if a.Key == "fingerprint" {
				fp = a.Value.String()
			}
		}
		switch {
		case e.Outcome == "ok" && fp == ssh.FingerprintSHA256(k1):
			pinned++
		case e.Outcome == "denied" && fp == ssh.FingerprintSHA256(k2):
			conflicts++
		}
	}
	if pinned != 1 || conflicts != 1 {
		t.Fatalf("audit: %d pins and %d conflicts recorded, want 1 and 1", pinned, conflicts)
	}
}

// TestBrokerPinRace: concurrent first pins with different keys; exactly one
// key wins and the others see a conflict.
func TestBrokerPinRace(t *testing.T) {
	b := startBroker(t)
	s := passwordSecret(t, "race01", targetPassword, "alice")
	s.HostKey, s.PinOnFirstUse = "", true
	if err := b.AddSecret(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	const n = 6
	results := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		key := newHostKey(t).Marshal()
		wg.Go(func() {
			results <- b.ask(t, workitem.CredentialRequest{Op: workitem.OpPin, User: "alice", Secret: "race01", HostKey: key}).Refused
		})
	}
	wg.Wait()
	close(results)
	won := 0
	for r := range results {
		switch r {
		case "":
			won++
		case workitem.RefusedConflict:
		default:
			t.Errorf("unexpected refusal %q", r)
		}
	}
	if won != 1 {
		t.Fatalf("%d pins won, want 1", won)
	}
}

func TestBrokerDropsBadItems(t *testing.T) {
	b := startBroker(t)
	if err := b.AddSecret(context.Background(), passwordSecret(t, "web01", targetPassword, "alice")); err != nil {
		t.Fatal(err)
	}
	req := workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Secret: "web01"}
	otherKey := bytes.Repeat([]byte{7}, 32)
	other, _, otherVersion := approvedEngine(t, b.testVault, brokerSite)
	if err := b.AddSite(context.Background(), SiteSpec{Name: "elsewhere", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	foreign, foreignKey, foreignVersion := approvedEngine(t, b.testVault, "elsewhere")
	tests := []struct {
		name   string
		req    workitem.CredentialRequest
		mutate func(*workitem.Header, *[]byte)
		reason string
	}{
		{"expired", req, func(h *workitem.Header, _ *[]byte) { h.Expiry = time.Now().Add(-time.Second) }, rejectExpired},
		{"forged", req, func(_ *workitem.Header, k *[]byte) { *k = otherKey }, rejectAuth},
		{"another engine's name", req, func(h *workitem.Header, _ *[]byte) {
			h.Engine, h.KeyVersion = other, uint32(otherVersion) // #nosec G115 -- test
		}, rejectAuth},
		{"a key version that is not the engine's", req, func(h *workitem.Header, _ *[]byte) { h.KeyVersion = 7 }, rejectStaleKey},
		{"site named in the header is not the queue's", req, func(h *workitem.Header, k *[]byte) { h.Site = "elsewhere" }, rejectWrongSite},
		{"engine of another site on this queue", req, func(h *workitem.Header, k *[]byte) {
			h.Site, h.Engine, h.KeyVersion, *k = "elsewhere", foreign, uint32(foreignVersion), foreignKey // #nosec G115 -- test
		}, rejectWrongSite},
		{"unknown engine", req, func(h *workitem.Header, _ *[]byte) { h.Engine = "0000000000000000" }, rejectUnknownEngine},
		{"wrong kind", req, func(h *workitem.Header, _ *[]byte) { h.Kind = workitem.KindCredentialReply }, rejectKind},
		{"reply to another engine's queue", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Secret: "web01",
			ReplyTo: names.ReplyQueue(brokerSite, other)}, nil, rejectReplyTo},
		{"reply queue outside the site", workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Secret: "web01", ReplyTo: "elsewhere.replies"}, nil, rejectReplyTo},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := b.counts.get(workitem.KindCredentialRequest.String(), tt.reason) + b.counts.get(workitem.KindCredentialReply.String(), tt.reason)
			b.expectNoReply(t, tt.req, tt.mutate)
			if !strings.Contains(b.logs.String(), "reason="+tt.reason) {
				t.Fatalf("no warning with reason %q in the log:\n%s", tt.reason, b.logs.String())
			}
			after := b.counts.get(workitem.KindCredentialRequest.String(), tt.reason) + b.counts.get(workitem.KindCredentialReply.String(), tt.reason)
			if after != before+1 {
				t.Fatalf("reason %q counted %d times, want once", tt.reason, after-before)
			}
		})
	}
	// A replay of a request that was answered.
	origID, _ := b.send(t, req, nil)
	if _, ok := b.replies.wait(origID, 10*time.Second); !ok {
		t.Fatal("no reply to the original")
	}
	b.replies.mu.Lock()
	delete(b.replies.byID, origID)
	b.replies.mu.Unlock()
	b.mu.Lock()
	again := b.lastSealed
	b.mu.Unlock()
	if err := b.conn.Publish(context.Background(), requestQueue, again, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.replies.wait(origID, 300*time.Millisecond); ok {
		t.Fatal("a replayed request was answered again")
	}
	if b.counts.get(workitem.KindCredentialRequest.String(), rejectReplay) != 1 {
		t.Fatal("the replay was not counted")
	}
	// Raw garbage and a body that is not a request.
	if err := b.conn.Publish(context.Background(), requestQueue, []byte("not a work item"), time.Minute); err != nil {
		t.Fatal(err)
	}
	sealed, err := workitem.Seal(b.key, workitem.Header{Site: brokerSite, ID: "x1", Kind: workitem.KindCredentialRequest, Engine: b.engine,
		KeyVersion: uint32(b.version), Expiry: time.Now().Add(time.Minute)}, // #nosec G115 -- test
		[]byte(`{"op":"checkout","user":"alice","secret":"web01","reply_to":"`+b.replyQueue()+`","extra":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.conn.Publish(context.Background(), requestQueue, sealed, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.replies.wait("x1", 300*time.Millisecond); ok {
		t.Fatal("a request with an unknown field was answered")
	}
	// The broker is still serving.
	if r := b.ask(t, req); r.Credential == nil {
		t.Fatalf("broker stopped answering: %+v", r)
	}
	if len(b.audit.find("checkout")) != 2 {
		t.Fatalf("dropped items reached the audit trail: %+v", b.audit.find("checkout"))
	}
	assertNoSecretLogged(t, b.testVault, targetPassword)
}

// TestBrokerReturnsOnClose: a closed connector ends ServeCredentials with
// an error, after the handlers have finished.
func TestBrokerReturnsOnClose(t *testing.T) {
	v := newTestVault(t)
	conn := connector.NewMemory(4)
	done := make(chan error, 1)
	go func() { done <- v.ServeSite(context.Background(), conn, brokerSite, nil) }()
	time.Sleep(50 * time.Millisecond)
	conn.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("ServeSite returned nil after the connector closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeSite did not return")
	}
}

// FuzzCredentialRequest feeds arbitrary bodies, sealed under the right key,
// through the request decoder and the policy; nothing may panic and every
// answer is either a refusal or allowed by the stored policy.
func FuzzCredentialRequest(f *testing.F) {
	f.Add([]byte(`{"op":"checkout","user":"alice","source":"1.2.3.4:5","secret":"web01","reply_to":"site.r"}`))
	f.Add([]byte(`{"op":"list","user":"alice","groups":["ops"],"reply_to":"site.r"}`))
	f.Add([]byte(`{"op":"pin","user":"alice","secret":"web01","host_key":"AAAA","reply_to":"site.r"}`))
	f.Add([]byte(`[]`))
	v := newTestVault(f)
	if err := v.AddSecret(context.Background(), passwordSecret(f, "web01", targetPassword, "alice")); err != nil {
		f.Fatal(err)
	}
	h := workitem.Header{Site: brokerSite, ID: "fuzz", Kind: workitem.KindCredentialRequest}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req workitem.CredentialRequest
		if err := decodeStrict(bytes.NewReader(body), &req); err != nil {
			return
		}
		reply := v.answer(context.Background(), h, &req)
		if reply.Credential != nil && !(req.Op == workitem.OpCheckout && req.User == "alice" && req.Secret == "web01") {
			t.Fatalf("credential handed out for %+v", req)
		}
		reply.Credential.Wipe()
	})
}

func TestBrokerRecheck(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	if err := b.AddSecret(ctx, passwordSecret(t, "keep01", targetPassword, "alice", "bob", "group:ops")); err != nil {
		t.Fatal(err)
	}
	if err := b.AddSecret(ctx, passwordSecret(t, "drop01", targetPassword, "alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.AddUser(ctx, UserSpec{Name: "bob", Password: []byte("bob-password-1"), Groups: []string{"ops"}}); err != nil {
		t.Fatal(err)
	}
	grants := []workitem.Grant{
		{User: "alice", Source: "192.0.2.1:1", Secret: "keep01"},                             // RADIUS user, allowed by name
		{User: "alice", Source: "192.0.2.1:1", Secret: "drop01"},                             // its secret goes
		{User: "bob", Local: true, Source: "192.0.2.1:2", Secret: "keep01"},                  // local user, goes
		{User: "carol", Groups: []string{"ops"}, Source: "192.0.2.1:3", Secret: "keep01"},    // RADIUS group
		{User: "carol", Groups: []string{"ops"}, Local: true, Source: "x", Secret: "keep01"}, // "local" but not in the store
		{User: "alice", Source: "x", Secret: "no such"},
	}
	want := func(w ...bool) {
		t.Helper()
		r := b.ask(t, workitem.CredentialRequest{Op: workitem.OpRecheck, Grants: grants})
		if fmt.Sprint(r.Allowed) != fmt.Sprint(w) || r.Refused != "" {
			t.Fatalf("allowed %v (refused %q), want %v", r.Allowed, r.Refused, w)
		}
	}
	want(true, true, true, true, false, false)
	if err := b.RemoveSecret(ctx, "drop01"); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveUser(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	want(true, false, false, true, false, false)
	// Disabled: the secret for everyone, a local user for every secret.
	if _, err := b.AddUser(ctx, UserSpec{Name: "dave", Password: []byte("dave-password-1")}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddSecret(ctx, passwordSecret(t, "dave01", targetPassword, "dave", "alice")); err != nil {
		t.Fatal(err)
	}
	grants = []workitem.Grant{
		{User: "dave", Local: true, Source: "x", Secret: "dave01"},
		{User: "alice", Source: "x", Secret: "dave01"},
		{User: "alice", Source: "x", Secret: "keep01"},
	}
	want(true, true, true)
	if err := b.SetUserDisabled(ctx, "dave", true); err != nil {
		t.Fatal(err)
	}
	want(false, true, true)
	if err := b.SetSecretDisabled(ctx, "dave01", true); err != nil {
		t.Fatal(err)
	}
	want(false, false, true)
	if r := b.ask(t, workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Source: "x", Secret: "dave01"}); r.Refused != workitem.RefusedDenied {
		t.Fatalf("checkout of a disabled secret: %+v", r)
	}
	if r := b.ask(t, workitem.CredentialRequest{Op: workitem.OpList, User: "alice", Source: "x"}); slices.Contains(r.Secrets, "dave01") {
		t.Fatalf("a disabled secret is in the menu: %v", r.Secrets)
	}
	if err := b.SetSecretDisabled(ctx, "dave01", false); err != nil {
		t.Fatal(err)
	}
	if err := b.SetUserDisabled(ctx, "dave", false); err != nil {
		t.Fatal(err)
	}
	want(true, true, true)
	if err := b.SetUserDisabled(ctx, "nobody", true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("disabling a missing user: %v", err)
	}
	if r := b.ask(t, workitem.CredentialRequest{Op: workitem.OpRecheck}); r.Refused != workitem.RefusedDenied {
		t.Fatalf("an empty re-check: %+v", r)
	}
	many := make([]workitem.Grant, workitem.MaxGrants+1)
	if r := b.ask(t, workitem.CredentialRequest{Op: workitem.OpRecheck, Grants: many}); r.Refused != workitem.RefusedDenied {
		t.Fatalf("an over-long re-check: %+v", r)
	}
}

// TestBrokerRejected: an engine's report that a target refused the
// credential makes a heartbeat due now, but only for a user who may use
// the secret.
func TestBrokerRejected(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	s := passwordSecret(t, "web01", targetPassword, "alice")
	s.HostKey = authorizedLine(newHostKey(t))
	if err := b.AddSecret(ctx, s); err != nil {
		t.Fatal(err)
	}
	due := func() int64 {
		var d int64
		if err := b.db.QueryRow(`SELECT hb_due FROM secret_schedule WHERE secret = 'web01'`).Scan(&d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	if due() != 0 {
		t.Fatal("a heartbeat is due before anything happened")
	}
	if r := b.ask(t, workitem.CredentialRequest{Op: workitem.OpRejected, User: "mallory", Source: "192.0.2.1:1", Secret: "web01"}); r.Refused != workitem.RefusedDenied || due() != 0 {
		t.Fatalf("a user not allowed made a heartbeat due: %+v", r)
	}
	if r := b.ask(t, workitem.CredentialRequest{Op: workitem.OpRejected, User: "alice", Source: "192.0.2.1:1", Secret: "web01"}); r.Refused != "" || due() == 0 {
		t.Fatalf("refused = %q, due %d", r.Refused, due())
	}
	out, err := b.NextTasks(ctx, 10)
	if err != nil || len(out) != 1 || out[0].Task.Op != workitem.TaskHeartbeat {
		t.Fatalf("no heartbeat sent: %+v %v", out, err)
	}
	out[0].Task.Wipe()
	if len(b.audit.find("credential_rejected")) == 0 {
		t.Fatal("not audited")
	}
}
