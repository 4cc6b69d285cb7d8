package radius

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5" // #nosec G501 -- the RADIUS wire format is defined with MD5.
	"testing"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2869"
)

// FuzzVerifyReply feeds arbitrary bytes to the reply check. It must never
// panic, and anything it accepts must carry a Message-Authenticator and a
// Response Authenticator that an independent computation confirms.
func FuzzVerifyReply(f *testing.F) {
	secret := []byte(testSecret)
	req, err := encode(accessRequest("alice", "alicepass"), Server{Addr: "x:1", Secret: secret})
	if err != nil {
		f.Fatal(err)
	}
	parsed, err := layeh.Parse(req, secret)
	if err != nil {
		f.Fatal(err)
	}
	for _, code := range []layeh.Code{layeh.CodeAccessAccept, layeh.CodeAccessReject, layeh.CodeAccessChallenge} {
		for _, flt := range []fault{faultNone, faultNoMsgAuth, faultBadMsgAuth, faultBadRespAuth, faultBadID} {
			r := parsed.Response(code)
			r.Add(rfc2865.State_Type, layeh.Attribute("st"))
			r.Add(rfc2865.ReplyMessage_Type, layeh.Attribute("Code: "))
			r.Add(rfc2865.Class_Type, layeh.Attribute("admins"))
			f.Add(signReply(r, parsed.Authenticator, secret, flt))
		}
	}
	f.Add([]byte{})
	f.Add(make([]byte, 20))
	a, err := NewAuthenticator(&Client{}, AuthConfig{GroupsFromClass: true, GroupsFromFilterID: true}, nil)
	if err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		p, err := verifyReply(b, req, secret)
		if !bytes.Equal(orig, b) {
			t.Fatal("verifyReply modified its input")
		}
		if err != nil {
			if p != nil {
				t.Fatal("packet returned with an error")
			}
			return
		}
		if !independentlyAuthentic(b, req, secret) {
			t.Fatalf("accepted a reply that does not verify: %x", b)
		}
		_ = challengePrompt(p)
		_ = a.groups(p)
	})
}

// independentlyAuthentic re-checks a reply using layeh's parser to locate
// the Message-Authenticator, rather than this package's walker.
func independentlyAuthentic(b, req, secret []byte) bool {
	if len(b) < 20 || b[1] != req[1] {
		return false
	}
	n := int(b[2])<<8 | int(b[3])
	if n < 20 || n > len(b) {
		return false
	}
	b = b[:n]
	if !layeh.IsAuthenticResponse(b, req, secret) {
		return false
	}
	attrs, err := layeh.ParseAttributes(b[20:])
	if err != nil {
		return false
	}
	off, found := 20, 0
	c := bytes.Clone(b)
	copy(c[4:20], req[4:20])
	var value []byte
	for _, avp := range attrs {
		if avp.Type == rfc2869.MessageAuthenticator_Type {
			found++
			value = b[off+2 : off+2+len(avp.Attribute)]
			clear(c[off+2 : off+2+len(avp.Attribute)])
		}
		off += 2 + len(avp.Attribute)
	}
	if found != 1 || len(value) != 16 {
		return false
	}
	m := hmac.New(md5.New, secret)
	m.Write(c)
	return hmac.Equal(m.Sum(nil), value)
}
