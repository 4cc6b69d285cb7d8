package radius

import (
	"crypto/hmac"
	"crypto/md5" // #nosec G501 -- the RADIUS wire format is defined with MD5.
	"net"
	"net/netip"
	"sync"
	"testing"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2869"
)

// fault makes a test responder misbehave in one way.
type fault int

const (
	faultNone            fault = iota
	faultNoMsgAuth             // reply without Message-Authenticator
	faultBadMsgAuth            // Message-Authenticator with one bit flipped
	faultBadRespAuth           // Response Authenticator with one bit flipped
	faultBadID                 // correctly signed, but for another identifier
	faultOtherPort             // correct reply sent from another socket
	faultForgedThenGood        // a bad-Message-Authenticator reply, then the real one
	faultMsgAuthOldStyle       // Message-Authenticator computed over the Response Authenticator
)

// responder is an in-process RADIUS server on loopback. It checks every
// request's Message-Authenticator independently of the code under test.
type responder struct {
	t      *testing.T
	conn   *net.UDPConn
	other  *net.UDPConn
	secret []byte
	fault  fault
	// handle returns the reply to the n-th request (from 0), or nil to stay
	// silent.
	handle func(req *layeh.Packet, n int) *layeh.Packet

	mu   sync.Mutex
	reqs [][]byte
	wg   sync.WaitGroup
}

func newResponder(t *testing.T, secret string, f fault, handle func(*layeh.Packet, int) *layeh.Packet) *responder {
	t.Helper()
	r := &responder{t: t, conn: listenUDP(t), other: listenUDP(t), secret: []byte(secret), fault: f, handle: handle}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		_ = r.conn.Close()
		_ = r.other.Close()
		r.wg.Wait()
	})
	return r
}

func listenUDP(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (r *responder) addr() string { return r.conn.LocalAddr().String() }

// received returns copies of the raw requests seen so far.
func (r *responder) received() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.reqs...)
}

func (r *responder) serve() {
	defer r.wg.Done()
	buf := make([]byte, maxPacketLen)
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		raw := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		idx := len(r.reqs)
		r.reqs = append(r.reqs, raw)
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
		resp := r.handle(req, idx)
		if resp == nil {
			continue
		}
		switch r.fault {
		case faultOtherPort:
			_, _ = r.other.WriteToUDPAddrPort(signReply(resp, req.Authenticator, r.secret, faultNone), from)
		case faultForgedThenGood:
			forged := *resp
			forged.Attributes = append(layeh.Attributes(nil), resp.Attributes...)
			forged.Code = layeh.CodeAccessAccept
			_, _ = r.conn.WriteToUDPAddrPort(signReply(&forged, req.Authenticator, r.secret, faultBadMsgAuth), from)
			_, _ = r.conn.WriteToUDPAddrPort(signReply(resp, req.Authenticator, r.secret, faultNone), from)
		default:
			_, _ = r.conn.WriteToUDPAddrPort(signReply(resp, req.Authenticator, r.secret, r.fault), from)
		}
	}
}

// requestMsgAuthOK checks that raw starts with a Message-Authenticator that
// is HMAC-MD5 over the request with its value zeroed.
func requestMsgAuthOK(raw, secret []byte) bool {
	if len(raw) < 38 || raw[20] != byte(rfc2869.MessageAuthenticator_Type) || raw[21] != 18 {
		return false
	}
	c := append([]byte(nil), raw...)
	clear(c[22:38])
	m := hmac.New(md5.New, secret)
	m.Write(c)
	return hmac.Equal(m.Sum(nil), raw[22:38])
}

// signReply encodes resp as the answer to a request with authenticator
// reqAuth: Message-Authenticator (last, to show position does not matter)
// over the packet with the request authenticator, then the Response
// Authenticator over the result; f spoils one of them.
func signReply(resp *layeh.Packet, reqAuth [16]byte, secret []byte, f fault) []byte {
	p := *resp
	p.Attributes = append(layeh.Attributes(nil), resp.Attributes...)
	if f != faultNoMsgAuth {
		p.Add(rfc2869.MessageAuthenticator_Type, make(layeh.Attribute, 16))
	}
	if f == faultBadID {
		p.Identifier++
	}
	p.Authenticator = reqAuth
	b, err := p.MarshalBinary()
	if err != nil {
		panic(err)
	}
	h := md5.New() // #nosec G401 -- RFC 2865 Response Authenticator.
	if f != faultNoMsgAuth {
		off := len(b) - 16
		m := hmac.New(md5.New, secret)
		if f == faultMsgAuthOldStyle {
			// Wrong order: Response Authenticator first, then HMAC over it.
			h.Write(b[:4])
			h.Write(reqAuth[:])
			h.Write(b[20:])
			h.Write(secret)
			copy(b[4:20], h.Sum(nil))
			m.Write(b)
			copy(b[off:], m.Sum(nil))
			return b
		}
		m.Write(b)
		copy(b[off:], m.Sum(nil))
		if f == faultBadMsgAuth {
			b[off] ^= 1
		}
	}
	h.Write(b[:4])
	h.Write(reqAuth[:])
	h.Write(b[20:])
	h.Write(secret)
	copy(b[4:20], h.Sum(nil))
	if f == faultBadRespAuth {
		b[4] ^= 1
	}
	return b
}

// closedAddr returns a loopback UDP address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	c := listenUDP(t)
	a := c.LocalAddr().String()
	_ = c.Close()
	return a
}
