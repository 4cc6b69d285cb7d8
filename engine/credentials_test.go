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
	"github.com/sallyport/sallyport/workitem"
)

// responder plays the vault's side of the queue with the given answer.
func responder(ctx context.Context, t *testing.T, conn connector.Connector, key []byte, answer func(workitem.CredentialRequest) workitem.CredentialReply) {
	_ = conn.Consume(ctx, "vault.requests", 8, func(ctx context.Context, d connector.Delivery) {
		defer d.Ack()
		sealed := d.Body()
		h, body, err := workitem.Open(key, sealed, time.Now())
		if err != nil {
			t.Errorf("vault could not open request: %v", err)
			return
		}
		var req workitem.CredentialRequest
		if err := json.Unmarshal(body, &req); err != nil {
			t.Errorf("bad request body: %v", err)
			return
		}
		r := answer(req)
		out, _ := workitem.EncodeReply(&r)
		reply, _ := workitem.Seal(key, workitem.Header{Site: h.Site, ID: h.ID, Kind: workitem.KindCredentialReply, Expiry: time.Now().Add(time.Minute)}, out)
		_ = conn.Publish(ctx, req.ReplyTo, reply, time.Minute)
	})
}

func TestCredentials(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := connector.NewMemory(16)
	key := bytes.Repeat([]byte{1}, 32)
	c := NewCredentials(mem, "dev", key, "vault.requests", nil)
	go func() { _ = c.Run(ctx) }()
	go responder(ctx, t, mem, key, func(r workitem.CredentialRequest) workitem.CredentialReply {
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
	})
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

func TestCredentialsTimeoutAndForgery(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := connector.NewMemory(16)
	key := bytes.Repeat([]byte{1}, 32)
	c := NewCredentials(mem, "dev", key, "vault.requests", nil)
	c.timeout = 200 * time.Millisecond
	go func() { _ = c.Run(ctx) }()
	// The genuine vault answers "forged" for everything; a reply sealed
	// under another key is put on the queue first and must be dropped.
	go responder(ctx, t, mem, key, func(workitem.CredentialRequest) workitem.CredentialReply {
		return workitem.CredentialReply{Credential: &workitem.Credential{Password: []byte("forged")}}
	})
	c2 := NewCredentials(mem, "dev", key, "nobody-listens", nil)
	c2.timeout = 200 * time.Millisecond
	go func() { _ = c2.Run(ctx) }()
	if _, err := c2.Checkout(ctx, gw.Identity{User: "a"}, netip.AddrPort{}, "s"); !errors.Is(err, gw.ErrUnavailable) {
		t.Fatalf("no vault: %v", err)
	}
	// Publish a reply sealed under another key straight onto c's reply queue.
	bad, _ := workitem.Seal(bytes.Repeat([]byte{2}, 32), workitem.Header{Site: "dev", ID: "x", Kind: workitem.KindCredentialReply, Expiry: time.Now().Add(time.Minute)}, []byte("{}"))
	if err := mem.Publish(ctx, c.replyQueue, bad, time.Minute); err != nil {
		t.Fatal(err)
	}
	if cred, err := c.Checkout(ctx, gw.Identity{User: "a"}, netip.AddrPort{}, "s"); err != nil || string(cred.Password) != "forged" {
		// The responder above uses the right key, so this reply is genuine;
		// the forged one must simply have been dropped without harm.
		t.Fatalf("Checkout = %v, %v", cred, err)
	}
}

func TestStillAllowedChunks(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := connector.NewMemory(16)
	key := bytes.Repeat([]byte{2}, 32)
	c := NewCredentials(mem, "dev", key, "vault.requests", nil)
	go func() { _ = c.Run(ctx) }()
	var sizes []int
	var mu sync.Mutex
	go responder(ctx, t, mem, key, func(r workitem.CredentialRequest) workitem.CredentialReply {
		mu.Lock()
		sizes = append(sizes, len(r.Grants))
		mu.Unlock()
		out := make([]bool, len(r.Grants))
		for i, g := range r.Grants {
			out[i] = g.Secret != "gone" && g.Local && g.Source == "192.0.2.1:22"
		}
		return workitem.CredentialReply{Allowed: out}
	})
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
