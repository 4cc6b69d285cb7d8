package ntlm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// clientFlags are what Client asks for: what Server requires, plus
// ALWAYS_SIGN, REQUEST_TARGET, VERSION and 56 as Windows clients send them.
const clientFlags = requiredFlags | FlagAlwaysSign | FlagRequestTarget | FlagVersion | Flag56

// Client logs in with NTLMv2 as one user: Negotiate returns the
// NEGOTIATE_MESSAGE, Authenticate answers the server's CHALLENGE_MESSAGE. A
// Client is used once, by one goroutine.
//
// The Client keeps only NTOWFv2 of the password (from NewClient on), and
// wipes it when Authenticate returns, or on Wipe.
type Client struct {
	// Workstation is the workstation name sent; empty by default.
	Workstation string
	// TargetSPN, if not empty, is sent as MsvAvTargetName (for RDP,
	// "TERMSRV/" followed by the target's host name).
	TargetSPN string

	user, domain string
	key          [16]byte // NTOWFv2
	rand         io.Reader
	now          func() time.Time
	negotiate    []byte
	done         bool
}

// NewClient returns a Client for user in domain (domain may be empty, as
// with a user principal name). The password is UTF-8; NewClient neither
// keeps nor changes it, so the caller may wipe it as soon as NewClient
// returns. nil rand means crypto/rand.Reader; nil now means time.Now.
func NewClient(user, domain string, password []byte, rand io.Reader, now func() time.Time) (*Client, error) {
	if user == "" {
		return nil, errorf(ErrUnsupported, "anonymous authentication")
	}
	if err := checkName(user, "user"); err != nil {
		return nil, err
	}
	if err := checkName(domain, "domain"); err != nil {
		return nil, err
	}
	key, err := ntowfv2(password, user, domain)
	if err != nil {
		return nil, err
	}
	c := &Client{user: user, domain: domain, key: key, rand: randOrDefault(rand), now: nowOrDefault(now)}
	clear(key[:])
	return c, nil
}

// Negotiate returns the NEGOTIATE_MESSAGE; every call returns the same.
func (c *Client) Negotiate() []byte {
	if c.negotiate == nil {
		b := newBuilder(typeNegotiate, negotiateHeader+versionLen)
		binary.LittleEndian.PutUint32(b.b[12:], uint32(clientFlags))
		// Empty domain and workstation fields point at the payload's start.
		binary.LittleEndian.PutUint32(b.b[20:], negotiateHeader+versionLen)
		binary.LittleEndian.PutUint32(b.b[28:], negotiateHeader+versionLen)
		ourVersion.put(b.b[negotiateHeader:])
		c.negotiate = b.b
	}
	return bytes.Clone(c.negotiate)
}

// Authenticate answers the server's CHALLENGE_MESSAGE with an
// AUTHENTICATE_MESSAGE carrying an NTLMv2 response, a MIC and a random
// session key sent under key exchange, and returns the Session for
// sealing. channelBindings is the application data of the channel
// bindings (for TLS, "tls-server-end-point:" followed by the certificate's
// hash), or nil for none, which sends 16 zero bytes as Windows does.
//
// The server must agree to Unicode, NTLM, extended session security,
// 128-bit keys, key exchange, signing and sealing, and name itself with
// MsvAvNbComputerName and MsvAvNbDomainName (MS-NLMP 3.1.5.1.2). The
// Client is spent afterwards, whatever the outcome.
func (c *Client) Authenticate(challenge, channelBindings []byte) ([]byte, *Session, error) {
	if c.negotiate == nil || c.done {
		return nil, nil, errorf(ErrState, "Authenticate without Negotiate, or twice")
	}
	defer c.Wipe()
	ch, err := ParseChallenge(challenge)
	if err != nil {
		return nil, nil, err
	}
	if missing := requiredFlags &^ ch.Flags; missing != 0 {
		return nil, nil, errorf(ErrUnsupported, "server does not agree to flags %#08x", uint32(missing))
	}
	if refused := ch.Flags & refusedFlags; refused != 0 {
		return nil, nil, errorf(ErrUnsupported, "server asks for flags %#08x", uint32(refused))
	}
	_, nbComputer := ch.TargetInfo.Get(AVNbComputerName)
	_, nbDomain := ch.TargetInfo.Get(AVNbDomainName)
	if !nbComputer || !nbDomain {
		return nil, nil, errorf(ErrMalformed, "CHALLENGE target info without NetBIOS computer and domain names")
	}
	if err := checkName(c.Workstation, "workstation"); err != nil {
		return nil, nil, err
	}
	if err := checkName(c.TargetSPN, "target SPN"); err != nil {
		return nil, nil, err
	}

	var random [8 + 16]byte // client challenge, exported session key
	if _, err := io.ReadFull(c.rand, random[:]); err != nil {
		return nil, nil, fmt.Errorf("ntlm: random source: %w", err)
	}
	defer clear(random[:])
	clientChallenge := random[:8]
	var exported [16]byte
	copy(exported[:], random[8:])
	defer clear(exported[:])

	// The client's AV pairs: the server's, with the MIC bit set in
	// MsvAvFlags, then the channel bindings and the target name.
	var timestamp uint64
	serverTime := false
	var avFlags uint32
	pairs := make(AVList, 0, len(ch.TargetInfo)+3)
	for _, p := range ch.TargetInfo {
		switch p.ID {
		case AVFlags:
			avFlags = binary.LittleEndian.Uint32(p.Value)
		case AVChannelBindings, AVTargetName:
		case AVTimestamp:
			timestamp, serverTime = binary.LittleEndian.Uint64(p.Value), true
			pairs = append(pairs, p)
		default:
			pairs = append(pairs, p)
		}
	}
	if !serverTime {
		timestamp = toFiletime(c.now())
	}
	flags := binary.LittleEndian.AppendUint32(nil, avFlags|avFlagMIC)
	var cbt [16]byte
	if channelBindings != nil {
		cbt = channelBindingsHash(channelBindings)
	}
	pairs = append(pairs, AVPair{ID: AVFlags, Value: flags}, AVPair{ID: AVChannelBindings, Value: cbt[:]})
	if c.TargetSPN != "" {
		pairs = append(pairs, AVPair{ID: AVTargetName, Value: encodeName(c.TargetSPN)})
	}
	blob, err := ntv2Blob(timestamp, clientChallenge, pairs)
	if err != nil {
		return nil, nil, err
	}

	proof := hmacMD5(c.key[:], ch.ServerChallenge[:], blob)
	baseKey := hmacMD5(c.key[:], proof[:])
	defer clear(baseKey[:])
	encrypted := rc4Once(baseKey[:], exported[:])
	// With a server timestamp the LM response is 24 zero bytes
	// (MS-NLMP 3.1.5.1.2); without one, it is LMv2.
	lm := make([]byte, lmResponseLen)
	if !serverTime {
		lmProof := hmacMD5(c.key[:], ch.ServerChallenge[:], clientChallenge)
		copy(lm, lmProof[:])
		copy(lm[16:], clientChallenge)
	}
	m := &Authenticate{
		Flags:                     ch.Flags & (clientFlags | FlagTargetInfo),
		LMResponse:                lm,
		NTResponse:                append(proof[:], blob...),
		Domain:                    c.domain,
		User:                      c.user,
		Workstation:               c.Workstation,
		EncryptedRandomSessionKey: encrypted[:],
		Version:                   ourVersion,
		MIC:                       make([]byte, micLen),
	}
	msg, err := m.Marshal()
	if err != nil {
		return nil, nil, err
	}
	mic := hmacMD5(exported[:], c.negotiate, challenge, msg)
	copy(msg[micOffset:], mic[:])

	sess := newSession(&exported, true)
	sess.User, sess.Domain, sess.Workstation = c.user, c.domain, c.Workstation
	return msg, sess, nil
}

// Wipe clears the Client's key; Authenticate refuses to run after it.
func (c *Client) Wipe() {
	clear(c.key[:])
	c.done = true
}

// String describes c without its key.
func (c *Client) String() string {
	return "ntlm.Client{" + c.domain + `\` + c.user + " [REDACTED]}"
}

// GoString keeps the key out of %#v.
func (c *Client) GoString() string { return c.String() }

// LogValue keeps the key out of slog records.
func (c *Client) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalJSON keeps the key out of JSON; no protocol carries a Client.
func (c *Client) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }
