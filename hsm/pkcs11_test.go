//go:build cgo

package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// SoftHSM2 test setup.
//
// SoftHSM2 reads SOFTHSM2_CONF (and so its token directory) in
// C_Initialize, and the library is initialized once per process. So the
// package uses one token directory for the whole test binary, set up in
// TestMain before any test runs, and every test initializes its own token
// in it under a unique label. Tests never share a token, whatever -count
// or -run say; a token created after the library was initialized is found
// because OpenPKCS11 reinitializes the library when a label is missing.
const (
	softhsmModule = "/usr/lib/softhsm/libsofthsm2.so"
	testPIN       = "123456"
	testSOPIN     = "87654321"
)

var softhsm struct {
	mu   sync.Mutex
	root string // the token directory
	n    int
}

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "sallyport-softhsm-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir) // a temporary directory
		softhsm.root = filepath.Join(dir, "tokens")
		if err := os.Mkdir(softhsm.root, 0o700); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		conf := filepath.Join(dir, "softhsm2.conf")
		body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", softhsm.root)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// requireSoftHSM fails the test when SoftHSM2 is not installed.
func requireSoftHSM(tb testing.TB) {
	tb.Helper()
	if _, err := os.Stat(softhsmModule); err != nil {
		tb.Fatalf("SoftHSM2 is not installed (%s: %v): run `sudo bash test/setup.sh`", softhsmModule, err)
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		tb.Fatalf("SoftHSM2 is not installed (softhsm2-util not in PATH): run `sudo bash test/setup.sh`")
	}
}

// newToken initializes a fresh SoftHSM2 token and returns its label and
// the directory that holds it.
func newToken(tb testing.TB) (label, dir string) {
	tb.Helper()
	requireSoftHSM(tb)
	softhsm.mu.Lock()
	defer softhsm.mu.Unlock()
	softhsm.n++
	label = fmt.Sprintf("sallyport-test-%d", softhsm.n)
	before := tokenDirs(tb)
	// The PINs on the command line are test values.
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", testSOPIN, "--pin", testPIN) // #nosec G204 -- test tool, fixed arguments
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	for d := range tokenDirs(tb) {
		if !before[d] {
			return label, d
		}
	}
	tb.Fatal("softhsm2-util created no token directory")
	return "", ""
}

func tokenDirs(tb testing.TB) map[string]bool {
	tb.Helper()
	entries, err := os.ReadDir(softhsm.root)
	if err != nil {
		tb.Fatal(err)
	}
	dirs := map[string]bool{}
	for _, e := range entries {
		if e.IsDir() {
			dirs[filepath.Join(softhsm.root, e.Name())] = true
		}
	}
	return dirs
}

// logBuffer collects a provider's log output.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// openToken opens a provider on the token labelled label; it is closed when
// the test ends, and its log must never contain the PIN.
func openToken(tb testing.TB, label string, sessions int) (*PKCS11, *logBuffer) {
	tb.Helper()
	logs := &logBuffer{}
	var out io.Writer = logs
	if _, bench := tb.(*testing.B); !bench {
		out = io.MultiWriter(logs, tb.Output())
	}
	p, err := OpenPKCS11(PKCS11Config{Module: softhsmModule, TokenLabel: label, PIN: []byte(testPIN), Sessions: sessions},
		slog.New(slog.NewTextHandler(out, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = p.Close()
		if strings.Contains(logs.String(), testPIN) {
			tb.Errorf("the PIN appears in the log:\n%s", logs)
		}
	})
	return p, logs
}

func openTestToken(tb testing.TB) Provider {
	tb.Helper()
	label, _ := newToken(tb)
	p, _ := openToken(tb, label, 8)
	return p
}

func init() {
	testProviders = append(testProviders, testProvider{name: "pkcs11", open: openTestToken})
}

// objectAttrs reads attributes of the one object labelled label of class
// class, each on its own so that one refusal does not hide the others.
func objectAttrs(t *testing.T, p *PKCS11, label string, class uint, types ...uint) map[uint][]byte {
	t.Helper()
	got := map[uint][]byte{}
	err := p.do(context.Background(), func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		hs, err := findObjects(c, sh, label, class, 2)
		if err != nil {
			return err
		}
		if len(hs) != 1 {
			return fmt.Errorf("%d %s objects labelled %q", len(hs), className(class), label)
		}
		for _, typ := range types {
			a, err := c.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
			if err != nil {
				return fmt.Errorf("attribute %#x: %w", typ, err)
			}
			got[typ] = a[0].Value
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// valueRefused checks that the token will not reveal the object's CKA_VALUE.
func valueRefused(t *testing.T, p *PKCS11, label string, class uint) {
	t.Helper()
	err := p.do(context.Background(), func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := p.handle(c, sh, label, class)
		if err != nil {
			return err
		}
		a, err := c.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err == nil {
			return fmt.Errorf("read %d bytes of CKA_VALUE", len(a[0].Value))
		}
		if !isCKR(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
			return fmt.Errorf("reading CKA_VALUE: %w, want CKR_ATTRIBUTE_SENSITIVE", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s %q: %v", className(class), label, err)
	}
}

var (
	ckTrue  = []byte{1}
	ckFalse = []byte{0}
)

func wantAttrs(t *testing.T, what string, got map[uint][]byte, want map[uint][]byte) {
	t.Helper()
	for typ, w := range want {
		if !bytes.Equal(got[typ], w) {
			t.Errorf("%s: attribute %#x = %x, want %x", what, typ, got[typ], w)
		}
	}
}

func TestPKCS11KeyAttributes(t *testing.T) {
	label, _ := newToken(t)
	p, _ := openToken(t, label, 2)
	ctx := context.Background()
	if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
		t.Fatal(err)
	}
	if err := p.GenerateSigner(ctx, LabelEngineKey); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ImportSigner(ctx, LabelSSHHostKey, key); err != nil {
		t.Fatal(err)
	}

	aes := objectAttrs(t, p, LabelKEK, pkcs11.CKO_SECRET_KEY, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE,
		pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE,
		pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP,
		pkcs11.CKA_KEY_TYPE, pkcs11.CKA_VALUE_LEN, pkcs11.CKA_LABEL, pkcs11.CKA_ID)
	wantAttrs(t, "AES key", aes, map[uint][]byte{
		pkcs11.CKA_TOKEN: ckTrue, pkcs11.CKA_PRIVATE: ckTrue, pkcs11.CKA_SENSITIVE: ckTrue, pkcs11.CKA_EXTRACTABLE: ckFalse,
		pkcs11.CKA_ALWAYS_SENSITIVE: ckTrue, pkcs11.CKA_NEVER_EXTRACTABLE: ckTrue,
		pkcs11.CKA_ENCRYPT: ckTrue, pkcs11.CKA_DECRYPT: ckTrue, pkcs11.CKA_WRAP: ckTrue, pkcs11.CKA_UNWRAP: ckTrue,
		pkcs11.CKA_KEY_TYPE:  pkcs11.NewAttribute(0, pkcs11.CKK_AES).Value,
		pkcs11.CKA_VALUE_LEN: pkcs11.NewAttribute(0, 32).Value,
		pkcs11.CKA_LABEL:     []byte(LabelKEK),
	})
	if len(aes[pkcs11.CKA_ID]) == 0 {
		t.Error("AES key has no CKA_ID")
	}
	valueRefused(t, p, LabelKEK, pkcs11.CKO_SECRET_KEY)

	for _, l := range []string{LabelEngineKey, LabelSSHHostKey} {
		priv := objectAttrs(t, p, l, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE,
			pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_SIGN, pkcs11.CKA_DERIVE,
			pkcs11.CKA_KEY_TYPE, pkcs11.CKA_EC_PARAMS, pkcs11.CKA_LABEL, pkcs11.CKA_ID)
		wantAttrs(t, l+" private key", priv, map[uint][]byte{
			pkcs11.CKA_TOKEN: ckTrue, pkcs11.CKA_PRIVATE: ckTrue, pkcs11.CKA_SENSITIVE: ckTrue, pkcs11.CKA_EXTRACTABLE: ckFalse,
			pkcs11.CKA_SIGN: ckTrue, pkcs11.CKA_DERIVE: ckTrue,
			pkcs11.CKA_KEY_TYPE:  pkcs11.NewAttribute(0, pkcs11.CKK_EC).Value,
			pkcs11.CKA_EC_PARAMS: p256Params,
			pkcs11.CKA_LABEL:     []byte(l),
		})
		pub := objectAttrs(t, p, l, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_VERIFY,
			pkcs11.CKA_LABEL, pkcs11.CKA_ID)
		wantAttrs(t, l+" public key", pub, map[uint][]byte{
			pkcs11.CKA_TOKEN: ckTrue, pkcs11.CKA_PRIVATE: ckTrue, pkcs11.CKA_VERIFY: ckTrue, pkcs11.CKA_LABEL: []byte(l),
		})
		if len(priv[pkcs11.CKA_ID]) == 0 || !bytes.Equal(priv[pkcs11.CKA_ID], pub[pkcs11.CKA_ID]) {
			t.Errorf("%s: CKA_ID %x (private) and %x (public) should be equal and set", l, priv[pkcs11.CKA_ID], pub[pkcs11.CKA_ID])
		}
		valueRefused(t, p, l, pkcs11.CKO_PRIVATE_KEY)
	}
	// Generated keys were never anything but sensitive.
	gen := objectAttrs(t, p, LabelEngineKey, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE)
	wantAttrs(t, "generated private key", gen, map[uint][]byte{pkcs11.CKA_ALWAYS_SENSITIVE: ckTrue, pkcs11.CKA_NEVER_EXTRACTABLE: ckTrue})
}

func TestPKCS11ImportSigner(t *testing.T) {
	label, _ := newToken(t)
	p, _ := openToken(t, label, 2)
	ctx := context.Background()

	// The migration path: a host key from the soft keystore moves to the token.
	soft := openTestSoft(t).(*Soft)
	if err := soft.GenerateSigner(ctx, LabelSSHHostKey); err != nil {
		t.Fatal(err)
	}
	key, err := soft.ExportSigner(LabelSSHHostKey)
	if err != nil {
		t.Fatal(err)
	}
	softSigner, _ := soft.Signer(ctx, LabelSSHHostKey)
	if !key.PublicKey.Equal(softSigner.Public()) {
		t.Fatal("ExportSigner returned another key")
	}
	if _, err := soft.ExportSigner("nope"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("ExportSigner of a missing key: %v", err)
	}
	if err := p.ImportSigner(ctx, LabelSSHHostKey, key); err != nil {
		t.Fatal(err)
	}
	if err := p.ImportSigner(ctx, LabelSSHHostKey, key); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second import: %v", err)
	}
	signer, err := p.Signer(ctx, LabelSSHHostKey)
	if err != nil {
		t.Fatal(err)
	}
	if !signer.Public().(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatal("the token's public key differs from the imported one")
	}
	d := sha256.Sum256([]byte("known_hosts stays valid"))
	sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(&key.PublicKey, d[:], sig) {
		t.Fatal("token signature does not verify under the imported public key")
	}

	// Keys that are not P-256 are refused.
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err := p.ImportSigner(ctx, "p384", p384); err == nil {
		t.Fatal("imported a P-384 key")
	}
	if err := p.ImportSigner(ctx, "nil", nil); err == nil {
		t.Fatal("imported a nil key")
	}
	if ok, _ := p.HasKey(ctx, "p384"); ok {
		t.Fatal("a refused import left an object behind")
	}
}

func TestPKCS11OpenErrors(t *testing.T) {
	requireSoftHSM(t)
	label, _ := newToken(t)
	other, _ := newToken(t)
	dir := t.TempDir()
	notModule := filepath.Join(dir, "libnotpkcs11.so")
	if err := os.WriteFile(notModule, []byte("#!/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := func(module, token, pin string) PKCS11Config {
		return PKCS11Config{Module: module, TokenLabel: token, PIN: []byte(pin)}
	}
	cases := []struct {
		name string
		cfg  PKCS11Config
		want []string
	}{
		{"wrong PIN", cfg(softhsmModule, label, "654321"), []string{fmt.Sprintf("wrong PIN for token %q", label)}},
		{"missing module", cfg(filepath.Join(dir, "nowhere.so"), label, testPIN), []string{filepath.Join(dir, "nowhere.so"), "not found"}},
		{"not a module", cfg(notModule, label, testPIN), []string{notModule, "not a PKCS#11 module", "not an ELF shared library"}},
		{"missing token", cfg(softhsmModule, "no-such-token", testPIN),
			[]string{`token "no-such-token" not found`, softhsmModule, fmt.Sprintf("%q", label), fmt.Sprintf("%q", other)}},
		{"no PIN", cfg(softhsmModule, label, ""), []string{"no PIN"}},
		{"no module", cfg("", label, testPIN), []string{"no module"}},
		{"no token", cfg(softhsmModule, "", testPIN), []string{"no token label"}},
		{"long label", cfg(softhsmModule, strings.Repeat("x", 33), testPIN), []string{"longer than 32"}},
		{"too many sessions", PKCS11Config{Module: softhsmModule, TokenLabel: label, PIN: []byte(testPIN), Sessions: 65}, []string{"between 1 and 64"}},
	}
	// An ELF shared library that is not a PKCS#11 module.
	if libm, err := filepath.Glob("/usr/lib/x86_64-linux-gnu/libm.so.6"); err == nil && len(libm) == 1 {
		cases = append(cases, struct {
			name string
			cfg  PKCS11Config
			want []string
		}{"library without C_GetFunctionList", cfg(libm[0], label, testPIN), []string{"not a PKCS#11 module", "does not export C_GetFunctionList"}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := OpenPKCS11(c.cfg, nil)
			if err == nil {
				_ = p.Close()
				t.Fatal("opened")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if len(c.cfg.PIN) > 0 && strings.Contains(err.Error(), string(c.cfg.PIN)) {
				t.Errorf("error %q contains the PIN", err)
			}
		})
	}

	// After all those failures, the right PIN still opens the token.
	p, _ := openToken(t, label, 1)
	// A token is open in one provider at a time.
	if q, err := OpenPKCS11(cfg(softhsmModule, label, testPIN), nil); err == nil || !strings.Contains(err.Error(), "already open") {
		if q != nil {
			_ = q.Close()
		}
		t.Fatalf("second open of the same token: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	q, _ := openToken(t, label, 1)
	if err := q.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// SoftHSM2 never locks a PIN, so these errors are checked on the mapping.
func TestPKCS11LoginErrors(t *testing.T) {
	for code, want := range map[uint]string{
		pkcs11.CKR_PIN_INCORRECT:            `wrong PIN for token "T"`,
		pkcs11.CKR_PIN_LEN_RANGE:            `wrong PIN for token "T"`,
		pkcs11.CKR_PIN_LOCKED:               `user PIN of token "T" is locked`,
		pkcs11.CKR_PIN_EXPIRED:              `PIN of token "T" has expired`,
		pkcs11.CKR_USER_PIN_NOT_INITIALIZED: `token "T" has no user PIN`,
	} {
		err := loginError("T", pkcs11.Error(code))
		if !strings.Contains(err.Error(), want) || !isPINError(err) {
			t.Errorf("%#x: %v", code, err)
		}
	}
	if err := loginError("T", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)); isPINError(err) ||
		!strings.Contains(err.Error(), "CKR_DEVICE_ERROR") {
		t.Errorf("device error: %v", err)
	}
}

func TestPKCS11CloseWipesPIN(t *testing.T) {
	label, _ := newToken(t)
	pin := []byte(testPIN)
	p, err := OpenPKCS11(PKCS11Config{Module: softhsmModule, TokenLabel: label, PIN: pin}, nil)
	if err != nil {
		t.Fatal(err)
	}
	clear(pin) // the caller wipes its copy; the provider keeps its own
	ctx := context.Background()
	if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
		t.Fatal(err)
	}
	// Reopening logs in again with the provider's copy.
	closeSessionsBehindBack(t, p)
	if _, err := p.Seal(ctx, LabelKEK, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	held := p.pin
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if p.pin != nil || !bytes.Equal(held, make([]byte, len(held))) {
		t.Fatalf("PIN not wiped: %q", held)
	}
	if _, err := p.Seal(ctx, LabelKEK, []byte("x"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Seal after Close: %v", err)
	}
}

// closeSessionsBehindBack closes every session on the provider's slot, as a
// token reset would, without the provider knowing. It waits for calls in
// flight to return first: SoftHSM2 crashes when a session is closed under
// a call that is using it (which PKCS#11 leaves to the application to
// avoid).
func closeSessionsBehindBack(t *testing.T, p *PKCS11) {
	t.Helper()
	p.mu.RLock()
	slot := p.slot
	p.mu.RUnlock()
	p.mod.mu.Lock()
	err := p.mod.ctx.CloseAllSessions(slot)
	p.mod.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}

func TestPKCS11SessionsClosedBehindBack(t *testing.T) {
	label, _ := newToken(t)
	p, logs := openToken(t, label, 4)
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
	sealed, err := p.Seal(ctx, LabelKEK, []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))

	closeSessionsBehindBack(t, p)
	sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign after the sessions were closed: %v", err)
	}
	if !ecdsa.VerifyASN1(signer.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("bad signature after reopen")
	}
	closeSessionsBehindBack(t, p)
	if _, err := p.Seal(ctx, LabelKEK, []byte("after"), nil); err != nil {
		t.Fatalf("Seal after the sessions were closed: %v", err)
	}
	closeSessionsBehindBack(t, p)
	if pt, err := p.Open(ctx, LabelKEK, sealed, nil); err != nil || string(pt) != "before" {
		t.Fatalf("Open after the sessions were closed: %q, %v", pt, err)
	}
	closeSessionsBehindBack(t, p)
	if err := p.Ping(ctx); err != nil {
		t.Fatalf("Ping after the sessions were closed: %v", err)
	}
	if n := strings.Count(logs.String(), "reopening"); n != 4 {
		t.Errorf("logged %d reopen attempts, want 4:\n%s", n, logs)
	}
	if n := strings.Count(logs.String(), "PKCS#11 token reopened"); n != 4 {
		t.Errorf("logged %d reopens, want 4", n)
	}

	// Under load: 32 goroutines sign and seal while the sessions vanish.
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	start := make(chan struct{})
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i < 30; i++ {
				if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
					errs <- fmt.Errorf("sign: %w", err)
					return
				}
				if _, err := p.Seal(ctx, LabelKEK, d[:], nil); err != nil {
					errs <- fmt.Errorf("seal: %w", err)
					return
				}
			}
		}()
	}
	close(start)
	time.Sleep(5 * time.Millisecond)
	closeSessionsBehindBack(t, p)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPKCS11TokenRemoved(t *testing.T) {
	label, dir := newToken(t)
	p, logs := openToken(t, label, 4)
	p.reopenEvery = 200 * time.Millisecond
	// A second token in the same library, which must survive the first
	// one's trouble (recovering the first reinitializes the library).
	otherLabel, _ := newToken(t)
	other, _ := openToken(t, otherLabel, 2)

	ctx := context.Background()
	for _, q := range []*PKCS11{p, other} {
		if err := q.GenerateAESKey(ctx, LabelKEK); err != nil {
			t.Fatal(err)
		}
		if err := q.GenerateSigner(ctx, LabelSSHHostKey); err != nil {
			t.Fatal(err)
		}
	}
	signer, err := p.Signer(ctx, LabelSSHHostKey)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := p.Seal(ctx, LabelKEK, []byte("survives"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))

	// "Remove" the token: SoftHSM2 keeps each token in its own directory.
	away := filepath.Join(filepath.Dir(softhsm.root), filepath.Base(dir)) // outside the token directory
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	unavailable := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with the token removed: %v, want ErrUnavailable", what, err)
		}
	}
	_, err = signer.Sign(rand.Reader, d[:], crypto.SHA256)
	unavailable("Sign", err)
	_, err = p.Seal(ctx, LabelKEK, []byte("x"), nil)
	unavailable("Seal", err)
	_, err = p.Open(ctx, LabelKEK, sealed, []byte("aad"))
	unavailable("Open", err)
	_, err = p.HasKey(ctx, LabelKEK)
	unavailable("HasKey", err)
	_, err = p.Signer(ctx, LabelSSHHostKey)
	unavailable("Signer", err)
	unavailable("Ping", p.Ping(ctx))
	if err := p.Ping(ctx); err == nil || !strings.Contains(err.Error(), label) {
		t.Errorf("Ping error %v does not name the token", err)
	}
	// While the token is gone, reopening is attempted at most every reopenEvery.
	attempts := strings.Count(logs.String(), "reopening")
	for i := 0; i < 50; i++ {
		_, _ = p.Seal(ctx, LabelKEK, []byte("x"), nil)
	}
	if n := strings.Count(logs.String(), "reopening") - attempts; n > 1 {
		t.Errorf("%d reopen attempts in a burst of calls; want at most 1", n)
	}
	// The other token keeps working.
	if _, err := other.Seal(ctx, LabelKEK, []byte("x"), nil); err != nil {
		t.Fatalf("other token while the first is removed: %v", err)
	}

	// "Re-insert" it.
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := p.Ping(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token not back after re-insertion: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign after re-insertion: %v", err)
	}
	if !ecdsa.VerifyASN1(signer.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("bad signature after re-insertion")
	}
	if pt, err := p.Open(ctx, LabelKEK, sealed, []byte("aad")); err != nil || string(pt) != "survives" {
		t.Fatalf("Open after re-insertion: %q, %v", pt, err)
	}
	if _, err := other.Seal(ctx, LabelKEK, []byte("x"), nil); err != nil {
		t.Fatalf("other token after the library was reinitialized: %v", err)
	}
	if !strings.Contains(logs.String(), "PKCS#11 token reopen failed") || !strings.Contains(logs.String(), "PKCS#11 token reopened") {
		t.Errorf("reopen failure and recovery not logged:\n%s", logs)
	}
}

func TestPKCS11WrongPINAfterReopen(t *testing.T) {
	label, _ := newToken(t)
	p, logs := openToken(t, label, 2)
	p.reopenEvery = time.Millisecond
	ctx := context.Background()
	if err := p.GenerateAESKey(ctx, LabelKEK); err != nil {
		t.Fatal(err)
	}
	// The PIN is changed on the token while the gateway runs.
	p.mu.Lock()
	p.pin = []byte("999999")
	p.mu.Unlock()
	closeSessionsBehindBack(t, p)
	for i := 0; i < 5; i++ {
		_, err := p.Seal(ctx, LabelKEK, []byte("x"), nil)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "wrong PIN") {
			t.Fatalf("Seal with a rejected PIN: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	// One login attempt, not one per call: retrying could lock the PIN.
	if n := strings.Count(logs.String(), "PKCS#11 token reopen failed"); n != 1 {
		t.Fatalf("%d failed reopen attempts; a rejected PIN must not be retried", n)
	}
}

func TestPKCS11RetryPolicy(t *testing.T) {
	label, _ := newToken(t)
	p, logs := openToken(t, label, 2)
	p.reopenEvery = 300 * time.Millisecond
	ctx := context.Background()

	// A stale handle is looked up again, without reopening the token.
	calls := 0
	err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		calls++
		if calls == 1 {
			return pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)
		}
		return nil
	})
	if err != nil || calls != 2 || strings.Contains(logs.String(), "reopening") {
		t.Fatalf("stale handle: %v after %d calls", err, calls)
	}

	// A device error that outlives a reopen makes the call unavailable,
	// and further calls wait for the next reopen instead of hammering.
	calls = 0
	err = p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		calls++
		return pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)
	})
	if !errors.Is(err, ErrUnavailable) || calls != 2 {
		t.Fatalf("persistent device error: %v after %d calls", err, calls)
	}
	calls = 0
	err = p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		calls++
		return nil
	})
	if !errors.Is(err, ErrUnavailable) || calls != 0 {
		t.Fatalf("call right after: %v after %d calls", err, calls)
	}
	time.Sleep(p.reopenEvery)
	if err := p.Ping(ctx); err != nil {
		t.Fatalf("Ping after the wait: %v", err)
	}

	// A key deleted elsewhere (its cached handle goes stale) is reported as
	// missing, not as an unavailable token.
	if err := p.GenerateSigner(ctx, LabelAuditKey); err != nil {
		t.Fatal(err)
	}
	signer, err := p.Signer(ctx, LabelAuditKey)
	if err != nil {
		t.Fatal(err)
	}
	err = p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		hs, err := findObjects(c, sh, LabelAuditKey, anyClass, 4)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if err := c.DestroyObject(sh, h); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(nil)
	if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Sign with a key deleted elsewhere: %v", err)
	}
}
