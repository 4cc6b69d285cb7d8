package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
	"github.com/sallyport/sallyport/radius"
)

// RadSec (RADIUS over TLS, RFC 6614) against a real FreeRADIUS 3.2: the
// listener in test/freeradius/site-radsec feeds the same "gw" virtual server
// as the UDP listener, requires a client certificate from the test's CA and
// uses the fixed secret "radsec".

// radsecCA is a throwaway CA (ECDSA P-256) made by the test.
type radsecCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newRadSecCA(cn string) (*radsecCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          radsecSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &radsecCA{cert: cert, key: key}, nil
}

func radsecSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	if err != nil {
		panic(err)
	}
	return n
}

// issue signs a new leaf certificate for usage and returns its DER and key.
func (ca *radsecCA) issue(cn string, usage x509.ExtKeyUsage, dns []string, ips []net.IP) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          radsecSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	return der, key, nil
}

// tlsCertificate is issue's result as a tls.Certificate, for in-memory use.
func (ca *radsecCA) tlsCertificate(cn string, usage x509.ExtKeyUsage) (tls.Certificate, error) {
	der, key, err := ca.issue(cn, usage, nil, nil)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// writeRadSecPEM writes one PEM block to path with mode perm.
func writeRadSecPEM(path, typ string, der []byte, perm os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), perm)
}

// writeRadSecPair writes a certificate and its key (PKCS #8, mode 0600).
func writeRadSecPair(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	k, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeRadSecPEM(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writeRadSecPEM(keyPath, "PRIVATE KEY", k, 0o600)
}

// configureRadSec generates the RadSec PKI under f.dir/certs (CA, server
// certificate for IP 127.0.0.1 and DNS localhost, client certificate, and an
// unrelated CA with a client certificate of its own), picks a free TCP port
// and installs test/freeradius/site-radsec, filled in, into raddb.
func (f *freeRADIUS) configureRadSec(raddb string, idle time.Duration) error {
	certs := filepath.Join(f.dir, "certs")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		return err
	}
	ca, err := newRadSecCA("sallyport e2e RadSec CA")
	if err != nil {
		return err
	}
	other, err := newRadSecCA("sallyport e2e unrelated CA")
	if err != nil {
		return err
	}
	f.CAFile = filepath.Join(certs, "ca.pem")
	f.OtherCAFile = filepath.Join(certs, "other-ca.pem")
	f.ClientCertFile, f.ClientKeyFile = filepath.Join(certs, "client.pem"), filepath.Join(certs, "client.key")
	f.OtherClientCertFile, f.OtherClientKeyFile = filepath.Join(certs, "other-client.pem"), filepath.Join(certs, "other-client.key")
	if err := writeRadSecPEM(f.CAFile, "CERTIFICATE", ca.cert.Raw, 0o644); err != nil {
		return err
	}
	if err := writeRadSecPEM(f.OtherCAFile, "CERTIFICATE", other.cert.Raw, 0o644); err != nil {
		return err
	}
	for _, c := range []struct {
		ca        *radsecCA
		cn        string
		usage     x509.ExtKeyUsage
		dns       []string
		ips       []net.IP
		cert, key string
	}{
		{ca, "localhost", x509.ExtKeyUsageServerAuth, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)},
			filepath.Join(certs, "server.pem"), filepath.Join(certs, "server.key")},
		{ca, "sallyport-e2e", x509.ExtKeyUsageClientAuth, nil, nil, f.ClientCertFile, f.ClientKeyFile},
		{other, "sallyport-e2e", x509.ExtKeyUsageClientAuth, nil, nil, f.OtherClientCertFile, f.OtherClientKeyFile},
	} {
		der, key, err := c.ca.issue(c.cn, c.usage, c.dns, c.ips)
		if err != nil {
			return err
		}
		if err := writeRadSecPair(c.cert, c.key, der, key); err != nil {
			return err
		}
	}

	port, err := sshdtest.FreePort()
	if err != nil {
		return err
	}
	f.TLSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if idle == 0 {
		idle = 30 * time.Second
	}
	b, err := os.ReadFile(filepath.Join("freeradius", "site-radsec"))
	if err != nil {
		return fmt.Errorf("test/freeradius/site-radsec: %w", err)
	}
	for _, r := range []struct{ placeholder, value string }{
		{"@PORT@", strconv.Itoa(port)},
		{"@CERTDIR@", certs},
		{"@IDLE_TIMEOUT@", strconv.Itoa(int(idle / time.Second))},
	} {
		if !bytes.Contains(b, []byte(r.placeholder)) {
			return fmt.Errorf("test/freeradius/site-radsec lacks %s", r.placeholder)
		}
		b = bytes.ReplaceAll(b, []byte(r.placeholder), []byte(r.value))
	}
	return os.WriteFile(filepath.Join(raddb, "sites-enabled", "radsec"), b, 0o600)
}

// radsecTLS loads the TLS client configuration from the files FreeRADIUS
// was set up with: trust caFile, present certFile/keyFile ("" for none).
func radsecTLS(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s: no certificate", caFile)
	}
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// radsecLog is a log sink the client's goroutines and the test share.
type radsecLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *radsecLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *radsecLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// radsecAuth returns an Authenticator over RadSec to addr with secret ("" =
// the RFC 6614 default) whose client is closed when the test ends, and the
// client's log.
func radsecAuth(t *testing.T, timeout time.Duration, tc *tls.Config, secret, addr string) (*radius.Authenticator, *radsecLog) {
	t.Helper()
	logs := &radsecLog{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := radius.Config{
		Servers:       []radius.Server{{Addr: addr, Secret: []byte(secret)}},
		Timeout:       timeout,
		NASIdentifier: "sallyport-e2e",
		TLS:           tc,
	}
	c, err := radius.New(cfg, logger)
	if err != nil {
		t.Fatalf("radius.New: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("radius client Close: %v", err)
		}
		if t.Failed() {
			t.Logf("client log:\n%s", logs.String())
		}
	})
	a, err := radius.NewAuthenticator(c, radius.AuthConfig{}, logger)
	if err != nil {
		t.Fatalf("radius.NewAuthenticator: %v", err)
	}
	return a, logs
}

// TestRadSecFreeRADIUS runs package radius over RadSec against a real
// FreeRADIUS that the test starts (UDP and RadSec listeners) and stops.
func TestRadSecFreeRADIUS(t *testing.T) {
	const idle = 5 * time.Second // the server closes idle connections after this
	fr, err := startFreeRADIUS(t.TempDir(), withRadSec(), withRadSecIdleTimeout(idle))
	if err != nil {
		t.Fatalf("FreeRADIUS: %v", err)
	}
	t.Cleanup(func() {
		if err := fr.Close(); err != nil {
			t.Errorf("stopping FreeRADIUS: %v", err)
		}
		if t.Failed() {
			t.Logf("FreeRADIUS log tail:\n%s", fr.LogTail(60))
		}
	})
	for _, p := range []string{fr.ClientKeyFile, fr.OtherClientKeyFile} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", p, st.Mode().Perm(), err)
		}
	}
	totpKey, err := base32.StdEncoding.DecodeString(frTOTPSecret)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	good := func(t *testing.T) *tls.Config {
		return radsecTLS(t, fr.CAFile, fr.ClientCertFile, fr.ClientKeyFile)
	}

	t.Run("PAPAccept", func(t *testing.T) {
		a, _ := radsecAuth(t, 3*time.Second, good(t), "", fr.TLSAddr)
		id, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t))
		if err != nil {
			t.Fatalf("bob with the right password: %v", err)
		}
		if id.User != "bob" {
			t.Fatalf("identity user = %q, want bob", id.User)
		}
	})

	t.Run("ExplicitSecretAndLocalhost", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(fr.TLSAddr)
		a, _ := radsecAuth(t, 3*time.Second, good(t), "radsec", net.JoinHostPort("localhost", port))
		if _, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t)); err != nil {
			t.Fatalf("bob via localhost with secret radsec: %v", err)
		}
	})

	t.Run("PAPWrongPassword", func(t *testing.T) {
		a, _ := radsecAuth(t, 3*time.Second, good(t), "", fr.TLSAddr)
		if _, err := a.Authenticate(ctx, radiusLogin("bob", "bobpasS"), noAsker(t)); !errors.Is(err, radius.ErrDenied) {
			t.Fatalf("bob with a wrong password: err = %v, want ErrDenied", err)
		}
	})

	t.Run("ChallengeTOTPAccept", func(t *testing.T) {
		a, _ := radsecAuth(t, 3*time.Second, good(t), "", fr.TLSAddr)
		code, _ := freshTOTPCode(totpKey)
		r := &recordingAsker{answer: func() string { return code }}
		id, err := a.Authenticate(ctx, radiusLogin("alice", "alicepass"), r.ask)
		if err != nil {
			t.Fatalf("alice with password and current TOTP code: %v", err)
		}
		if id.User != "alice" {
			t.Fatalf("identity user = %q, want alice", id.User)
		}
		if ps := r.seen(); len(ps) != 1 || ps[0].Text != "Enter your one-time code" || ps[0].Echo {
			t.Fatalf("prompts = %+v, want one non-echoed %q", ps, "Enter your one-time code")
		}
	})

	t.Run("ChallengeWrongTOTP", func(t *testing.T) {
		a, _ := radsecAuth(t, 3*time.Second, good(t), "", fr.TLSAddr)
		r := &recordingAsker{answer: func() string { return wrongTOTPCode(totpKey) }}
		if _, err := a.Authenticate(ctx, radiusLogin("alice", "alicepass"), r.ask); !errors.Is(err, radius.ErrDenied) {
			t.Fatalf("alice with a wrong code: err = %v, want ErrDenied", err)
		}
		if n := len(r.seen()); n != 1 {
			t.Fatalf("alice was asked %d times, want 1", n)
		}
	})

	// Concurrent logins share the client's one connection; FreeRADIUS must
	// answer each by its identifier.
	t.Run("ConcurrentLogins", func(t *testing.T) {
		a, logs := radsecAuth(t, 5*time.Second, good(t), "", fr.TLSAddr)
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for i := range 20 {
			wg.Go(func() {
				login, want := radiusLogin("bob", "bobpass"), error(nil)
				if i%2 == 1 {
					login, want = radiusLogin("bob", "wrong"), radius.ErrDenied
				}
				if _, err := a.Authenticate(ctx, login, noAsker(t)); !errors.Is(err, want) {
					errs <- fmt.Errorf("login %d: %v, want %v", i, err, want)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := strings.Count(logs.String(), "radsec connected"); n != 1 {
			t.Errorf("%d connections for 20 concurrent logins, want 1", n)
		}
	})

	// The UDP listener keeps working next to the TLS one.
	t.Run("UDPAlongside", func(t *testing.T) {
		a := radiusAuth(t, 2*time.Second, 1, frSecret, fr.Addr)
		if _, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t)); err != nil {
			t.Fatalf("bob over UDP: %v", err)
		}
	})

	t.Run("UntrustedServerCertificate", func(t *testing.T) {
		a, logs := radsecAuth(t, 3*time.Second, radsecTLS(t, fr.OtherCAFile, fr.ClientCertFile, fr.ClientKeyFile), "", fr.TLSAddr)
		_, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t))
		if !errors.Is(err, radius.ErrUnavailable) {
			t.Fatalf("server certificate from an untrusted CA: err = %v, want ErrUnavailable", err)
		}
		for what, s := range map[string]string{"error": err.Error(), "log": logs.String()} {
			if !strings.Contains(s, "certificate could not be verified") || !strings.Contains(s, fr.TLSAddr) {
				t.Errorf("%s does not say that the certificate of %s could not be verified: %s", what, fr.TLSAddr, s)
			}
		}
	})

	t.Run("ServerNameMismatch", func(t *testing.T) {
		tc := good(t)
		tc.ServerName = "radius.example"
		a, logs := radsecAuth(t, 3*time.Second, tc, "", fr.TLSAddr)
		if _, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t)); !errors.Is(err, radius.ErrUnavailable) {
			t.Fatalf("certificate for another name: err = %v, want ErrUnavailable", err)
		}
		if !strings.Contains(logs.String(), "certificate could not be verified") {
			t.Errorf("log does not mention the certificate: %s", logs.String())
		}
	})

	// FreeRADIUS refuses a client certificate from a CA other than its
	// ca_file, and a client without one. With TLS 1.3 the client sees only
	// the connection closing after its handshake.
	t.Run("ClientCertificateRefused", func(t *testing.T) {
		other, err := newRadSecCA("stranger CA")
		if err != nil {
			t.Fatal(err)
		}
		stranger, err := other.tlsCertificate("sallyport-e2e", x509.ExtKeyUsageClientAuth)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			cfg  func(t *testing.T) *tls.Config
		}{
			{"generated in the test", func(t *testing.T) *tls.Config {
				c := radsecTLS(t, fr.CAFile, "", "")
				c.Certificates = []tls.Certificate{stranger}
				return c
			}},
			{"other CA file", func(t *testing.T) *tls.Config {
				return radsecTLS(t, fr.CAFile, fr.OtherClientCertFile, fr.OtherClientKeyFile)
			}},
			{"none", func(t *testing.T) *tls.Config { return radsecTLS(t, fr.CAFile, "", "") }},
		} {
			for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
				t.Run(tc.name+"/"+tls.VersionName(v), func(t *testing.T) {
					cfg := tc.cfg(t)
					cfg.MaxVersion = v
					a, logs := radsecAuth(t, 3*time.Second, cfg, "", fr.TLSAddr)
					_, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t))
					if !errors.Is(err, radius.ErrUnavailable) {
						t.Fatalf("refused client certificate: err = %v, want ErrUnavailable", err)
					}
					if !strings.Contains(logs.String(), "client certificate") {
						t.Errorf("log does not suggest a refused client certificate: %s", logs.String())
					}
				})
			}
		}
	})

	// FreeRADIUS drops requests whose Message-Authenticator was made with
	// another secret, without a word: the client times out.
	t.Run("WrongSecretUnavailable", func(t *testing.T) {
		a, _ := radsecAuth(t, time.Second, good(t), "not-radsec", fr.TLSAddr)
		if _, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t)); !errors.Is(err, radius.ErrUnavailable) {
			t.Fatalf("wrong shared secret: err = %v, want ErrUnavailable", err)
		}
	})

	// After FreeRADIUS closes an idle connection, the next login opens a
	// new one without failing.
	t.Run("IdleConnectionClosedByServer", func(t *testing.T) {
		a, logs := radsecAuth(t, 3*time.Second, good(t), "", fr.TLSAddr)
		for i := range 2 {
			if _, err := a.Authenticate(ctx, radiusLogin("bob", "bobpass"), noAsker(t)); err != nil {
				t.Fatalf("login %d: %v", i, err)
			}
			if i == 0 {
				deadline := time.Now().Add(idle + 20*time.Second)
				for !strings.Contains(logs.String(), "radsec server closed the connection") {
					if time.Now().After(deadline) {
						t.Fatalf("FreeRADIUS did not close the idle connection (idle_timeout %v)", idle)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}
		if n := strings.Count(logs.String(), "radsec connected"); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
	})
}
