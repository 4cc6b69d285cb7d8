package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/sallyport/sallyport/workitem"
)

// RDP secrets: a password pinned by the target certificate's SHA-256 (or
// on first use), checked out with their protocol, heartbeaten but never
// rotated.
func TestRDPSecrets(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	sum := sha256.Sum256([]byte("the target's certificate"))
	colons := strings.ToUpper(hex.EncodeToString(sum[:]))
	for i := len(colons) - 2; i > 0; i -= 2 {
		colons = colons[:i] + ":" + colons[i:]
	}
	spec := func(name string) SecretSpec {
		return SecretSpec{Name: name, Protocol: ProtocolRDP, Host: "10.0.0.9", Port: 3389, Username: `CORP\Administrator`,
			Password: []byte("Win-pass-1"), CertSHA256: colons, Allow: []string{"alice"}}
	}
	if err := b.AddSecret(ctx, spec("win01")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []func(*SecretSpec){
		func(s *SecretSpec) { s.CertSHA256 = "abcd" },
		func(s *SecretSpec) { s.CertSHA256 = "" },
		func(s *SecretSpec) { s.PinOnFirstUse = true },
		func(s *SecretSpec) { s.HostKey = authorizedLine(newHostKey(t)) },
		func(s *SecretSpec) { s.Password, s.PrivateKey = nil, newPrivateKeyPEM(t) },
		func(s *SecretSpec) { s.Rotate = 30 * 24 * 60 * 60 * 1e9 },
		func(s *SecretSpec) { s.ChangeMethod = ChangeSelf },
		func(s *SecretSpec) { s.Protocol = "vnc" },
	} {
		s := spec("win02")
		bad(&s)
		if err := b.AddSecret(ctx, s); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%+v accepted: %v", s, err)
		}
	}
	// An SSH secret takes no certificate pin.
	ssh := SecretSpec{Name: "web01", Host: "h", Port: 22, Username: "u", Password: []byte("p"), CertSHA256: colons, Allow: []string{"alice"}}
	if err := b.AddSecret(ctx, ssh); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ssh secret with cert_sha256: %v", err)
	}

	info, err := b.ShowSecret(ctx, "win01")
	if err != nil || info.Protocol != ProtocolRDP || info.CertSHA256 != hex.EncodeToString(sum[:]) || info.HostKey != "" {
		t.Fatalf("show: %+v %v", info, err)
	}
	reply := b.ask(t, workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Source: "192.0.2.1:5555", Secret: "win01"})
	if reply.Refused != "" || reply.Credential == nil || reply.Credential.Protocol != ProtocolRDP ||
		!bytes.Equal(reply.Credential.HostKey, sum[:]) || string(reply.Credential.Password) != "Win-pass-1" {
		t.Fatalf("checkout: %+v", reply)
	}
	if err := b.RequestRotation(ctx, "win01"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rotation of an RDP secret: %v", err)
	}
	if err := b.RequestHeartbeat(ctx, "win01"); err != nil {
		t.Fatalf("heartbeat of an RDP secret: %v", err)
	}
	for _, o := range b.next(t) {
		if o.Task != nil && o.Task.Secret == "win01" && o.Task.Protocol != ProtocolRDP {
			t.Fatalf("heartbeat task without its protocol: %+v", o.Task)
		}
	}

	// Pin on first use takes a certificate's SHA-256, not an SSH key.
	pofu := spec("win03")
	pofu.CertSHA256, pofu.PinOnFirstUse = "", true
	if err := b.AddSecret(ctx, pofu); err != nil {
		t.Fatal(err)
	}
	reply = b.ask(t, workitem.CredentialRequest{Op: workitem.OpPin, User: "alice", Source: "192.0.2.1:5555", Secret: "win03",
		HostKey: newHostKey(t).Marshal()})
	if reply.Refused != workitem.RefusedDenied {
		t.Fatalf("an SSH key pinned on an RDP secret: %+v", reply)
	}
	reply = b.ask(t, workitem.CredentialRequest{Op: workitem.OpPin, User: "alice", Source: "192.0.2.1:5555", Secret: "win03", HostKey: sum[:]})
	if reply.Refused != "" {
		t.Fatalf("pin: %+v", reply)
	}
	if info, _ := b.ShowSecret(ctx, "win03"); info.CertSHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("after the pin: %+v", info)
	}
	// The pinned credential still opens (its sealing covers the pin and
	// the protocol).
	reply = b.ask(t, workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Source: "192.0.2.1:5555", Secret: "win03"})
	if reply.Refused != "" || string(reply.Credential.Password) != "Win-pass-1" {
		t.Fatalf("checkout after the pin: %+v", reply)
	}
	// Flipping the protocol in the database makes the credential fail to
	// open instead of going out as an SSH password.
	if _, err := b.db.ExecContext(ctx, `UPDATE secrets SET protocol = 'ssh' WHERE name = 'win01'`); err != nil {
		t.Fatal(err)
	}
	reply = b.ask(t, workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Source: "192.0.2.1:5555", Secret: "win01"})
	if reply.Refused == "" {
		t.Fatalf("a credential whose protocol was changed underneath opened: %+v", reply)
	}
}
