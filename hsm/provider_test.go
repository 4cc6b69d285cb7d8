package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// testProvider opens a fresh, empty provider of one kind; the provider is
// closed when the test ends.
type testProvider struct {
	name string
	open func(tb testing.TB) Provider
}

// testProviders lists the providers the contract tests run against; the
// PKCS#11 tests add SoftHSM2 when built with cgo.
var testProviders = []testProvider{{name: "soft", open: openTestSoft}}

func openTestSoft(tb testing.TB) Provider {
	tb.Helper()
	s, err := OpenSoft(filepath.Join(tb.TempDir(), "keystore.json"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// eachProvider runs f as a subtest for every provider kind.
func eachProvider(t *testing.T, f func(t *testing.T, p Provider)) {
	for _, tp := range testProviders {
		t.Run(tp.name, func(t *testing.T) { f(t, tp.open(t)) })
	}
}

func TestContractSign(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		if err := p.GenerateSigner(ctx, LabelSSHHostKey); err != nil {
			t.Fatal(err)
		}
		signer, err := p.Signer(ctx, LabelSSHHostKey)
		if err != nil {
			t.Fatal(err)
		}
		pub, ok := signer.Public().(*ecdsa.PublicKey)
		if !ok {
			t.Fatalf("Public() is %T, want *ecdsa.PublicKey", signer.Public())
		}
		d := sha256.Sum256([]byte("message"))
		sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Fatal("signature does not verify")
		}
		other := sha256.Sum256([]byte("other"))
		if ecdsa.VerifyASN1(pub, other[:], sig) {
			t.Fatal("signature verifies for another digest")
		}
		if _, err := signer.Sign(rand.Reader, d[:16], crypto.SHA256); err == nil {
			t.Fatal("signed a digest of the wrong length")
		}
		// The SSH server takes the signer as a host key.
		hostKey, err := ssh.NewSignerFromSigner(signer)
		if err != nil {
			t.Fatal(err)
		}
		ssig, err := hostKey.Sign(rand.Reader, []byte("session id"))
		if err != nil {
			t.Fatal(err)
		}
		if err := hostKey.PublicKey().Verify([]byte("session id"), ssig); err != nil {
			t.Fatalf("SSH signature: %v", err)
		}
		// Another lookup gives the same public key.
		again, err := p.Signer(ctx, LabelSSHHostKey)
		if err != nil || !again.Public().(*ecdsa.PublicKey).Equal(pub) {
			t.Fatalf("second Signer: %v", err)
		}
	})
}

func TestContractSeal(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		for _, pt := range [][]byte{nil, []byte("k"), bytes.Repeat([]byte("data key "), 100)} {
			for _, aad := range [][]byte{nil, []byte("secret/42")} {
				sealed, err := p.Seal(ctx, LabelKEK, pt, aad)
				if err != nil {
					t.Fatal(err)
				}
				if len(pt) > 8 && bytes.Contains(sealed, pt) {
					t.Fatal("plaintext visible in sealed data")
				}
				got, err := p.Open(ctx, LabelKEK, sealed, aad)
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("Open = %q, %v; want %q", got, err, pt)
				}
			}
		}
		// Two seals of the same data differ (random IV).
		a, _ := p.Seal(ctx, LabelKEK, []byte("same"), nil)
		b, _ := p.Seal(ctx, LabelKEK, []byte("same"), nil)
		if bytes.Equal(a, b) {
			t.Fatal("two seals are identical")
		}
	})
}

func TestContractTamper(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if err := p.GenerateAESKey(ctx, "other-kek"); err != nil {
			t.Fatal(err)
		}
		aad := []byte("user/7/password")
		sealed, err := p.Seal(ctx, LabelKEK, []byte("32-byte data key, not a real one"), aad)
		if err != nil {
			t.Fatal(err)
		}
		// Every single-bit flip anywhere (version, IV, ciphertext, tag) fails.
		for i := range sealed {
			bad := bytes.Clone(sealed)
			bad[i] ^= 0x01
			if _, err := p.Open(ctx, LabelKEK, bad, aad); !errors.Is(err, ErrOpen) {
				t.Fatalf("flipped byte %d of %d: %v", i, len(sealed), err)
			}
		}
		cases := map[string]struct {
			label       string
			sealed, aad []byte
		}{
			"other aad":     {LabelKEK, sealed, []byte("user/8/password")},
			"no aad":        {LabelKEK, sealed, nil},
			"truncated tag": {LabelKEK, sealed[:len(sealed)-1], aad},
			"no tag":        {LabelKEK, sealed[:len(sealed)-16], aad},
			"appended":      {LabelKEK, append(bytes.Clone(sealed), 0), aad},
			"empty":         {LabelKEK, nil, aad},
			"other key":     {"other-kek", sealed, aad},
		}
		for name, c := range cases {
			if _, err := p.Open(ctx, c.label, c.sealed, c.aad); !errors.Is(err, ErrOpen) {
				t.Errorf("%s: %v", name, err)
			}
		}
		// The provider still works after all that.
		if got, err := p.Open(ctx, LabelKEK, sealed, aad); err != nil || len(got) != 32 {
			t.Fatalf("Open after tampering: %v", err)
		}
	})
}

func TestContractMissingKeys(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		peer, _ := ecdh.P256().GenerateKey(rand.Reader)
		check := func(what string, err error) {
			t.Helper()
			if !errors.Is(err, ErrKeyNotFound) {
				t.Errorf("%s: %v, want ErrKeyNotFound", what, err)
			} else if !bytes.Contains([]byte(err.Error()), []byte("nope")) {
				t.Errorf("%s: %q does not name the label", what, err)
			}
		}
		_, err := p.Signer(ctx, "nope")
		check("Signer", err)
		_, err = p.Seal(ctx, "nope", []byte("x"), nil)
		check("Seal", err)
		_, err = p.Open(ctx, "nope", make([]byte, 64), nil)
		check("Open", err)
		_, err = p.ECDH(ctx, "nope", peer.PublicKey())
		check("ECDH", err)
		check("DeleteKey", p.DeleteKey(ctx, "nope"))
		if ok, err := p.HasKey(ctx, "nope"); ok || err != nil {
			t.Fatalf("HasKey = %v, %v", ok, err)
		}
		// A key of the other kind does not stand in.
		if err := p.GenerateAESKey(ctx, "aes"); err != nil {
			t.Fatal(err)
		}
		if err := p.GenerateSigner(ctx, "ec"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Signer(ctx, "aes"); !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("Signer on an AES key: %v", err)
		}
		if _, err := p.Seal(ctx, "ec", []byte("x"), nil); !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("Seal with an EC key: %v", err)
		}
	})
}

func TestContractGenerateHasDelete(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		for _, l := range []string{LabelKEK, LabelSSHHostKey, LabelAuditKey, LabelEngineKey} {
			if ok, err := p.HasKey(ctx, l); ok || err != nil {
				t.Fatalf("HasKey(%s) on an empty provider = %v, %v", l, ok, err)
			}
		}
		if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if err := p.GenerateSigner(ctx, LabelAuditKey); err != nil {
			t.Fatal(err)
		}
		for _, err := range []error{
			p.GenerateAESKey(ctx, LabelKEK),
			p.GenerateSigner(ctx, LabelAuditKey),
			p.GenerateSigner(ctx, LabelKEK),
			p.GenerateAESKey(ctx, LabelAuditKey),
		} {
			if !errors.Is(err, ErrKeyExists) {
				t.Errorf("generating over an existing key: %v", err)
			}
		}
		if err := p.EnsureAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if err := p.EnsureSigner(ctx, LabelAuditKey); err != nil {
			t.Fatal(err)
		}
		if err := p.EnsureSigner(ctx, LabelEngineKey); err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{LabelKEK, LabelAuditKey, LabelEngineKey} {
			if ok, err := p.HasKey(ctx, l); !ok || err != nil {
				t.Fatalf("HasKey(%s) = %v, %v", l, ok, err)
			}
		}
		sealed, err := p.Seal(ctx, LabelKEK, []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		signer, err := p.Signer(ctx, LabelAuditKey)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.DeleteKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if err := p.DeleteKey(ctx, LabelAuditKey); err != nil {
			t.Fatal(err)
		}
		if ok, err := p.HasKey(ctx, LabelKEK); ok || err != nil {
			t.Fatalf("HasKey after delete = %v, %v", ok, err)
		}
		if _, err := p.Open(ctx, LabelKEK, sealed, nil); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("Open with a deleted key: %v", err)
		}
		d := sha256.Sum256(nil)
		if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("Sign with a deleted key: %v", err)
		}
		if err := p.DeleteKey(ctx, LabelKEK); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("second delete: %v", err)
		}
		// The label can be used again.
		if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Open(ctx, LabelKEK, sealed, nil); !errors.Is(err, ErrOpen) {
			t.Fatalf("Open under a new key with the old label: %v", err)
		}
		// The engine key was left alone.
		if ok, _ := p.HasKey(ctx, LabelEngineKey); !ok {
			t.Fatal("deleting other keys removed the engine key")
		}
	})
}

func TestContractECDH(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		if err := p.GenerateSigner(ctx, LabelEngineKey); err != nil {
			t.Fatal(err)
		}
		signer, err := p.Signer(ctx, LabelEngineKey)
		if err != nil {
			t.Fatal(err)
		}
		ours, err := signer.Public().(*ecdsa.PublicKey).ECDH()
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			peer, err := ecdh.P256().GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.ECDH(ctx, LabelEngineKey, peer.PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			want, err := peer.ECDH(ours)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 32 || !bytes.Equal(got, want) {
				t.Fatalf("ECDH = %x, peer computes %x", got, want)
			}
		}
		x, _ := ecdh.X25519().GenerateKey(rand.Reader)
		if _, err := p.ECDH(ctx, LabelEngineKey, x.PublicKey()); err == nil {
			t.Fatal("ECDH with an X25519 peer succeeded")
		}
		if _, err := p.ECDH(ctx, LabelEngineKey, nil); err == nil {
			t.Fatal("ECDH with no peer succeeded")
		}
	})
}

func TestContractConcurrent(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if err := p.GenerateSigner(ctx, LabelSSHHostKey); err != nil {
			t.Fatal(err)
		}
		signer, err := p.Signer(ctx, LabelSSHHostKey)
		if err != nil {
			t.Fatal(err)
		}
		pub := signer.Public().(*ecdsa.PublicKey)
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 20; i++ {
					msg := []byte(fmt.Sprintf("goroutine %d message %d", g, i))
					d := sha256.Sum256(msg)
					sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
					if err != nil {
						errs <- err
						return
					}
					if !ecdsa.VerifyASN1(pub, d[:], sig) {
						errs <- fmt.Errorf("goroutine %d: bad signature", g)
						return
					}
					sealed, err := p.Seal(ctx, LabelKEK, msg, d[:])
					if err != nil {
						errs <- err
						return
					}
					pt, err := p.Open(ctx, LabelKEK, sealed, d[:])
					if err != nil || !bytes.Equal(pt, msg) {
						errs <- fmt.Errorf("goroutine %d: Open = %q, %v", g, pt, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestContractClose(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		if err := p.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if err := p.GenerateSigner(ctx, LabelSSHHostKey); err != nil {
			t.Fatal(err)
		}
		signer, err := p.Signer(ctx, LabelSSHHostKey)
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := p.Seal(ctx, LabelKEK, []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		peer, _ := ecdh.P256().GenerateKey(rand.Reader)
		d := sha256.Sum256(nil)
		_, e1 := signer.Sign(rand.Reader, d[:], crypto.SHA256)
		_, e2 := p.Signer(ctx, LabelSSHHostKey)
		_, e3 := p.Seal(ctx, LabelKEK, []byte("x"), nil)
		_, e4 := p.Open(ctx, LabelKEK, sealed, nil)
		_, e5 := p.HasKey(ctx, LabelKEK)
		_, e6 := p.ECDH(ctx, LabelSSHHostKey, peer.PublicKey())
		for i, err := range []error{e1, e2, e3, e4, e5, e6,
			p.Ping(ctx), p.GenerateAESKey(ctx, "k2"), p.GenerateSigner(ctx, "s2"), p.DeleteKey(ctx, LabelKEK)} {
			if !errors.Is(err, ErrClosed) {
				t.Errorf("call %d after Close: %v, want ErrClosed", i, err)
			}
		}
	})
}

func TestContractContext(t *testing.T) {
	eachProvider(t, func(t *testing.T, p Provider) {
		ctx := context.Background()
		if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if _, ok := p.(*Soft); ok {
			return // the soft keystore never waits, so it ignores contexts
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := p.Seal(cancelled, LabelKEK, []byte("x"), nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("Seal with a cancelled context: %v", err)
		}
	})
}
