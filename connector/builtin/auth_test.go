package builtin

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/sallyport/sallyport/connector"
)

// rawConn is a connection that does the handshake by hand, to send what
// a real client never would.
type rawConn struct {
	ws      *websocket.Conn
	nonce   []byte
	binding []byte
}

func rawDial(t *testing.T, p *pki, url string) *rawConn {
	t.Helper()
	ctx := testCtx(t)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13}}}
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.CloseNow() })
	binding, err := channelBinding(resp.TLS)
	if err != nil {
		t.Fatal(err)
	}
	f, err := readFrame(ctx, ws)
	if err != nil || f.op != opChallenge {
		t.Fatalf("challenge: %v %v", f.op, err)
	}
	return &rawConn{ws: ws, nonce: f.body, binding: binding}
}

// hello sends a hello and returns the server's answer.
func (rc *rawConn) hello(t *testing.T, engineID string, sig []byte) frame {
	t.Helper()
	ctx := testCtx(t)
	b, err := appendFrame(nil, &frame{op: opHello, name: engineID, body: sig})
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		t.Fatal(err)
	}
	f, err := readFrame(ctx, rc.ws)
	if err != nil {
		t.Fatalf("answer to hello: %v", err)
	}
	return f
}

func tr(t *testing.T, nonce []byte, engineID string, binding []byte) []byte {
	t.Helper()
	m, err := transcript(nonce, engineID, binding)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sign(t *testing.T, key crypto.Signer, msg []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(msg)
	sig, err := key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// fixedRand gives every connection the same nonce.
type fixedRand struct{}

func (fixedRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0x5a
	}
	return len(p), nil
}

func TestAuthentication(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	good := newEngine(t, "paris")
	auth := newAuth(good)
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: auth, rand: fixedRand{}})
	other := newEngine(t, "paris") // a key the vault does not know for good.id

	t.Run("good", func(t *testing.T) {
		rc := rawDial(t, p, ts.url)
		if f := rc.hello(t, good.id, sign(t, good.key, tr(t, rc.nonce, good.id, rc.binding))); f.op != opWelcome || f.name != "paris" {
			t.Fatalf("got %v %q, want welcome to paris", f.op, f.name)
		}
	})
	refused := func(t *testing.T, f frame) {
		t.Helper()
		if f.op != opError || f.num != codeUnauthorized {
			t.Fatalf("got %v code %d, want unauthorized", f.op, f.num)
		}
	}
	t.Run("wrong key", func(t *testing.T) {
		rc := rawDial(t, p, ts.url)
		refused(t, rc.hello(t, good.id, sign(t, other.key, tr(t, rc.nonce, good.id, rc.binding))))
	})
	t.Run("unknown engine", func(t *testing.T) {
		rc := rawDial(t, p, ts.url)
		refused(t, rc.hello(t, other.id, sign(t, other.key, tr(t, rc.nonce, other.id, rc.binding))))
	})
	t.Run("malformed engine id", func(t *testing.T) {
		rc := rawDial(t, p, ts.url)
		refused(t, rc.hello(t, "../"+good.id, sign(t, good.key, tr(t, rc.nonce, good.id, rc.binding))))
	})
	t.Run("signature of another engine id", func(t *testing.T) {
		rc := rawDial(t, p, ts.url)
		refused(t, rc.hello(t, good.id, sign(t, good.key, tr(t, rc.nonce, other.id, rc.binding))))
	})
	t.Run("replayed from another connection", func(t *testing.T) {
		// The server draws the same nonce for both connections here, so
		// only the channel binding tells them apart: a signature made on
		// the first (as a man in the middle would get one relayed) must
		// not open the second.
		first := rawDial(t, p, ts.url)
		sig := sign(t, good.key, tr(t, first.nonce, good.id, first.binding))
		second := rawDial(t, p, ts.url)
		if !bytes.Equal(first.nonce, second.nonce) || bytes.Equal(first.binding, second.binding) {
			t.Fatal("test setup: want equal nonces and different bindings")
		}
		refused(t, second.hello(t, good.id, sig))
		// And the signature was good where it was made.
		if f := first.hello(t, good.id, sig); f.op != opWelcome {
			t.Fatalf("on its own connection: got %v", f.op)
		}
	})
	t.Run("replayed transcript", func(t *testing.T) {
		// The whole login of one connection, sent again on another.
		auth.mu.Lock()
		msg := bytes.Clone(auth.messages[0])
		auth.mu.Unlock()
		rc := rawDial(t, p, ts.url)
		refused(t, rc.hello(t, good.id, sign(t, good.key, msg)))
	})
	t.Run("client refused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cfg := clientConfig(t, p, ts.url, other)
		_, err := Dial(ctx, cfg)
		if !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("Dial as an unknown engine: %v, want ErrUnauthorized", err)
		}
		if ctx.Err() != nil {
			t.Fatal("Dial retried a refusal until its context ended")
		}
	})
	eventually(t, "only the good sessions remain", func() bool { return ts.Sessions() <= 2 })
}

func TestClientPinsCA(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	e := newEngine(t, "paris")
	auth := newAuth(e)
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: auth})
	other := newPKI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, clientConfig(t, other, ts.url, e))
	if err == nil || !badCertificate(err) {
		t.Fatalf("Dial pinned to another CA: %v, want a certificate error", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Dial retried a bad certificate until its context ended")
	}
	auth.mu.Lock()
	defer auth.mu.Unlock()
	if len(auth.messages) != 0 {
		t.Fatal("the client signed a transcript for a server it does not trust")
	}
}

func TestClientConfigValidate(t *testing.T) {
	p := newPKI(t)
	e := newEngine(t, "paris")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other := newEngine(t, "paris")
	for _, tc := range []struct {
		name string
		edit func(*ClientConfig)
		want string
	}{
		{"no CA pool", func(c *ClientConfig) { c.RootCAs = nil }, "RootCAs"},
		{"plain ws", func(c *ClientConfig) { c.URL = "ws://127.0.0.1:8671/v1/connector" }, "wss"},
		{"https", func(c *ClientConfig) { c.URL = "https://127.0.0.1:8671/v1/connector" }, "wss"},
		{"no signer", func(c *ClientConfig) { c.Signer = nil }, "Signer"},
		{"RSA signer", func(c *ClientConfig) { c.Signer = rsaKey }, "P-256"},
		{"P-384 signer", func(c *ClientConfig) { c.Signer = p384 }, "P-256"},
		{"id of another key", func(c *ClientConfig) { c.EngineID = other.id }, "EngineID"},
		{"malformed id", func(c *ClientConfig) { c.EngineID = "x" }, "EngineID"},
		{"negative backoff", func(c *ClientConfig) { c.MaxBackoff = -1 }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := clientConfig(t, p, "wss://127.0.0.1:8671/v1/connector", e)
			tc.edit(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want an error about %s", err, tc.want)
			}
			if _, err := Dial(context.Background(), cfg); err == nil {
				t.Fatal("Dial accepted the config")
			}
		})
	}
}

func TestServerRefusesWithoutTLS13(t *testing.T) {
	m := connector.NewMemory(0)
	defer m.Close()
	s := NewServer(ServerConfig{Queues: m, Auth: newAuth()})
	defer func() { _ = s.Shutdown(context.Background()) }()
	for _, tc := range []struct {
		name string
		cs   *tls.ConnectionState
	}{
		{"plain HTTP", nil},
		{"TLS 1.2", &tls.ConnectionState{Version: tls.VersionTLS12}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/v1/connector", nil)
			r.TLS = tc.cs
			w := httptest.NewRecorder()
			s.ServeHTTP(w, r)
			if w.Code != http.StatusUpgradeRequired {
				t.Fatalf("status %d", w.Code)
			}
		})
	}
}

func TestServerConfigFailsClosed(t *testing.T) {
	m := connector.NewMemory(0)
	defer m.Close()
	for _, cfg := range []ServerConfig{{Queues: m}, {Auth: newAuth()}, {Queues: m, Auth: newAuth(), MaxSessions: -1}} {
		if cfg.Validate() == nil {
			t.Fatalf("%+v validated", cfg)
		}
		s := NewServer(cfg)
		r := httptest.NewRequest(http.MethodGet, "/v1/connector", nil)
		r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != http.StatusServiceUnavailable {
			t.Fatalf("a misconfigured server answered %d", w.Code)
		}
		_ = s.Shutdown(context.Background())
	}
}

func TestTranscriptBytes(t *testing.T) {
	nonce := bytes.Repeat([]byte{0x11}, NonceSize)
	binding := bytes.Repeat([]byte{0x22}, bindingSize)
	got := tr(t, nonce, "0123456789abcdef", binding)
	want := []byte("sallyport builtin connector v1\x00")
	want = append(want, 0x20)
	want = append(want, nonce...)
	want = append(want, 0x10)
	want = append(want, "0123456789abcdef"...)
	want = append(want, 0x20)
	want = append(want, binding...)
	if !bytes.Equal(got, want) {
		t.Fatalf("transcript\n got %x\nwant %x", got, want)
	}
	for _, bad := range []struct {
		nonce, binding []byte
		id             string
	}{
		{nonce[:31], binding, "x"},
		{nonce, append(binding, 0), "x"},
		{nonce, binding, strings.Repeat("x", 256)},
	} {
		if _, err := transcript(bad.nonce, bad.id, bad.binding); err == nil {
			t.Fatal("an out-of-bounds transcript was built")
		}
	}
}

// flakyAuth is unavailable for its first calls, then asks next.
type flakyAuth struct {
	next  Authorizer
	fails atomic.Int32
}

func (a *flakyAuth) Authorize(ctx context.Context, engineID string, message, signature []byte) (string, error) {
	if a.fails.Add(-1) >= 0 {
		return "", fmt.Errorf("store: %w", ErrUnavailable)
	}
	return a.next.Authorize(ctx, engineID, message, signature)
}

func TestAuthorizerUnavailableIsRetried(t *testing.T) {
	p := newPKI(t)
	m := connector.NewMemory(0)
	defer m.Close()
	e := newEngine(t, "paris")
	auth := &flakyAuth{next: newAuth(e)}
	auth.fails.Store(3)
	ts := startServer(t, p, "127.0.0.1:0", ServerConfig{Queues: m, Auth: auth})
	c := dial(t, p, ts.url, e) // fails three times, then gets in
	if auth.fails.Load() >= 0 {
		t.Fatal("the client got in without retrying")
	}
	if err := c.Publish(testCtx(t), "sallyport.paris.requests", []byte("x"), time.Minute); err != nil {
		t.Fatal(err)
	}
}
