package ntlm

import (
	"bytes"
	"crypto/md5"
	"crypto/rc4"
	"encoding/binary"
	"errors"
	"reflect"
	"sync"
	"testing"

	//lint:ignore SA1019 the NT hash is MD4 (MS-NLMP 3.3.2): the independent computation needs it
	"golang.org/x/crypto/md4"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// sessions returns a client and a server session on the same key.
func sessions() (client, server *Session) {
	var k [16]byte
	copy(k[:], "exported key 16b")
	return newSession(&k, true), newSession(&k, false)
}

func seqOf(sig []byte) uint32 { return binary.LittleEndian.Uint32(sig[12:16]) }

func TestSealSequenceNumbers(t *testing.T) {
	cs, ss := sessions()
	// Each direction counts on its own, from 0.
	for i := range 3 {
		c2s, err := cs.Seal([]byte("to server"))
		if err != nil {
			t.Fatal(err)
		}
		if seqOf(c2s) != uint32(i) || binary.LittleEndian.Uint32(c2s) != 1 {
			t.Fatalf("client message %d: signature %x", i, c2s[:16])
		}
		if _, err := ss.Unseal(c2s); err != nil {
			t.Fatalf("client message %d: %v", i, err)
		}
	}
	s2c, err := ss.Seal([]byte("to client"))
	if err != nil {
		t.Fatal(err)
	}
	if seqOf(s2c) != 0 {
		t.Fatalf("server's first message has sequence number %d", seqOf(s2c))
	}
	if got, err := cs.Unseal(s2c); err != nil || string(got) != "to client" {
		t.Fatalf("%q, %v", got, err)
	}
	// Sign shares the sequence and the RC4 handle with Seal.
	sig, err := cs.Sign([]byte("signed"))
	if err != nil {
		t.Fatal(err)
	}
	if seqOf(sig) != 3 {
		t.Fatalf("signature after 3 sealed messages has sequence number %d", seqOf(sig))
	}
	if err := ss.Verify([]byte("signed"), sig); err != nil {
		t.Fatal(err)
	}
	c2s, _ := cs.Seal([]byte("after signing"))
	if got, err := ss.Unseal(c2s); err != nil || string(got) != "after signing" {
		t.Fatalf("%q, %v", got, err)
	}
}

func TestUnsealRefuses(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(t *testing.T, cs *Session, sealed []byte) []byte
		want   error
	}{
		{"ciphertext", func(t *testing.T, _ *Session, b []byte) []byte { b[20] ^= 1; return b }, ErrSignature},
		{"checksum", func(t *testing.T, _ *Session, b []byte) []byte { b[4] ^= 1; return b }, ErrSignature},
		{"sequence number", func(t *testing.T, _ *Session, b []byte) []byte { b[12] = 1; return b }, ErrSignature},
		{"version", func(t *testing.T, _ *Session, b []byte) []byte { b[0] = 2; return b }, ErrSignature},
		{"truncated", func(t *testing.T, _ *Session, b []byte) []byte { return b[:len(b)-1] }, ErrSignature},
		{"second message first", func(t *testing.T, cs *Session, _ []byte) []byte {
			b, err := cs.Seal([]byte("second message"))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}, ErrSignature},
		{"too short", func(t *testing.T, _ *Session, b []byte) []byte { return b[:15] }, ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			cs, ss := sessions()
			sealed, err := cs.Seal([]byte("first message"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ss.Unseal(c.change(t, cs, sealed)); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if c.want == ErrSignature {
				// The receiving handle is out of step: nothing more.
				if _, err := ss.Unseal(sealed); !errors.Is(err, ErrState) {
					t.Fatalf("after a failure: %v", err)
				}
			}
		})
	}
	// A message does not verify in the direction it was sent.
	cs, _ := sessions()
	sealed, _ := cs.Seal([]byte("reflected"))
	if _, err := cs.Unseal(sealed); !errors.Is(err, ErrSignature) {
		t.Fatalf("reflected message: %v", err)
	}
	cs, ss := sessions()
	sig, _ := cs.Sign([]byte("signed"))
	if err := ss.Verify([]byte("signeD"), sig); !errors.Is(err, ErrSignature) {
		t.Fatalf("verify a changed message: %v", err)
	}
	cs, ss = sessions()
	sig, _ = cs.Sign([]byte("signed"))
	if err := ss.Verify([]byte("signed"), sig[:8]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short signature: %v", err)
	}
}

func TestSessionWipe(t *testing.T) {
	cs, _ := sessions()
	cs.Wipe()
	if cs.exported != [16]byte{} || cs.sendSign != [16]byte{} || cs.recvSign != [16]byte{} {
		t.Fatal("keys left after Wipe")
	}
	if _, err := cs.Seal([]byte("x")); !errors.Is(err, ErrState) {
		t.Fatalf("Seal after Wipe: %v", err)
	}
	if _, err := cs.Unseal(make([]byte, 20)); !errors.Is(err, ErrState) {
		t.Fatalf("Unseal after Wipe: %v", err)
	}
	if _, err := cs.Sign([]byte("x")); !errors.Is(err, ErrState) {
		t.Fatalf("Sign after Wipe: %v", err)
	}
	if err := cs.Verify([]byte("x"), make([]byte, 16)); !errors.Is(err, ErrState) {
		t.Fatalf("Verify after Wipe: %v", err)
	}
	if _, err := cs.ExportedSessionKey(); !errors.Is(err, ErrState) {
		t.Fatalf("ExportedSessionKey after Wipe: %v", err)
	}
	// crypto/rc4's Reset zeroes the key schedule.
	for _, c := range []*rc4.Cipher{cs.sendSeal, cs.recvSeal} {
		s := reflect.ValueOf(c).Elem().FieldByName("s")
		for i := range s.Len() {
			if s.Index(i).Uint() != 0 {
				t.Fatal("RC4 state left after Wipe")
			}
		}
	}
}

func TestSequenceExhausted(t *testing.T) {
	cs, ss := sessions()
	cs.sendSeq = 1<<32 - 1
	if _, err := cs.Seal([]byte("x")); !errors.Is(err, ErrState) {
		t.Fatalf("Seal at the last sequence number: %v", err)
	}
	ss.recvSeq = 1<<32 - 1
	if _, err := ss.Unseal(make([]byte, 20)); !errors.Is(err, ErrState) {
		t.Fatalf("Unseal at the last sequence number: %v", err)
	}
}

// TestSealConcurrent: concurrent Seals take distinct sequence numbers and
// the peer unseals them in sequence order.
func TestSealConcurrent(t *testing.T) {
	cs, ss := sessions()
	const n = 64
	sealed := make([][]byte, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			b, err := cs.Seal([]byte("concurrent"))
			if err != nil {
				t.Error(err)
				return
			}
			sealed[seqOf(b)] = b
		})
	}
	wg.Wait()
	for i, b := range sealed {
		if _, err := ss.Unseal(b); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// TestScrubClearsHashState checks what scrub relies on: after it, the
// hash states of crypto/md5 and x/crypto/md4 hold nothing of the input.
func TestScrubClearsHashState(t *testing.T) {
	secret := bytes.Repeat([]byte{0xa5}, 200)
	for _, name := range []string{"md5", "md4"} {
		for n := range 140 {
			h := md5.New()
			if name == "md4" {
				h = md4.New()
			}
			// Split writes, as hmacMD5 does.
			h.Write(secret[:n/3])
			h.Write(secret[n/3 : n])
			h.Sum(nil)
			scrub(h, n)
			v := reflect.ValueOf(h).Elem()
			x, nx := v.FieldByName("x"), v.FieldByName("nx")
			if !x.IsValid() || !nx.IsValid() || x.Len() != 64 {
				t.Fatalf("%s: hash state layout changed; recheck scrub", name)
			}
			for i := range x.Len() {
				if x.Index(i).Uint() != 0 {
					t.Fatalf("%s after %d bytes: buffer byte %d not cleared", name, n, i)
				}
			}
			if nx.Int() != 0 {
				t.Fatalf("%s after %d bytes: %d bytes buffered", name, n, nx.Int())
			}
			fresh := md5.New()
			if name == "md4" {
				fresh = md4.New()
			}
			if !bytes.Equal(h.Sum(nil), fresh.Sum(nil)) {
				t.Fatalf("%s after %d bytes: chaining state not reset", name, n)
			}
		}
	}
}

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json.
func TestRedacts(t *testing.T) {
	key := redacttest.Secret(16)
	var k [16]byte
	copy(k[:], key)
	sess := newSession(&k, true)
	sess.User, sess.Domain = "alice", "WIN01"
	cli := &Client{user: "alice", domain: "WIN01", key: k}
	redacttest.Check(t, []redacttest.Case{
		{Name: "Session", Value: sess, Secret: key},
		{Name: "Client", Value: cli, Secret: key},
	})
}
