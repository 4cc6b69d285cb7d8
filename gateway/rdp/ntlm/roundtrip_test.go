package ntlm

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rc4"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	//lint:ignore SA1019 the NT hash is MD4 (MS-NLMP 3.3.2): the independent computation needs it
	"golang.org/x/crypto/md4"

	"github.com/sallyport/sallyport/internal/redacttest"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

const (
	testUser   = "qZ7user"
	testDomain = "WIN01"
)

// testPassword is recognisable in any encoding redacttest looks for.
func testPassword() []byte { return redacttest.Secret(24) }

// clock is a settable clock for Server and Client.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// exchange is one Client↔Server exchange, stopped before the server
// checks the AUTHENTICATE_MESSAGE so that tests can change it first.
type exchange struct {
	srv              *Server
	clock            *clock
	nego, chal, auth []byte
	csess            *Session
}

// newExchange runs Negotiate, Challenge and the client's Authenticate.
// tweak, if not nil, changes the client before it starts.
func newExchange(t *testing.T, password []byte, cbt []byte, tweak func(*Client)) *exchange {
	t.Helper()
	clk := &clock{t0}
	cli, err := NewClient(testUser, testDomain, password, nil, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(cli)
	}
	x := &exchange{srv: NewServer("GATEWAY", nil, clk.now), clock: clk}
	x.nego = cli.Negotiate()
	if x.chal, err = x.srv.Challenge(x.nego); err != nil {
		t.Fatal(err)
	}
	if x.auth, x.csess, err = cli.Authenticate(x.chal, cbt); err != nil {
		t.Fatal(err)
	}
	return x
}

// lookupFor returns a lookup that knows one user.
func lookupFor(user, domain string, password []byte) func(string, string) ([]byte, bool) {
	return func(u, d string) ([]byte, bool) {
		if u != user || d != domain {
			return nil, false
		}
		return bytes.Clone(password), true
	}
}

func (x *exchange) finish(password []byte) (*Session, error) {
	return x.srv.Authenticate(x.auth, lookupFor(testUser, testDomain, password))
}

// checkNoSecret fails if err shows the password in any form, or the names.
func checkNoSecret(t *testing.T, err error, password []byte) {
	t.Helper()
	if err == nil {
		return
	}
	for _, l := range redacttest.Leaks(redacttest.Case{Value: err, Secret: password}) {
		t.Errorf("error shows the password via %s: %s", l.Via, l.Output)
	}
	if strings.Contains(err.Error(), testUser) {
		t.Errorf("error shows the user name: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	pw := testPassword()
	x := newExchange(t, pw, nil, func(c *Client) { c.Workstation = "ADMIN-PC" })
	ssess, err := x.finish(pw)
	if err != nil {
		t.Fatal(err)
	}
	if ssess.User != testUser || ssess.Domain != testDomain || ssess.Workstation != "ADMIN-PC" {
		t.Fatalf("server session for %q\\%q at %q", ssess.Domain, ssess.User, ssess.Workstation)
	}
	ck, _ := x.csess.ExportedSessionKey()
	sk, _ := ssess.ExportedSessionKey()
	if !bytes.Equal(ck, sk) || bytes.Equal(ck, make([]byte, 16)) {
		t.Fatalf("exported session keys %x and %x", ck, sk)
	}
	for i, msg := range []string{"client's first", "", "client's third"} {
		sealed, err := x.csess.Seal([]byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := ssess.Unseal(sealed); err != nil || string(got) != msg {
			t.Fatalf("client→server %d: %q, %v", i, got, err)
		}
		reply := "server's " + msg
		sealed, err = ssess.Seal([]byte(reply))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := x.csess.Unseal(sealed); err != nil || string(got) != reply {
			t.Fatalf("server→client %d: %q, %v", i, got, err)
		}
	}
}

// Independent computations of MS-NLMP 3.3.2 and 3.4 with crypto/hmac,
// x/crypto/md4 and crypto/rc4, not this package's code.

func refHMAC(key []byte, parts ...[]byte) []byte {
	h := hmac.New(md5.New, key)
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

func refUTF16(s string) []byte {
	var b []byte
	for _, r := range s {
		if r >= 0x10000 {
			r -= 0x10000
			b = binary.LittleEndian.AppendUint16(b, uint16(0xd800+(r>>10)))
			b = binary.LittleEndian.AppendUint16(b, uint16(0xdc00+(r&0x3ff)))
			continue
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(r))
	}
	return b
}

func refNTOWFv2(password, user, domain string) []byte {
	h := md4.New()
	h.Write(refUTF16(password))
	return refHMAC(h.Sum(nil), refUTF16(strings.ToUpper(user)+domain))
}

func refRC4(key, data []byte) []byte {
	c, err := rc4.NewCipher(key)
	if err != nil {
		panic(err)
	}
	out := make([]byte, len(data))
	c.XORKeyStream(out, data)
	return out
}

// TestRoundTripIndependent recomputes the client's AUTHENTICATE_MESSAGE,
// its session key, its MIC and its first sealed message independently
// from what went over the wire, and checks the timestamp and the
// responses the client chose.
func TestRoundTripIndependent(t *testing.T) {
	const password = "pässwörd €𝄞" // two-byte, three-byte and four-byte UTF-8
	const user, domain = "Ädmin", "Dömain"
	clk := &clock{t0}
	cli, err := NewClient(user, domain, []byte(password), nil, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer("GATEWAY", nil, clk.now)
	nego := cli.Negotiate()
	chal, err := srv.Challenge(nego)
	if err != nil {
		t.Fatal(err)
	}
	auth, csess, err := cli.Authenticate(chal, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := ParseChallenge(chal)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseAuthenticate(auth)
	if err != nil {
		t.Fatal(err)
	}
	if m.User != user || m.Domain != domain || m.MIC == nil {
		t.Fatalf("AUTHENTICATE %+v", m)
	}
	key := refNTOWFv2(password, user, domain)
	proof := refHMAC(key, ch.ServerChallenge[:], m.NTResponse[16:])
	if !bytes.Equal(proof, m.NTResponse[:16]) {
		t.Fatalf("NTProofStr %x, independently %x", m.NTResponse[:16], proof)
	}
	// The client echoes the server's timestamp and so sends no LMv2.
	if got := binary.LittleEndian.Uint64(m.NTResponse[24:]); got != toFiletime(t0) {
		t.Fatalf("timestamp %d, want the server's %d", got, toFiletime(t0))
	}
	if !bytes.Equal(m.LMResponse, make([]byte, 24)) {
		t.Fatalf("LM response %x with a server timestamp", m.LMResponse)
	}
	exported := refRC4(refHMAC(key, proof), m.EncryptedRandomSessionKey)
	zeroed := bytes.Clone(auth)
	clear(zeroed[72:88])
	if mic := refHMAC(exported, nego, chal, zeroed); !bytes.Equal(mic, m.MIC) {
		t.Fatalf("MIC %x, independently %x", m.MIC, mic)
	}
	if k, _ := csess.ExportedSessionKey(); !bytes.Equal(k, exported) {
		t.Fatalf("client session key %x, independently %x", k, exported)
	}

	msg := []byte("TSCredentials")
	sealed, err := csess.Seal(msg)
	if err != nil {
		t.Fatal(err)
	}
	sealKey := md5.Sum(append(bytes.Clone(exported), "session key to client-to-server sealing key magic constant\x00"...))
	signKey := md5.Sum(append(bytes.Clone(exported), "session key to client-to-server signing key magic constant\x00"...))
	stream := refRC4(sealKey[:], make([]byte, len(msg)+8))
	wantSig := append([]byte{1, 0, 0, 0}, refHMAC(signKey[:], []byte{0, 0, 0, 0}, msg)[:8]...)
	for i := range 8 {
		wantSig[4+i] ^= stream[len(msg)+i]
	}
	wantSig = append(wantSig, 0, 0, 0, 0)
	if !bytes.Equal(sealed[:16], wantSig) {
		t.Fatalf("signature %x, independently %x", sealed[:16], wantSig)
	}
	for i := range msg {
		if sealed[16+i] != msg[i]^stream[i] {
			t.Fatalf("sealed %x", sealed[16:])
		}
	}

	ssess, err := srv.Authenticate(auth, func(u, d string) ([]byte, bool) {
		return []byte(password), u == user && d == domain
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ssess.Unseal(sealed); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("server unsealed %q, %v", got, err)
	}
}

// mutate returns a copy of b changed by f.
func mutate(b []byte, f func([]byte)) []byte {
	c := bytes.Clone(b)
	f(c)
	return c
}

// reencode parses an AUTHENTICATE_MESSAGE, changes it and encodes it again.
func reencode(t *testing.T, auth []byte, f func(*Authenticate)) []byte {
	t.Helper()
	m, err := ParseAuthenticate(auth)
	if err != nil {
		t.Fatal(err)
	}
	f(m)
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ntOffset is where the NT response starts in the client's messages.
func ntOffset(auth []byte) int { return int(binary.LittleEndian.Uint32(auth[24:])) }

func TestServerRefuses(t *testing.T) {
	pw := testPassword()
	for _, c := range []struct {
		name string
		// change changes the exchange before the server checks it.
		change func(t *testing.T, x *exchange)
		// password is what the lookup returns; nil: pw.
		password []byte
		want     error
	}{
		{name: "wrong password", password: []byte("wrong password"), want: ErrAuthFailed},
		{name: "empty stored password", password: []byte{}, want: ErrAuthFailed},
		{name: "unknown user", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.User = "someone else" })
		}, want: ErrAuthFailed},
		{name: "user renamed", change: func(t *testing.T, x *exchange) {
			// A lookup that knows every user still finds the proof wrong.
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.Domain = "OTHER" })
		}, want: ErrAuthFailed},
		{name: "tampered MIC", change: func(t *testing.T, x *exchange) {
			x.auth = mutate(x.auth, func(b []byte) { b[72] ^= 1 })
		}, want: ErrAuthFailed},
		{name: "zeroed MIC", change: func(t *testing.T, x *exchange) {
			x.auth = mutate(x.auth, func(b []byte) { clear(b[72:88]) })
		}, want: ErrAuthFailed},
		{name: "tampered NTProofStr", change: func(t *testing.T, x *exchange) {
			x.auth = mutate(x.auth, func(b []byte) { b[ntOffset(b)] ^= 0x80 })
		}, want: ErrAuthFailed},
		{name: "tampered client challenge", change: func(t *testing.T, x *exchange) {
			x.auth = mutate(x.auth, func(b []byte) { b[ntOffset(b)+16+16] ^= 1 })
		}, want: ErrAuthFailed},
		{name: "tampered timestamp", change: func(t *testing.T, x *exchange) {
			x.auth = mutate(x.auth, func(b []byte) { b[ntOffset(b)+16+8] ^= 1 })
		}, want: ErrAuthFailed},
		{name: "MsvAvFlags stripped", change: func(t *testing.T, x *exchange) {
			// The proof covers the AV pairs: the MIC cannot be disowned.
			x.auth = reencode(t, x.auth, func(m *Authenticate) {
				r, err := parseNTv2Response(m.NTResponse)
				if err != nil {
					t.Fatal(err)
				}
				var kept AVList
				for _, p := range r.pairs {
					if p.ID != AVFlags {
						kept = append(kept, p)
					}
				}
				blob, err := ntv2Blob(r.timestamp, r.blob[16:24], kept)
				if err != nil {
					t.Fatal(err)
				}
				m.NTResponse = append(bytes.Clone(r.proof), blob...)
				m.MIC = nil
			})
		}, want: ErrAuthFailed},
		{name: "tampered flags", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.Flags &^= FlagAlwaysSign })
		}, want: ErrAuthFailed},
		{name: "tampered workstation", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.Workstation = "ELSEWHERE" })
		}, want: ErrAuthFailed},
		{name: "tampered encrypted session key", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.EncryptedRandomSessionKey[0] ^= 1 })
		}, want: ErrAuthFailed},
		{name: "NEGOTIATE changed in transit", change: func(t *testing.T, x *exchange) {
			// The server saw a NEGOTIATE the client did not send.
			x.srv.negotiate = mutate(x.srv.negotiate, func(b []byte) { b[13] ^= byte(FlagAlwaysSign >> 8) })
		}, want: ErrAuthFailed},
		{name: "MIC flagged but no room for it", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.MIC = nil })
		}, want: ErrAuthFailed},
		{name: "old timestamp", change: func(t *testing.T, x *exchange) {
			x.clock.t = t0.Add(DefaultMaxClockSkew + time.Second)
		}, want: ErrAuthFailed},
		{name: "future timestamp", change: func(t *testing.T, x *exchange) {
			x.clock.t = t0.Add(-DefaultMaxClockSkew - time.Second)
		}, want: ErrAuthFailed},
		{name: "timestamp beyond a shorter skew", change: func(t *testing.T, x *exchange) {
			x.srv.MaxClockSkew = time.Minute
			x.clock.t = t0.Add(2 * time.Minute)
		}, want: ErrAuthFailed},
		{name: "channel bindings required", change: func(t *testing.T, x *exchange) {
			x.srv.ChannelBindings = []byte("tls-server-end-point:0123")
		}, want: ErrAuthFailed},
		{name: "NTLMv1", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.NTResponse = m.NTResponse[:24] })
		}, want: ErrUnsupported},
		{name: "LM only", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.NTResponse = nil; m.LMResponse[0] = 1 })
		}, want: ErrUnsupported},
		{name: "anonymous", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) {
				m.User, m.Domain, m.NTResponse, m.LMResponse = "", "", nil, []byte{0}
			})
		}, want: ErrUnsupported},
		{name: "anonymous flag", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.Flags |= FlagAnonymous })
		}, want: ErrUnsupported},
		{name: "datagram", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.Flags |= FlagDatagram })
		}, want: ErrUnsupported},
		{name: "no key exchange", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.Flags &^= FlagKeyExchange })
		}, want: ErrUnsupported},
		{name: "no sealing", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.Flags &^= FlagSeal })
		}, want: ErrUnsupported},
		{name: "no encrypted session key", change: func(t *testing.T, x *exchange) {
			x.auth = reencode(t, x.auth, func(m *Authenticate) { m.EncryptedRandomSessionKey = nil })
		}, want: ErrMalformed},
		{name: "NTLMv2 response version 2", change: func(t *testing.T, x *exchange) {
			x.auth = mutate(x.auth, func(b []byte) { b[ntOffset(b)+16] = 2 })
		}, want: ErrUnsupported},
		{name: "not an AUTHENTICATE", change: func(t *testing.T, x *exchange) {
			x.auth = x.nego
		}, want: ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			x := newExchange(t, pw, nil, nil)
			if c.change != nil {
				c.change(t, x)
			}
			stored := pw
			if c.password != nil {
				stored = c.password
			}
			lookup := lookupFor(testUser, testDomain, stored)
			if c.name == "user renamed" {
				lookup = func(string, string) ([]byte, bool) { return bytes.Clone(stored), true }
			}
			sess, err := x.srv.Authenticate(x.auth, lookup)
			if !errors.Is(err, c.want) || sess != nil {
				t.Fatalf("got %v, %v; want %v", sess, err, c.want)
			}
			checkNoSecret(t, err, pw)
		})
	}
}

func TestServerAcceptsWithinSkew(t *testing.T) {
	pw := testPassword()
	x := newExchange(t, pw, nil, nil)
	x.srv.MaxClockSkew = time.Minute
	x.clock.t = t0.Add(59 * time.Second)
	if _, err := x.finish(pw); err != nil {
		t.Fatal(err)
	}
}

// TestReplay: an AUTHENTICATE_MESSAGE is good for one exchange only.
func TestReplay(t *testing.T) {
	pw := testPassword()
	x := newExchange(t, pw, nil, nil)
	if _, err := x.finish(pw); err != nil {
		t.Fatal(err)
	}
	if _, err := x.finish(pw); !errors.Is(err, ErrState) {
		t.Fatalf("second Authenticate on the same server: %v", err)
	}
	// Another server issues another challenge; the old proof fails it.
	srv := NewServer("GATEWAY", nil, x.clock.now)
	if _, err := srv.Challenge(x.nego); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Authenticate(x.auth, lookupFor(testUser, testDomain, pw)); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("replayed to a new exchange: %v", err)
	}
}

// TestMICOptionalWhenNotAnnounced: a client that neither announces nor
// sends a MIC (as before Windows Vista) is accepted, as MS-NLMP says.
func TestMICOptionalWhenNotAnnounced(t *testing.T) {
	pw := testPassword()
	clk := &clock{t0}
	srv := NewServer("GATEWAY", nil, clk.now)
	cli, err := NewClient(testUser, testDomain, pw, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	chal, err := srv.Challenge(cli.Negotiate())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := ParseChallenge(chal)
	if err != nil {
		t.Fatal(err)
	}
	key := refNTOWFv2(string(pw), testUser, testDomain)
	blob, err := ntv2Blob(toFiletime(t0), []byte("cchallng"), ch.TargetInfo)
	if err != nil {
		t.Fatal(err)
	}
	proof := refHMAC(key, ch.ServerChallenge[:], blob)
	exported := []byte("exported sesskey")
	m := &Authenticate{
		Flags:                     ch.Flags,
		NTResponse:                append(proof, blob...),
		User:                      testUser,
		Domain:                    testDomain,
		EncryptedRandomSessionKey: refRC4(refHMAC(key, proof), exported),
	}
	auth, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := srv.Authenticate(auth, lookupFor(testUser, testDomain, pw))
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := sess.ExportedSessionKey(); !bytes.Equal(k, exported) {
		t.Fatalf("exported session key %q", k)
	}
}

func TestChannelBindings(t *testing.T) {
	pw := testPassword()
	cbt := []byte("tls-server-end-point:\x01\x02\x03")
	for _, c := range []struct {
		name           string
		client, server []byte
		ok             bool
	}{
		{"both", cbt, cbt, true},
		{"server does not check", cbt, nil, true},
		{"client has none", nil, cbt, false},
		{"different", []byte("tls-server-end-point:\x01\x02\x04"), cbt, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			x := newExchange(t, pw, c.client, nil)
			x.srv.ChannelBindings = c.server
			_, err := x.finish(pw)
			if (err == nil) != c.ok {
				t.Fatalf("ok %v, got %v", c.ok, err)
			}
		})
	}
	// The value is MD5 of the flat gss_channel_bindings_struct.
	want := md5.Sum(append(append(make([]byte, 16), byte(len(cbt)), 0, 0, 0), cbt...))
	if got := channelBindingsHash(cbt); got != want {
		t.Fatalf("channel bindings hash %x, want %x", got, want)
	}
}

func TestNegotiateRefused(t *testing.T) {
	cli, err := NewClient(testUser, testDomain, testPassword(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	nego := cli.Negotiate()
	for _, c := range []struct {
		name string
		msg  []byte
		want error
	}{
		{"no extended session security", setFlags(nego, 0, FlagExtendedSessionSecurity), ErrUnsupported},
		{"no key exchange", setFlags(nego, 0, FlagKeyExchange), ErrUnsupported},
		{"no 128-bit keys", setFlags(nego, 0, Flag128), ErrUnsupported},
		{"no sealing", setFlags(nego, 0, FlagSeal), ErrUnsupported},
		{"no Unicode", setFlags(nego, FlagOEM, FlagUnicode), ErrUnsupported},
		{"anonymous", setFlags(nego, FlagAnonymous, 0), ErrUnsupported},
		{"datagram", setFlags(nego, FlagDatagram, 0), ErrUnsupported},
		{"not a NEGOTIATE", specChallenge, ErrMalformed},
		{"truncated", nego[:20], ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := NewServer("GATEWAY", nil, nil)
			if _, err := srv.Challenge(c.msg); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if _, err := srv.Authenticate(nil, nil); !errors.Is(err, ErrState) {
				t.Fatalf("Authenticate after a failed Challenge: %v", err)
			}
		})
	}
}

// setFlags returns a copy of a NEGOTIATE_MESSAGE with flags set and cleared.
func setFlags(nego []byte, set, clr Flags) []byte {
	return mutate(nego, func(b []byte) {
		f := Flags(binary.LittleEndian.Uint32(b[12:]))
		binary.LittleEndian.PutUint32(b[12:], uint32(f&^clr|set))
	})
}

func TestServerOrder(t *testing.T) {
	srv := NewServer("GATEWAY", nil, nil)
	if _, err := srv.Authenticate(nil, nil); !errors.Is(err, ErrState) {
		t.Fatalf("Authenticate before Challenge: %v", err)
	}
	srv = NewServer("GATEWAY", nil, nil)
	cli, err := NewClient(testUser, testDomain, testPassword(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Challenge(cli.Negotiate()); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Challenge(cli.Negotiate()); !errors.Is(err, ErrState) {
		t.Fatalf("second Challenge: %v", err)
	}
	for _, name := range []string{"", "bad\x00name", strings.Repeat("n", 513)} {
		if _, err := NewServer(name, nil, nil).Challenge(cli.Negotiate()); !errors.Is(err, ErrMalformed) {
			t.Fatalf("target name %q: %v", name, err)
		}
	}
	if _, err := NewServer("GATEWAY", strings.NewReader("short"), nil).Challenge(cli.Negotiate()); err == nil {
		t.Fatal("challenge from a short random source")
	}
}

// TestServerChallenge checks what the server offers.
func TestServerChallenge(t *testing.T) {
	cli, err := NewClient(testUser, testDomain, testPassword(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer("GATEWAY", bytes.NewReader([]byte("8 bytes!")), func() time.Time { return t0 })
	chal, err := srv.Challenge(cli.Negotiate())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := ParseChallenge(chal)
	if err != nil {
		t.Fatal(err)
	}
	want := requiredFlags | FlagRequestTarget | FlagTargetInfo | FlagTargetTypeServer | FlagAlwaysSign | FlagVersion | Flag56
	if ch.Flags != want || string(ch.ServerChallenge[:]) != "8 bytes!" || ch.TargetName != "GATEWAY" {
		t.Fatalf("CHALLENGE %+v", ch)
	}
	for _, id := range []AVID{AVNbDomainName, AVNbComputerName, AVDNSDomainName, AVDNSComputerName} {
		if v, ok := ch.TargetInfo.Get(id); !ok || !bytes.Equal(v, encodeName("GATEWAY")) {
			t.Fatalf("AV pair %d: %x", id, v)
		}
	}
	if v, ok := ch.TargetInfo.Get(AVTimestamp); !ok || binary.LittleEndian.Uint64(v) != toFiletime(t0) {
		t.Fatalf("timestamp %x", v)
	}
}

func TestClientRefuses(t *testing.T) {
	pw := testPassword()
	srvChallenge := func(t *testing.T, nego []byte) *Challenge {
		t.Helper()
		chal, err := NewServer("GATEWAY", nil, nil).Challenge(nego)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := ParseChallenge(chal)
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	for _, c := range []struct {
		name   string
		change func(*Challenge)
		want   error
	}{
		{"no key exchange", func(ch *Challenge) { ch.Flags &^= FlagKeyExchange }, ErrUnsupported},
		{"no extended session security", func(ch *Challenge) { ch.Flags &^= FlagExtendedSessionSecurity }, ErrUnsupported},
		{"no 128-bit keys", func(ch *Challenge) { ch.Flags &^= Flag128 }, ErrUnsupported},
		{"datagram", func(ch *Challenge) { ch.Flags |= FlagDatagram }, ErrUnsupported},
		{"no NetBIOS computer name", func(ch *Challenge) { ch.TargetInfo = ch.TargetInfo[:1] }, ErrMalformed},
		{"no target info", func(ch *Challenge) { ch.TargetInfo = nil }, ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			cli, err := NewClient(testUser, testDomain, pw, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			ch := srvChallenge(t, cli.Negotiate())
			c.change(ch)
			chal, err := ch.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := cli.Authenticate(chal, nil); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if cli.key != [16]byte{} {
				t.Fatal("key not wiped after a failed Authenticate")
			}
		})
	}
	if _, _, err := mustClient(t, pw).Authenticate(specChallenge, nil); !errors.Is(err, ErrState) {
		t.Fatalf("Authenticate without Negotiate: %v", err)
	}
	cli := mustClient(t, pw)
	ch := srvChallenge(t, cli.Negotiate())
	chal, _ := ch.Marshal()
	if _, _, err := cli.Authenticate(chal, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cli.Authenticate(chal, nil); !errors.Is(err, ErrState) {
		t.Fatalf("second Authenticate: %v", err)
	}
	cli, err := NewClient(testUser, testDomain, pw, strings.NewReader("short"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cli.Negotiate()
	if _, _, err := cli.Authenticate(chal, nil); err == nil {
		t.Fatal("Authenticate with a short random source")
	}
	cli = mustClient(t, pw)
	cli.Negotiate()
	cli.Wipe()
	if _, _, err := cli.Authenticate(chal, nil); !errors.Is(err, ErrState) {
		t.Fatalf("Authenticate after Wipe: %v", err)
	}
	for _, c := range []struct {
		name, user, domain string
		password           []byte
		want               error
	}{
		{"anonymous", "", testDomain, pw, ErrUnsupported},
		{"empty password", testUser, testDomain, nil, ErrUnsupported},
		{"password not UTF-8", testUser, testDomain, []byte("pass\xffword"), ErrMalformed},
		{"password too long", testUser, testDomain, bytes.Repeat([]byte("p"), 1025), ErrMalformed},
		{"user not UTF-8", "us\xffer", testDomain, pw, ErrMalformed},
		{"control character", "us\ner", testDomain, pw, ErrMalformed},
		{"domain too long", testUser, strings.Repeat("d", 513), pw, ErrMalformed},
	} {
		if _, err := NewClient(c.user, c.domain, c.password, nil, nil); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func mustClient(t *testing.T, pw []byte) *Client {
	t.Helper()
	c, err := NewClient(testUser, testDomain, pw, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClientWithoutServerTimestamp: without MsvAvTimestamp the client uses
// its own clock and sends an LMv2 response.
func TestClientWithoutServerTimestamp(t *testing.T) {
	pw := testPassword()
	clk := &clock{t0.Add(time.Hour)}
	cli, err := NewClient(testUser, testDomain, pw, bytes.NewReader(bytes.Repeat([]byte{7}, 24)), clk.now)
	if err != nil {
		t.Fatal(err)
	}
	cli.Negotiate()
	ch, err := ParseChallenge(specChallenge)
	if err != nil {
		t.Fatal(err)
	}
	ch.Flags |= FlagKeyExchange
	chal, err := ch.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	auth, _, err := cli.Authenticate(chal, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseAuthenticate(auth)
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(m.NTResponse[24:]); got != toFiletime(clk.t) {
		t.Fatalf("timestamp %d, want the client's %d", got, toFiletime(clk.t))
	}
	cc := bytes.Repeat([]byte{7}, 8)
	key := refNTOWFv2(string(pw), testUser, testDomain)
	if want := append(refHMAC(key, specServerChallenge, cc), cc...); !bytes.Equal(m.LMResponse, want) {
		t.Fatalf("LM response %x, want LMv2 %x", m.LMResponse, want)
	}
}

// TestClientAVPairs checks the pairs the client adds: MsvAvFlags with the
// MIC bit, MsvAvChannelBindings and MsvAvTargetName.
func TestClientAVPairs(t *testing.T) {
	pw := testPassword()
	cbt := []byte("tls-server-end-point:abc")
	x := newExchange(t, pw, cbt, func(c *Client) { c.TargetSPN = "TERMSRV/win01" })
	m, err := ParseAuthenticate(x.auth)
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseNTv2Response(m.NTResponse)
	if err != nil {
		t.Fatal(err)
	}
	if f, _ := r.pairs.Get(AVFlags); binary.LittleEndian.Uint32(f) != avFlagMIC {
		t.Fatalf("MsvAvFlags %x", f)
	}
	want := channelBindingsHash(cbt)
	if v, _ := r.pairs.Get(AVChannelBindings); !bytes.Equal(v, want[:]) {
		t.Fatalf("MsvAvChannelBindings %x", v)
	}
	if v, _ := r.pairs.Get(AVTargetName); !bytes.Equal(v, encodeName("TERMSRV/win01")) {
		t.Fatalf("MsvAvTargetName %x", v)
	}
	if _, ok := r.pairs.Get(AVTimestamp); !ok {
		t.Fatal("server's MsvAvTimestamp not echoed")
	}
	if m.Flags&^(clientFlags|FlagTargetInfo) != 0 {
		t.Fatalf("AUTHENTICATE flags %#x beyond what was asked", m.Flags)
	}
	x = newExchange(t, pw, nil, nil)
	m, _ = ParseAuthenticate(x.auth)
	r, _ = parseNTv2Response(m.NTResponse)
	if v, _ := r.pairs.Get(AVChannelBindings); !bytes.Equal(v, make([]byte, 16)) {
		t.Fatalf("MsvAvChannelBindings without bindings %x", v)
	}
	if _, ok := r.pairs.Get(AVTargetName); ok {
		t.Fatal("MsvAvTargetName without a TargetSPN")
	}
}

// TestPasswordOwnership: NewClient neither keeps nor changes the password,
// so the caller may wipe it at once; the client's key is wiped after
// Authenticate. The server does not change what lookup returns.
func TestPasswordOwnership(t *testing.T) {
	pw := testPassword()
	orig := bytes.Clone(pw)
	clk := &clock{t0}
	cli, err := NewClient(testUser, testDomain, pw, nil, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pw, orig) {
		t.Fatal("NewClient changed the password")
	}
	clear(pw)
	srv := NewServer("GATEWAY", nil, clk.now)
	chal, err := srv.Challenge(cli.Negotiate())
	if err != nil {
		t.Fatal(err)
	}
	auth, _, err := cli.Authenticate(chal, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cli.key != [16]byte{} {
		t.Fatal("client key not wiped after Authenticate")
	}
	stored := bytes.Clone(orig)
	if _, err := srv.Authenticate(auth, func(string, string) ([]byte, bool) { return stored, true }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, orig) {
		t.Fatal("Authenticate changed the stored password")
	}
}
