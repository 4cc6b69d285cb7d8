package radius

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	layeh "layeh.com/radius"
)

// testCA is a throwaway certificate authority (ECDSA P-256).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(cn string) (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
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
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}, nil
}

func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	if err != nil {
		panic(err)
	}
	return n
}

// issue returns a leaf certificate for usage (server or client auth).
func (ca *testCA) issue(cn string, usage x509.ExtKeyUsage, dns []string, ips []net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(48 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// radsecPKI is what the RadSec tests need: a CA with a server certificate
// (127.0.0.1 and localhost) and a client certificate, and another CA with a
// client certificate of its own that the servers do not trust.
type radsecPKI struct {
	ca, otherCA *testCA
	server      tls.Certificate
	client      tls.Certificate
	otherClient tls.Certificate
}

var (
	pkiOnce sync.Once
	pki     *radsecPKI
	pkiErr  error
)

func testPKI(t *testing.T) *radsecPKI {
	t.Helper()
	pkiOnce.Do(func() {
		p := &radsecPKI{}
		if p.ca, pkiErr = newTestCA("radsec test CA"); pkiErr != nil {
			return
		}
		if p.otherCA, pkiErr = newTestCA("another CA"); pkiErr != nil {
			return
		}
		if p.server, pkiErr = p.ca.issue("localhost", x509.ExtKeyUsageServerAuth, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}); pkiErr != nil {
			return
		}
		if p.client, pkiErr = p.ca.issue("sallyport", x509.ExtKeyUsageClientAuth, nil, nil); pkiErr != nil {
			return
		}
		if p.otherClient, pkiErr = p.otherCA.issue("sallyport", x509.ExtKeyUsageClientAuth, nil, nil); pkiErr != nil {
			return
		}
		pki = p
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pki
}

// clientTLS is the TLS configuration of a client the test servers accept.
func (p *radsecPKI) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: p.ca.pool, Certificates: []tls.Certificate{p.client}}
}

// rsAnswer decides what the responder does with the n-th request (from 0)
// it reads, which came on its conn-th connection (from 0): the bytes to
// write back (nil: nothing) and whether to close the connection afterwards.
type rsAnswer func(req *layeh.Packet, n, conn int) (out []byte, closeConn bool)

// radsecResponder is an in-process RadSec server on loopback: TLS with
// client certificates required, RADIUS frames on the stream. It checks every
// request's framing and Message-Authenticator independently of the code
// under test, and that no identifier is reused on a connection while its
// request is unanswered.
type radsecResponder struct {
	t      *testing.T
	ln     net.Listener
	secret []byte
	async  bool // answer each request in its own goroutine
	answer rsAnswer

	mu     sync.Mutex
	reqs   [][]byte
	nconns int
	open   map[net.Conn]bool
	wg     sync.WaitGroup
	closed bool
}

type rsOptions struct {
	secret string // default testSecret
	async  bool
	tls    func(*tls.Config) // adjusts the server's TLS configuration
}

func newRadSecResponder(t *testing.T, opt rsOptions, answer rsAnswer) *radsecResponder {
	t.Helper()
	p := testPKI(t)
	if opt.secret == "" {
		opt.secret = testSecret
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.ca.pool,
	}
	if opt.tls != nil {
		opt.tls(cfg)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &radsecResponder{t: t, ln: ln, secret: []byte(opt.secret), async: opt.async, answer: answer, open: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.acceptLoop()
	t.Cleanup(r.Close)
	return r
}

func (r *radsecResponder) addr() string { return r.ln.Addr().String() }

// Close stops the responder and waits for all its goroutines.
func (r *radsecResponder) Close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.open {
		_ = c.Close()
	}
	r.mu.Unlock()
	_ = r.ln.Close()
	r.wg.Wait()
}

// received returns copies of the raw requests read so far.
func (r *radsecResponder) received() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.reqs...)
}

// conns returns how many connections completed the TLS handshake.
func (r *radsecResponder) conns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nconns
}

// reply encodes the answer code to req, spoilt by f.
func (r *radsecResponder) reply(req *layeh.Packet, code layeh.Code, f fault) []byte {
	return signReply(req.Response(code), req.Authenticator, r.secret, f)
}

func (r *radsecResponder) acceptLoop() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			_ = c.Close()
			return
		}
		r.open[c] = true
		r.mu.Unlock()
		r.wg.Add(1)
		go r.serveConn(c.(*tls.Conn))
	}
}

func (r *radsecResponder) serveConn(c *tls.Conn) {
	defer r.wg.Done()
	var handlers sync.WaitGroup
	defer func() {
		_ = c.Close()
		handlers.Wait()
		r.mu.Lock()
		delete(r.open, c)
		r.mu.Unlock()
	}()
	if err := c.Handshake(); err != nil {
		return // refused client certificates end here
	}
	r.mu.Lock()
	connIdx := r.nconns
	r.nconns++
	r.mu.Unlock()
	var wmu sync.Mutex
	inflight := map[byte]bool{}
	for {
		raw, err := rsReadFrame(c)
		if err != nil {
			if errors.Is(err, errRequestFrame) {
				r.t.Errorf("responder: %v", err)
			}
			return // the connection ended
		}
		r.mu.Lock()
		idx := len(r.reqs)
		r.reqs = append(r.reqs, raw)
		if inflight[raw[1]] {
			r.t.Errorf("request %d: identifier %d reused on a connection while its request is unanswered", idx, raw[1])
		}
		inflight[raw[1]] = true
		r.mu.Unlock()
		if !requestMsgAuthOK(raw, r.secret) {
			r.t.Errorf("request %d: Message-Authenticator missing, not first, or invalid", idx)
			continue
		}
		req, err := layeh.Parse(raw, r.secret)
		if err != nil {
			r.t.Errorf("request %d: %v", idx, err)
			continue
		}
		handle := func() bool {
			out, closeConn := r.answer(req, idx, connIdx)
			wmu.Lock()
			defer wmu.Unlock()
			if out != nil {
				r.mu.Lock()
				delete(inflight, raw[1])
				r.mu.Unlock()
				if _, err := c.Write(out); err != nil {
					return false
				}
			}
			if closeConn {
				_ = c.Close()
				return false
			}
			return true
		}
		if r.async {
			handlers.Go(func() { handle() })
			continue
		}
		if !handle() {
			return
		}
	}
}

var errRequestFrame = errors.New("request frame length out of range")

// rsReadFrame is the responder's own RadSec frame reader.
func rsReadFrame(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[2:]))
	if n < 20 || n > 4096 {
		return nil, errRequestFrame
	}
	b := make([]byte, n)
	copy(b, hdr)
	if _, err := io.ReadFull(r, b[4:]); err != nil {
		return nil, err
	}
	return b, nil
}

// silentTCP is a loopback TCP listener that accepts connections and never
// sends a byte: TLS handshakes with it time out. It counts connections.
type silentTCP struct {
	ln   net.Listener
	mu   sync.Mutex
	n    int
	open []net.Conn
	wg   sync.WaitGroup
}

func newSilentTCP(t *testing.T) *silentTCP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silentTCP{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.n++
			s.open = append(s.open, c)
			s.mu.Unlock()
		}
	})
	t.Cleanup(s.Close)
	return s
}

// Close stops the listener and closes the connections it accepted.
func (s *silentTCP) Close() {
	_ = s.ln.Close()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.open {
		_ = c.Close()
	}
	s.open = nil
}

func (s *silentTCP) accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// closedTCPAddr returns a loopback TCP address nobody listens on.
func closedTCPAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	_ = ln.Close()
	return a
}
