package radius

import (
	"crypto/hmac"
	"crypto/md5" // #nosec G501 -- RADIUS (RFC 2865, RFC 3579) is defined with MD5 and HMAC-MD5.
	"encoding/binary"
	"errors"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2869"
)

const (
	headerLen = 20
	// maxPacketLen is the largest RADIUS packet (RFC 2865 §3). Replies are
	// read into a buffer one byte larger so that longer datagrams are seen
	// and dropped rather than silently truncated.
	maxPacketLen = layeh.MaxPacketLength
	// msgAuthLen is the length of a Message-Authenticator value.
	msgAuthLen = 16
	// msgAuthOffset is where the value of the Message-Authenticator we put
	// first in every request starts.
	msgAuthOffset = headerLen + 2
)

// Reasons a reply is dropped. They name the check that failed and never
// carry packet contents.
var (
	errShort        = errors.New("reply shorter than a RADIUS header")
	errLength       = errors.New("reply length field invalid")
	errID           = errors.New("reply identifier does not match request")
	errCode         = errors.New("reply code not valid for the request")
	errAttrs        = errors.New("reply attributes malformed")
	errRespAuth     = errors.New("reply Response Authenticator invalid")
	errNoMsgAuth    = errors.New("reply lacks Message-Authenticator")
	errManyMsgAuth  = errors.New("reply has more than one Message-Authenticator")
	errMsgAuthLen   = errors.New("reply Message-Authenticator has wrong length")
	errBadMsgAuth   = errors.New("reply Message-Authenticator invalid")
	errRequestShort = errors.New("request shorter than a RADIUS header")
)

// messageAuthenticator computes HMAC-MD5(secret, packet) where packet is b
// with its authenticator field replaced by auth and the 16-byte value at off
// zeroed, as RFC 3579 §3.2 defines it. b is not modified.
func messageAuthenticator(secret, b, auth []byte, off int) []byte {
	m := hmac.New(md5.New, secret)
	m.Write(b[:4])
	m.Write(auth)
	m.Write(b[headerLen:off])
	var zero [msgAuthLen]byte
	m.Write(zero[:])
	m.Write(b[off+msgAuthLen:])
	return m.Sum(nil)
}

// responseAuthenticator computes MD5(Code+ID+Length+RequestAuth+Attributes+Secret)
// (RFC 2865 §3) for the reply b.
func responseAuthenticator(secret, b, reqAuth []byte) []byte {
	h := md5.New() // #nosec G401 -- RFC 2865 defines the Response Authenticator with MD5.
	h.Write(b[:4])
	h.Write(reqAuth)
	h.Write(b[headerLen:])
	h.Write(secret)
	return h.Sum(nil)
}

// signRequest fills in the Message-Authenticator value at msgAuthOffset of an
// encoded request whose value there is zero.
func signRequest(b, secret []byte) {
	mac := messageAuthenticator(secret, b, b[4:headerLen], msgAuthOffset)
	copy(b[msgAuthOffset:], mac)
}

// verifyReply checks the reply b against the encoded request req it answers
// and returns it parsed. It accepts only Access-Accept, Access-Reject and
// Access-Challenge with the request's identifier, a valid Response
// Authenticator and exactly one valid Message-Authenticator. Every check runs
// on the raw bytes before anything is parsed for use.
func verifyReply(b, req, secret []byte) (*layeh.Packet, error) {
	if len(req) < headerLen {
		return nil, errRequestShort
	}
	if len(b) < headerLen {
		return nil, errShort
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n < headerLen || n > maxPacketLen || n > len(b) {
		return nil, errLength
	}
	// Octets past the length field are padding (RFC 2865 §3) and ignored.
	b = b[:n]
	if b[1] != req[1] {
		return nil, errID
	}
	switch layeh.Code(b[0]) {
	case layeh.CodeAccessAccept, layeh.CodeAccessReject, layeh.CodeAccessChallenge:
	default:
		return nil, errCode
	}
	off, err := findMessageAuthenticator(b)
	if err != nil {
		return nil, err
	}
	reqAuth := req[4:headerLen]
	if !hmac.Equal(responseAuthenticator(secret, b, reqAuth), b[4:headerLen]) {
		return nil, errRespAuth
	}
	if off < 0 {
		return nil, errNoMsgAuth
	}
	if !hmac.Equal(messageAuthenticator(secret, b, reqAuth, off), b[off:off+msgAuthLen]) {
		return nil, errBadMsgAuth
	}
	p, err := layeh.Parse(b, secret)
	if err != nil {
		return nil, errAttrs
	}
	return p, nil
}

// findMessageAuthenticator walks the attributes of the packet b (whose length
// is already checked) and returns the offset of the single
// Message-Authenticator value, or -1 if there is none.
func findMessageAuthenticator(b []byte) (int, error) {
	off := -1
	for i := headerLen; i < len(b); {
		rest := b[i:]
		if len(rest) < 2 {
			return 0, errAttrs
		}
		l := int(rest[1])
		if l < 2 || l > len(rest) {
			return 0, errAttrs
		}
		if layeh.Type(rest[0]) == rfc2869.MessageAuthenticator_Type {
			if off >= 0 {
				return 0, errManyMsgAuth
			}
			if l != 2+msgAuthLen {
				return 0, errMsgAuthLen
			}
			off = i + 2
		}
		i += l
	}
	return off, nil
}
