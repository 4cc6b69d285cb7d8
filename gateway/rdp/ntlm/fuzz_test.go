package ntlm

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

// fuzzPassword is what the fuzzed server's lookup returns.
var fuzzPassword = []byte("fuzz password 0123")

// fixedRand returns a random source that always yields the same bytes.
func fixedRand() *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte("0123456789abcdef"), 4)) }

func fixedNow() time.Time { return t0 }

// fuzzExchange is a deterministic exchange: the same NEGOTIATE and
// AUTHENTICATE every time, which the fuzzed server accepts.
func fuzzExchange(f *testing.F) (nego, chal, auth []byte) {
	cli, err := NewClient(testUser, testDomain, fuzzPassword, fixedRand(), fixedNow)
	if err != nil {
		f.Fatal(err)
	}
	cli.Workstation = "WS"
	cli.TargetSPN = "TERMSRV/gw"
	nego = cli.Negotiate()
	if chal, err = NewServer("GATEWAY", fixedRand(), fixedNow).Challenge(nego); err != nil {
		f.Fatal(err)
	}
	if auth, _, err = cli.Authenticate(chal, []byte("tls-server-end-point:x")); err != nil {
		f.Fatal(err)
	}
	srv := NewServer("GATEWAY", fixedRand(), fixedNow)
	if _, err := srv.Challenge(nego); err != nil {
		f.Fatal(err)
	}
	if _, err := srv.Authenticate(auth, lookupFor(testUser, testDomain, fuzzPassword)); err != nil {
		f.Fatalf("the seed exchange fails: %v", err)
	}
	return nego, chal, auth
}

// checkErr checks what every error must be.
func checkErr(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrAuthFailed) && !errors.Is(err, ErrState) {
		t.Fatalf("error of no known kind: %v", err)
	}
	if len(err.Error()) > 200 {
		t.Fatalf("error of %d bytes: %.300s", len(err.Error()), err)
	}
	if bytes.Contains([]byte(err.Error()), fuzzPassword) {
		t.Fatalf("error shows the password: %v", err)
	}
}

func FuzzParseNegotiate(f *testing.F) {
	nego, _, _ := fuzzExchange(f)
	f.Add(nego)
	full, _ := (&Negotiate{Flags: clientFlags | FlagOEMDomainSupplied, Domain: []byte("DOM"), Workstation: []byte("WS")}).Marshal()
	f.Add(full)
	f.Add(nego[:32])
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseNegotiate(data)
		if err != nil {
			checkErr(t, err)
			return
		}
		b, err := m.Marshal()
		if err != nil {
			t.Fatalf("parsed %+v but cannot encode it: %v", m, err)
		}
		again, err := ParseNegotiate(b)
		if err != nil || !reflect.DeepEqual(m, again) {
			t.Fatalf("parsed %+v, re-encoded and parsed %+v, %v", m, again, err)
		}
		// The server answers or refuses, without panicking.
		if _, err := NewServer("GATEWAY", fixedRand(), fixedNow).Challenge(data); err != nil {
			checkErr(t, err)
		}
	})
}

func FuzzParseChallenge(f *testing.F) {
	_, chal, _ := fuzzExchange(f)
	f.Add(chal)
	f.Add(specChallenge)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseChallenge(data)
		if err != nil {
			checkErr(t, err)
			return
		}
		b, err := m.Marshal()
		if err != nil {
			t.Fatalf("parsed %+v but cannot encode it: %v", m, err)
		}
		again, err := ParseChallenge(b)
		if err != nil || !reflect.DeepEqual(m, again) {
			t.Fatalf("parsed %+v, re-encoded and parsed %+v, %v", m, again, err)
		}
		// The client answers or refuses, and what it sends parses.
		cli, err := NewClient(testUser, testDomain, fuzzPassword, fixedRand(), fixedNow)
		if err != nil {
			t.Fatal(err)
		}
		cli.Negotiate()
		auth, sess, err := cli.Authenticate(data, nil)
		if err != nil {
			checkErr(t, err)
			return
		}
		if sess == nil {
			t.Fatal("no session")
		}
		if _, err := ParseAuthenticate(auth); err != nil {
			t.Fatalf("client sent an AUTHENTICATE that does not parse: %v", err)
		}
	})
}

func FuzzParseAuthenticate(f *testing.F) {
	_, _, auth := fuzzExchange(f)
	f.Add(auth)
	noMIC, _ := (&Authenticate{Flags: FlagUnicode | FlagVersion, User: "u", NTResponse: []byte("nt")}).Marshal()
	f.Add(noMIC)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseAuthenticate(data)
		if err != nil {
			checkErr(t, err)
			return
		}
		b, err := m.Marshal()
		if err != nil {
			t.Fatalf("parsed %+v but cannot encode it: %v", m, err)
		}
		again, err := ParseAuthenticate(b)
		if err != nil || !reflect.DeepEqual(m, again) {
			t.Fatalf("parsed %+v, re-encoded and parsed %+v, %v", m, again, err)
		}
	})
}

// FuzzServerAuthenticate runs a deterministic server over arbitrary
// NEGOTIATE and AUTHENTICATE messages: it never panics, every error is of
// a known kind without the password, and what it accepts names the one
// user it knows and verifies the client's sealing.
func FuzzServerAuthenticate(f *testing.F) {
	nego, _, auth := fuzzExchange(f)
	f.Add(nego, auth)
	f.Add(nego, mutate(auth, func(b []byte) { b[72] ^= 1 }))
	f.Add(nego, reencodeF(f, auth, func(m *Authenticate) { m.MIC = nil }))
	f.Add(nego, reencodeF(f, auth, func(m *Authenticate) { m.NTResponse = m.NTResponse[:24] }))
	f.Fuzz(func(t *testing.T, nego, auth []byte) {
		srv := NewServer("GATEWAY", fixedRand(), fixedNow)
		if _, err := srv.Challenge(nego); err != nil {
			checkErr(t, err)
			return
		}
		sess, err := srv.Authenticate(auth, lookupFor(testUser, testDomain, fuzzPassword))
		if err != nil {
			checkErr(t, err)
			if sess != nil {
				t.Fatal("a session with an error")
			}
			return
		}
		if sess.User != testUser || sess.Domain != testDomain {
			t.Fatalf("accepted %q\\%q", sess.Domain, sess.User)
		}
		if _, err := sess.Seal([]byte("x")); err != nil {
			t.Fatal(err)
		}
	})
}

func reencodeF(f *testing.F, auth []byte, change func(*Authenticate)) []byte {
	m, err := ParseAuthenticate(auth)
	if err != nil {
		f.Fatal(err)
	}
	change(m)
	b, err := m.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	return b
}
