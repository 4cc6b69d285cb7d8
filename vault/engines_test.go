package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sallyport/sallyport/connector/builtin"
	"github.com/sallyport/sallyport/enroll"
)

func TestRegisterEngine(t *testing.T) {
	clk := &clock{t: time.Date(2030, 3, 1, 9, 0, 0, 0, time.UTC)}
	v := newTestVault(t, WithClock(clk.now))
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}

	t.Run("bad public keys", func(t *testing.T) {
		p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		p384DER, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
		rsaKey, err := rsa.GenerateKey(rand.Reader, 1024) // #nosec G403 -- only its encoding is used, to be refused
		if err != nil {
			t.Fatal(err)
		}
		rsaDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
		edPub, _, _ := ed25519.GenerateKey(rand.Reader)
		edDER, _ := x509.MarshalPKIXPublicKey(edPub)
		good := newTestEngine(t).der
		for name, der := range map[string][]byte{
			"nil": nil, "garbage": []byte("not a key"), "P-384": p384DER, "RSA": rsaDER, "Ed25519": edDER,
			"truncated": good[:len(good)-1], "trailing data": append(bytes.Clone(good), 0), "too long": bytes.Repeat([]byte{0x30}, 600),
		} {
			if _, err := v.RegisterEngine(ctx, "paris", der, "e", "127.0.0.1:1"); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s key: %v, want ErrInvalid", name, err)
			}
		}
		if list, err := v.ListEngines(ctx); err != nil || len(list) != 0 {
			t.Fatalf("refused keys were stored: %+v %v", list, err)
		}
	})

	e := newTestEngine(t)
	t.Run("new engine", func(t *testing.T) {
		long := strings.Repeat("é", 100) // 200 bytes
		info, err := v.RegisterEngine(ctx, "paris", e.der, "web\x00-engine\t\x1b[31m\u202e", "192.0.2.7:4444")
		if err != nil {
			t.Fatal(err)
		}
		fp, _ := enroll.Fingerprint(&e.priv.PublicKey)
		if info.ID != e.id || info.Site != "paris" || info.State != EnginePending || info.Fingerprint != fp ||
			info.Name != "web-engine[31m" || info.Address != "192.0.2.7:4444" ||
			!info.Registered.Equal(clk.now()) || !info.Changed.Equal(clk.now()) || !info.LastSeen.IsZero() {
			t.Fatalf("registered %+v", info)
		}
		// A long name is cut to 128 bytes on a character boundary.
		info, err = v.RegisterEngine(ctx, "paris", e.der, long, "192.0.2.7:4444")
		if err != nil || info.Name != strings.Repeat("é", 64) || !utf8.ValidString(info.Name) {
			t.Fatalf("long name stored as %q (%d bytes), %v", info.Name, len(info.Name), err)
		}
		info, err = v.RegisterEngine(ctx, "paris", e.der, "x\xff\xfe"+strings.Repeat("a", 300), strings.Repeat("h", 300))
		if err != nil || info.Name != "x"+strings.Repeat("a", 127) || len(info.Address) > 256+len("…") {
			t.Fatalf("name %q, address %d bytes, %v", info.Name, len(info.Address), err)
		}
	})

	t.Run("again with the same key", func(t *testing.T) {
		registered := clk.now()
		clk.set(registered.Add(time.Hour))
		info, err := v.RegisterEngine(ctx, "paris", e.der, "renamed", "192.0.2.8:1")
		if err != nil || info.ID != e.id || info.State != EnginePending || info.Name != "renamed" || info.Address != "192.0.2.8:1" ||
			!info.Registered.Equal(registered) {
			t.Fatalf("re-registration: %+v, %v", info, err)
		}
		if _, err := v.ApproveEngine(ctx, e.id); err != nil {
			t.Fatal(err)
		}
		key, version, _, err := v.engineKeyOf(ctx, e.id)
		if err != nil {
			t.Fatal(err)
		}
		// Registering again after approval keeps it approved, with its key.
		info, err = v.RegisterEngine(ctx, "paris", e.der, "renamed", "192.0.2.8:1")
		if err != nil || info.State != EngineApproved {
			t.Fatalf("re-registration of an approved engine: %+v, %v", info, err)
		}
		v.forgetEngineKey(e.id)
		key2, version2, _, err := v.engineKeyOf(ctx, e.id)
		if err != nil || version2 != version || !bytes.Equal(key, key2) {
			t.Fatalf("re-registration changed the engine key: v%d→v%d %v", version, version2, err)
		}
		list, err := v.ListEngines(ctx)
		if err != nil || len(list) != 1 || list[0].ID != e.id {
			t.Fatalf("engines after re-registrations: %+v %v", list, err)
		}
	})

	t.Run("sites", func(t *testing.T) {
		for _, site := range []string{"nosuch", "", "bad site", "../paris"} {
			if _, err := v.RegisterEngine(ctx, site, newTestEngine(t).der, "e", "a"); !errors.Is(err, ErrNotFound) {
				t.Errorf("site %q: %v, want ErrNotFound", site, err)
			}
		}
		// One key, one site.
		if _, err := v.RegisterEngine(ctx, DefaultSite, e.der, "e", "a"); !errors.Is(err, ErrInvalid) {
			t.Fatalf("the same key on another site: %v, want ErrInvalid", err)
		}
		if _, info, err := v.EnginePublicKey(ctx, e.id); err != nil || info.Site != "paris" {
			t.Fatalf("after the refusal: %+v %v", info, err)
		}
	})

	t.Run("revoked", func(t *testing.T) {
		if _, err := v.RevokeEngine(ctx, e.id); err != nil {
			t.Fatal(err)
		}
		if _, err := v.RegisterEngine(ctx, "paris", e.der, "back again", "a"); !errors.Is(err, ErrRevoked) {
			t.Fatalf("a revoked key registers again: %v", err)
		}
		if _, info, err := v.EnginePublicKey(ctx, e.id); err != nil || info.State != EngineRevoked || info.Name == "back again" {
			t.Fatalf("after the refusal: %+v %v", info, err)
		}
	})

	t.Run("pending bound", func(t *testing.T) {
		// Fill the queue of pending engines directly: 1000 registrations
		// would take long.
		if _, err := v.db.Exec(`WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
			INSERT INTO engines (id, site, public_key, fingerprint, state, registered, changed, kek)
			SELECT printf('%016x', i), 'paris', x'00', 'fp', 'pending', 0, 0, 'k' FROM n`, maxPendingEngines); err != nil {
			t.Fatal(err)
		}
		var pending int
		if err := v.db.QueryRow(`SELECT count(*) FROM engines WHERE state = 'pending'`).Scan(&pending); err != nil || pending != maxPendingEngines {
			t.Fatalf("%d pending engines, %v", pending, err)
		}
		extra := newTestEngine(t)
		if _, err := v.RegisterEngine(ctx, "paris", extra.der, "one too many", "a"); err == nil {
			t.Fatal("an engine registered beyond the pending bound")
		}
		if _, _, err := v.EnginePublicKey(ctx, extra.id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("the refused engine was stored: %v", err)
		}
	})
}

func TestEngineStates(t *testing.T) {
	clk := &clock{t: time.Date(2030, 3, 1, 9, 0, 0, 0, time.UTC)}
	v := newTestVault(t, WithClock(clk.now))
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	siteVersion := func() int {
		t.Helper()
		_, ver, err := v.SiteKey(ctx, "paris")
		if err != nil {
			t.Fatal(err)
		}
		return ver
	}
	e := newTestEngine(t)
	e.register(t, v.Vault, "paris", false)
	if _, _, _, err := v.engineKeyOf(ctx, e.id); !errors.Is(err, ErrPending) {
		t.Fatalf("key of a pending engine: %v", err)
	}

	// pending → approved: an engine key of version 1; the site key stays.
	clk.set(clk.now().Add(time.Minute))
	info, err := v.ApproveEngine(ctx, e.id)
	if err != nil || info.State != EngineApproved || !info.Changed.Equal(clk.now()) {
		t.Fatalf("approve: %+v %v", info, err)
	}
	key, version, site, err := v.engineKeyOf(ctx, e.id)
	if err != nil || version != 1 || site != "paris" || len(key) != engineKeyLen {
		t.Fatalf("engine key: v%d %s %d bytes %v", version, site, len(key), err)
	}
	if siteVersion() != 1 {
		t.Fatal("approval rotated the site key")
	}
	// approved → approved: nothing changes.
	clk.set(clk.now().Add(time.Minute))
	again, err := v.ApproveEngine(ctx, e.id)
	if err != nil || again.State != EngineApproved || !again.Changed.Equal(info.Changed) {
		t.Fatalf("approve twice: %+v %v", again, err)
	}
	v.forgetEngineKey(e.id)
	if key2, version2, _, err := v.engineKeyOf(ctx, e.id); err != nil || version2 != 1 || !bytes.Equal(key, key2) {
		t.Fatalf("a second approval changed the engine key: v%d %v", version2, err)
	}

	// approved → revoked: the key is dropped (cache included) and the
	// site key rotated, so its copy opens no new work.
	if _, _, _, err := v.engineKeyOf(ctx, e.id); err != nil { // cached now
		t.Fatal(err)
	}
	info, err = v.RevokeEngine(ctx, e.id)
	if err != nil || info.State != EngineRevoked || !info.Changed.Equal(clk.now()) {
		t.Fatalf("revoke: %+v %v", info, err)
	}
	if _, _, _, err := v.engineKeyOf(ctx, e.id); !errors.Is(err, ErrRevoked) {
		t.Fatalf("key of a revoked engine: %v", err)
	}
	var stored []byte
	if err := v.db.QueryRow(`SELECT engine_key FROM engines WHERE id = ?`, e.id).Scan(&stored); err != nil || stored != nil {
		t.Fatalf("revoked engine's key still stored (%d bytes), %v", len(stored), err)
	}
	if siteVersion() != 2 {
		t.Fatal("revocation did not rotate the site key")
	}
	// revoked → revoked: no second rotation; revoked → approved: refused.
	if info, err := v.RevokeEngine(ctx, e.id); err != nil || info.State != EngineRevoked {
		t.Fatalf("revoke twice: %+v %v", info, err)
	}
	if siteVersion() != 2 {
		t.Fatal("a second revocation rotated the site key again")
	}
	if _, err := v.ApproveEngine(ctx, e.id); !errors.Is(err, ErrRevoked) {
		t.Fatalf("approve a revoked engine: %v, want ErrRevoked", err)
	}
	if _, info, err := v.EnginePublicKey(ctx, e.id); err != nil || info.State != EngineRevoked {
		t.Fatalf("after the refused approval: %+v %v", info, err)
	}

	// pending → revoked: it never had a key, so the site key stays.
	p := newTestEngine(t)
	p.register(t, v.Vault, "paris", false)
	if info, err := v.RevokeEngine(ctx, p.id); err != nil || info.State != EngineRevoked {
		t.Fatalf("revoke pending: %+v %v", info, err)
	}
	if siteVersion() != 2 {
		t.Fatal("revoking a pending engine rotated the site key")
	}

	for _, id := range []string{"0000000000000000", "", "not-an-id", strings.ToUpper(e.id)} {
		if _, err := v.ApproveEngine(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("approve %q: %v", id, err)
		}
		if _, err := v.RevokeEngine(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("revoke %q: %v", id, err)
		}
	}
	list, err := v.ListEngines(ctx)
	if err != nil || len(list) != 2 || list[0].State != EngineRevoked || list[1].State != EngineRevoked {
		t.Fatalf("engines: %+v %v", list, err)
	}
}

func TestEngineConfigFor(t *testing.T) {
	clk := &clock{t: time.Date(2030, 3, 1, 9, 0, 0, 0, time.UTC)}
	v := newTestVault(t, WithClock(clk.now))
	ctx := context.Background()
	const pw = "Broker-Password-For-Engines"
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte(pw)}}); err != nil {
		t.Fatal(err)
	}
	const builtinURL = "wss://vault.example:8671/v1/connector"
	e, other := newTestEngine(t), newTestEngine(t)
	e.register(t, v.Vault, "paris", false)

	cfg, err := v.EngineConfigFor(ctx, e.id, builtinURL)
	if err != nil || cfg.ID != e.id || cfg.Site != "paris" || cfg.State != EnginePending || cfg.VaultTime != clk.now().UnixMilli() {
		t.Fatalf("pending: %+v %v", cfg, err)
	}
	if cfg.EngineKey != nil || cfg.SiteKeys != nil || cfg.Connector.Kind != "" || cfg.Connector.URL != "" || cfg.Connector.Secret != nil {
		t.Fatalf("a pending engine gets keys or a connector: %+v", cfg)
	}

	if _, err := v.ApproveEngine(ctx, e.id); err != nil {
		t.Fatal(err)
	}
	clk.set(clk.now().Add(time.Minute))
	if _, err := v.RotateSiteKey(ctx, "paris"); err != nil {
		t.Fatal(err)
	}
	cfg, err = v.EngineConfigFor(ctx, e.id, builtinURL)
	if err != nil || cfg.State != EngineApproved || cfg.EngineKey == nil || len(cfg.SiteKeys) != 2 {
		t.Fatalf("approved: %+v %v", cfg, err)
	}
	engineKey, version, _, err := v.engineKeyOf(ctx, e.id)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.unwrap(enroll.EngineKeyLabel(e.id, cfg.EngineKey.Version), cfg.EngineKey.Wrapped)
	if err != nil || cfg.EngineKey.Version != version || !bytes.Equal(got, engineKey) {
		t.Fatalf("engine key: v%d (want v%d), matches %v, %v", cfg.EngineKey.Version, version, bytes.Equal(got, engineKey), err)
	}
	current, currentVersion, err := v.SiteKey(ctx, "paris")
	if err != nil {
		t.Fatal(err)
	}
	old, err := v.siteKeyAt(ctx, "paris", 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		version int
		key     []byte
	}{{currentVersion, current}, {1, old}} {
		wk := cfg.SiteKeys[i]
		got, err := e.unwrap(enroll.SiteKeyLabel("paris", wk.Version), wk.Wrapped)
		if err != nil || wk.Version != want.version || !bytes.Equal(got, want.key) {
			t.Fatalf("site key %d: v%d (want v%d), matches %v, %v", i, wk.Version, want.version, bytes.Equal(got, want.key), err)
		}
		// Wrapped for this engine and this label only.
		if _, err := other.unwrap(enroll.SiteKeyLabel("paris", wk.Version), wk.Wrapped); !errors.Is(err, enroll.ErrUnwrap) {
			t.Fatalf("another engine unwraps the site key: %v", err)
		}
		if _, err := e.unwrap(enroll.SiteKeyLabel("paris", wk.Version+1), wk.Wrapped); !errors.Is(err, enroll.ErrUnwrap) {
			t.Fatalf("the site key unwraps under another label: %v", err)
		}
	}
	if cfg.Connector.Kind != ConnectorAMQP || cfg.Connector.URL != "amqps://sp@rabbit:5671/" {
		t.Fatalf("connector %+v", cfg.Connector)
	}
	secret, err := e.unwrap(enroll.ConnectorSecretLabel("paris"), cfg.Connector.Secret)
	if err != nil || string(secret) != pw {
		t.Fatalf("broker password: %v", err)
	}
	if bytes.Contains(cfg.Connector.Secret, []byte(pw)) || bytes.Contains(cfg.EngineKey.Wrapped, engineKey) {
		t.Fatal("a secret travels in the clear")
	}
	// The old site key leaves the configuration once past its grace.
	clk.set(clk.now().Add(SiteKeyGrace + time.Second))
	if cfg, err = v.EngineConfigFor(ctx, e.id, builtinURL); err != nil || len(cfg.SiteKeys) != 1 || cfg.SiteKeys[0].Version != currentVersion {
		t.Fatalf("past the grace: %+v %v", cfg, err)
	}

	// On the built-in connector the URL is the one given, with no secret.
	if err := v.SetSiteConnector(ctx, "paris", ConnectorSpec{Kind: ConnectorBuiltin}); err != nil {
		t.Fatal(err)
	}
	if cfg, err = v.EngineConfigFor(ctx, e.id, builtinURL); err != nil ||
		cfg.Connector.Kind != ConnectorBuiltin || cfg.Connector.URL != builtinURL || cfg.Connector.Secret != nil {
		t.Fatalf("builtin connector: %+v %v", cfg.Connector, err)
	}

	// Revoked: its state and nothing else.
	if _, err := v.RevokeEngine(ctx, e.id); err != nil {
		t.Fatal(err)
	}
	cfg, err = v.EngineConfigFor(ctx, e.id, builtinURL)
	if err != nil || cfg.State != EngineRevoked || cfg.EngineKey != nil || cfg.SiteKeys != nil || cfg.Connector.Kind != "" {
		t.Fatalf("revoked: %+v %v", cfg, err)
	}
	for _, id := range []string{other.id, "", "zz"} {
		if _, err := v.EngineConfigFor(ctx, id, builtinURL); !errors.Is(err, ErrNotFound) {
			t.Errorf("config of %q: %v, want ErrNotFound", id, err)
		}
	}
}

func TestAuthorize(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	approved, pending, revoked, stranger := newTestEngine(t), newTestEngine(t), newTestEngine(t), newTestEngine(t)
	approved.register(t, v.Vault, "paris", true)
	pending.register(t, v.Vault, "paris", false)
	revoked.register(t, v.Vault, "paris", true)
	if _, err := v.RevokeEngine(ctx, revoked.id); err != nil {
		t.Fatal(err)
	}
	message := []byte("connector transcript: nonce, engine id, channel binding")
	sign := func(e *testEngine, msg []byte) []byte {
		t.Helper()
		d := sha256.Sum256(msg)
		sig, err := ecdsa.SignASN1(rand.Reader, e.priv, d[:])
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	good := sign(approved, message)
	tests := []struct {
		name   string
		engine string
		msg    []byte
		sig    []byte
		want   error // nil: authorized
	}{
		{"approved", approved.id, message, good, nil},
		{"pending", pending.id, message, sign(pending, message), ErrPending},
		{"revoked", revoked.id, message, sign(revoked, message), ErrRevoked},
		{"signed by another key", approved.id, message, sign(stranger, message), ErrDenied},
		{"signature of another message", approved.id, []byte("another transcript"), good, ErrDenied},
		{"garbled signature", approved.id, message, append(bytes.Clone(good[:len(good)-2]), 0, 0), ErrDenied},
		{"no signature", approved.id, message, nil, ErrDenied},
		{"unknown engine", stranger.id, message, sign(stranger, message), ErrNotFound},
		{"malformed id", "../" + approved.id, message, good, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			site, err := v.Authorize(ctx, tt.engine, tt.msg, tt.sig)
			if tt.want == nil {
				if err != nil || site != "paris" {
					t.Fatalf("Authorize = %q, %v; want paris", site, err)
				}
				return
			}
			if !errors.Is(err, tt.want) || site != "" {
				t.Fatalf("Authorize = %q, %v; want %v", site, err, tt.want)
			}
			if errors.Is(err, builtin.ErrUnavailable) {
				t.Fatalf("a refusal reads as unavailable (the engine would retry): %v", err)
			}
		})
	}
	// A store that fails is "unavailable", which the engine retries, not a
	// refusal.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	site, err := v.Authorize(ctx, approved.id, message, good)
	if !errors.Is(err, builtin.ErrUnavailable) || site != "" {
		t.Fatalf("with the store closed: %q, %v; want builtin.ErrUnavailable", site, err)
	}
	for _, refusal := range []error{ErrDenied, ErrNotFound, ErrPending, ErrRevoked} {
		if errors.Is(err, refusal) {
			t.Fatalf("a store failure reads as %v", refusal)
		}
	}
}
