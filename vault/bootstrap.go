package vault

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Admin token bounds: EnsureToken writes 64 hex characters; operators may
// supply their own token of 32..512 printable ASCII characters.
const (
	minToken     = 32
	maxToken     = 512
	maxTokenFile = 4096
)

// certValidity is the lifetime of the self-signed API certificate.
const certValidity = 365 * 24 * time.Hour

// EnsureToken returns the SHA-256 of the admin API token stored in path,
// first creating the file (mode 0600, its directory 0700) with a random
// 32-byte token in hex if it does not exist. It refuses a file that group
// or others can access, and a token outside 32..512 printable ASCII
// characters.
func EnsureToken(path string) (sha [32]byte, err error) {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		if err := createToken(path); err != nil && !errors.Is(err, os.ErrExist) {
			return sha, err
		}
	}
	token, err := ReadToken(path)
	if err != nil {
		return sha, err
	}
	sum := sha256.Sum256(token)
	clear(token)
	return sum, nil
}

func createToken(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	text := make([]byte, hex.EncodedLen(len(raw))+1)
	hex.Encode(text, raw[:])
	text[len(text)-1] = '\n'
	defer clear(text)
	clear(raw[:])
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600) // #nosec G304 -- operator-chosen token path
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	if _, err := f.Write(text); err != nil {
		_ = f.Close()       // the write error is the one worth reporting
		_ = os.Remove(path) // best effort cleanup of a partial file
		return fmt.Errorf("admin token: %w", err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close() // the sync error is the one worth reporting
		return fmt.Errorf("admin token: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	return nil
}

// ReadToken reads an admin token file: a regular file that group and others
// cannot access, holding one token of 32..512 printable ASCII characters
// (surrounding whitespace ignored). The caller should clear the result.
func ReadToken(path string) ([]byte, error) {
	f, err := os.Open(path) // #nosec G304 -- operator-chosen token path
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("admin token %s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("admin token %s: mode %v lets others read it; chmod 600 it", path, fi.Mode().Perm())
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		clear(raw)
		return nil, fmt.Errorf("admin token: %w", err)
	}
	if len(raw) > maxTokenFile {
		clear(raw)
		return nil, fmt.Errorf("admin token %s: file too large", path)
	}
	token, err := parseToken(raw)
	clear(raw)
	if err != nil {
		return nil, fmt.Errorf("admin token %s: %w", path, err)
	}
	return token, nil
}

// parseToken extracts the token from a token file's bytes into a fresh
// slice: surrounding whitespace is ignored; the rest must be 32..512
// printable ASCII characters.
func parseToken(raw []byte) ([]byte, error) {
	start, end := 0, len(raw)
	for start < end && isSpace(raw[start]) {
		start++
	}
	for end > start && isSpace(raw[end-1]) {
		end--
	}
	if end-start < minToken || end-start > maxToken {
		return nil, fmt.Errorf("must be %d..%d characters", minToken, maxToken)
	}
	for _, c := range raw[start:end] {
		if c <= ' ' || c > '~' {
			return nil, errors.New("must be printable ASCII without spaces")
		}
	}
	return append([]byte(nil), raw[start:end]...), nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// EnsureTLSCert returns the API's TLS certificate from certPath and keyPath,
// first creating a self-signed ECDSA P-256 one (valid one year, for
// localhost, 127.0.0.1, ::1 and hosts; key file mode 0600) if either file
// is missing, or if the existing certificate has expired or does not cover
// every name. It refuses a key file that group or others can access.
// Clients trust the certificate file itself (it is its own CA).
func EnsureTLSCert(certPath, keyPath string, hosts []string) (tls.Certificate, error) {
	names := append([]string{"localhost", "127.0.0.1", "::1"}, hosts...)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	if certErr == nil && keyErr == nil {
		cert, usable, err := loadCert(certPath, keyPath, names)
		if err != nil {
			return tls.Certificate{}, err
		}
		if usable {
			return cert, nil
		}
	} else if !errors.Is(certErr, os.ErrNotExist) && certErr != nil {
		return tls.Certificate{}, fmt.Errorf("api certificate: %w", certErr)
	} else if !errors.Is(keyErr, os.ErrNotExist) && keyErr != nil {
		return tls.Certificate{}, fmt.Errorf("api key: %w", keyErr)
	}
	if err := createCert(certPath, keyPath, names); err != nil {
		return tls.Certificate{}, err
	}
	cert, _, err := loadCert(certPath, keyPath, names)
	return cert, err
}

// loadCert loads a pair and reports whether it is still usable for names.
func loadCert(certPath, keyPath string, names []string) (tls.Certificate, bool, error) {
	ki, err := os.Stat(keyPath)
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("api key: %w", err)
	}
	if ki.Mode().Perm()&0o077 != 0 {
		return tls.Certificate{}, false, fmt.Errorf("api key %s: mode %v lets others read it; chmod 600 it", keyPath, ki.Mode().Perm())
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("api certificate %s: %w", certPath, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, false, fmt.Errorf("api certificate %s: %w", certPath, err)
		}
	}
	now := time.Now()
	if now.Before(leaf.NotBefore) || now.Add(24*time.Hour).After(leaf.NotAfter) {
		return cert, false, nil
	}
	for _, n := range names {
		if leaf.VerifyHostname(n) != nil {
			return cert, false, nil
		}
	}
	return cert, true, nil
}

func createCert(certPath, keyPath string, names []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("api certificate: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("api certificate: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "sallyport vault API"},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("api certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("api certificate: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	clear(keyDER)
	defer clear(keyPEM)
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("api key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return fmt.Errorf("api certificate: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file with mode perm in path's
// directory (created 0700 if missing) and renames it over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // #nosec G104 -- best effort; gone after rename
	if err := tmp.Chmod(perm); err != nil {
		_ = tmp.Close() // the first error is the one worth reporting
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close() // the first error is the one worth reporting
		return err
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close() // the first error is the one worth reporting
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
