package vault

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// TestNothingUnwrappedAtRest writes a secret, a TOTP user and a site key,
// then reads back the keys that protect them (the secret's data key, the
// site key, the TOTP seed) and scans every file of the database for them and
// for the password: raw, hex and base64. Only wrapped forms may be stored.
func TestNothingUnwrappedAtRest(t *testing.T) {
	ctx := context.Background()
	tv := newTestVault(t)
	const password = "At-Rest-Password-7q"
	if err := tv.AddSecret(ctx, passwordSecret(t, "atrest", password, "alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := tv.AddUser(ctx, UserSpec{Name: "seeduser", Password: []byte("Seed-User-Pass-1"), TOTP: true}); err != nil {
		t.Fatal(err)
	}
	if err := tv.AddSite(ctx, SiteSpec{Name: "paris", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://sp@rabbit:5671/", Secret: []byte("Broker-Pass-At-Rest-9")}}); err != nil {
		t.Fatal(err)
	}
	siteKey, _, err := tv.SiteKey(ctx, "paris")
	if err != nil {
		t.Fatal(err)
	}
	_, engineKey, _ := approvedEngine(t, tv, "paris")
	r, err := tv.loadSecret(ctx, tv.db, "atrest")
	if err != nil {
		t.Fatal(err)
	}
	dek, err := tv.unseal(ctx, r.wrappedDEK, dekAAD(r.name), r.kek)
	if err != nil {
		t.Fatal(err)
	}
	var sealedSeed []byte
	var kek string
	if err := tv.db.QueryRowContext(ctx, `SELECT totp_seed, kek FROM users WHERE name = 'seeduser'`).Scan(&sealedSeed, &kek); err != nil {
		t.Fatal(err)
	}
	seed, err := tv.unseal(ctx, sealedSeed, totpAAD("seeduser"), kek)
	if err != nil {
		t.Fatal(err)
	}
	needles := map[string][]byte{"password": []byte(password), "data key": dek, "site key": siteKey, "TOTP seed": seed,
		"engine key": engineKey, "broker password": []byte("Broker-Pass-At-Rest-9")}
	// Close first, so that whatever SQLite keeps in memory is in the files.
	tv.Close()
	entries, err := os.ReadDir(filepath.Dir(tv.path))
	if err != nil {
		t.Fatal(err)
	}
	scanned := 0
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(tv.path), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		scanned += len(b)
		for what, n := range needles {
			for form, enc := range map[string][]byte{
				"raw":    n,
				"hex":    []byte(hex.EncodeToString(n)),
				"base64": []byte(base64.StdEncoding.EncodeToString(n)),
			} {
				if bytes.Contains(b, enc) {
					t.Errorf("%s found (%s) in %s", what, form, e.Name())
				}
			}
		}
	}
	if scanned == 0 {
		t.Fatal("no database files scanned")
	}
}
