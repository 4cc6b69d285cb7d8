package ntlm

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// DefaultMaxClockSkew is how far a client's NTLMv2 timestamp may be from
// the server's clock when Server.MaxClockSkew is 0. Clients echo the
// timestamp of the CHALLENGE_MESSAGE, so this also bounds how long an
// exchange may take.
const DefaultMaxClockSkew = 5 * time.Minute

// Server verifies one NTLMv2 exchange: Challenge answers the client's
// NEGOTIATE_MESSAGE, Authenticate checks its AUTHENTICATE_MESSAGE. A
// Server is used once, by one goroutine; each method may be called once,
// in that order, and a failed call ends the exchange.
type Server struct {
	// ChannelBindings, if not nil, is the application data of the channel
	// bindings the client must have seen (for TLS, "tls-server-end-point:"
	// followed by the certificate's hash): its MsvAvChannelBindings must
	// match. CredSSP binds the TLS key with pubKeyAuth instead and leaves
	// this nil.
	ChannelBindings []byte
	// MaxClockSkew bounds the difference between the client's timestamp
	// and the server's clock; 0 means DefaultMaxClockSkew.
	MaxClockSkew time.Duration

	targetName      string
	rand            io.Reader
	now             func() time.Time
	state           int
	negotiate       []byte
	challenge       []byte
	serverChallenge [8]byte
}

const (
	stateNew = iota
	stateNegotiated
	stateDone
)

// NewServer returns a Server that names itself targetName (in the
// CHALLENGE_MESSAGE's target name and NetBIOS and DNS AV pairs) and draws
// its challenge from rand; nil rand means crypto/rand.Reader and nil now
// means time.Now.
func NewServer(targetName string, rand io.Reader, now func() time.Time) *Server {
	return &Server{targetName: targetName, rand: randOrDefault(rand), now: nowOrDefault(now)}
}

func randOrDefault(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}

func nowOrDefault(now func() time.Time) func() time.Time {
	if now == nil {
		return time.Now
	}
	return now
}

// Challenge parses the client's NEGOTIATE_MESSAGE and returns the
// CHALLENGE_MESSAGE. The client must offer Unicode, NTLM, extended session
// security, 128-bit keys, key exchange, signing and sealing; anonymous and
// datagram requests are refused.
func (s *Server) Challenge(negotiate []byte) ([]byte, error) {
	if s.state != stateNew {
		return nil, errorf(ErrState, "Challenge called twice")
	}
	s.state = stateDone
	neg, err := ParseNegotiate(negotiate)
	if err != nil {
		return nil, err
	}
	if missing := requiredFlags &^ neg.Flags; missing != 0 {
		return nil, errorf(ErrUnsupported, "client does not offer flags %#08x", uint32(missing))
	}
	if refused := neg.Flags & refusedFlags; refused != 0 {
		return nil, errorf(ErrUnsupported, "client asks for flags %#08x", uint32(refused))
	}
	if s.targetName == "" {
		return nil, errorf(ErrMalformed, "empty target name")
	}
	if err := checkName(s.targetName, "target name"); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(s.rand, s.serverChallenge[:]); err != nil {
		return nil, fmt.Errorf("ntlm: server challenge: %w", err)
	}
	var ts [8]byte
	binary.LittleEndian.PutUint64(ts[:], toFiletime(s.now()))
	name := encodeName(s.targetName)
	ch := &Challenge{
		Flags: requiredFlags | FlagRequestTarget | FlagTargetInfo | FlagTargetTypeServer |
			neg.Flags&(FlagAlwaysSign|FlagVersion|Flag56),
		TargetName:      s.targetName,
		ServerChallenge: s.serverChallenge,
		TargetInfo: AVList{
			{ID: AVNbDomainName, Value: name},
			{ID: AVNbComputerName, Value: name},
			{ID: AVDNSDomainName, Value: name},
			{ID: AVDNSComputerName, Value: name},
			{ID: AVTimestamp, Value: ts[:]},
		},
		Version: ourVersion,
	}
	msg, err := ch.Marshal()
	if err != nil {
		return nil, err
	}
	s.negotiate = bytes.Clone(negotiate)
	s.challenge = msg
	s.state = stateNegotiated
	return bytes.Clone(msg), nil
}

// Authenticate checks the client's AUTHENTICATE_MESSAGE. lookup returns
// the password (here: the one-time token) of the user and domain the
// message names, or false if there is none; the password stays the
// caller's, who wipes it after Authenticate returns (Authenticate neither
// keeps nor changes it).
//
// The message must carry an NTLMv2 response whose NTProofStr matches the
// password (compared in constant time); if its MsvAvFlags says it has a
// MIC, the MIC must match; its timestamp must be within MaxClockSkew of
// the server's clock; if ChannelBindings is set, MsvAvChannelBindings must
// match it. NTLMv1, LM and anonymous authentication are refused. On
// success the Session holds the names and the session keys; every failure
// to prove the password wraps ErrAuthFailed, and no error holds the
// password or the names.
func (s *Server) Authenticate(authenticate []byte, lookup func(user, domain string) (password []byte, ok bool)) (*Session, error) {
	if s.state != stateNegotiated || lookup == nil {
		return nil, errorf(ErrState, "Authenticate without a Challenge or a lookup, or twice")
	}
	s.state = stateDone
	m, err := ParseAuthenticate(authenticate)
	if err != nil {
		return nil, err
	}
	switch {
	case m.Flags&FlagAnonymous != 0 || m.User == "":
		return nil, errorf(ErrUnsupported, "anonymous authentication")
	case len(m.NTResponse) == 0:
		return nil, errorf(ErrUnsupported, "LM authentication (no NT response)")
	case len(m.NTResponse) == lmResponseLen:
		return nil, errorf(ErrUnsupported, "NTLMv1 authentication")
	}
	if missing := requiredFlags &^ m.Flags; missing != 0 {
		return nil, errorf(ErrUnsupported, "AUTHENTICATE lacks flags %#08x", uint32(missing))
	}
	if refused := m.Flags & refusedFlags; refused != 0 {
		return nil, errorf(ErrUnsupported, "AUTHENTICATE asks for flags %#08x", uint32(refused))
	}
	if len(m.EncryptedRandomSessionKey) != sessionKeyLen {
		return nil, errorf(ErrMalformed, "key exchange without an encrypted session key")
	}
	resp, err := parseNTv2Response(m.NTResponse)
	if err != nil {
		return nil, err
	}
	hasMIC := false
	if f, ok := resp.pairs.Get(AVFlags); ok {
		hasMIC = binary.LittleEndian.Uint32(f)&avFlagMIC != 0
	}
	if hasMIC && m.MIC == nil {
		return nil, errorf(ErrAuthFailed, "MsvAvFlags announces a MIC that the message has no room for")
	}

	password, ok := lookup(m.User, m.Domain)
	if !ok {
		return nil, errorf(ErrAuthFailed, "no such user")
	}
	key, err := ntowfv2(password, m.User, m.Domain)
	if err != nil {
		return nil, errorf(ErrAuthFailed, "the stored password cannot be used: %v", err)
	}
	defer clear(key[:])
	proof := hmacMD5(key[:], s.serverChallenge[:], resp.blob)
	if !hmac.Equal(proof[:], resp.proof) {
		return nil, errorf(ErrAuthFailed, "NTLMv2 response does not match")
	}
	// KXKEY for NTLMv2 is the session base key (MS-NLMP 3.4.5.1).
	baseKey := hmacMD5(key[:], proof[:])
	defer clear(baseKey[:])
	exported := rc4Once(baseKey[:], m.EncryptedRandomSessionKey)
	defer clear(exported[:])
	if hasMIC {
		zeroed := bytes.Clone(authenticate)
		clear(zeroed[micOffset : micOffset+micLen])
		mic := hmacMD5(exported[:], s.negotiate, s.challenge, zeroed)
		if !hmac.Equal(mic[:], m.MIC) {
			return nil, errorf(ErrAuthFailed, "MIC does not match")
		}
	}
	skew := s.MaxClockSkew
	if skew <= 0 {
		skew = DefaultMaxClockSkew
	}
	now := s.now()
	if ts := fromFiletime(resp.timestamp); ts.Before(now.Add(-skew)) || ts.After(now.Add(skew)) {
		return nil, errorf(ErrAuthFailed, "timestamp %s is more than %s from the server's clock", ts.Format(time.RFC3339), skew)
	}
	if s.ChannelBindings != nil {
		want := channelBindingsHash(s.ChannelBindings)
		got, ok := resp.pairs.Get(AVChannelBindings)
		if !ok || !hmac.Equal(got, want[:]) {
			return nil, errorf(ErrAuthFailed, "channel bindings do not match")
		}
	}
	sess := newSession(&exported, false)
	sess.User, sess.Domain, sess.Workstation = m.User, m.Domain, m.Workstation
	return sess, nil
}
