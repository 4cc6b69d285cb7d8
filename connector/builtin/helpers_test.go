package builtin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/enroll"
)

// TestMain fails the package if any goroutine of the connector or the
// WebSocket library is left once every test has cleaned up.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if left := waitGoroutines(5 * time.Second); left != "" {
			fmt.Fprintf(os.Stderr, "goroutines left running:\n%s\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

// waitGoroutines waits up to d for every goroutine of ours to end, and
// returns the stacks of those that did not.
func waitGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		left := ourGoroutines()
		if left == "" || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ourGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "waitGoroutines") || strings.Contains(g, "ourGoroutines") ||
			strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*M)") {
			continue
		}
		if strings.Contains(g, "sallyport/connector") || strings.Contains(g, "coder/websocket") {
			left = append(left, g)
		}
	}
	return strings.Join(left, "\n\n")
}

// pki is a throwaway CA and the server certificate it signs for
// 127.0.0.1.
type pki struct {
	pool *x509.CertPool
	cert tls.Certificate
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "vault"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &pki{pool: pool, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// engine is a test engine's identity.
type engine struct {
	id   string
	key  *ecdsa.PrivateKey
	site string
}

func newEngine(t testing.TB, site string) *engine {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := enroll.EngineID(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &engine{id: id, key: key, site: site}
}

// fakeAuth is the vault's Authorizer over a map of engines.
type fakeAuth struct {
	mu       sync.Mutex
	engines  map[string]*engine
	revoked  map[string]bool
	messages [][]byte // every transcript it was shown
}

func newAuth(es ...*engine) *fakeAuth {
	a := &fakeAuth{engines: map[string]*engine{}, revoked: map[string]bool{}}
	for _, e := range es {
		a.add(e)
	}
	return a
}

func (a *fakeAuth) add(e *engine) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.engines[e.id] = e
}

func (a *fakeAuth) revoke(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.revoked[id] = true
}

var errRefused = errors.New("fake auth: refused")

func (a *fakeAuth) Authorize(_ context.Context, engineID string, message, signature []byte) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.messages = append(a.messages, bytes.Clone(message))
	e := a.engines[engineID]
	if e == nil || a.revoked[engineID] {
		return "", fmt.Errorf("%w: unknown or revoked engine", errRefused)
	}
	sum := sha256.Sum256(message)
	if !ecdsa.VerifyASN1(&e.key.PublicKey, sum[:], signature) {
		return "", fmt.Errorf("%w: bad signature", errRefused)
	}
	return e.site, nil
}

// testServer is a Server behind a TLS 1.3 listener on loopback, as the
// vault mounts it.
type testServer struct {
	*Server
	addr string
	url  string
	http *http.Server
	done chan struct{}
}

// startServer serves cfg on addr ("127.0.0.1:0" for any port).
func startServer(t testing.TB, p *pki, addr string, cfg ServerConfig) *testServer {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // a restarted server may find its port in TIME_WAIT briefly
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Log == nil {
		cfg.Log = testLog(t)
	}
	s := NewServer(cfg)
	mux := http.NewServeMux()
	mux.Handle("/v1/connector", s)
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{p.cert}, MinVersion: tls.VersionTLS13},
		ErrorLog:          log.New(io.Discard, "", 0), // TLS refusals are what some tests are about
	}
	ts := &testServer{Server: s, addr: ln.Addr().String(), http: hs, done: make(chan struct{})}
	ts.url = "wss://" + ts.addr + "/v1/connector"
	go func() {
		defer close(ts.done)
		_ = hs.ServeTLS(ln, "", "")
	}()
	t.Cleanup(ts.stop)
	return ts
}

// stop shuts the server down (idempotent).
func (ts *testServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = ts.http.Shutdown(ctx)
	_ = ts.Shutdown(ctx)
	<-ts.done
}

// testLog logs through t, at debug level with -v.
func testLog(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// clientConfig is a config for e against ts with quick reconnects.
func clientConfig(t testing.TB, p *pki, url string, e *engine) ClientConfig {
	return ClientConfig{
		URL: url, RootCAs: p.pool, EngineID: e.id, Signer: e.key, Log: testLog(t),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	}
}

// dial connects e to url and closes the client when the test ends.
func dial(t testing.TB, p *pki, url string, e *engine) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, clientConfig(t, p, url, e))
	if err != nil {
		t.Fatalf("dial as %s: %v", e.id, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond for up to 10 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var _ = connector.ErrClosed
