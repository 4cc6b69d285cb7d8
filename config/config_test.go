package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseDefaults(t *testing.T) {
	c, err := Parse(nil, "/etc/sallyport")
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth != AuthLocal || c.RADIUS != nil {
		t.Fatalf("empty file: got auth %q radius %v", c.Auth, c.RADIUS)
	}
	c, err = Parse([]byte(`
auth: radius
radius:
  servers:
    - address: 10.0.0.5
      secret_file: radius.secret
    - address: "[2001:db8::1]:1645"
      secret_file: /abs/radius.secret
`), "/etc/sallyport")
	if err != nil {
		t.Fatal(err)
	}
	r := c.RADIUS
	if r.Transport != TransportUDP || r.Timeout != DefaultRADIUSTimeout || r.NASIdentifier != DefaultNASIdentifier {
		t.Fatalf("defaults not applied: %+v", r)
	}
	if r.Servers[0].Address != "10.0.0.5:1812" || r.Servers[1].Address != "[2001:db8::1]:1645" {
		t.Fatalf("addresses: %q %q", r.Servers[0].Address, r.Servers[1].Address)
	}
	if got := c.path(r.Servers[0].SecretFile); got != "/etc/sallyport/radius.secret" {
		t.Fatalf("relative path resolved to %q", got)
	}
	if got := c.path(r.Servers[1].SecretFile); got != "/abs/radius.secret" {
		t.Fatalf("absolute path changed to %q", got)
	}
}

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(`
auth: both
break_glass: [breakglass, ops-root]
radius:
  transport: tls
  servers:
    - address: radsec.example.net
  timeout: 1500ms
  hold_down: 1m
  nas_identifier: gw-paris
  nas_ip_address: 192.0.2.7
  max_rounds: 3
  groups_from: [class, filter-id]
  tls:
    ca_file: ca.pem
    cert_file: client.pem
    key_file: client.key
    server_name: radsec.example.net
`), "/cfg")
	if err != nil {
		t.Fatal(err)
	}
	r := c.RADIUS
	if r.Servers[0].Address != "radsec.example.net:2083" {
		t.Fatalf("RadSec default port not applied: %q", r.Servers[0].Address)
	}
	if r.Timeout != 1500*time.Millisecond || r.HoldDown != time.Minute || r.MaxRounds != 3 {
		t.Fatalf("durations/rounds: %+v", r)
	}
	if len(c.BreakGlass) != 2 || len(r.GroupsFrom) != 2 {
		t.Fatalf("lists: %v %v", c.BreakGlass, r.GroupsFrom)
	}
}

func TestParseErrors(t *testing.T) {
	const srv = "radius:\n  servers:\n    - address: 127.0.0.1:1812\n      secret_file: s\n"
	cases := []struct{ name, yaml, want string }{
		{"unknown top-level key", "auht: radius\n", "unknown field \"auht\""},
		{"unknown nested key", "auth: radius\nradius:\n  server: []\n", "unknown field \"server\""},
		{"duplicate key", "auth: local\nauth: radius\n", "already defined"},
		{"bad mode", "auth: ldap\n", "not one of local, radius, both"},
		{"wrong type", "auth: radius\n" + srv + "  retries: many\n", "retries"},
		{"bad duration", "auth: radius\n" + srv + "  timeout: soon\n", "timeout"},
		{"radius without section", "auth: radius\n", "needs a radius section"},
		{"section with local", "auth: local\n" + srv, "auth is local"},
		{"both without break_glass", "auth: both\n" + srv, "needs break_glass"},
		{"break_glass without both", "auth: radius\nbreak_glass: [x]\n" + srv, "only used with auth: both"},
		{"bad break_glass name", "auth: both\nbreak_glass: [\"a b\"]\n" + srv, "not a valid user name"},
		{"duplicate break_glass", "auth: both\nbreak_glass: [a, a]\n" + srv, "listed twice"},
		{"no servers", "auth: radius\nradius:\n  servers: []\n", "at least one"},
		{"no secret file", "auth: radius\nradius:\n  servers:\n    - address: h\n", "secret_file is required"},
		{"bad port", "auth: radius\nradius:\n  servers:\n    - address: h:99999\n      secret_file: s\n", "invalid port"},
		{"two ports", "auth: radius\nradius:\n  servers:\n    - address: radius.example:1812:1813\n      secret_file: s\n", "not host or host:port"},
		{"colons in a name", "auth: radius\nradius:\n  servers:\n    - address: '[radius.example:1812]:1812'\n      secret_file: s\n", "not host or host:port"},
		{"bad IPv6", "auth: radius\nradius:\n  servers:\n    - address: '10.0.0.5::1812'\n      secret_file: s\n", "not host or host:port"},
		{"empty address", "auth: radius\nradius:\n  servers:\n    - secret_file: s\n", "address is required"},
		{"duplicate server", "auth: radius\nradius:\n  servers:\n    - {address: h, secret_file: s}\n    - {address: 'h:1812', secret_file: s}\n", "listed twice"},
		{"bad transport", "auth: radius\n" + srv + "  transport: dtls\n", "not udp or tls"},
		{"tls without section", "auth: radius\n" + srv + "  transport: tls\n", "needs a tls section"},
		{"tls section with udp", "auth: radius\n" + srv + "  tls: {ca_file: a, cert_file: b, key_file: c}\n", "transport is udp"},
		{"tls missing key", "auth: radius\n" + srv + "  transport: tls\n  tls: {ca_file: a, cert_file: b}\n", "all required"},
		{"tls retries", "auth: radius\n" + srv + "  transport: tls\n  retries: 2\n  tls: {ca_file: a, cert_file: b, key_file: c}\n", "never retransmits"},
		{"negative timeout", "auth: radius\n" + srv + "  timeout: -1s\n", "timeout"},
		{"huge timeout", "auth: radius\n" + srv + "  timeout: 2h\n", "timeout"},
		{"retries", "auth: radius\n" + srv + "  retries: 11\n", "retries"},
		{"rounds", "auth: radius\n" + srv + "  max_rounds: 100\n", "max_rounds"},
		{"nas ip v6", "auth: radius\n" + srv + "  nas_ip_address: '::1'\n", "IPv4"},
		{"nas id control", "auth: radius\n" + srv + "  nas_identifier: \"a\\x01\"\n", "nas_identifier"},
		{"groups_from", "auth: radius\n" + srv + "  groups_from: [memberOf]\n", "not class or filter-id"},
		{"groups_from twice", "auth: radius\n" + srv + "  groups_from: [class, class]\n", "listed twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "/cfg")
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestLoadNamesLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sallyport.yaml")
	if err := os.WriteFile(p, []byte("auth: radius\nradius:\n  servers:\n    - address: h\n      secret_fil: s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "[5:") {
		t.Fatalf("error should name the file and line 5: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, []byte(strings.Repeat("#", MaxFileSize+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized file: %v", err)
	}
}

// TestExampleFile keeps the annotated example in the repository valid.
func TestExampleFile(t *testing.T) {
	c, err := Load(filepath.Join("..", "sallyport.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth != AuthRADIUS || len(c.RADIUS.Servers) != 2 || len(c.RADIUS.GroupsFrom) != 2 {
		t.Fatalf("example parsed as %+v", c)
	}
}

func TestKeysSection(t *testing.T) {
	c, err := Parse(nil, "/cfg")
	if err != nil || c.Keys == nil || c.Keys.Provider != KeysSoft {
		t.Fatalf("default keys: %+v, %v", c.Keys, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hsm.pin"), []byte("123456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Parse([]byte(`keys:
  provider: pkcs11
  pkcs11:
    module: lib/libsofthsm2.so
    token_label: sallyport
    pin_file: hsm.pin
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.PKCS11Module(); got != filepath.Join(dir, "lib/libsofthsm2.so") {
		t.Fatalf("module path %q", got)
	}
	pin, err := c.PKCS11PIN()
	if err != nil || string(pin) != "123456" {
		t.Fatalf("pin from file: %q, %v", pin, err)
	}
	c, err = Parse([]byte("keys:\n  provider: pkcs11\n  pkcs11: {module: /m.so, token_label: t, pin_env: SPT_TEST_PIN}\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PKCS11PIN(); err == nil || !strings.Contains(err.Error(), "SPT_TEST_PIN is not set") {
		t.Fatalf("unset pin_env: %v", err)
	}
	t.Setenv("SPT_TEST_PIN", "654321")
	if pin, err := c.PKCS11PIN(); err != nil || string(pin) != "654321" {
		t.Fatalf("pin from env: %q, %v", pin, err)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"keys: {provider: tpm}\n", "not soft or pkcs11"},
		{"keys: {provider: pkcs11}\n", "needs a pkcs11 section"},
		{"keys: {pkcs11: {module: m}}\n", "provider is soft"},
		{"keys: {provider: pkcs11, pkcs11: {token_label: t, pin_env: P}}\n", "module is required"},
		{"keys: {provider: pkcs11, pkcs11: {module: m, pin_env: P}}\n", "token_label is required"},
		{"keys: {provider: pkcs11, pkcs11: {module: m, token_label: t}}\n", "exactly one of pin_file and pin_env"},
		{"keys: {provider: pkcs11, pkcs11: {module: m, token_label: t, pin_file: f, pin_env: P}}\n", "exactly one"},
		{"keys: {provider: pkcs11, pkcs11: {module: m, token_label: t, pin_env: P, sessions: 99}}\n", "sessions"},
		{"keys: {provider: pkcs11, pkcs11: {module: m, token_label: t, pin: '1234'}}\n", "unknown field \"pin\""},
	} {
		if _, err := Parse([]byte(tc.yaml), dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func TestGatewaySection(t *testing.T) {
	c, err := Parse(nil, ".")
	if err != nil {
		t.Fatal(err)
	}
	g := c.Gateway
	if g.KeyExchangeTimeout != 10*time.Second || g.LoginTimeout != 2*time.Minute || g.RecheckInterval != 2*time.Second ||
		g.Admission.MaxPending != 256 || g.Admission.MaxPendingPerSource != 10 || g.Admission.EarlyDropFrom != 128 ||
		g.FailedLogins.PerUserAndSource != 10 || g.FailedLogins.KnownSourceFor != 720*time.Hour {
		t.Fatalf("defaults: %+v %+v %+v", g, g.Admission, g.FailedLogins)
	}
	c, err = Parse([]byte(`
gateway:
  key_exchange_timeout: 5s
  login_timeout: 1m
  admission:
    max_pending: 100
    max_pending_per_source: 4
    ipv6_prefix: 56
  failed_logins:
    per_user: 20
    max_delay: 2s
`), ".")
	if err != nil {
		t.Fatal(err)
	}
	a, l := c.Gateway.AdmissionConfig(), c.Gateway.LoginConfig()
	if a.MaxPending != 100 || a.MaxPerSource != 4 || a.EarlyDrop != 50 || a.IPv6Bits != 56 || l.UserBurst != 20 || l.MaxDelay != 2*time.Second {
		t.Fatalf("parsed: %+v %+v", a, l)
	}
	for _, bad := range []string{
		"gateway: {key_exchange_timeout: 0s}",
		"gateway: {key_exchange_timeout: 1m, login_timeout: 30s}",
		"gateway: {admission: {max_pending: 5, max_pending_per_source: 6}}",
		"gateway: {admission: {ipv6_prefix: 129}}",
		"gateway: {admission: {connection_rate_per_source: -1}}",
		"gateway: {failed_logins: {per_source: -3}}",
		"gateway: {failed_logins: {max_delay: 2h}}",
		"gateway: {admission: {max_pendings: 3}}",
	} {
		if _, err := Parse([]byte(bad), "."); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
