package vault

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/hsm"
)

func TestOpenCreatesPrivateFiles(t *testing.T) {
	v := newTestVault(t)
	for path, want := range map[string]os.FileMode{v.path: 0o600, filepath.Dir(v.path): 0o700} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	var version int
	if err := v.db.QueryRow(`SELECT version FROM schema_version`).Scan(&version); err != nil || version != len(migrations) {
		t.Fatalf("schema version %d (%v), want %d", version, err, len(migrations))
	}
	var fk int
	if err := v.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
		t.Fatalf("foreign_keys = %d (%v)", fk, err)
	}
}

func TestOpenRefusesLoosePermissions(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keys, err := hsm.OpenSoft(filepath.Join(dir, "keys.json"))
	if err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose")
	if err := os.Mkdir(loose, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o775); err != nil { // #nosec G302 -- the test needs a loose directory
		t.Fatal(err)
	}
	if _, err := Open(ctx, filepath.Join(loose, "vault.db"), keys, discardLogger(), nil); err == nil {
		t.Error("opened a database in a directory others can write")
	}
	private := filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(private, "vault.db")
	if err := os.WriteFile(db, nil, 0o644); err != nil { // #nosec G306 -- the test needs a readable file
		t.Fatal(err)
	}
	if _, err := Open(ctx, db, keys, discardLogger(), nil); err == nil {
		t.Error("opened a database file others can read")
	}
}

func TestReopenKeepsData(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	if err := v.AddSecret(ctx, passwordSecret(t, "web01", "target-password", "alice")); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v2, err := Open(ctx, v.path, v.keys, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	r, err := v2.loadSecret(ctx, v2.db, "web01")
	if err != nil {
		t.Fatal(err)
	}
	cred, err := v2.openCredential(ctx, r)
	if err != nil || string(cred) != "target-password" {
		t.Fatalf("credential after reopen: %v", err)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	v := newTestVault(t)
	if _, err := v.db.Exec(`UPDATE schema_version SET version = 999`); err != nil {
		t.Fatal(err)
	}
	v.Close()
	if _, err := Open(context.Background(), v.path, v.keys, discardLogger(), nil); err == nil {
		t.Fatal("opened a database from a newer version")
	}
}

func TestSecretRoundTripAndNoPlaintextOnDisk(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	password := "Pl41nT3xt-M4rker-" + strings.Repeat("x", 20)
	key := newPrivateKeyPEM(t)
	if err := v.AddSecret(ctx, passwordSecret(t, "web01", password, "alice")); err != nil {
		t.Fatal(err)
	}
	spec := passwordSecret(t, "web02", "", "group:ops")
	spec.Password, spec.PrivateKey = nil, bytes.Clone(key)
	if err := v.AddSecret(ctx, spec); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"web01": []byte(password), "web02": key} {
		r, err := v.loadSecret(ctx, v.db, name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := v.openCredential(ctx, r)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: credential does not round-trip (%v)", name, err)
		}
		if bytes.Contains(r.credential, want[:16]) || bytes.Contains(r.wrappedDEK, want[:16]) {
			t.Fatalf("%s: plaintext in the stored columns", name)
		}
	}
	// Flush everything to the files, then scan them for the plaintexts.
	if _, err := v.db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Dir(v.path))
	if err != nil {
		t.Fatal(err)
	}
	keyBody := key[40 : len(key)-40] // inside the PEM armour
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join(filepath.Dir(v.path), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte(password)) || bytes.Contains(raw, keyBody) {
			t.Fatalf("%s holds a credential in the clear", e.Name())
		}
	}
}

func TestCredentialBoundToRow(t *testing.T) {
	tests := map[string]string{
		"host redirected":    `UPDATE secrets SET host = 'evil.example' WHERE name = 'web01'`,
		"port changed":       `UPDATE secrets SET port = 2222 WHERE name = 'web01'`,
		"user changed":       `UPDATE secrets SET username = 'admin' WHERE name = 'web01'`,
		"host key cleared":   `UPDATE secrets SET host_key = NULL, pin_on_first_use = 1 WHERE name = 'web01'`,
		"credential swapped": `UPDATE secrets SET credential = (SELECT credential FROM secrets WHERE name = 'web02') WHERE name = 'web01'`,
		"data key swapped":   `UPDATE secrets SET wrapped_dek = (SELECT wrapped_dek FROM secrets WHERE name = 'web02') WHERE name = 'web01'`,
		"both swapped":       `UPDATE secrets SET wrapped_dek = (SELECT wrapped_dek FROM secrets WHERE name = 'web02'), credential = (SELECT credential FROM secrets WHERE name = 'web02') WHERE name = 'web01'`,
	}
	for name, stmt := range tests {
		t.Run(name, func(t *testing.T) {
			v := newTestVault(t)
			ctx := context.Background()
			for _, n := range []string{"web01", "web02"} {
				if err := v.AddSecret(ctx, passwordSecret(t, n, "password-of-"+n, "alice")); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := v.db.Exec(stmt); err != nil {
				t.Fatal(err)
			}
			r, err := v.loadSecret(ctx, v.db, "web01")
			if err != nil {
				t.Fatal(err)
			}
			if cred, err := v.openCredential(ctx, r); err == nil {
				t.Fatalf("tampered row still opens (to %q)", cred)
			}
		})
	}
}

func TestAddSecretValidation(t *testing.T) {
	hostKey := authorizedLine(newHostKey(t))
	base := func() SecretSpec {
		return SecretSpec{Name: "web01", Host: "web01.corp.example", Port: 22, Username: "root",
			Password: []byte("pw"), HostKey: hostKey, Allow: []string{"alice"}}
	}
	tests := []struct {
		name   string
		mutate func(*SecretSpec)
		field  string
	}{
		{"bad name", func(s *SecretSpec) { s.Name = "web@01" }, "name"},
		{"name like a flag", func(s *SecretSpec) { s.Name = "-rf" }, "name: must not start with '-'"},
		{"dash alone", func(s *SecretSpec) { s.Name = "-" }, "name: must not start with '-'"},
		{"empty host", func(s *SecretSpec) { s.Host = "" }, "host"},
		{"long host", func(s *SecretSpec) { s.Host = strings.Repeat("a.", 127) }, "host"},
		{"port too big", func(s *SecretSpec) { s.Port = 70000 }, "port"},
		{"negative port", func(s *SecretSpec) { s.Port = -1 }, "port"},
		{"zero port", func(s *SecretSpec) { s.Port = 0 }, "port: must be 1..65535"},
		{"no username", func(s *SecretSpec) { s.Username = "" }, "username"},
		{"no credential", func(s *SecretSpec) { s.Password = nil }, "password/private_key"},
		{"both credentials", func(s *SecretSpec) { s.PrivateKey = newPrivateKeyPEM(t) }, "password/private_key"},
		{"bad private key", func(s *SecretSpec) { s.Password, s.PrivateKey = nil, []byte("not a key") }, "private_key"},
		{"encrypted private key", func(s *SecretSpec) { s.Password, s.PrivateKey = nil, newEncryptedKeyPEM(t) }, "passphrase"},
		{"no host key", func(s *SecretSpec) { s.HostKey = "" }, "host_key/pin_on_first_use"},
		{"both host key modes", func(s *SecretSpec) { s.PinOnFirstUse = true }, "host_key/pin_on_first_use"},
		{"bad host key", func(s *SecretSpec) { s.HostKey = "ssh-ed25519 AAAAnotbase64" }, "host_key"},
		{"two host keys", func(s *SecretSpec) { s.HostKey = hostKey + "\n" + hostKey }, "host_key"},
		{"host key options", func(s *SecretSpec) { s.HostKey = "no-pty " + hostKey }, "host_key"},
		{"empty allow", func(s *SecretSpec) { s.Allow = nil }, "allow"},
		{"bad allow entry", func(s *SecretSpec) { s.Allow = []string{"al ice"} }, "allow"},
		{"bad group entry", func(s *SecretSpec) { s.Allow = []string{"group:"} }, "allow"},
	}
	v := newTestVault(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base()
			tt.mutate(&s)
			err := v.AddSecret(context.Background(), s)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("got %v, want an ErrInvalid naming %q", err, tt.field)
			}
			if strings.Contains(err.Error(), "pw") && tt.field != "password/private_key" {
				t.Fatalf("error %q may echo the credential", err)
			}
		})
	}
	s := base()
	s.Port = 2222
	if err := v.AddSecret(context.Background(), s); err != nil {
		t.Fatalf("valid secret refused: %v", err)
	}
	if info, err := v.ShowSecret(context.Background(), "web01"); err != nil || info.Port != 2222 {
		t.Fatalf("the port was not stored as given: %+v, %v", info, err)
	}
	// A dash inside a name is fine; only a leading one looks like a flag.
	s = base()
	s.Name = "web-01-"
	if err := v.AddSecret(context.Background(), s); err != nil {
		t.Fatalf("inner dash refused: %v", err)
	}
	if err := v.AddSecret(context.Background(), base()); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v, want ErrExists", err)
	}
}

func TestShowListRemoveSecret(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	hk := newHostKey(t)
	s := passwordSecret(t, "web01", "pw-web01", "bob", "alice", "group:ops", "alice")
	s.HostKey = authorizedLine(hk) + " root@web01"
	if err := v.AddSecret(ctx, s); err != nil {
		t.Fatal(err)
	}
	pin := passwordSecret(t, "web02", "pw-web02", "alice")
	pin.HostKey, pin.PinOnFirstUse = "", true
	if err := v.AddSecret(ctx, pin); err != nil {
		t.Fatal(err)
	}
	info, err := v.ShowSecret(ctx, "web01")
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != KindPassword || info.HostKey != authorizedLine(hk) || info.HostKeyFingerprint != ssh.FingerprintSHA256(hk) ||
		strings.Join(info.Allow, ",") != "alice,bob,group:ops" || info.Created.IsZero() {
		t.Fatalf("ShowSecret = %+v", info)
	}
	list, err := v.ListSecrets(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "web01" || list[1].Name != "web02" {
		t.Fatalf("ListSecrets = %+v, %v", list, err)
	}
	if list[1].HostKey != "" || !list[1].PinOnFirstUse {
		t.Fatalf("unpinned secret shows %+v", list[1])
	}
	if err := v.RemoveSecret(ctx, "web01"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []func() error{
		func() error { _, err := v.ShowSecret(ctx, "web01"); return err },
		func() error { return v.RemoveSecret(ctx, "web01") },
		func() error { return v.RemoveSecret(ctx, "bad name") },
	} {
		if err := f(); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after removal: %v, want ErrNotFound", err)
		}
	}
	var n int
	if err := v.db.QueryRow(`SELECT count(*) FROM secret_allow WHERE secret = 'web01'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("allow entries left behind: %d, %v", n, err)
	}
}

func TestUsers(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	bad := []UserSpec{
		{Name: "", Password: []byte("password1")},
		{Name: "a b", Password: []byte("password1")},
		{Name: "ok", Password: []byte("short")},
		{Name: "ok", Password: bytes.Repeat([]byte("x"), 1025)},
		{Name: "ok", Password: []byte("password1"), Groups: []string{"a,b"}},
	}
	for _, u := range bad {
		if _, err := v.AddUser(ctx, u); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddUser(%v) = %v, want ErrInvalid", u, err)
		}
	}
	if uri, err := v.AddUser(ctx, UserSpec{Name: "zed", Password: []byte("password1"), Groups: []string{"b", "a"}}); err != nil || uri != "" {
		t.Fatalf("AddUser = %q, %v", uri, err)
	}
	if _, err := v.AddUser(ctx, UserSpec{Name: "amy@corp.example", Password: []byte("password2"), TOTP: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.AddUser(ctx, UserSpec{Name: "zed", Password: []byte("password3")}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate user: %v", err)
	}
	users, err := v.ListUsers(ctx)
	if err != nil || len(users) != 2 {
		t.Fatalf("ListUsers = %+v, %v", users, err)
	}
	if users[0].Name != "amy@corp.example" || !users[0].TOTP || len(users[0].Groups) != 0 ||
		users[1].Name != "zed" || users[1].TOTP || strings.Join(users[1].Groups, ",") != "a,b" {
		t.Fatalf("ListUsers = %+v", users)
	}
	if err := v.RemoveUser(ctx, "zed"); err != nil {
		t.Fatal(err)
	}
	if err := v.RemoveUser(ctx, "zed"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second removal: %v", err)
	}
	var n int
	if err := v.db.QueryRow(`SELECT count(*) FROM user_groups WHERE user = 'zed'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("groups left behind: %d, %v", n, err)
	}
}

// TestFlagLikeNames: new users, groups and secrets may not start with '-',
// but rows stored before that rule can still be shown and removed.
func TestFlagLikeNames(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	for _, tt := range []struct {
		u    UserSpec
		want string
	}{
		{UserSpec{Name: "-alice", Password: []byte("password1")}, "name: must not start with '-'"},
		{UserSpec{Name: "-", Password: []byte("password1")}, "name: must not start with '-'"},
		{UserSpec{Name: "alice", Password: []byte("password1"), Groups: []string{"ops", "-dba"}}, "groups: a group name must not start with '-'"},
	} {
		if _, err := v.AddUser(ctx, tt.u); !errors.Is(err, ErrInvalid) || !strings.HasSuffix(err.Error(), tt.want) {
			t.Errorf("AddUser(%v) = %v, want ErrInvalid ending in %q", tt.u, err, tt.want)
		}
	}
	if _, err := v.AddUser(ctx, UserSpec{Name: "a-lice-", Password: []byte("password1"), Groups: []string{"d-b-a"}}); err != nil {
		t.Fatalf("inner dashes refused: %v", err)
	}
	if err := v.AddSecret(ctx, passwordSecret(t, "-rf", "pw-rf", "alice")); !errors.Is(err, ErrInvalid) ||
		!strings.HasSuffix(err.Error(), "name: must not start with '-'") {
		t.Fatalf("AddSecret(-rf) = %v", err)
	}

	// Legacy rows, as an older version would have stored them.
	if err := v.AddSecret(ctx, passwordSecret(t, "legacy", "pw-legacy", "alice")); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO users (name, password_hash, created) VALUES ('-old', 'x', 0)`,
		// secret_allow's foreign key does not follow a rename: move it by hand.
		`DELETE FROM secret_allow WHERE secret = 'legacy'`,
		`UPDATE secrets SET name = '-rf' WHERE name = 'legacy'`,
		`INSERT INTO secret_allow (secret, entry) VALUES ('-rf', 'alice')`,
	} {
		if _, err := v.db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if info, err := v.ShowSecret(ctx, "-rf"); err != nil || info.Name != "-rf" || len(info.Allow) != 1 {
		t.Fatalf("ShowSecret(-rf) = %+v, %v", info, err)
	}
	if err := v.RemoveSecret(ctx, "-rf"); err != nil {
		t.Fatalf("RemoveSecret(-rf) = %v", err)
	}
	if _, err := v.ShowSecret(ctx, "-rf"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after removal: %v", err)
	}
	if err := v.RemoveUser(ctx, "-old"); err != nil {
		t.Fatalf("RemoveUser(-old) = %v", err)
	}
}

func TestSpecsRedact(t *testing.T) {
	u := UserSpec{Name: "alice", Password: []byte("hunter2-hunter2")}
	s := SecretSpec{Name: "web01", Password: []byte("hunter3-hunter3"), PrivateKey: []byte("-----BEGIN KEY")}
	for _, out := range []string{
		u.String(), u.GoString(), s.String(), s.GoString(),
		u.LogValue().String(), s.LogValue().String(),
	} {
		if strings.Contains(out, "hunter") || strings.Contains(out, "BEGIN") {
			t.Fatalf("spec printed its secret: %s", out)
		}
	}
	u.Wipe()
	s.Wipe()
	if u.Password != nil || s.Password != nil || s.PrivateKey != nil {
		t.Fatal("Wipe left the secret")
	}
}

func TestSites(t *testing.T) {
	v := newTestVault(t)
	ctx := context.Background()
	if err := v.AddSite(ctx, SiteSpec{Name: "dc-east", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); err != nil {
		t.Fatal(err)
	}
	if err := v.AddSite(ctx, SiteSpec{Name: "dc-east", Connector: ConnectorSpec{Kind: ConnectorBuiltin}}); !errors.Is(err, ErrExists) {
		t.Fatalf("a second dc-east: %v", err)
	}
	k1, v1, err := v.SiteKey(ctx, "dc-east")
	if err != nil || len(k1) != 32 || v1 != 1 {
		t.Fatalf("SiteKey = %d bytes v%d, %v", len(k1), v1, err)
	}
	k2, _, err := v.SiteKey(ctx, "dc-east")
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatal("SiteKey is not stable")
	}
	// The migrated default site gets its first key on first use.
	k3, _, err := v.SiteKey(ctx, DefaultSite)
	if err != nil || bytes.Equal(k1, k3) {
		t.Fatalf("default site: %v (or two sites share a key)", err)
	}
	for _, bad := range []SiteSpec{
		{Name: "bad site", Connector: ConnectorSpec{Kind: ConnectorBuiltin}},
		{Name: "-dc", Connector: ConnectorSpec{Kind: ConnectorBuiltin}},
		{Name: "a.b", Connector: ConnectorSpec{Kind: ConnectorBuiltin}},
		{Name: "x", Connector: ConnectorSpec{Kind: "carrier-pigeon"}},
		{Name: "x", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u:pw@h/"}},
		{Name: "x", Connector: ConnectorSpec{Kind: ConnectorAMQP, URL: "http://h/"}},
		{Name: "x", Connector: ConnectorSpec{Kind: ConnectorBuiltin, URL: "amqp://h/"}},
	} {
		if err := v.AddSite(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v accepted: %v", bad, err)
		}
	}
	if _, _, err := v.SiteKey(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("key of a site that does not exist: %v", err)
	}
	// Rotation: the old version still opens within the grace, then not.
	now := time.Now()
	v.now = func() time.Time { return now }
	if ver, err := v.RotateSiteKey(ctx, "dc-east"); err != nil || ver != 2 {
		t.Fatalf("rotate: v%d %v", ver, err)
	}
	if old, err := v.siteKeyAt(ctx, "dc-east", 1); err != nil || !bytes.Equal(old, k1) {
		t.Fatalf("the old version within the grace: %v", err)
	}
	now = now.Add(SiteKeyGrace + time.Second)
	if _, err := v.siteKeyAt(ctx, "dc-east", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the old version past the grace: %v", err)
	}
	// The stored form is wrapped and bound to its site and version.
	var wrapped []byte
	if err := v.db.QueryRow(`SELECT wrapped_key FROM site_key_versions WHERE id = 'dc-east/2'`).Scan(&wrapped); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wrapped, k1) {
		t.Fatal("site key stored in the clear")
	}
	if _, err := v.db.Exec(`UPDATE site_key_versions SET wrapped_key = ? WHERE site = 'default'`, wrapped); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.SiteKey(ctx, DefaultSite); err == nil {
		t.Fatal("a site key moved to another site still opens")
	}
	list, err := v.ListSites(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "dc-east" || list[0].KeyVersion != 2 || list[1].Name != DefaultSite {
		t.Fatalf("list: %+v %v", list, err)
	}
}
