package config

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/sallyport/sallyport/radius"
)

// maxSecretFile bounds a secret or key file.
const maxSecretFile = 64 << 10

// RADIUSClient builds the RADIUS client and authenticator settings, reading
// the shared secrets and TLS material the file names. The caller must wipe
// the returned Config's secrets (see WipeRADIUS) once the client holds its
// own copy.
func (c *File) RADIUSClient() (radius.Config, radius.AuthConfig, error) {
	r := c.RADIUS
	if r == nil {
		return radius.Config{}, radius.AuthConfig{}, errors.New("config: no radius section")
	}
	cfg := radius.Config{
		Timeout:       r.Timeout,
		Retries:       r.Retries,
		HoldDown:      r.HoldDown,
		NASIdentifier: r.NASIdentifier,
	}
	if r.NASIPAddress != "" {
		cfg.NASIPAddress = netip.MustParseAddr(r.NASIPAddress) // checked by Load
	}
	fail := func(err error) (radius.Config, radius.AuthConfig, error) {
		WipeRADIUS(&cfg)
		return radius.Config{}, radius.AuthConfig{}, fmt.Errorf("config: radius: %w", err)
	}
	for i, s := range r.Servers {
		srv := radius.Server{Addr: s.Address}
		if s.SecretFile != "" {
			secret, err := ReadSecretFile(c.path(s.SecretFile))
			if err != nil {
				return fail(fmt.Errorf("servers[%d] (%s): secret_file: %w", i, s.Address, err))
			}
			srv.Secret = secret
		}
		cfg.Servers = append(cfg.Servers, srv)
	}
	if r.Transport == TransportTLS {
		t, err := c.radiusTLS()
		if err != nil {
			return fail(fmt.Errorf("tls: %w", err))
		}
		cfg.TLS = t
	}
	ac := radius.AuthConfig{MaxRounds: r.MaxRounds}
	for _, g := range r.GroupsFrom {
		switch g {
		case GroupsFromClass:
			ac.GroupsFromClass = true
		case GroupsFromFilterID:
			ac.GroupsFromFilterID = true
		}
	}
	return cfg, ac, nil
}

// WipeRADIUS clears the shared secrets held in cfg.
func WipeRADIUS(cfg *radius.Config) {
	for i := range cfg.Servers {
		clear(cfg.Servers[i].Secret)
	}
}

func (c *File) radiusTLS() (*tls.Config, error) {
	t := c.RADIUS.TLS
	if t.ServerName != "" && net.ParseIP(t.ServerName) == nil && !printable(t.ServerName) {
		return nil, fmt.Errorf("server_name %q is not a host name", t.ServerName)
	}
	caPEM, err := readBounded(c.path(t.CAFile))
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", t.CAFile)
	}
	certPEM, err := readBounded(c.path(t.CertFile))
	if err != nil {
		return nil, fmt.Errorf("cert_file: %w", err)
	}
	keyPEM, err := ReadSecretFile(c.path(t.KeyFile))
	if err != nil {
		return nil, fmt.Errorf("key_file: %w", err)
	}
	defer clear(keyPEM)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The tls error can quote neither key bytes nor PEM contents.
		return nil, fmt.Errorf("cert_file %s and key_file %s do not form a usable pair: %w", t.CertFile, t.KeyFile, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
		ServerName:   t.ServerName,
	}
	return cfg, nil
}

// ReadSecretFile reads a secret kept in a file: a regular file, not
// readable or writable by group or others, at most 64 KiB. One trailing
// newline (LF or CRLF) is removed; what is left must not be empty. Errors
// never contain the file's contents.
func ReadSecretFile(path string) ([]byte, error) {
	b, err := readRegular(path, maxSecretFile, true)
	if err != nil {
		return nil, err
	}
	n := len(b)
	if bytes.HasSuffix(b[:n], []byte("\n")) {
		n--
		if bytes.HasSuffix(b[:n], []byte("\r")) {
			n--
		}
	}
	if n == 0 {
		clear(b)
		return nil, fmt.Errorf("%s is empty", path)
	}
	out := append([]byte(nil), b[:n]...)
	clear(b)
	return out, nil
}

// readBounded reads a public file such as a certificate, at most 64 KiB.
func readBounded(path string) ([]byte, error) { return readRegular(path, maxSecretFile, false) }
