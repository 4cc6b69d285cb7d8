package vault

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"testing"

	"github.com/sallyport/sallyport/internal/redacttest"
	"github.com/sallyport/sallyport/workitem"
)

// TestRedacts lists this package's secret-bearing types: each must keep
// its secret out of fmt, slog and encoding/json (the API's request bodies,
// whose JSON is the wire form, out of fmt and slog).
func TestRedacts(t *testing.T) {
	pw, key, salt := redacttest.Secret(20), redacttest.Secret(32), redacttest.Secret(16)
	token := string(redacttest.Secret(43))
	tlsKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	scalar := redacttest.ECDSAScalar(t, tlsKey)

	redacttest.Check(t, []redacttest.Case{
		{Name: "UserSpec", Value: UserSpec{Name: "alice", Password: pw, Groups: []string{"ops"}}, Secret: pw},
		{Name: "SecretSpec password", Value: SecretSpec{Name: "web01", Host: "h", Port: 22, Username: "root", Password: pw}, Secret: pw},
		{Name: "SecretSpec private key", Value: SecretSpec{Name: "web01", Host: "h", Port: 22, Username: "root", PrivateKey: key}, Secret: key},
		{Name: "ConnectorSpec", Value: ConnectorSpec{Kind: ConnectorAMQP, URL: "amqps://u@h/", Secret: pw}, Secret: pw},
		{Name: "SiteSpec", Value: SiteSpec{Name: "east", Connector: ConnectorSpec{Kind: ConnectorAMQP, Secret: pw}}, Secret: pw},
		{Name: "SiteKeyVersion", Value: SiteKeyVersion{Version: 3, Key: key}, Secret: key},
		{Name: "DaemonConfig", Value: DaemonConfig{DBPath: "v.db", Cert: tls.Certificate{PrivateKey: tlsKey}, TokenSHA256: [32]byte(key)}, Secret: scalar},
		{Name: "DaemonConfig token hash", Value: DaemonConfig{DBPath: "v.db", TokenSHA256: [32]byte(key)}, Secret: key},
		{Name: "Client", Value: &Client{base: "https://v:8443", token: token}, Secret: []byte(token)},
		{Name: "userRequest", Value: userRequest{Name: "alice", Password: pw}, Secret: pw, Wire: true},
		{Name: "secretRequest", Value: secretRequest{Name: "web01", PrivateKey: key}, Secret: key, Wire: true},
		{Name: "siteRequest", Value: siteRequest{Name: "east", Connector: ConnectorAMQP, ConnectorSecret: pw}, Secret: pw, Wire: true},
		{Name: "phc hash", Value: phc{memory: 64 << 10, time: 1, threads: 1, salt: salt, key: key}, Secret: key},
		{Name: "phc salt", Value: phc{memory: 64 << 10, time: 1, threads: 1, salt: salt, key: key}, Secret: salt},
		{Name: "cachedEngineKey", Value: cachedEngineKey{key: key, version: 1, site: "east"}, Secret: key},
		{Name: "request", Value: request{h: workitem.Header{ID: "i", Engine: "e"}, key: key}, Secret: key},
		{Name: "engineRow", Value: engineRow{EngineInfo: EngineInfo{ID: "e"}, engineKey: key}, Secret: key},
		{Name: "secretRow", Value: secretRow{name: "web01", wrappedDEK: salt, credential: key}, Secret: key},
	})
}
