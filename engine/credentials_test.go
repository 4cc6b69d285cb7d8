package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

const (
	testSite   = "dc1"
	testEngine = "0123456789abcdef"
)

var testKey = Key{Bytes: bytes.Repeat([]byte{1}, 32), Version: 3}

// responder plays the vault: it opens requests under the engine key and
// answers each through answer, on the engine's reply queue.
func responder(ctx context.Context, t *testing.T, conn connector.Connector, key Key, answer func(h workitem.Header, body []byte) (workitem.Kind, []byte)) {
	_ = conn.Consume(ctx, names.RequestQueue(testSite), 8, func(ctx context.Context, d connector.Delivery) {
		defer d.Ack()
		h, body, err := workitem.Open(key.Bytes, d.Body(), time.Now())
		if errors.Is(err, workitem.ErrExpired) {
			return // as the vault does: a request whose asker gave up is dropped
		}
		if err != nil {
			t.Errorf("vault could not open request: %v", err)
			return
		}
		if h.Engine != testEngine || h.Site != testSite || int(h.KeyVersion) != key.Version {
			t.Errorf("request header %+v", h)
		}
		kind, out := answer(h, body)
		reply, _ := workitem.Seal(key.Bytes, workitem.Header{Site: h.Site, ID: h.ID, Kind: kind, Engine: h.Engine,
			KeyVersion: h.KeyVersion, Expiry: time.Now().Add(time.Minute)}, out)
		_ = conn.Publish(ctx, names.ReplyQueue(testSite, testEngine), reply, time.Minute)
	})
}

// credentialAnswers adapts a CredentialRequest handler for responder.
func credentialAnswers(t *testing.T, f func(workitem.CredentialRequest) workitem.CredentialReply) func(workitem.Header, []byte) (workitem.Kind, []byte) {
	return func(h workitem.Header, body []byte) (workitem.Kind, []byte) {
		var req workitem.CredentialRequest
		if err := json.Unmarshal(body, &req); err != nil {
			t.Errorf("bad request body: %v", err)
		}
		if req.ReplyTo != names.ReplyQueue(testSite, testEngine) {
			t.Errorf("reply_to %q", req.ReplyTo)
		}
		r := f(req)
		out, _ := workitem.EncodeReply(&r)
		return workitem.KindCredentialReply, out
	}
}

func start(t *testing.T) (context.Context, *connector.Memory, *Credentials) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	mem := connector.NewMemory(64)
	c := NewCredentials(mem, testSite, testEngine, testKey, nil)
	go func() { _ = c.Run(ctx) }()
	return ctx, mem, c
}

func TestCredentials(t *testing.T) {
	ctx, mem, c := start(t)
	go responder(ctx, t, mem, testKey, credentialAnswers(t, func(r workitem.CredentialRequest) workitem.CredentialReply {
		switch {
		case r.Op == workitem.OpList:
			return workitem.CredentialReply{Secrets: []string{"db01", "web01"}}
		case r.Op == workitem.OpCheckout && r.User == "alice" && r.Secret == "web01" && r.Source == "192.0.2.1:5555":
			return workitem.CredentialReply{Credential: &workitem.Credential{Secret: "web01", Host: "h", Port: 22, Username: "root", Password: []byte("pw")}}
		case r.Op == workitem.OpPin:
			return workitem.CredentialReply{Refused: workitem.RefusedConflict}
		case r.Secret == "broken":
			return workitem.CredentialReply{Refused: workitem.RefusedUnavailable}
		}
		return workitem.CredentialReply{Refused: workitem.RefusedDenied}
	}))
	id := gw.Identity{User: "alice"}
	src := netip.MustParseAddrPort("192.0.2.1:5555")

	cred, err := c.Checkout(ctx, id, src, "web01")
	if err != nil || string(cred.Password) != "pw" || cred.Host != "h" {
		t.Fatalf("Checkout = %v, %v", cred, err)
	}
	if _, err := c.Checkout(ctx, id, src, "db01"); !errors.Is(err, gw.ErrDenied) {
		t.Fatalf("denied checkout: %v", err)
	}
	if _, err := c.Checkout(ctx, id, src, "broken"); !errors.Is(err, gw.ErrUnavailable) {
		t.Fatalf("unavailable checkout: %v", err)
	}
	if names, err := c.List(ctx, id, src); err != nil || len(names) != 2 {
		t.Fatalf("List = %v, %v", names, err)
	}
	if err := c.PinHostKey(ctx, id, src, "web01", []byte("k")); !errors.Is(err, gw.ErrDenied) {
		t.Fatalf("pin conflict: %v", err)
	}
}

func TestLocalUserChecks(t *testing.T) {
	ctx, mem, c := start(t)
	go responder(ctx, t, mem, testKey, func(h workitem.Header, body []byte) (workitem.Kind, []byte) {
		if h.Kind != workitem.KindLoginRequest {
			t.Errorf("kind %s", h.Kind)
		}
		req, err := workitem.DecodeLoginRequest(body)
		if err != nil {
			t.Fatal(err)
		}
		defer req.Wipe()
		r := workitem.LoginReply{Refused: workitem.RefusedDenied}
		switch {
		case req.Op == workitem.LoginPassword && req.User == "alice" && string(req.Secret) == "alice-pw":
			r = workitem.LoginReply{TOTP: true, Groups: []string{"ops"}}
		case req.Op == workitem.LoginTOTP && string(req.Secret) == "123456":
			r = workitem.LoginReply{}
		case req.User == "outage":
			r = workitem.LoginReply{Refused: workitem.RefusedUnavailable}
		}
		out, _ := workitem.EncodeLoginReply(&r)
		return workitem.KindLoginReply, out
	})
	totp, groups, err := c.VerifyPassword(ctx, "alice", []byte("alice-pw"))
	if err != nil || !totp || len(groups) != 1 {
		t.Fatalf("VerifyPassword = %v %v %v", totp, groups, err)
	}
	if _, _, err := c.VerifyPassword(ctx, "alice", []byte("wrong")); !errors.Is(err, gw.ErrDenied) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, _, err := c.VerifyPassword(ctx, "outage", []byte("x")); !errors.Is(err, gw.ErrUnavailable) {
		t.Fatalf("vault unavailable: %v", err)
	}
	if err := c.VerifyTOTP(ctx, "alice", "123456"); err != nil {
		t.Fatalf("VerifyTOTP: %v", err)
	}
}

func TestCredentialsTimeoutAndForgery(t *testing.T) {
	ctx, mem, c := start(t)
	c.timeout = 300 * time.Millisecond
	if _, err := c.Checkout(ctx, gw.Identity{User: "a"}, netip.AddrPort{}, "s"); !errors.Is(err, gw.ErrUnavailable) {
		t.Fatalf("no vault: %v", err)
	}
	// Replies sealed under another key, or for another engine, are dropped.
	other := bytes.Repeat([]byte{2}, 32)
	for _, tc := range []struct {
		key    []byte
		engine string
	}{{other, testEngine}, {testKey.Bytes, "fedcba9876543210"}} {
		bad, _ := workitem.Seal(tc.key, workitem.Header{Site: testSite, ID: "x", Kind: workitem.KindCredentialReply, Engine: tc.engine,
			KeyVersion: 3, Expiry: time.Now().Add(time.Minute)}, []byte("{}"))
		if err := mem.Publish(ctx, c.replyQueue(), bad, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	c.timeout = 10 * time.Second
	go responder(ctx, t, mem, testKey, credentialAnswers(t, func(workitem.CredentialRequest) workitem.CredentialReply {
		return workitem.CredentialReply{Credential: &workitem.Credential{Password: []byte("genuine")}}
	}))
	if cred, err := c.Checkout(ctx, gw.Identity{User: "a"}, netip.AddrPort{}, "s"); err != nil || string(cred.Password) != "genuine" {
		t.Fatalf("Checkout = %v, %v", cred, err)
	}
	// No key (not approved): unavailable at once.
	c.SetKey(Key{})
	if _, err := c.List(ctx, gw.Identity{User: "a"}, netip.AddrPort{}); !errors.Is(err, gw.ErrUnavailable) {
		t.Fatalf("without a key: %v", err)
	}
}

func TestStillAllowedChunks(t *testing.T) {
	ctx, mem, c := start(t)
	var sizes []int
	var mu sync.Mutex
	go responder(ctx, t, mem, testKey, credentialAnswers(t, func(r workitem.CredentialRequest) workitem.CredentialReply {
		mu.Lock()
		sizes = append(sizes, len(r.Grants))
		mu.Unlock()
		out := make([]bool, len(r.Grants))
		for i, g := range r.Grants {
			out[i] = g.Secret != "gone" && g.Local && g.Source == "192.0.2.1:22"
		}
		return workitem.CredentialReply{Allowed: out}
	}))
	grants := make([]gw.Grant, 2*workitem.MaxGrants+3)
	for i := range grants {
		grants[i] = gw.Grant{Identity: gw.Identity{User: "u", Local: true}, Source: netip.MustParseAddrPort("192.0.2.1:22"), Secret: "s"}
		if i%100 == 7 {
			grants[i].Secret = "gone"
		}
	}
	ok, err := c.StillAllowed(ctx, grants)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range ok {
		if v != (i%100 != 7) {
			t.Fatalf("grant %d: %v", i, v)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sizes) != 3 || sizes[0] != workitem.MaxGrants || sizes[2] != 3 {
		t.Fatalf("request sizes %v", sizes)
	}
}

// TestCredentialsShareWaiting: after a move to another connection, a
// reply to a request sent on the old one that arrives on the new one (and
// the other way round) still reaches who asked.
func TestCredentialsShareWaiting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	oldConn, newConn := connector.NewMemory(64), connector.NewMemory(64)
	oldCreds := NewCredentials(oldConn, testSite, testEngine, testKey, nil)
	newCreds := NewCredentials(newConn, testSite, testEngine, testKey, nil)
	newCreds.ShareWaiting(oldCreds)
	go func() { _ = oldCreds.Run(ctx) }()
	go func() { _ = newCreds.Run(ctx) }()
	// The vault reads requests from the old connection and answers on the
	// new one, and the other way round.
	crossed := func(from, to connector.Connector) {
		_ = from.Consume(ctx, names.RequestQueue(testSite), 8, func(ctx context.Context, d connector.Delivery) {
			defer d.Ack()
			h, _, err := workitem.Open(testKey.Bytes, d.Body(), time.Now())
			if err != nil {
				t.Errorf("open: %v", err)
				return
			}
			out, _ := workitem.EncodeReply(&workitem.CredentialReply{Secrets: []string{"via-the-other"}})
			reply, _ := workitem.Seal(testKey.Bytes, workitem.Header{Site: h.Site, ID: h.ID, Kind: workitem.KindCredentialReply,
				Engine: h.Engine, KeyVersion: h.KeyVersion, Expiry: time.Now().Add(time.Minute)}, out)
			_ = to.Publish(ctx, names.ReplyQueue(testSite, testEngine), reply, time.Minute)
		})
	}
	go crossed(oldConn, newConn)
	go crossed(newConn, oldConn)
	id := gw.Identity{User: "alice"}
	src := netip.MustParseAddrPort("192.0.2.1:1")
	for _, c := range []*Credentials{oldCreds, newCreds} {
		got, err := c.List(ctx, id, src)
		if err != nil || len(got) != 1 || got[0] != "via-the-other" {
			t.Fatalf("List through %v = %v, %v", c, got, err)
		}
	}
}
