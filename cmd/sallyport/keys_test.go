//go:build cgo

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/vault"
)

const (
	keysTestModule = "/usr/lib/softhsm/libsofthsm2.so"
	keysTestPIN    = "31415926"
	keysTestSOPIN  = "27182818"
)

// keysTestToken initialises a SoftHSM2 token in a directory of the test's
// own and returns a configuration file naming it. The library reads
// SOFTHSM2_CONF when it is initialized, which happens again whenever the
// last provider using it has closed.
func keysTestToken(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(keysTestModule); err != nil {
		t.Fatalf("SoftHSM2 is not installed (%v): run test/setup.sh as root", err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	// Test PINs on the command line of the test tool.
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "keys-test", // #nosec G204 -- fixed test arguments
		"--so-pin", keysTestSOPIN, "--pin", keysTestPIN)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	pin := filepath.Join(dir, "pin")
	if err := os.WriteFile(pin, []byte(keysTestPIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "sallyport.yaml")
	body := fmt.Sprintf("keys:\n  provider: pkcs11\n  pkcs11:\n    module: %s\n    token_label: keys-test\n    pin_file: %s\n", keysTestModule, pin)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func keysTestLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// softVault makes a vault on a soft keystore in data, with n site keys,
// and returns them by site.
func softVault(t *testing.T, data string, n int) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	soft, err := hsm.OpenSoft(filepath.Join(data, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer soft.Close()
	for _, l := range []string{hsm.LabelSSHHostKey, hsm.LabelAuditKey, hsm.LabelEngineKey} {
		if err := soft.EnsureSigner(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if err := soft.EnsureAESKey(ctx, hsm.LabelKEK); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, filepath.Join(data, "vault.db"), soft, keysTestLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	keys := map[string][]byte{}
	for i := 0; i < n; i++ {
		site := fmt.Sprintf("site-%d", i)
		if err := v.AddSite(ctx, vault.SiteSpec{Name: site, Connector: vault.ConnectorSpec{Kind: vault.ConnectorBuiltin}}); err != nil {
			t.Fatal(err)
		}
		k, _, err := v.SiteKey(ctx, site)
		if err != nil {
			t.Fatal(err)
		}
		keys[site] = bytes.Clone(k)
	}
	return keys
}

// checkOnToken opens the vault with the token alone and reads every site key.
func checkOnToken(t *testing.T, cfg, data string, want map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	c := loadTestConfig(t, cfg)
	token, err := openToken(c, keysTestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer token.Close()
	v, err := vault.Open(ctx, filepath.Join(data, "vault.db"), token, keysTestLogger(), nil)
	if err != nil {
		t.Fatalf("the vault does not open on the token alone: %v", err)
	}
	defer v.Close()
	for site, k := range want {
		got, _, err := v.SiteKey(ctx, site)
		if err != nil {
			t.Fatalf("site key %s: %v", site, err)
		}
		if !bytes.Equal(got, k) {
			t.Fatalf("site key %s changed", site)
		}
	}
}

func runKeys(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := keysMain(args, &out, &errb)
	return code, out.String(), errb.String()
}

// A KEK rotation begun (and interrupted) on the soft keystore, then a
// migration: the values already re-wrapped under the soft keystore's
// target key must not end up labelled with a key of the same name made on
// the token.
func TestKeysMigrateAfterInterruptedSoftRotation(t *testing.T) {
	cfg := keysTestToken(t)
	data := t.TempDir()
	want := softVault(t, data, 5)

	ctx := context.Background()
	soft, err := hsm.OpenSoft(filepath.Join(data, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, filepath.Join(data, "vault.db"), soft, keysTestLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const target = "sallyport-kek-20200101T000000Z"
	if err := soft.GenerateAESKey(ctx, target); err != nil {
		t.Fatal(err)
	}
	if _, err := v.BeginKEKRotation(ctx, target); err != nil {
		t.Fatal(err)
	}
	if n, err := v.RewrapStep(ctx, 2); err != nil || n != 2 {
		t.Fatalf("rewrap: %d, %v", n, err)
	}
	_ = v.Close()
	_ = soft.Close()

	code, out, errs := runKeys(t, "migrate", "--data", data, "--config", cfg)
	if code != 0 {
		t.Fatalf("keys migrate: %d\n%s\n%s", code, out, errs)
	}
	checkOnToken(t, cfg, data, want)
}

// A token that already holds another SSH host key: migrate must not carry
// on with a host key clients do not know.
func TestKeysMigrateRefusesOtherHostKey(t *testing.T) {
	cfg := keysTestToken(t)
	data := t.TempDir()
	softVault(t, data, 1)
	c := loadTestConfig(t, cfg)
	token, err := openToken(c, keysTestLogger())
	if err != nil {
		t.Fatal(err)
	}
	if err := token.GenerateSigner(context.Background(), hsm.LabelSSHHostKey); err != nil {
		t.Fatal(err)
	}
	_ = token.Close()

	code, out, errs := runKeys(t, "migrate", "--data", data, "--config", cfg)
	if code == 0 || !strings.Contains(errs, "is not the SSH host key of the soft keystore") {
		t.Fatalf("keys migrate with another host key on the token: %d\n%s\n%s", code, out, errs)
	}
	if strings.Contains(out, "migrated to") {
		t.Fatalf("migrated anyway:\n%s", out)
	}
}

func loadTestConfig(t *testing.T, path string) *config.File {
	t.Helper()
	c, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestKeysReveal: break-glass retrieval prints the stored credential,
// offline, and leaves a trace in the secret's history.
func TestKeysReveal(t *testing.T) {
	data := t.TempDir()
	softVault(t, data, 0)
	ctx := context.Background()
	soft, err := hsm.OpenSoft(filepath.Join(data, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, filepath.Join(data, "vault.db"), soft, keysTestLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"))
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub)))
	if err := v.AddSecret(ctx, vault.SecretSpec{Name: "web01", Host: "h", Port: 22, Username: "root",
		Password: []byte("s3cret-pw"), HostKey: line, Allow: []string{"alice"}}); err != nil {
		t.Fatal(err)
	}
	_ = v.Close()
	_ = soft.Close()

	code, out, errs := runKeys(t, "reveal", "--data", data, "web01")
	if code != 0 || out != "s3cret-pw\n" {
		t.Fatalf("keys reveal: %d %q %s", code, out, errs)
	}
	if code, _, _ := runKeys(t, "reveal", "--data", data, "nope"); code != 1 {
		t.Fatalf("an unknown secret: exit %d", code)
	}
	if code, _, _ := runKeys(t, "reveal", "--data", data); code != 2 {
		t.Fatalf("no name: exit %d", code)
	}
	soft, err = hsm.OpenSoft(filepath.Join(data, "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer soft.Close()
	v, err = vault.Open(ctx, filepath.Join(data, "vault.db"), soft, keysTestLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	h, err := v.History(ctx, "web01")
	if err != nil || len(h) != 1 || h[0].Event != "secret_revealed" || !strings.HasPrefix(h[0].Detail, "sallyport keys reveal") {
		t.Fatalf("history %+v %v", h, err)
	}
}
