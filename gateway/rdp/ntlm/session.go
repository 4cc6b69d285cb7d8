package ntlm

import (
	"crypto/hmac"
	"crypto/rc4" // #nosec G503 -- NTLM session security is RC4 (MS-NLMP 3.4); the protocol leaves no choice
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"math"
	"sync"
)

// SignatureSize is the size of an NTLM message signature, which Seal puts
// before the sealed message.
const SignatureSize = 16

// The magic constants of SIGNKEY and SEALKEY (MS-NLMP 3.4.5.2, 3.4.5.3).
var (
	clientSignMagic = []byte("session key to client-to-server signing key magic constant\x00")
	serverSignMagic = []byte("session key to server-to-client signing key magic constant\x00")
	clientSealMagic = []byte("session key to client-to-server sealing key magic constant\x00")
	serverSealMagic = []byte("session key to server-to-client sealing key magic constant\x00")
)

// Session is the session security of one authenticated NTLM exchange
// (MS-NLMP 3.4, with extended session security, key exchange and 128-bit
// keys): one signing key, one RC4 sealing handle and one sequence number
// per direction. Methods are safe for concurrent use, but each message
// takes the next sequence number, so the order of calls is the order the
// peer must see.
//
// A message that fails to verify leaves the receiving RC4 handle out of
// step with the peer's: the session refuses everything after it.
type Session struct {
	// User, Domain and Workstation are the names the client sent in its
	// AUTHENTICATE_MESSAGE: on the server, who proved the password.
	User, Domain, Workstation string

	mu                 sync.Mutex
	exported           [16]byte
	sendSign, recvSign [16]byte
	sendSeal, recvSeal *rc4.Cipher
	sendSeq, recvSeq   uint32
	dead               bool // wiped, or a message failed to verify
}

// newSession derives the session keys from the exported session key, for
// the client's side or the server's.
func newSession(exported *[16]byte, client bool) *Session {
	s := &Session{exported: *exported}
	cSign := md5Sum(exported[:], clientSignMagic)
	sSign := md5Sum(exported[:], serverSignMagic)
	cSeal := md5Sum(exported[:], clientSealMagic)
	sSeal := md5Sum(exported[:], serverSealMagic)
	if client {
		s.sendSign, s.recvSign = cSign, sSign
		s.sendSeal, s.recvSeal = newRC4(cSeal[:]), newRC4(sSeal[:])
	} else {
		s.sendSign, s.recvSign = sSign, cSign
		s.sendSeal, s.recvSeal = newRC4(sSeal[:]), newRC4(cSeal[:])
	}
	clear(cSign[:])
	clear(sSign[:])
	clear(cSeal[:])
	clear(sSeal[:])
	return s
}

// mac writes the NTLMSSP_MESSAGE_SIGNATURE of msg (MS-NLMP 2.2.2.9.1,
// 3.4.4.2): version 1, the first 8 bytes of HMAC_MD5(signKey, seq || msg)
// encrypted with the direction's RC4 handle, and seq.
func mac(dst []byte, signKey *[16]byte, handle *rc4.Cipher, seq uint32, msg []byte) {
	var seqb [4]byte
	binary.LittleEndian.PutUint32(seqb[:], seq)
	sum := hmacMD5(signKey[:], seqb[:], msg)
	binary.LittleEndian.PutUint32(dst[0:4], 1)
	handle.XORKeyStream(dst[4:12], sum[:8])
	copy(dst[12:16], seqb[:])
	clear(sum[:])
}

// check returns an error if the session cannot be used.
func (s *Session) check() error {
	if s.dead {
		return errorf(ErrState, "session wiped or failed")
	}
	return nil
}

// nextSend returns the sequence number for the next message sent.
func (s *Session) nextSend() (uint32, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if s.sendSeq == math.MaxUint32 {
		return 0, errorf(ErrState, "sequence numbers exhausted")
	}
	seq := s.sendSeq
	s.sendSeq++
	return seq, nil
}

// Seal encrypts msg and returns its signature followed by the sealed
// message (SignatureSize+len(msg) bytes), as CredSSP sends it. msg is not
// modified.
func (s *Session) Seal(msg []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq, err := s.nextSend()
	if err != nil {
		return nil, err
	}
	out := make([]byte, SignatureSize+len(msg))
	s.sendSeal.XORKeyStream(out[SignatureSize:], msg)
	mac(out[:SignatureSize], &s.sendSign, s.sendSeal, seq, msg)
	return out, nil
}

// Unseal verifies and decrypts what the peer's Seal produced and returns
// the message, in a new slice the caller wipes if it is secret.
func (s *Session) Unseal(sealed []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return nil, err
	}
	if len(sealed) < SignatureSize {
		return nil, errorf(ErrMalformed, "sealed message of %d bytes", len(sealed))
	}
	msg := make([]byte, len(sealed)-SignatureSize)
	s.recvSeal.XORKeyStream(msg, sealed[SignatureSize:])
	if err := s.verify(msg, sealed[:SignatureSize]); err != nil {
		clear(msg)
		return nil, err
	}
	return msg, nil
}

// Sign returns the signature of msg, which is sent in the clear.
func (s *Session) Sign(msg []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq, err := s.nextSend()
	if err != nil {
		return nil, err
	}
	sig := make([]byte, SignatureSize)
	mac(sig, &s.sendSign, s.sendSeal, seq, msg)
	return sig, nil
}

// Verify checks the peer's signature of msg.
func (s *Session) Verify(msg, sig []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return err
	}
	if len(sig) != SignatureSize {
		return errorf(ErrMalformed, "signature of %d bytes", len(sig))
	}
	return s.verify(msg, sig)
}

// verify checks sig against msg with the receiving keys and the expected
// sequence number, in constant time. It advances the receiving RC4
// handle, so a failure ends the session.
func (s *Session) verify(msg, sig []byte) error {
	if s.recvSeq == math.MaxUint32 {
		s.dead = true
		return errorf(ErrState, "sequence numbers exhausted")
	}
	var want [SignatureSize]byte
	mac(want[:], &s.recvSign, s.recvSeal, s.recvSeq, msg)
	if !hmac.Equal(want[:], sig) {
		s.dead = true
		return ErrSignature
	}
	s.recvSeq++
	return nil
}

// ExportedSessionKey returns a copy of the exported session key (what
// SSPI calls the session key), which the caller wipes.
func (s *Session) ExportedSessionKey() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return nil, err
	}
	k := make([]byte, len(s.exported))
	copy(k, s.exported[:])
	return k, nil
}

// Wipe clears the session's keys; the session refuses everything after.
func (s *Session) Wipe() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.exported[:])
	clear(s.sendSign[:])
	clear(s.recvSign[:])
	resetRC4(s.sendSeal)
	resetRC4(s.recvSeal)
	s.dead = true
}

// String describes s without its keys.
func (s *Session) String() string {
	return "ntlm.Session{" + s.Domain + `\` + s.User + " [REDACTED]}"
}

// GoString keeps the keys out of %#v.
func (s *Session) GoString() string { return s.String() }

// LogValue keeps the keys out of slog records.
func (s *Session) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON keeps the keys out of JSON; no protocol carries a Session.
func (s *Session) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }
