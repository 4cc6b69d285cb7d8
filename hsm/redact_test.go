package hsm

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json (the soft keystore's file
// format, whose JSON is what is stored, out of fmt and slog). *PKCS11 is
// checked in redact_pkcs11_test.go, as it exists only with cgo.
func TestRedacts(t *testing.T) {
	pin, material := redacttest.Secret(12), redacttest.Secret(32)
	soft, err := OpenSoft(filepath.Join(t.TempDir(), "keystore.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer soft.Close()
	if err := soft.GenerateAESKey(context.Background(), LabelKEK); err != nil {
		t.Fatal(err)
	}
	softMaterial := soft.file.Keys[LabelKEK].Material
	redacttest.Check(t, []redacttest.Case{
		{Name: "PKCS11Config", Value: PKCS11Config{Module: "/lib/p11.so", TokenLabel: "t", PIN: pin}, Secret: pin},
		{Name: "Soft", Value: soft, Secret: softMaterial},
		{Name: "softFile", Value: softFile{Version: 1, Keys: map[string]softKey{"k": {Type: "aes256", Material: material}}}, Secret: material, Wire: true},
		{Name: "softKey", Value: softKey{Type: "aes256", Material: material}, Secret: material, Wire: true},
	})
}
