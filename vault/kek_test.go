package vault

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sallyport/sallyport/hsm"
)

// fillVault adds n password secrets, a TOTP user, a plain user and a site
// key, and returns the passwords by secret name.
func fillVault(t *testing.T, tv *testVault, n int) map[string]string {
	t.Helper()
	ctx := context.Background()
	pw := map[string]string{}
	for i := 0; i < n; i++ {
		name := "s" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		p := "Rot-Pass-" + name + "-9z"
		if err := tv.AddSecret(ctx, passwordSecret(t, name, p, "alice")); err != nil {
			t.Fatal(err)
		}
		pw[name] = p
	}
	if _, err := tv.AddUser(ctx, UserSpec{Name: "totpuser", Password: []byte("Totp-User-Pass-1"), TOTP: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := tv.AddUser(ctx, UserSpec{Name: "plainuser", Password: []byte("Plain-User-Pass-1")}); err != nil {
		t.Fatal(err)
	}
	if err := tv.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte("broker-pass")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tv.RotateSiteKey(ctx, "paris"); err != nil {
		t.Fatal(err)
	}
	approvedEngine(t, tv, "paris")
	return pw
}

// checkAllReadable opens every secret, the site key and the TOTP seed.
func checkAllReadable(t *testing.T, v *Vault, pw map[string]string) {
	t.Helper()
	ctx := context.Background()
	for name, want := range pw {
		r, err := v.loadSecret(ctx, v.db, name)
		if err != nil {
			t.Fatal(err)
		}
		cred, err := v.openCredential(ctx, r)
		if err != nil {
			t.Fatalf("secret %s no longer opens: %v", name, err)
		}
		if !bytes.Contains(cred, []byte(want)) {
			t.Fatalf("secret %s opened to something else", name)
		}
	}
	if vs, err := v.siteKeyVersions(ctx, "paris"); err != nil || len(vs) != 2 {
		t.Fatalf("site keys: %d versions, %v", len(vs), err)
	}
	if c, err := v.siteConnector(ctx, "paris"); err != nil || string(c.Secret) != "broker-pass" {
		t.Fatalf("connector secret: %v", err)
	}
	engines, err := v.ListEngines(ctx)
	if err != nil || len(engines) == 0 {
		t.Fatalf("engines: %v", err)
	}
	for _, e := range engines {
		v.forgetEngineKey(e.ID)
		if _, _, _, err := v.engineKeyOf(ctx, e.ID); err != nil {
			t.Fatalf("engine key of %s: %v", e.ID, err)
		}
	}
	// A wrong code is refused for the code, not for an unreadable seed.
	if err := v.VerifyTOTP(ctx, "totpuser", "000000"); !errors.Is(err, ErrDenied) {
		t.Fatalf("totp seed: %v", err)
	}
}

func TestKEKRotationResumes(t *testing.T) {
	ctx := context.Background()
	tv := newTestVault(t)
	pw := fillVault(t, tv, 30)
	if err := tv.keys.EnsureAESKey(ctx, "sallyport-kek-2"); err != nil {
		t.Fatal(err)
	}
	target, err := tv.BeginKEKRotation(ctx, "sallyport-kek-2")
	if err != nil || target != "sallyport-kek-2" {
		t.Fatalf("begin: %q, %v", target, err)
	}
	// Part of the way, then "killed": the vault is closed and reopened.
	if n, err := tv.RewrapStep(ctx, 7); err != nil || n != 7 {
		t.Fatalf("first step: %d, %v", n, err)
	}
	st, err := tv.KEKState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 30 data keys, a TOTP seed, two site key versions, a broker password
	// and an engine key.
	if st.Current != hsm.LabelKEK || st.Target != "sallyport-kek-2" || st.Pending != 35-7 {
		t.Fatalf("half-way state: %+v", st)
	}
	if _, err := tv.FinishKEKRotation(ctx); err == nil {
		t.Fatal("finished with values left under the old key")
	}
	// New values while half-way are sealed under the current key.
	if err := tv.AddSecret(ctx, passwordSecret(t, "added-midway", "Rot-Pass-added-midway-9z", "alice")); err != nil {
		t.Fatal(err)
	}
	pw["added-midway"] = "Rot-Pass-added-midway-9z"
	tv.Close()
	v, err := Open(ctx, tv.path, tv.keys, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	checkAllReadable(t, v, pw) // a mix of both keys
	if _, err := v.BeginKEKRotation(ctx, "sallyport-kek-3"); !errors.Is(err, ErrExists) {
		t.Fatalf("another rotation during one: %v", err)
	}
	if target, err := v.BeginKEKRotation(ctx, ""); err != nil || target != "sallyport-kek-2" {
		t.Fatalf("resume: %q, %v", target, err)
	}
	for {
		n, err := v.RewrapStep(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	old, err := v.FinishKEKRotation(ctx)
	if err != nil || old != hsm.LabelKEK {
		t.Fatalf("finish: %q, %v", old, err)
	}
	// The old key is no longer needed: destroy it and read everything.
	if err := tv.keys.DeleteKey(ctx, hsm.LabelKEK); err != nil {
		t.Fatal(err)
	}
	checkAllReadable(t, v, pw)
	if err := v.AddSecret(ctx, passwordSecret(t, "after", "Rot-Pass-after-9z", "alice")); err != nil {
		t.Fatal(err)
	}
	var label string
	if err := v.db.QueryRowContext(ctx, `SELECT kek FROM secrets WHERE name = 'after'`).Scan(&label); err != nil || label != "sallyport-kek-2" {
		t.Fatalf("new values sealed under %q, %v", label, err)
	}
	v.Close()
	// And a reopen finds the new current key.
	v2, err := Open(ctx, tv.path, tv.keys, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	v2.Close()
}

func TestKEKMigrationBetweenProviders(t *testing.T) {
	ctx := context.Background()
	tv := newTestVault(t)
	pw := fillVault(t, tv, 10)
	tv.Close()
	other, err := hsm.OpenSoft(filepath.Join(t.TempDir(), "token.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.EnsureAESKey(ctx, "token-kek"); err != nil {
		t.Fatal(err)
	}
	// Opened on the new provider, with the old KEK in the old one.
	v, err := Open(ctx, tv.path, other, discardLogger(), nil, WithFallbackKeys(tv.keys))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.BeginKEKRotation(ctx, "token-kek"); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := v.RewrapStep(ctx, 4)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if _, err := v.FinishKEKRotation(ctx); err != nil {
		t.Fatal(err)
	}
	v.Close()
	// Without the old provider at all.
	v, err = Open(ctx, tv.path, other, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	checkAllReadable(t, v, pw)
}

func TestOpenRefusesMissingKEK(t *testing.T) {
	ctx := context.Background()
	tv := newTestVault(t)
	fillVault(t, tv, 1)
	tv.Close()
	empty, err := hsm.OpenSoft(filepath.Join(t.TempDir(), "empty.json"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, tv.path, empty, discardLogger(), nil)
	if err == nil || !errors.Is(err, hsm.ErrKeyNotFound) || !strings.Contains(err.Error(), "sallyport keys init") {
		t.Fatalf("missing KEK: %v", err)
	}
	// Nothing was created in its place.
	if ok, _ := empty.HasKey(ctx, hsm.LabelKEK); ok {
		t.Fatal("Open created a KEK")
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(tv.path), "vault.db"))
	if err != nil || len(b) == 0 {
		t.Fatalf("database: %v", err)
	}
}

// A provider that holds another key under the vault's KEK label (a token
// used before, a keystore from another vault) must not open the vault: the
// round trip alone would pass, and every stored value would then fail.
func TestOpenRefusesOtherKeyUnderKEKLabel(t *testing.T) {
	ctx := context.Background()
	tv := newTestVault(t)
	fillVault(t, tv, 3)
	tv.Close()
	other, err := hsm.OpenSoft(filepath.Join(t.TempDir(), "other.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.EnsureAESKey(ctx, hsm.LabelKEK); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, tv.path, other, discardLogger(), nil); !errors.Is(err, hsm.ErrOpen) ||
		!strings.Contains(err.Error(), "does not open the values sealed under it") {
		t.Fatalf("another key under the KEK's label: %v", err)
	}
	// The same with the right key as a fallback: the provider's own key
	// of that name wins, and it is the wrong one.
	if _, err := Open(ctx, tv.path, other, discardLogger(), nil, WithFallbackKeys(tv.keys)); !errors.Is(err, hsm.ErrOpen) {
		t.Fatalf("another key under the KEK's label, right one as fallback: %v", err)
	}
	// One damaged value does not make the vault unopenable.
	v, err := Open(ctx, tv.path, tv.keys, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.db.ExecContext(ctx, `UPDATE secrets SET wrapped_dek = x'00' WHERE rowid = (SELECT min(rowid) FROM secrets)`); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v, err = Open(ctx, tv.path, tv.keys, discardLogger(), nil)
	if err != nil {
		t.Fatalf("one damaged value: %v", err)
	}
	v.Close()
}

// Values already re-wrapped under a rotation's target, opened with a
// provider that lacks the target key (the rotation was begun on another
// provider): Open must refuse, or resuming would make a fresh key under the
// target's label and strand those values.
func TestOpenRefusesMissingRotationTarget(t *testing.T) {
	ctx := context.Background()
	tv := newTestVault(t)
	fillVault(t, tv, 3)
	raw, err := os.ReadFile(filepath.Join(tv.dir, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "copy.json")
	if err := os.WriteFile(copyPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tv.keys.GenerateAESKey(ctx, "sallyport-kek-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := tv.BeginKEKRotation(ctx, "sallyport-kek-2"); err != nil {
		t.Fatal(err)
	}
	if n, err := tv.RewrapStep(ctx, 2); err != nil || n != 2 {
		t.Fatalf("rewrap: %d, %v", n, err)
	}
	tv.Close()
	without, err := hsm.OpenSoft(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, tv.path, without, discardLogger(), nil); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("rotation target missing: %v", err)
	}
	v, err := Open(ctx, tv.path, tv.keys, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
}
