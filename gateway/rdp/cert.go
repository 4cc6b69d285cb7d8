package rdp

import (
	"bytes"
	"crypto"
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
	"io/fs"
	"math/big"
	"os"
	"time"
)

// Certificate lifetimes: a new self-signed certificate is good for
// certValidity, and is replaced when less than certRenewBefore is left.
const (
	certValidity    = 2 * 365 * 24 * time.Hour
	certRenewBefore = 30 * 24 * time.Hour
	maxCertFile     = 64 << 10
)

// LoadOrCreateCertificate returns the gateway's TLS certificate for RDP
// clients: the one in path if it is for signer's key and not near its
// end, or a new self-signed one for name, written to path. The private key
// stays in signer (the key provider: an HSM when configured); path holds
// only the certificate, which clients may pin by its SHA-256.
func LoadOrCreateCertificate(path string, signer crypto.Signer, name string, now time.Time) (tls.Certificate, bool, error) {
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return tls.Certificate{}, false, err
	}
	if der, err := readCertFile(path); err == nil {
		if cert, err := x509.ParseCertificate(der); err == nil &&
			bytes.Equal(cert.RawSubjectPublicKeyInfo, pub) && now.Add(certRenewBefore).Before(cert.NotAfter) && !now.Before(cert.NotBefore) {
			return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: signer, Leaf: cert}, false, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, false, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, false, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("rdp certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return tls.Certificate{}, false, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: signer, Leaf: cert}, true, nil
}

func readCertFile(path string) ([]byte, error) {
	f, err := os.Open(path) // #nosec G304 -- the operator's data directory
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCertFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxCertFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxCertFile)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return blk.Bytes, nil
}

// CertificateSHA256 is the hex SHA-256 of a certificate's DER: what an RDP
// client shows as its fingerprint, and what `--cert-sha256` pins.
func CertificateSHA256(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
