package vault

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// TestSiteSpecs runs the checks of what a site is made of and how it is
// changed, on one vault (each under its own site names).
func TestSiteSpecs(t *testing.T) {
	v := newTestVault(t)
	t.Run("names", func(t *testing.T) { testAddSiteNames(t, v) })
	t.Run("connector specs", func(t *testing.T) { testAddSiteConnectorSpecs(t, v) })
	t.Run("duplicate", func(t *testing.T) { testAddSiteDuplicate(t, v) })
	t.Run("connector secret sealed", func(t *testing.T) { testConnectorSecretSealed(t, v) })
	t.Run("set connector", func(t *testing.T) { testSetSiteConnector(t, v) })
}

// testAddSiteNames checks that AddSite takes exactly the names
// names.ValidSiteName takes, and creates nothing for the others.
func testAddSiteNames(t *testing.T, v *testVault) {
	ctx := context.Background()
	for _, name := range []string{
		"a", "dc-east", "dc_east-2", "DC9", strings.Repeat("s", 64),
		"", strings.Repeat("s", 65), "-dc", "a.b", "dc east", "dc/east", "dc@east", "été", ".", "..", "dc\x00",
	} {
		err := v.AddSite(ctx, SiteSpec{Name: name, Connector: ConnectorSpec{Kind: ConnectorBuiltin}})
		_, showErr := v.ShowSite(ctx, name)
		if names.ValidSiteName(name) {
			if err != nil || showErr != nil {
				t.Errorf("AddSite(%q) = %v, ShowSite = %v; want it created", name, err, showErr)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("AddSite(%q) = %v, want ErrInvalid", name, err)
		}
		if !errors.Is(showErr, ErrNotFound) {
			t.Errorf("refused site %q exists: %v", name, showErr)
		}
		if err != nil && len(name) > 2 && strings.Contains(err.Error(), name) {
			t.Errorf("the error repeats the refused name: %v", err)
		}
	}
}

func testAddSiteConnectorSpecs(t *testing.T, v *testVault) {
	ctx := context.Background()
	tests := []struct {
		name string
		c    ConnectorSpec
		ok   bool
	}{
		{"builtin", ConnectorSpec{Kind: ConnectorBuiltin}, true},
		{"builtin with a secret", ConnectorSpec{Kind: ConnectorBuiltin, Secret: []byte("pw")}, false},
		{"builtin with a URL", ConnectorSpec{Kind: ConnectorBuiltin, URL: "amqps://u@h/"}, false},
		{"amqp without secret", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqp://sallyport@rabbit:5672/vh"}, true},
		{"amqps with secret", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sallyport@rabbit:5671/", Secret: []byte("broker-pw")}, true},
		{"amqps without user", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://rabbit/"}, true},
		{"password in the URL", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u:pw@rabbit:5671/"}, false},
		{"empty password in the URL", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u:@rabbit:5671/"}, false},
		{"http scheme", ConnectorSpec{Kind: ConnectorAMQP, URL: "https://rabbit/"}, false},
		{"no URL", ConnectorSpec{Kind: ConnectorAMQP}, false},
		{"no host", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps:///vh"}, false},
		{"query", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u@rabbit/?heartbeat=1"}, false},
		{"fragment", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u@rabbit/#x"}, false},
		{"URL too long", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u@rabbit/" + strings.Repeat("v", maxConnectorURL)}, false},
		{"secret too long", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u@rabbit/", Secret: bytes.Repeat([]byte("s"), maxConnectorSecret+1)}, false},
		{"secret at the limit", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u@rabbit/", Secret: bytes.Repeat([]byte("s"), maxConnectorSecret)}, true},
		{"unknown kind", ConnectorSpec{Kind: "AMQP", URL: "amqps://u@rabbit/"}, false},
		{"no kind", ConnectorSpec{}, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			site := "s" + string(rune('a'+i))
			err := v.AddSite(ctx, SiteSpec{Name: site, Connector: tt.c})
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				info, err := v.ShowSite(ctx, site)
				if err != nil || info.Connector != tt.c.Kind || info.ConnectorURL != tt.c.URL || info.ConnectorSecret != (len(tt.c.Secret) > 0) {
					t.Fatalf("stored as %+v, %v", info, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("AddSite = %v, want ErrInvalid", err)
			}
			if strings.Contains(err.Error(), "pw@") || len(tt.c.Secret) > 0 && strings.Contains(err.Error(), string(tt.c.Secret)) {
				t.Fatalf("the error repeats a secret: %v", err)
			}
			if _, err := v.ShowSite(ctx, site); !errors.Is(err, ErrNotFound) {
				t.Fatalf("a refused site exists: %v", err)
			}
			if _, _, err := v.SiteKey(ctx, site); !errors.Is(err, ErrNotFound) {
				t.Fatalf("a refused site has a key: %v", err)
			}
		})
	}
}

func testAddSiteDuplicate(t *testing.T, v *testVault) {
	ctx := context.Background()
	first := ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte("first-broker-pw")}
	if err := v.AddSite(ctx, SiteSpec{Name: "dup", Connector: first}); err != nil {
		t.Fatal(err)
	}
	key1, ver1, err := v.SiteKey(ctx, "dup")
	if err != nil || ver1 != 1 {
		t.Fatalf("key v%d %v", ver1, err)
	}
	for _, again := range []SiteSpec{
		{Name: "dup", Connector: ConnectorSpec{Kind: ConnectorBuiltin}},
		{Name: "dup", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://other@rabbit2:5671/", Secret: []byte("second")}},
		{Name: DefaultSite, Connector: ConnectorSpec{Kind: ConnectorBuiltin}},
	} {
		if err := v.AddSite(ctx, again); !errors.Is(err, ErrExists) {
			t.Fatalf("a second %s: %v, want ErrExists", again.Name, err)
		}
	}
	// The first one is untouched: connector, secret and key.
	c, err := v.siteConnector(ctx, "dup")
	if err != nil || c.Kind != ConnectorAMQP || c.URL != first.URL || string(c.Secret) != "first-broker-pw" {
		t.Fatalf("connector after the duplicates: %v %v", c, err)
	}
	key2, ver2, err := v.SiteKey(ctx, "dup")
	if err != nil || ver2 != 1 || !bytes.Equal(key1, key2) {
		t.Fatalf("the duplicate changed the key: v%d %v", ver2, err)
	}
	var versions int
	if err := v.db.QueryRow(`SELECT count(*) FROM site_key_versions WHERE site = 'dup'`).Scan(&versions); err != nil || versions != 1 {
		t.Fatalf("%d key versions, %v", versions, err)
	}
}

// testConnectorSecretSealed: the broker password is stored sealed, opens
// only for its own site, and never shows in ListSites.
func testConnectorSecretSealed(t *testing.T, v *testVault) {
	ctx := context.Background()
	const pw = "Broker-Password-Sealed-42"
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte(pw)}}); err != nil {
		t.Fatal(err)
	}
	if err := v.AddSite(ctx, SiteSpec{Name: "lyon", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte("other")}}); err != nil {
		t.Fatal(err)
	}
	var stored []byte
	var kek string
	if err := v.db.QueryRow(`SELECT connector_secret, kek FROM sites WHERE name = 'paris'`).Scan(&stored, &kek); err != nil {
		t.Fatal(err)
	}
	if len(stored) == 0 || bytes.Contains(stored, []byte(pw)) || kek == "" {
		t.Fatalf("stored secret %d bytes under %q; plaintext inside: %v", len(stored), kek, bytes.Contains(stored, []byte(pw)))
	}
	c, err := v.siteConnector(ctx, "paris")
	if err != nil || string(c.Secret) != pw {
		t.Fatalf("siteConnector: %v", err)
	}
	c.Wipe()
	if c.Secret != nil {
		t.Fatal("Wipe kept the secret")
	}
	// Bound to its site: moved to lyon's row, it does not open there.
	if _, err := v.db.Exec(`UPDATE sites SET connector_secret = ? WHERE name = 'lyon'`, stored); err != nil {
		t.Fatal(err)
	}
	if c, err := v.siteConnector(ctx, "lyon"); err == nil {
		t.Fatalf("paris's broker password opened as lyon's (%d bytes)", len(c.Secret))
	}
	list, err := v.ListSites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == "paris" && !s.ConnectorSecret {
			t.Fatal("ListSites does not say a secret is stored")
		}
	}
	for _, out := range []string{c.String(), c.GoString(), c.LogValue().String()} {
		if strings.Contains(out, pw) {
			t.Fatalf("a connector spec prints its secret: %s", out)
		}
	}
	assertNoSecretLogged(t, v, pw)
}

func TestListAndShowSites(t *testing.T) {
	clk := &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	v := newTestVault(t, WithClock(clk.now))
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte("pw")}}); err != nil {
		t.Fatal(err)
	}
	clk.set(clk.now().Add(time.Hour))
	if err := v.AddSite(ctx, SiteSpec{Name: "berlin", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	// paris: 2 approved, 1 pending, 1 revoked; berlin: 1 pending.
	var parisEngines []*testEngine
	for range 4 {
		e := newTestEngine(t)
		e.register(t, v.Vault, "paris", true)
		parisEngines = append(parisEngines, e)
	}
	if _, err := v.RevokeEngine(ctx, parisEngines[0].id); err != nil {
		t.Fatal(err)
	}
	newTestEngine(t).register(t, v.Vault, "paris", false)
	newTestEngine(t).register(t, v.Vault, "berlin", false)
	for i, site := range []string{"paris", "paris", "paris", "berlin", ""} {
		s := passwordSecret(t, "sec"+string(rune('0'+i)), "pw", "alice")
		s.Site = site
		if err := v.AddSecret(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.RotateSiteKey(ctx, "berlin"); err != nil {
		t.Fatal(err)
	}

	list, err := v.ListSites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]SiteInfo{}
	var order []string
	for _, s := range list {
		got[s.Name] = s
		order = append(order, s.Name)
	}
	if strings.Join(order, ",") != "berlin,default,paris" {
		t.Fatalf("order %v", order)
	}
	want := map[string]struct {
		connector, url string
		secret         bool
		keyVersion     int
		engines        map[string]int
		secrets        int
	}{
		// paris: its first key, then one rotation for the revoked engine.
		"paris":   {ConnectorAMQP, "amqps://sp@rabbit:5671/", true, 2, map[string]int{EngineApproved: 3, EnginePending: 1, EngineRevoked: 1}, 3},
		"berlin":  {ConnectorBuiltin, "", false, 2, map[string]int{EnginePending: 1}, 1},
		"default": {ConnectorBuiltin, "", false, 0, map[string]int{}, 1},
	}
	for name, w := range want {
		s := got[name]
		if s.Connector != w.connector || s.ConnectorURL != w.url || s.ConnectorSecret != w.secret || s.KeyVersion != w.keyVersion ||
			s.Secrets != w.secrets || len(s.Engines) != len(w.engines) {
			t.Errorf("%s: %+v, want %+v", name, s, w)
		}
		for state, n := range w.engines {
			if s.Engines[state] != n {
				t.Errorf("%s: %d %s engines, want %d", name, s.Engines[state], state, n)
			}
		}
		shown, err := v.ShowSite(ctx, name)
		if err != nil || shown.Name != name || shown.KeyVersion != s.KeyVersion || shown.Secrets != s.Secrets || shown.Connector != s.Connector {
			t.Errorf("ShowSite(%s) = %+v, %v; ListSites says %+v", name, shown, err, s)
		}
	}
	if !got["paris"].Created.Equal(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) || !got["berlin"].Created.Equal(time.Date(2030, 1, 2, 4, 4, 5, 0, time.UTC)) {
		t.Errorf("created: paris %v, berlin %v", got["paris"].Created, got["berlin"].Created)
	}
	for _, name := range []string{"nosuch", "", "PARIS", "../paris"} {
		if _, err := v.ShowSite(ctx, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("ShowSite(%q) = %v, want ErrNotFound", name, err)
		}
	}
}

// TestDefaultSite: a new vault has the "default" site, built in, which
// gets its first key on first use.
func TestDefaultSite(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	info, err := v.ShowSite(ctx, DefaultSite)
	if err != nil || info.Connector != ConnectorBuiltin || info.ConnectorURL != "" || info.ConnectorSecret || info.KeyVersion != 0 {
		t.Fatalf("default site after migration: %+v, %v", info, err)
	}
	key, version, err := v.SiteKey(ctx, DefaultSite)
	if err != nil || version != 1 || len(key) != siteKeyLen || bytes.Equal(key, make([]byte, siteKeyLen)) {
		t.Fatalf("first key: v%d %d bytes, %v", version, len(key), err)
	}
	again, _, err := v.SiteKey(ctx, DefaultSite)
	if err != nil || !bytes.Equal(again, key) {
		t.Fatalf("the first key changed: %v", err)
	}
	if info, err := v.ShowSite(ctx, DefaultSite); err != nil || info.KeyVersion != 1 {
		t.Fatalf("after first use: %+v, %v", info, err)
	}
	// A secret without a site is the default site's.
	if err := v.AddSecret(ctx, passwordSecret(t, "web01", "pw", "alice")); err != nil {
		t.Fatal(err)
	}
	if s, err := v.ShowSecret(ctx, "web01"); err != nil || s.Site != DefaultSite {
		t.Fatalf("secret site %q, %v", s.Site, err)
	}
	// An engine may register there, as `sallyport dev`'s does.
	newTestEngine(t).register(t, v.Vault, DefaultSite, true)
}

func testSetSiteConnector(t *testing.T, v *testVault) {
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "moving", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	key1, _, err := v.SiteKey(ctx, "moving")
	if err != nil {
		t.Fatal(err)
	}
	check := func(kind, url, secret string) {
		t.Helper()
		c, err := v.siteConnector(ctx, "moving")
		if err != nil || c.Kind != kind || c.URL != url || string(c.Secret) != secret {
			t.Fatalf("connector %v (secret %q), want %s %s %q: %v", c, c.Secret, kind, url, secret, err)
		}
		info, err := v.ShowSite(ctx, "moving")
		if err != nil || info.Connector != kind || info.ConnectorURL != url || info.ConnectorSecret != (secret != "") {
			t.Fatalf("ShowSite %+v, %v", info, err)
		}
	}
	if err := v.SetSiteConnector(ctx, "moving", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte("pw-one")}); err != nil {
		t.Fatal(err)
	}
	check(ConnectorAMQP, "amqps://sp@rabbit:5671/", "pw-one")
	var stored []byte
	if err := v.db.QueryRow(`SELECT connector_secret FROM sites WHERE name = 'moving'`).Scan(&stored); err != nil || bytes.Contains(stored, []byte("pw-one")) {
		t.Fatalf("stored secret: %v (in the clear: %v)", err, bytes.Contains(stored, []byte("pw-one")))
	}
	// Only the password changes.
	if err := v.SetSiteConnector(ctx, "moving", ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte("pw-two")}); err != nil {
		t.Fatal(err)
	}
	check(ConnectorAMQP, "amqps://sp@rabbit:5671/", "pw-two")
	// Refused changes leave it as it was.
	for _, bad := range []ConnectorSpec{
		{Kind: ConnectorBuiltin, Secret: []byte("x")},
		{Kind: ConnectorAMQP, URL: "amqps://sp:pw@rabbit/"},
		{Kind: "kafka"},
	} {
		if err := v.SetSiteConnector(ctx, "moving", bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("SetSiteConnector(%v) = %v, want ErrInvalid", bad, err)
		}
	}
	check(ConnectorAMQP, "amqps://sp@rabbit:5671/", "pw-two")
	// Back to builtin: the password goes.
	if err := v.SetSiteConnector(ctx, "moving", ConnectorSpec{Kind: ConnectorBuiltin}); err != nil {
		t.Fatal(err)
	}
	check(ConnectorBuiltin, "", "")
	if err := v.db.QueryRow(`SELECT connector_secret FROM sites WHERE name = 'moving'`).Scan(&stored); err != nil || stored != nil {
		t.Fatalf("the old password is still stored (%d bytes), %v", len(stored), err)
	}
	for _, site := range []string{"nosuch", "bad site", "", "-x"} {
		if err := v.SetSiteConnector(ctx, site, ConnectorSpec{Kind: ConnectorBuiltin}); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetSiteConnector(%q) = %v, want ErrNotFound", site, err)
		}
	}
	// A move never touches the site's key.
	key2, version, err := v.SiteKey(ctx, "moving")
	if err != nil || version != 1 || !bytes.Equal(key1, key2) {
		t.Fatalf("the key changed with the connector: v%d %v", version, err)
	}
}

func TestRotateSiteKey(t *testing.T) {
	start := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{t: start}
	v := newTestVault(t, WithClock(clk.now))
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	keys := map[int][]byte{}
	k, ver, err := v.SiteKey(ctx, "paris")
	if err != nil || ver != 1 {
		t.Fatalf("v%d %v", ver, err)
	}
	keys[1] = bytes.Clone(k)
	// Three rotations, a minute apart.
	for want := 2; want <= 4; want++ {
		clk.set(clk.now().Add(time.Minute))
		got, err := v.RotateSiteKey(ctx, "paris")
		if err != nil || got != want {
			t.Fatalf("rotation to v%d: v%d %v", want, got, err)
		}
		k, ver, err := v.SiteKey(ctx, "paris")
		if err != nil || ver != want {
			t.Fatalf("SiteKey after rotation: v%d %v, want v%d", ver, err, want)
		}
		for old, ok := range keys {
			if bytes.Equal(ok, k) {
				t.Fatalf("v%d repeats v%d", want, old)
			}
		}
		keys[want] = bytes.Clone(k)
		if info, err := v.ShowSite(ctx, "paris"); err != nil || info.KeyVersion != want {
			t.Fatalf("ShowSite key_version %d, %v", info.KeyVersion, err)
		}
	}
	// Every version is usable, newest first, each with its own key; the
	// retired ones say when a newer one took over.
	versions := func() []SiteKeyVersion {
		t.Helper()
		vs, err := v.siteKeyVersions(ctx, "paris")
		if err != nil {
			t.Fatal(err)
		}
		return vs
	}
	vs := versions()
	if len(vs) != 4 {
		t.Fatalf("%d usable versions, want 4", len(vs))
	}
	for i, kv := range vs {
		if kv.Version != 4-i || !bytes.Equal(kv.Key, keys[kv.Version]) {
			t.Fatalf("version %d at %d (key matches: %v)", kv.Version, i, bytes.Equal(kv.Key, keys[kv.Version]))
		}
		wantRetired := time.Time{}
		if kv.Version < 4 {
			wantRetired = start.Add(time.Duration(kv.Version) * time.Minute)
		}
		if !kv.Retired.Equal(wantRetired) {
			t.Fatalf("v%d retired %v, want %v", kv.Version, kv.Retired, wantRetired)
		}
	}
	// v1 was retired at start+1m: usable up to and including the end of
	// its grace, not a moment later; v2 and v3 stay.
	clk.set(start.Add(time.Minute + SiteKeyGrace))
	if got, err := v.siteKeyAt(ctx, "paris", 1); err != nil || !bytes.Equal(got, keys[1]) {
		t.Fatalf("v1 at the end of its grace: %v", err)
	}
	clk.set(start.Add(time.Minute + SiteKeyGrace + time.Nanosecond))
	if _, err := v.siteKeyAt(ctx, "paris", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("v1 past its grace: %v, want ErrNotFound", err)
	}
	if vs := versions(); len(vs) != 3 || vs[2].Version != 2 {
		t.Fatalf("past v1's grace: %d versions", len(vs))
	}
	// Past everyone's grace only the current key is left, and the next
	// rotation deletes the expired rows for good.
	clk.set(start.Add(3*time.Minute + SiteKeyGrace + time.Second))
	if vs := versions(); len(vs) != 1 || vs[0].Version != 4 || !bytes.Equal(vs[0].Key, keys[4]) {
		t.Fatalf("past every grace: %+v", vs)
	}
	if k, ver, err := v.SiteKey(ctx, "paris"); err != nil || ver != 4 || !bytes.Equal(k, keys[4]) {
		t.Fatalf("the current key expired with the old ones: v%d %v", ver, err)
	}
	if got, err := v.RotateSiteKey(ctx, "paris"); err != nil || got != 5 {
		t.Fatalf("rotation to v5: v%d %v", got, err)
	}
	var rows int
	if err := v.db.QueryRow(`SELECT count(*) FROM site_key_versions WHERE site = 'paris'`).Scan(&rows); err != nil || rows != 2 {
		t.Fatalf("%d stored versions after the cleanup, want 2 (v4, v5): %v", rows, err)
	}
	// Other sites are not rotated with it.
	if _, ver, err := v.SiteKey(ctx, DefaultSite); err != nil || ver != 1 {
		t.Fatalf("default site: v%d %v", ver, err)
	}
	for _, site := range []string{"nosuch", "", "a.b", "-x"} {
		if _, err := v.RotateSiteKey(ctx, site); !errors.Is(err, ErrNotFound) {
			t.Errorf("RotateSiteKey(%q) = %v, want ErrNotFound", site, err)
		}
	}
}

// TestSecretsBoundToSite: an engine checks out, lists and re-checks only
// its own site's secrets, whichever site asks.
func TestSecretsBoundToSite(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	home := passwordSecret(t, "home01", "Home-Password-1", "alice")
	if err := v.AddSecret(ctx, home); err != nil {
		t.Fatal(err)
	}
	away := passwordSecret(t, "paris01", "Paris-Password-1", "alice")
	away.Site = "paris"
	if err := v.AddSecret(ctx, away); err != nil {
		t.Fatal(err)
	}
	bad := passwordSecret(t, "nowhere01", "pw", "alice")
	bad.Site = "nowhere"
	if err := v.AddSecret(ctx, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a secret of a site that does not exist: %v", err)
	}

	conn := connector.NewMemory(64)
	t.Cleanup(func() { conn.Close() })
	serveSite(t, v.Vault, conn, DefaultSite)
	serveSite(t, v.Vault, conn, "paris")
	homeEngine, parisEngine := newTestEngine(t), newTestEngine(t)
	homeEngine.register(t, v.Vault, DefaultSite, true)
	parisEngine.register(t, v.Vault, "paris", true)
	homeAsk := newSiteAsker(t, v.Vault, conn, DefaultSite, homeEngine.id)
	parisAsk := newSiteAsker(t, v.Vault, conn, "paris", parisEngine.id)

	tests := []struct {
		name     string
		ask      *siteAsker
		secret   string
		password string // "" when refused
	}{
		{"own site", homeAsk, "home01", "Home-Password-1"},
		{"own site (paris)", parisAsk, "paris01", "Paris-Password-1"},
		{"default engine, paris secret", homeAsk, "paris01", ""},
		{"paris engine, default secret", parisAsk, "home01", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.ask.ask(t, workitem.CredentialRequest{Op: workitem.OpCheckout, User: "alice", Source: "192.0.2.1:1", Secret: tt.secret})
			if tt.password == "" {
				if r.Refused != workitem.RefusedDenied || r.Credential != nil {
					t.Fatalf("checkout across sites: %+v", r)
				}
				return
			}
			if r.Refused != "" || r.Credential == nil || string(r.Credential.Password) != tt.password {
				t.Fatalf("checkout on its own site: %+v", r)
			}
		})
	}
	denied := 0
	for _, e := range v.audit.find("checkout") {
		if e.Outcome != "denied" {
			continue
		}
		for _, a := range e.Attrs {
			if a.Key == "reason" && a.Value.String() == "secret of another site" {
				denied++
			}
		}
	}
	if denied != 2 {
		t.Fatalf("%d cross-site checkouts audited as such, want 2", denied)
	}
	// The menu and the re-check see the asking site only.
	if r := parisAsk.ask(t, workitem.CredentialRequest{Op: workitem.OpList, User: "alice"}); strings.Join(r.Secrets, ",") != "paris01" {
		t.Fatalf("paris menu: %v", r.Secrets)
	}
	if r := homeAsk.ask(t, workitem.CredentialRequest{Op: workitem.OpList, User: "alice"}); strings.Join(r.Secrets, ",") != "home01" {
		t.Fatalf("default menu: %v", r.Secrets)
	}
	r := parisAsk.ask(t, workitem.CredentialRequest{Op: workitem.OpRecheck, Grants: []workitem.Grant{
		{User: "alice", Source: "x", Secret: "paris01"}, {User: "alice", Source: "x", Secret: "home01"},
	}})
	if len(r.Allowed) != 2 || !r.Allowed[0] || r.Allowed[1] {
		t.Fatalf("paris re-check: %+v", r)
	}
}
