package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sallyport/sallyport/enroll"
)

const testBuiltinURL = "wss://vault.test:8671/v1/connector"

// callbackEnv serves the real API (callback routes included) over
// httptest, on a vault with a settable clock and a site "paris".
type callbackEnv struct {
	*testVault
	srv *httptest.Server
	clk *clock
}

func startCallback(t *testing.T) *callbackEnv {
	t.Helper()
	clk := &clock{t: time.Now().Truncate(time.Millisecond)}
	v := newTestVault(t, WithClock(clk.now))
	if err := v.AddSite(context.Background(), SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	h := NewAPI(v.Vault, sha256.Sum256([]byte(testToken)), nil, discardLogger(),
		WithBuiltinURL(func(*http.Request) string { return testBuiltinURL }))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &callbackEnv{testVault: v, srv: srv, clk: clk}
}

// signed is a request ready to send (again, for a replay).
type signed struct {
	method, path string
	body         []byte
	header       http.Header
}

// sign makes a request to path signed as engine with signer's key at the
// vault's time plus skew.
func (c *callbackEnv) sign(t *testing.T, method, path string, body []byte, engine string, signer *testEngine, skew time.Duration) signed {
	t.Helper()
	req := httptest.NewRequest(method, c.srv.URL+path, bytes.NewReader(body))
	if err := enroll.Sign(req, engine, signer.priv, body, c.clk.now().Add(skew)); err != nil {
		t.Fatal(err)
	}
	return signed{method: method, path: path, body: body, header: req.Header.Clone()}
}

// do sends s and returns the status, headers and body.
func (c *callbackEnv) do(t *testing.T, s signed) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(s.method, c.srv.URL+s.path, bytes.NewReader(s.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = s.header.Clone()
	if s.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode >= 500 {
		t.Fatalf("%s %s: %d %s", s.method, s.path, resp.StatusCode, raw)
	}
	hdr := resp.Header.Clone()
	if resp.Close {
		// The client takes "Connection: close" out of the header.
		hdr.Set("Connection", "close")
	}
	if hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("%s %s: Cache-Control %q", s.method, s.path, resp.Header.Get("Cache-Control"))
	}
	return resp.StatusCode, hdr, raw
}

// registerBody is a registration of e to site.
func registerBody(t *testing.T, site string, e *testEngine, name string) []byte {
	t.Helper()
	b, err := json.Marshal(enroll.RegisterRequest{Site: site, PublicKey: e.der, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectUnauthorized checks the one answer every failed authentication
// gets, whatever the cause.
func expectUnauthorized(t *testing.T, what string, code int, hdr http.Header, body []byte) {
	t.Helper()
	if code != http.StatusUnauthorized || strings.TrimSpace(string(body)) != `{"error":"unauthorized"}` || hdr.Get("Connection") != "close" {
		t.Errorf("%s: %d %q (Connection: %q), want 401 unauthorized", what, code, body, hdr.Get("Connection"))
	}
}

func TestCallbackRegister(t *testing.T) {
	c := startCallback(t)
	e, other := newTestEngine(t), newTestEngine(t)
	body := registerBody(t, "paris", e, "engine one")

	// Proof of possession: the registration must be signed by the key it
	// registers, under that key's id.
	code, hdr, raw := c.do(t, c.sign(t, "POST", "/v1/engine/register", body, e.id, other, 0))
	expectUnauthorized(t, "signed by another key", code, hdr, raw)
	code, hdr, raw = c.do(t, c.sign(t, "POST", "/v1/engine/register", body, other.id, other, 0))
	expectUnauthorized(t, "signed by another engine as itself", code, hdr, raw)
	code, hdr, raw = c.do(t, signed{method: "POST", path: "/v1/engine/register", body: body, header: http.Header{}})
	expectUnauthorized(t, "unsigned", code, hdr, raw)
	for _, skew := range []time.Duration{-enroll.MaxSkew - time.Second, enroll.MaxSkew + time.Second} {
		code, hdr, raw = c.do(t, c.sign(t, "POST", "/v1/engine/register", body, e.id, e, skew))
		expectUnauthorized(t, "skewed by "+skew.String(), code, hdr, raw)
	}
	if list, err := c.ListEngines(context.Background()); err != nil || len(list) != 0 {
		t.Fatalf("refused registrations stored an engine: %+v %v", list, err)
	}

	// A good one, just inside the window.
	good := c.sign(t, "POST", "/v1/engine/register", body, e.id, e, -enroll.MaxSkew+time.Second)
	code, _, raw = c.do(t, good)
	var reg enroll.Registered
	if code != http.StatusOK || json.Unmarshal(raw, &reg) != nil {
		t.Fatalf("register: %d %s", code, raw)
	}
	fp, _ := enroll.Fingerprint(&e.priv.PublicKey)
	if reg.ID != e.id || reg.Fingerprint != fp || reg.State != EnginePending {
		t.Fatalf("registered %+v", reg)
	}
	_, info, err := c.EnginePublicKey(context.Background(), e.id)
	if err != nil || info.Site != "paris" || info.Name != "engine one" || !strings.HasPrefix(info.Address, "127.0.0.1:") {
		t.Fatalf("stored %+v %v", info, err)
	}
	// The same request again is a replay, even though it would verify.
	code, hdr, raw = c.do(t, good)
	expectUnauthorized(t, "replayed registration", code, hdr, raw)
	// A fresh signature of the same registration is fine (idempotent).
	code, _, raw = c.do(t, c.sign(t, "POST", "/v1/engine/register", body, e.id, e, 0))
	if code != http.StatusOK || !bytes.Contains(raw, []byte(`"state":"pending"`)) {
		t.Fatalf("register again: %d %s", code, raw)
	}

	tests := []struct {
		name string
		s    signed
		want int
	}{
		{"unknown site", c.sign(t, "POST", "/v1/engine/register", registerBody(t, "nosuch", other, "x"), other.id, other, 0), http.StatusNotFound},
		{"key of another site", c.sign(t, "POST", "/v1/engine/register", registerBody(t, DefaultSite, e, "x"), e.id, e, 0), http.StatusBadRequest},
		{"not JSON", c.sign(t, "POST", "/v1/engine/register", []byte("site=paris"), other.id, other, 0), http.StatusBadRequest},
		{"unknown field", c.sign(t, "POST", "/v1/engine/register",
			[]byte(`{"site":"paris","public_key":"AAAA","name":"x","admin":true}`), other.id, other, 0), http.StatusBadRequest},
		{"bad public key", c.sign(t, "POST", "/v1/engine/register",
			[]byte(`{"site":"paris","public_key":"AAAA","name":"x"}`), other.id, other, 0), http.StatusBadRequest},
		{"body too long", c.sign(t, "POST", "/v1/engine/register", bytes.Repeat([]byte(" "), maxCallbackBody+1), other.id, other, 0), http.StatusRequestEntityTooLarge},
		{"wrong method", c.sign(t, "GET", "/v1/engine/register", nil, e.id, e, 0), http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, _, raw := c.do(t, tt.s); code != tt.want {
				t.Fatalf("%d %s, want %d", code, raw, tt.want)
			}
		})
	}
	if _, _, err := c.EnginePublicKey(context.Background(), other.id); err == nil {
		t.Fatal("a refused registration stored its engine")
	}

	// A revoked key may not come back.
	if _, err := c.RevokeEngine(context.Background(), e.id); err != nil {
		t.Fatal(err)
	}
	if code, _, raw := c.do(t, c.sign(t, "POST", "/v1/engine/register", body, e.id, e, 0)); code != http.StatusForbidden {
		t.Fatalf("revoked engine registers: %d %s", code, raw)
	}
}

func TestCallbackConfig(t *testing.T) {
	c := startCallback(t)
	ctx := context.Background()
	e, pending, revoked, stranger := newTestEngine(t), newTestEngine(t), newTestEngine(t), newTestEngine(t)
	e.register(t, c.Vault, "paris", true)
	pending.register(t, c.Vault, "paris", false)
	revoked.register(t, c.Vault, "paris", true)
	if _, err := c.RevokeEngine(ctx, revoked.id); err != nil {
		t.Fatal(err)
	}
	const path = "/v1/engine/config"

	// The approved engine gets its keys, wrapped to its key.
	c.clk.set(c.clk.now().Add(time.Second))
	good := c.sign(t, "GET", path, nil, e.id, e, 0)
	code, _, raw := c.do(t, good)
	var cfg enroll.EngineConfig
	if code != http.StatusOK || json.Unmarshal(raw, &cfg) != nil {
		t.Fatalf("config: %d %s", code, raw)
	}
	if cfg.ID != e.id || cfg.Site != "paris" || cfg.State != EngineApproved || cfg.EngineKey == nil || len(cfg.SiteKeys) != 2 ||
		cfg.Connector.Kind != ConnectorBuiltin || cfg.Connector.URL != testBuiltinURL || cfg.VaultTime != c.clk.now().UnixMilli() {
		t.Fatalf("config %+v", cfg)
	}
	siteKey, siteVersion, err := c.SiteKey(ctx, "paris")
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.unwrap(enroll.SiteKeyLabel("paris", cfg.SiteKeys[0].Version), cfg.SiteKeys[0].Wrapped)
	if err != nil || cfg.SiteKeys[0].Version != siteVersion || !bytes.Equal(got, siteKey) {
		t.Fatalf("site key v%d: %v", cfg.SiteKeys[0].Version, err)
	}
	engineKey, _, _, err := c.engineKeyOf(ctx, e.id)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.unwrap(enroll.EngineKeyLabel(e.id, cfg.EngineKey.Version), cfg.EngineKey.Wrapped); err != nil || !bytes.Equal(got, engineKey) {
		t.Fatalf("engine key: %v", err)
	}
	if _, info, err := c.EnginePublicKey(ctx, e.id); err != nil || !info.LastSeen.Equal(c.clk.now()) {
		t.Fatalf("check-in not recorded: %+v %v", info, err)
	}

	// A pending engine learns its state and nothing else.
	code, _, raw = c.do(t, c.sign(t, "GET", path, nil, pending.id, pending, 0))
	cfg = enroll.EngineConfig{}
	if code != http.StatusOK || json.Unmarshal(raw, &cfg) != nil || cfg.State != EnginePending || cfg.EngineKey != nil || cfg.SiteKeys != nil || cfg.Connector.URL != "" {
		t.Fatalf("pending: %d %s", code, raw)
	}

	garble := func(name, value string) signed {
		s := c.sign(t, "GET", path, nil, e.id, e, 0)
		if value == "" {
			s.header.Del(name)
		} else {
			s.header.Set(name, value)
		}
		return s
	}
	sig := c.sign(t, "GET", path, nil, e.id, e, 0).header.Get(enroll.HeaderSignature)
	refused := []struct {
		name string
		s    signed
	}{
		{"no headers", signed{method: "GET", path: path, header: http.Header{}}},
		{"no signature", garble(enroll.HeaderSignature, "")},
		{"no nonce", garble(enroll.HeaderNonce, "")},
		{"no time", garble(enroll.HeaderTime, "")},
		{"no engine", garble(enroll.HeaderEngine, "")},
		{"signature not base64", garble(enroll.HeaderSignature, "%%%")},
		{"signature too long", garble(enroll.HeaderSignature, strings.Repeat("QUFB", 40))},
		{"another request's signature", garble(enroll.HeaderSignature, sig)},
		{"nonce not hex", garble(enroll.HeaderNonce, strings.Repeat("z", 32))},
		{"short nonce", garble(enroll.HeaderNonce, "00ff")},
		{"time not a number", garble(enroll.HeaderTime, "yesterday")},
		{"time moved", garble(enroll.HeaderTime, strconv.FormatInt(c.clk.now().UnixMilli()+1, 10))},
		{"engine id too long", garble(enroll.HeaderEngine, strings.Repeat("a", 65))},
		{"engine id malformed", garble(enroll.HeaderEngine, "../../"+e.id)},
		{"another engine's id", garble(enroll.HeaderEngine, pending.id)},
		{"unknown engine", c.sign(t, "GET", path, nil, stranger.id, stranger, 0)},
		{"signed by another engine's key", c.sign(t, "GET", path, nil, e.id, pending, 0)},
		{"signed for another path", func() signed {
			s := c.sign(t, "GET", "/v1/engine/config?x=1", nil, e.id, e, 0)
			s.path = path
			return s
		}()},
		{"too old", c.sign(t, "GET", path, nil, e.id, e, -enroll.MaxSkew-time.Millisecond)},
		{"from the future", c.sign(t, "GET", path, nil, e.id, e, enroll.MaxSkew+time.Millisecond)},
		{"replayed", good},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, raw := c.do(t, tt.s)
			expectUnauthorized(t, tt.name, code, hdr, raw)
			if bytes.Contains(raw, []byte("wrapped")) {
				t.Fatal("a refusal carries keys")
			}
		})
	}
	// A replay stays refused while its time is still acceptable, and
	// after (when its nonce may have been forgotten, its time is not).
	c.clk.set(c.clk.now().Add(enroll.MaxSkew - time.Second))
	code, hdr, raw := c.do(t, good)
	expectUnauthorized(t, "replayed near the end of the window", code, hdr, raw)
	c.clk.set(c.clk.now().Add(2 * enroll.MaxSkew))
	code, hdr, raw = c.do(t, good)
	expectUnauthorized(t, "replayed after the window", code, hdr, raw)

	// A revoked engine is told so, with a valid signature only.
	code, _, raw = c.do(t, c.sign(t, "GET", path, nil, revoked.id, revoked, 0))
	if code != http.StatusForbidden || bytes.Contains(raw, []byte("wrapped")) {
		t.Fatalf("revoked: %d %s", code, raw)
	}
	code, hdr, raw = c.do(t, c.sign(t, "GET", path, nil, revoked.id, stranger, 0))
	expectUnauthorized(t, "revoked engine, forged signature", code, hdr, raw)
	// Revoking the approved engine cuts it off at its next pull.
	if _, err := c.RevokeEngine(ctx, e.id); err != nil {
		t.Fatal(err)
	}
	if code, _, raw := c.do(t, c.sign(t, "GET", path, nil, e.id, e, 0)); code != http.StatusForbidden {
		t.Fatalf("just revoked: %d %s", code, raw)
	}
	if code, _, _ := c.do(t, c.sign(t, "POST", path, nil, e.id, e, 0)); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST config: %d", code)
	}
}
