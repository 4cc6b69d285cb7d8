package rdp

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/sallyport/sallyport/gateway/rdp/credssp"
	"github.com/sallyport/sallyport/gateway/rdp/ntlm"
	"github.com/sallyport/sallyport/gateway/rdp/pdu"
	sshgw "github.com/sallyport/sallyport/gateway/ssh"
)

// streamTarget is an NLA target that, once the client's Client Info PDU
// is in, sends size bytes (a screen-update stream stand-in) and closes.
func streamTarget(tb testing.TB, password string, size int) (net.Listener, tls.Certificate) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	cert := testCert(tb, "target")
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pub, _ := credssp.SubjectPublicKey(leaf.RawSubjectPublicKeyInfo)
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				frame, err := pdu.ReadTPKT(nc, 0)
				if err != nil {
					return
				}
				if _, err := pdu.ParseConnectionRequest(frame); err != nil {
					return
				}
				cc := pdu.ConnectionConfirm{Type: pdu.NegResponse, SelectedProtocol: pdu.ProtocolHybridEx}
				out, _ := cc.Encode()
				if _, err := nc.Write(out); err != nil {
					return
				}
				tc := tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
				if _, err := credssp.Serve(tc, credssp.ServerConfig{PublicKey: pub, NTLM: ntlm.NewServer("TARGET", nil, nil),
					Lookup: func(string, string) ([]byte, bool) { return []byte(password), true }}); err != nil {
					return
				}
				if _, err := tc.Write([]byte{0, 0, 0, 0}); err != nil {
					return
				}
				// Connect Initial in, a Connect Response out, Client Info in.
				if _, err := pdu.ReadTPKT(tc, 0); err != nil {
					return
				}
				if err := pdu.WriteTPKT(tc, []byte{2, 0xF0, 0x80, 0x7F, 0x66}); err != nil {
					return
				}
				if _, err := pdu.ReadTPKT(tc, 0); err != nil {
					return
				}
				for sent := 0; sent < size; sent += len(chunk) {
					if _, err := tc.Write(chunk); err != nil {
						return
					}
				}
				_ = tc.CloseWrite()
				_, _ = io.Copy(io.Discard, tc)
			}()
		}
	}()
	return ln, cert
}

// clientInfoFrame is a minimal Client Info PDU: Unicode strings, no
// extended info.
func clientInfoFrame(user, password string) []byte {
	u, p := credssp.EncodeUTF16(user), credssp.EncodeUTF16(password)
	info := binary.LittleEndian.AppendUint32(nil, 0x0409)
	info = binary.LittleEndian.AppendUint32(info, pdu.InfoMouse|pdu.InfoUnicode)
	for _, n := range []int{0, len(u), len(p), 0, 0} {
		info = binary.LittleEndian.AppendUint16(info, uint16(n)) // #nosec G115 -- short test strings
	}
	for _, s := range [][]byte{nil, u, p, nil, nil} {
		info = append(append(info, s...), 0, 0)
	}
	data := append([]byte{0x40, 0, 0, 0}, info...)
	mcs := []byte{0x64, 0, 6, 0x03, 0xEB, 0x70, byte(0x80 | len(data)>>8), byte(len(data))}
	out, _ := pdu.EncodeData(append(mcs, data...))
	return out
}

// session runs a client through X.224, TLS and CredSSP to addr as user
// with password, then the connection sequence's stand-ins, and reads the
// stream to its end. It returns the bytes read.
func session(tb testing.TB, addr, user, password string) int64 {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer nc.Close()
	cr := pdu.ConnectionRequest{HasNegotiation: true, RequestedProtocols: targetProtocols}
	out, _ := cr.Encode()
	if _, err := nc.Write(out); err != nil {
		tb.Fatal(err)
	}
	if _, err := pdu.ReadTPKT(nc, 0); err != nil {
		tb.Fatal(err)
	}
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) // #nosec G402 -- benchmark client
	if err := tc.Handshake(); err != nil {
		tb.Fatal(err)
	}
	pub, _ := credssp.SubjectPublicKey(tc.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	client, _ := ntlm.NewClient(user, "", []byte(password), nil, nil)
	if err := credssp.Authenticate(tc, pub, client, credssp.PasswordCreds{User: credssp.EncodeUTF16(user), Password: credssp.EncodeUTF16(password)}); err != nil {
		tb.Fatal(err)
	}
	var authz [4]byte
	if _, err := io.ReadFull(tc, authz[:]); err != nil {
		tb.Fatal(err)
	}
	if err := pdu.WriteTPKT(tc, []byte{2, 0xF0, 0x80, 0x7F, 0x65}); err != nil {
		tb.Fatal(err)
	}
	if _, err := pdu.ReadTPKT(tc, 0); err != nil {
		tb.Fatal(err)
	}
	if _, err := tc.Write(clientInfoFrame(user, "")); err != nil {
		tb.Fatal(err)
	}
	n, err := io.Copy(io.Discard, tc)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// BenchmarkRelay compares a bulk stream after login (what a large
// screen-update stream or a bulk virtual channel is to the relay) read
// through the gateway and straight from the target, taking turns, and
// the time to set a session up both ways. Reported: MB/s each way and
// their ratio, and the setup times.
func BenchmarkRelay(b *testing.B) {
	const size = 64 << 20
	ln, tcert := streamTarget(b, "vault-pass-1", size)
	defer ln.Close()
	empty, ecert := streamTarget(b, "vault-pass-1", 0)
	defer empty.Close()
	sum := sha256Of(tcert.Certificate[0])
	v := &fakeVault{rejected: make(chan string, 100)}
	v.cred.Secret, v.cred.Protocol, v.cred.Host, v.cred.Port = "win01", "rdp", "127.0.0.1", ln.Addr().(*net.TCPAddr).Port
	v.cred.Username, v.cred.Password, v.pinned = "Administrator", []byte("vault-pass-1"), sum
	tokens := NewTokens(TokenConfig{Max: 1 << 20})
	srv, err := NewServer(Config{Certificate: testCert(b, "gateway"), Tokens: tokens, Credentials: v, Audit: &auditLog{}})
	if err != nil {
		b.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(gl) }()
	defer srv.Close()

	var viaGW, direct, setupGW, setupDirect []float64
	b.SetBytes(2 * size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for turn := range 2 {
			gateway := (i+turn)%2 == 0
			start := time.Now()
			var n int64
			if gateway {
				tok, _, _ := tokens.IssueRDPToken(sshgw.Identity{User: "alice"}, netip.MustParseAddrPort("127.0.0.1:1"), "win01")
				n = session(b, gl.Addr().String(), "alice@win01", tok)
			} else {
				n = session(b, ln.Addr().String(), "Administrator", "vault-pass-1")
			}
			secs := time.Since(start).Seconds()
			if n != size {
				b.Fatalf("read %d bytes of %d", n, size)
			}
			if gateway {
				viaGW = append(viaGW, size/secs/1e6)
			} else {
				direct = append(direct, size/secs/1e6)
			}
		}
		// Setup alone: a stream of nothing, to the other target.
		for turn := range 2 {
			gateway := (i+turn)%2 == 0
			start := time.Now()
			if gateway {
				v.mu.Lock()
				v.cred.Port, v.pinned = empty.Addr().(*net.TCPAddr).Port, sha256Of(ecert.Certificate[0])
				v.mu.Unlock()
				tok, _, _ := tokens.IssueRDPToken(sshgw.Identity{User: "alice"}, netip.MustParseAddrPort("127.0.0.1:1"), "win01")
				session(b, gl.Addr().String(), "alice@win01", tok)
				v.mu.Lock()
				v.cred.Port, v.pinned = ln.Addr().(*net.TCPAddr).Port, sum
				v.mu.Unlock()
				setupGW = append(setupGW, time.Since(start).Seconds()*1e3)
			} else {
				session(b, empty.Addr().String(), "Administrator", "vault-pass-1")
				setupDirect = append(setupDirect, time.Since(start).Seconds()*1e3)
			}
		}
	}
	b.StopTimer()
	g, d := medianOf(viaGW), medianOf(direct)
	b.ReportMetric(g, "gateway-MB/s")
	b.ReportMetric(d, "direct-MB/s")
	b.ReportMetric(g/d, "ratio")
	sg, sd := medianOf(setupGW), medianOf(setupDirect)
	b.ReportMetric(sg, "gateway-setup-ms")
	b.ReportMetric(sd, "direct-setup-ms")
	b.ReportMetric(sg-sd, "added-setup-ms")
}

func sha256Of(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func medianOf(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
