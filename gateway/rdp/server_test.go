package rdp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/gateway/rdp/credssp"
	"github.com/sallyport/sallyport/gateway/rdp/ntlm"
	"github.com/sallyport/sallyport/gateway/rdp/pdu"
	sshgw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/workitem"
)

// testCert makes a self-signed certificate with a fresh key.
func testCert(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, made, err := LoadOrCreateCertificate(filepath.Join(t.TempDir(), "cert.pem"), key, name, time.Now())
	if err != nil || !made {
		t.Fatal(made, err)
	}
	return cert
}

// nlaTarget is an in-process RDP server that speaks the part of the
// protocol the gateway needs from a target: X.224 with the protocol it is
// set to select, TLS, and CredSSP checking Administrator's password. It
// reports who logged in.
type nlaTarget struct {
	ln       net.Listener
	cert     tls.Certificate
	selected uint32
	mu       sync.Mutex
	password string
	logins   chan string
}

func startTarget(t *testing.T, password string, selected uint32) *nlaTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &nlaTarget{ln: ln, cert: testCert(t, "target"), selected: selected, password: password, logins: make(chan string, 10)}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go tg.handle(nc)
		}
	}()
	return tg
}

func (tg *nlaTarget) port() int { return tg.ln.Addr().(*net.TCPAddr).Port }

func (tg *nlaTarget) sum() []byte {
	s := sha256.Sum256(tg.cert.Certificate[0])
	return s[:]
}

func (tg *nlaTarget) handle(nc net.Conn) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	frame, err := pdu.ReadTPKT(nc, 0)
	if err != nil {
		return
	}
	if _, err := pdu.ParseConnectionRequest(frame); err != nil {
		return
	}
	cc := pdu.ConnectionConfirm{Type: pdu.NegResponse, SelectedProtocol: tg.selected}
	out, _ := cc.Encode()
	if _, err := nc.Write(out); err != nil {
		return
	}
	tc := tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{tg.cert}, MinVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err != nil {
		return
	}
	if tg.selected != pdu.ProtocolSSL {
		leaf, _ := x509.ParseCertificate(tg.cert.Certificate[0])
		pub, _ := credssp.SubjectPublicKey(leaf.RawSubjectPublicKeyInfo)
		tg.mu.Lock()
		pw := tg.password
		tg.mu.Unlock()
		acc, err := credssp.Serve(tc, credssp.ServerConfig{PublicKey: pub, NTLM: ntlm.NewServer("TARGET", nil, nil),
			Lookup: func(user, _ string) ([]byte, bool) { return []byte(pw), user == "Administrator" }})
		if err != nil {
			return
		}
		tg.logins <- credssp.DecodeUTF16(acc.Creds.User) + ":" + credssp.DecodeUTF16(acc.Creds.Password)
		if tg.selected == pdu.ProtocolHybridEx {
			_, _ = tc.Write([]byte{0, 0, 0, 0})
		}
	}
	_, _ = io.Copy(io.Discard, tc)
}

// fakeVault is the credential source: one RDP secret, win01, for alice.
type fakeVault struct {
	mu       sync.Mutex
	cred     workitem.Credential
	pinned   []byte
	rejected chan string
}

func (v *fakeVault) Checkout(_ context.Context, id sshgw.Identity, _ netip.AddrPort, secret string) (*workitem.Credential, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if id.User != "alice" || secret != v.cred.Secret {
		return nil, sshgw.ErrDenied
	}
	c := v.cred
	c.Password = append([]byte(nil), v.cred.Password...)
	c.HostKey = append([]byte(nil), v.pinned...)
	return &c, nil
}

func (v *fakeVault) PinHostKey(_ context.Context, _ sshgw.Identity, _ netip.AddrPort, _ string, key []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.pinned != nil {
		return errors.New("already pinned")
	}
	v.pinned = append([]byte(nil), key...)
	return nil
}

func (v *fakeVault) CredentialRejected(_ context.Context, _ sshgw.Identity, _ netip.AddrPort, secret string) {
	v.rejected <- secret
}

// auditLog collects audit events.
type auditLog struct {
	mu     sync.Mutex
	events []audit.Event
}

func (a *auditLog) Record(_ context.Context, e audit.Event) {
	a.mu.Lock()
	a.events = append(a.events, e)
	a.mu.Unlock()
}

func (a *auditLog) has(kind, outcome string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.events {
		if e.Kind == kind && e.Outcome == outcome {
			return true
		}
	}
	return false
}

type gatewayFixture struct {
	addr   string
	srv    *Server
	tokens *Tokens
	vault  *fakeVault
	target *nlaTarget
	audit  *auditLog
	pub    []byte
}

func startGateway(t *testing.T, targetSelects uint32) *gatewayFixture {
	t.Helper()
	tg := startTarget(t, "vault-pass-1", targetSelects)
	cert := testCert(t, "gateway")
	v := &fakeVault{rejected: make(chan string, 10), cred: workitem.Credential{Secret: "win01", Protocol: workitem.ProtocolRDP,
		Host: "127.0.0.1", Port: tg.port(), Username: "Administrator", Password: []byte("vault-pass-1")}}
	v.pinned = tg.sum()
	tokens := NewTokens(TokenConfig{})
	al := &auditLog{}
	srv, err := NewServer(Config{Certificate: cert, Tokens: tokens, Credentials: v, Audit: al,
		Log: slog.New(slog.DiscardHandler), HandshakeTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return &gatewayFixture{addr: ln.Addr().String(), srv: srv, tokens: tokens, vault: v, target: tg, audit: al, pub: srv.publicKey}
}

func (f *gatewayFixture) issue(t *testing.T) string {
	t.Helper()
	tok, _, err := f.tokens.IssueRDPToken(sshgw.Identity{User: "alice"}, netip.MustParseAddrPort("127.0.0.1:5000"), "win01")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// connect is a client: X.224 offering protocols, and if the gateway
// accepts, TLS and CredSSP as user with password. It returns the
// negotiation failure code, or the CredSSP outcome.
func connect(t *testing.T, addr string, from string, protocols uint32, user, password string) (failure uint32, err error) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(15 * time.Second))
	cr := pdu.ConnectionRequest{Cookie: "alice", HasNegotiation: protocols != 0, RequestedProtocols: protocols}
	out, err := cr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(out); err != nil {
		t.Fatal(err)
	}
	frame, err := pdu.ReadTPKT(nc, 0)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := pdu.ParseConnectionConfirm(frame)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Type == pdu.NegFailure {
		return cc.FailureCode, nil
	}
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) // #nosec G402 -- test client
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	pub, err := credssp.SubjectPublicKey(tc.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ntlm.NewClient(user, "", []byte(password), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	creds := credssp.PasswordCreds{User: credssp.EncodeUTF16(user), Password: credssp.EncodeUTF16(password)}
	if err := credssp.Authenticate(tc, pub, client, creds); err != nil {
		return 0, err
	}
	if cc.SelectedProtocol == pdu.ProtocolHybridEx {
		var res [4]byte
		if _, err := io.ReadFull(tc, res[:]); err != nil {
			return 0, err
		}
		if v := binary.LittleEndian.Uint32(res[:]); v != authzSuccess {
			return 0, errors.New("early user authorization denied")
		}
	}
	return 0, nil
}

func wantStatus(t *testing.T, err error, status string) {
	t.Helper()
	if !errors.Is(err, credssp.ErrLogonFailure) || !strings.Contains(err.Error(), status) {
		t.Fatalf("want the gateway to report %s, got %v", status, err)
	}
}

const (
	logonFailure = "0xc000006d"
	accessDenied = "0xc0000022"
)

func TestTokenLogin(t *testing.T) {
	for _, sel := range []uint32{pdu.ProtocolHybrid, pdu.ProtocolHybridEx} {
		t.Run(pdu.ProtocolString(sel), func(t *testing.T) {
			f := startGateway(t, sel)
			tok := f.issue(t)
			// A wrong token first: refused, and the token stays good.
			if _, err := connect(t, f.addr, "", pdu.ProtocolSSL|pdu.ProtocolHybrid, "alice@win01", "not-the-token"); err == nil {
				t.Fatal("wrong token accepted")
			} else {
				wantStatus(t, err, logonFailure)
			}
			if _, err := connect(t, f.addr, "", pdu.ProtocolSSL|pdu.ProtocolHybrid|pdu.ProtocolHybridEx, "alice@win01", tok); err != nil {
				t.Fatalf("token refused: %v", err)
			}
			select {
			case who := <-f.target.logins:
				if who != "Administrator:vault-pass-1" {
					t.Fatalf("target saw %q", who)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the target saw no login")
			}
			// Used once: refused the second time.
			_, err := connect(t, f.addr, "", pdu.ProtocolHybrid, "alice@win01", tok)
			wantStatus(t, err, logonFailure)
			if !f.audit.has("login", "ok") || !f.audit.has("login", "denied") || !f.audit.has("session_start", "ok") {
				t.Fatalf("audit: %+v", f.audit.events)
			}
		})
	}
}

func TestTokenBoundToSource(t *testing.T) {
	f := startGateway(t, pdu.ProtocolHybrid)
	tok := f.issue(t) // issued to 127.0.0.1
	_, err := connect(t, f.addr, "127.0.0.2", pdu.ProtocolHybrid, "alice@win01", tok)
	wantStatus(t, err, logonFailure)
	if _, err := connect(t, f.addr, "127.0.0.1", pdu.ProtocolHybrid, "alice@win01", tok); err != nil {
		t.Fatalf("from the right address: %v", err)
	}
}

func TestNegotiationRefused(t *testing.T) {
	f := startGateway(t, pdu.ProtocolHybrid)
	for _, offer := range []uint32{0, pdu.ProtocolSSL, pdu.ProtocolSSL | pdu.ProtocolRDSTLS} {
		code, err := connect(t, f.addr, "", offer, "alice@win01", "x")
		if err != nil || code != pdu.FailureHybridRequiredByServer {
			t.Fatalf("client offering %s: failure %d, %v", pdu.ProtocolString(offer), code, err)
		}
	}
}

func TestStaleTargetPassword(t *testing.T) {
	f := startGateway(t, pdu.ProtocolHybrid)
	f.target.mu.Lock()
	f.target.password = "rotated-elsewhere"
	f.target.mu.Unlock()
	_, err := connect(t, f.addr, "", pdu.ProtocolHybrid, "alice@win01", f.issue(t))
	wantStatus(t, err, accessDenied)
	select {
	case s := <-f.vault.rejected:
		if s != "win01" {
			t.Fatalf("rejection reported for %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the rejection was not reported for a heartbeat")
	}
	if !f.audit.has("session_start", "error") {
		t.Fatalf("audit: %+v", f.audit.events)
	}
}

func TestTargetCertificatePin(t *testing.T) {
	f := startGateway(t, pdu.ProtocolHybrid)
	// Another certificate pinned: refused before any credential is sent.
	f.vault.pinned = make([]byte, 32)
	_, err := connect(t, f.addr, "", pdu.ProtocolHybrid, "alice@win01", f.issue(t))
	wantStatus(t, err, accessDenied)
	if !f.audit.has("hostkey_mismatch", "denied") {
		t.Fatalf("audit: %+v", f.audit.events)
	}
	select {
	case who := <-f.target.logins:
		t.Fatalf("the target saw a login (%s) despite the mismatch", who)
	default:
	}
	// Nothing pinned and no pin on first use: refused.
	f.vault.pinned = nil
	_, err = connect(t, f.addr, "", pdu.ProtocolHybrid, "alice@win01", f.issue(t))
	wantStatus(t, err, accessDenied)
	// Pin on first use: pinned, then used.
	f.vault.cred.PinOnFirstUse = true
	if _, err := connect(t, f.addr, "", pdu.ProtocolHybrid, "alice@win01", f.issue(t)); err != nil {
		t.Fatal(err)
	}
	if string(f.vault.pinned) != string(f.target.sum()) {
		t.Fatal("the target certificate's SHA-256 was not pinned")
	}
}

func TestNotAnRDPSecret(t *testing.T) {
	f := startGateway(t, pdu.ProtocolHybrid)
	f.vault.cred.Protocol = workitem.ProtocolSSH
	_, err := connect(t, f.addr, "", pdu.ProtocolHybrid, "alice@win01", f.issue(t))
	wantStatus(t, err, accessDenied)
}

func TestCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nla := startTarget(t, "vault-pass-1", pdu.ProtocolHybrid)
	tlsOnly := startTarget(t, "", pdu.ProtocolSSL)
	cred := func(tg *nlaTarget, pw string, pin []byte) *workitem.Credential {
		return &workitem.Credential{Protocol: workitem.ProtocolRDP, Host: "127.0.0.1", Port: tg.port(), Username: "Administrator",
			Password: []byte(pw), HostKey: pin}
	}
	if err := Check(ctx, cred(nla, "vault-pass-1", nla.sum())); err != nil {
		t.Fatalf("good credential: %v", err)
	}
	if err := Check(ctx, cred(nla, "stale", nla.sum())); !errors.Is(err, ErrRejected) {
		t.Fatalf("stale credential: %v", err)
	}
	if err := Check(ctx, cred(nla, "vault-pass-1", tlsOnly.sum())); !errors.Is(err, ErrCertificateMismatch) {
		t.Fatalf("other certificate: %v", err)
	}
	if err := Check(ctx, cred(nla, "vault-pass-1", nil)); !errors.Is(err, ErrCertificateMismatch) {
		t.Fatalf("no pin: %v", err)
	}
	if err := Check(ctx, cred(tlsOnly, "x", tlsOnly.sum())); !errors.Is(err, ErrUnverifiable) {
		t.Fatalf("TLS-only target: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	gone := cred(nla, "vault-pass-1", nla.sum())
	gone.Port = port
	if err := Check(ctx, gone); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("nothing listening: %v", err)
	}
}

// serveConfig runs another gateway on cfg (a fixture's, changed) until the
// test ends, and returns its address.
func serveConfig(t *testing.T, cfg Config) string {
	t.Helper()
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// grantSwitch allows every grant until revoked.
type grantSwitch struct {
	mu      sync.Mutex
	revoked bool
}

func (g *grantSwitch) StillAllowed(_ context.Context, grants []sshgw.Grant) ([]bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ok := make([]bool, len(grants))
	for i := range ok {
		ok[i] = !g.revoked
	}
	return ok, nil
}

func TestSessionRevoked(t *testing.T) {
	f := startGateway(t, pdu.ProtocolHybrid)
	grants := &grantSwitch{}
	// Another server on the fixture's configuration, with the switch.
	cfg := f.srv.cfg
	cfg.Grants, cfg.RecheckEvery = grants, 20*time.Millisecond
	addr := serveConfig(t, cfg)

	tok := f.issue(t)
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	cr := pdu.ConnectionRequest{HasNegotiation: true, RequestedProtocols: pdu.ProtocolHybrid}
	out, _ := cr.Encode()
	if _, err := nc.Write(out); err != nil {
		t.Fatal(err)
	}
	if _, err := pdu.ReadTPKT(nc, 0); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) // #nosec G402 -- test client
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	pub, _ := credssp.SubjectPublicKey(tc.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	client, _ := ntlm.NewClient("alice@win01", "", []byte(tok), nil, nil)
	if err := credssp.Authenticate(tc, pub, client, credssp.PasswordCreds{User: credssp.EncodeUTF16("alice@win01"), Password: credssp.EncodeUTF16(tok)}); err != nil {
		t.Fatal(err)
	}
	<-f.target.logins
	// The session is up (relaying); revoke, and the gateway ends it —
	// well before the fixture's 10 s handshake deadline would.
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	grants.mu.Lock()
	grants.revoked = true
	grants.mu.Unlock()
	if _, err := io.Copy(io.Discard, tc); err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the session did not end cleanly: %v", err)
	}
}

// With a limiter shared with the SSH gateway, failures there count here:
// a spent (user, source) budget refuses even a valid token.
func TestSharedLoginBudget(t *testing.T) {
	f := startGateway(t, pdu.ProtocolHybrid)
	shared, err := admit.NewLogins(admit.LoginConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.srv.cfg
	cfg.SharedLogins = shared
	addr := serveConfig(t, cfg)

	src := admit.SourceOf(netip.MustParseAddr("127.0.0.1"), admit.DefaultIPv4Bits, admit.DefaultIPv6Bits)
	for range 12 {
		shared.Failed("alice", src) // as the SSH gateway records them
	}
	_, err = connect(t, addr, "", pdu.ProtocolHybrid, "alice@win01", f.issue(t))
	wantStatus(t, err, logonFailure)
	// The fixture's server, with a limiter of its own, lets alice in.
	if _, err := connect(t, f.addr, "", pdu.ProtocolHybrid, "alice@win01", f.issue(t)); err != nil {
		t.Fatalf("the fixture's own limiter: %v", err)
	}
}
