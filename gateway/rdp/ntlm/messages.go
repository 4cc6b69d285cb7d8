package ntlm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Errors. Every error this package returns wraps one of them, but for a
// failing random source.
var (
	// ErrMalformed: a message, or a field of one, is not well formed.
	ErrMalformed = errors.New("ntlm: malformed message")
	// ErrUnsupported: the peer asked for something this package refuses
	// (NTLMv1, LM, anonymous, weak or missing session security, OEM).
	ErrUnsupported = errors.New("ntlm: not supported")
	// ErrAuthFailed: the AUTHENTICATE_MESSAGE does not prove knowledge of
	// the password, or fails a check that the proof covers.
	ErrAuthFailed = errors.New("ntlm: authentication failed")
	// ErrSignature: a sealed or signed message does not verify. The
	// session is unusable afterwards.
	ErrSignature = errors.New("ntlm: message signature does not verify")
	// ErrState: a method was called out of order, twice, or after Wipe.
	ErrState = errors.New("ntlm: called out of order")
)

func errorf(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}

// Flags are the negotiate flags of MS-NLMP 2.2.2.5.
type Flags uint32

// The negotiate flags.
const (
	FlagUnicode                 Flags = 0x00000001
	FlagOEM                     Flags = 0x00000002
	FlagRequestTarget           Flags = 0x00000004
	FlagSign                    Flags = 0x00000010
	FlagSeal                    Flags = 0x00000020
	FlagDatagram                Flags = 0x00000040
	FlagLMKey                   Flags = 0x00000080
	FlagNTLM                    Flags = 0x00000200
	FlagAnonymous               Flags = 0x00000800
	FlagOEMDomainSupplied       Flags = 0x00001000
	FlagOEMWorkstationSupplied  Flags = 0x00002000
	FlagAlwaysSign              Flags = 0x00008000
	FlagTargetTypeDomain        Flags = 0x00010000
	FlagTargetTypeServer        Flags = 0x00020000
	FlagExtendedSessionSecurity Flags = 0x00080000
	FlagIdentify                Flags = 0x00100000
	FlagRequestNonNTSessionKey  Flags = 0x00400000
	FlagTargetInfo              Flags = 0x00800000
	FlagVersion                 Flags = 0x02000000
	Flag128                     Flags = 0x20000000
	FlagKeyExchange             Flags = 0x40000000
	Flag56                      Flags = 0x80000000
)

// requiredFlags are what both Server and Client insist the peer offers.
const requiredFlags = FlagUnicode | FlagNTLM | FlagExtendedSessionSecurity |
	Flag128 | FlagKeyExchange | FlagSign | FlagSeal

// refusedFlags make Server and Client refuse the exchange.
const refusedFlags = FlagAnonymous | FlagDatagram

// Limits.
const (
	// MaxMessageSize is the largest message the parsers accept and the
	// encoders produce.
	MaxMessageSize = 64 << 10
	// maxNameBytes caps a user, domain, workstation or target name: 512
	// UTF-16 code units (OEM names in NEGOTIATE: 1024 bytes).
	maxNameBytes = 1024
	// maxAVListBytes caps an AV_PAIR list, terminator included.
	maxAVListBytes = 8 << 10
	// maxAVPairs caps the pairs in a list (a server sends about six).
	maxAVPairs = 64
	// maxNTResponse caps an NTLMv2 response: NTProofStr, the fixed part
	// of the client challenge, the AV pairs and the trailing 4 zero bytes.
	maxNTResponse = 16 + ntv2FixedLen + maxAVListBytes + 4
	// lmResponseLen is the only non-empty LM response length there is.
	lmResponseLen = 24
	// sessionKeyLen is the length of every key here.
	sessionKeyLen = 16
	// maxPasswordBytes caps a password (UTF-8); Windows allows 256 characters.
	maxPasswordBytes = 1024
)

var signature = [8]byte{'N', 'T', 'L', 'M', 'S', 'S', 'P', 0}

const (
	typeNegotiate    = 1
	typeChallenge    = 2
	typeAuthenticate = 3
)

// Fixed header sizes, without the Version field.
const (
	negotiateHeader    = 32
	challengeHeader    = 48
	authenticateHeader = 64
	versionLen         = 8
	micOffset          = 72
	micLen             = 16
)

// Version is the VERSION structure (MS-NLMP 2.2.2.10): informational only.
// A message carries one when its flags include FlagVersion.
type Version struct {
	Major, Minor uint8
	Build        uint16
	Revision     uint8 // NTLMSSP_REVISION_W2K3 is 15
}

// ourVersion is what Server and Client send: Windows 10's numbers with
// build 0 and the current NTLM revision.
var ourVersion = Version{Major: 10, Minor: 0, Build: 0, Revision: 15}

func parseVersion(b []byte) Version {
	return Version{Major: b[0], Minor: b[1], Build: binary.LittleEndian.Uint16(b[2:]), Revision: b[7]}
}

func (v Version) put(b []byte) {
	b[0], b[1] = v.Major, v.Minor
	binary.LittleEndian.PutUint16(b[2:], v.Build)
	b[4], b[5], b[6] = 0, 0, 0
	b[7] = v.Revision
}

// checkHeader checks the signature, type and size of msg.
func checkHeader(msg []byte, typ uint32, header int) error {
	if len(msg) > MaxMessageSize {
		return errorf(ErrMalformed, "%d bytes, more than %d", len(msg), MaxMessageSize)
	}
	if len(msg) < 12 || !bytes.Equal(msg[:8], signature[:]) {
		return errorf(ErrMalformed, "not an NTLMSSP message")
	}
	if got := binary.LittleEndian.Uint32(msg[8:]); got != typ {
		return errorf(ErrMalformed, "message type %d, want %d", got, typ)
	}
	if len(msg) < header {
		return errorf(ErrMalformed, "%d bytes, shorter than its %d-byte header", len(msg), header)
	}
	return nil
}

// field returns a copy of the payload that the 8-byte field descriptor at
// msg[at:] points to, and its offset. The payload must lie between the end
// of the header and the end of the message and be at most max bytes; an
// empty field is nil, whatever its offset. MaxLen is ignored, as MS-NLMP
// says.
func field(msg []byte, at, headerEnd, max int, name string) ([]byte, int, error) {
	n := int(binary.LittleEndian.Uint16(msg[at:]))
	if n == 0 {
		return nil, 0, nil
	}
	if n > max {
		return nil, 0, errorf(ErrMalformed, "%s field of %d bytes, more than %d", name, n, max)
	}
	// Where int is 32 bits wide, an offset of 2 GiB or more turns negative
	// here and is refused below like any other offset outside the payload.
	off := int(binary.LittleEndian.Uint32(msg[at+4:]))
	if off < headerEnd || off > len(msg)-n {
		return nil, 0, errorf(ErrMalformed, "%s field outside the payload", name)
	}
	return bytes.Clone(msg[off : off+n]), off, nil
}

// builder lays out a message: a fixed header, then payload fields in the
// order they are added.
type builder struct{ b []byte }

func newBuilder(typ uint32, header int) *builder {
	b := make([]byte, header, header+256)
	copy(b, signature[:])
	binary.LittleEndian.PutUint32(b[8:], typ)
	return &builder{b}
}

// field appends v to the payload and writes its descriptor at b[at:].
func (bd *builder) field(at int, v []byte, max int, name string) error {
	if len(v) > max {
		return errorf(ErrMalformed, "%s of %d bytes, more than %d", name, len(v), max)
	}
	if len(bd.b)+len(v) > MaxMessageSize {
		return errorf(ErrMalformed, "message would exceed %d bytes", MaxMessageSize)
	}
	n := uint16(len(v)) // #nosec G115 -- len(v) <= max <= maxNTResponse < 1<<16, checked above
	binary.LittleEndian.PutUint16(bd.b[at:], n)
	binary.LittleEndian.PutUint16(bd.b[at+2:], n)
	binary.LittleEndian.PutUint32(bd.b[at+4:], uint32(len(bd.b))) // #nosec G115 -- len(bd.b) < MaxMessageSize, checked above
	bd.b = append(bd.b, v...)
	return nil
}

// decodeName decodes a UTF-16LE name. It must have an even length, no
// unpaired surrogate and no control character.
func decodeName(b []byte, name string) (string, error) {
	if len(b)%2 != 0 {
		return "", errorf(ErrMalformed, "%s: odd UTF-16 length", name)
	}
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	for i := 0; i < len(u); i++ {
		c := rune(u[i])
		switch {
		case utf16.IsSurrogate(c):
			if c >= 0xdc00 || i+1 == len(u) || u[i+1] < 0xdc00 || u[i+1] > 0xdfff {
				return "", errorf(ErrMalformed, "%s: unpaired UTF-16 surrogate", name)
			}
			i++
		case unicode.IsControl(c):
			return "", errorf(ErrMalformed, "%s: control character", name)
		}
	}
	return string(utf16.Decode(u)), nil
}

// checkName checks that s can be sent as a name: valid UTF-8 without
// control characters, at most maxNameBytes in UTF-16.
func checkName(s, name string) error {
	if !utf8.ValidString(s) {
		return errorf(ErrMalformed, "%s is not valid UTF-8", name)
	}
	n := 0
	for _, r := range s {
		if unicode.IsControl(r) {
			return errorf(ErrMalformed, "%s holds a control character", name)
		}
		n += 2 * utf16.RuneLen(r)
	}
	if n > maxNameBytes {
		return errorf(ErrMalformed, "%s is longer than %d bytes in UTF-16", name, maxNameBytes)
	}
	return nil
}

// encodeName returns s in UTF-16LE.
func encodeName(s string) []byte {
	out := make([]byte, 0, 2*len(s))
	for _, u := range utf16.Encode([]rune(s)) {
		out = binary.LittleEndian.AppendUint16(out, u)
	}
	return out
}

// AVID identifies an AV_PAIR (MS-NLMP 2.2.2.1).
type AVID uint16

// The AV_PAIR identifiers.
const (
	AVEOL             AVID = 0
	AVNbComputerName  AVID = 1
	AVNbDomainName    AVID = 2
	AVDNSComputerName AVID = 3
	AVDNSDomainName   AVID = 4
	AVDNSTreeName     AVID = 5
	AVFlags           AVID = 6
	AVTimestamp       AVID = 7
	AVSingleHost      AVID = 8
	AVTargetName      AVID = 9
	AVChannelBindings AVID = 10
)

const (
	// avFlagMIC is the MsvAvFlags bit saying the message has a MIC.
	avFlagMIC = 0x2
	// channelBindingsSize is the size of MsvAvChannelBindings (an MD5).
	channelBindingsSize = 16
)

// avSize is the only length a pair of a fixed-size type may have.
var avSize = map[AVID]int{AVFlags: 4, AVTimestamp: 8, AVChannelBindings: channelBindingsSize}

// AVPair is one AV_PAIR.
type AVPair struct {
	ID    AVID
	Value []byte
}

// AVList is an AV_PAIR list without its MsvAvEOL terminator.
type AVList []AVPair

// Get returns the value of the pair with the given ID.
func (l AVList) Get(id AVID) ([]byte, bool) {
	for _, p := range l {
		if p.ID == id {
			return p.Value, true
		}
	}
	return nil, false
}

// parseAVList parses pairs up to MsvAvEOL and returns what follows it. A
// list must end with MsvAvEOL (of length 0) and hold at most maxAVPairs
// pairs, each ID at most once, the fixed-size types at their size.
func parseAVList(b []byte) (AVList, []byte, error) {
	var l AVList
	for {
		if len(b) < 4 {
			return nil, nil, errorf(ErrMalformed, "AV_PAIR list without MsvAvEOL")
		}
		id := AVID(binary.LittleEndian.Uint16(b))
		n := int(binary.LittleEndian.Uint16(b[2:]))
		if 4+n > len(b) {
			return nil, nil, errorf(ErrMalformed, "AV_PAIR %d runs past the list", id)
		}
		if id == AVEOL {
			if n != 0 {
				return nil, nil, errorf(ErrMalformed, "MsvAvEOL with a value")
			}
			return l, b[4:], nil
		}
		if len(l) == maxAVPairs {
			return nil, nil, errorf(ErrMalformed, "more than %d AV_PAIRs", maxAVPairs)
		}
		if size, ok := avSize[id]; ok && n != size {
			return nil, nil, errorf(ErrMalformed, "AV_PAIR %d of %d bytes, want %d", id, n, size)
		}
		if _, dup := l.Get(id); dup {
			return nil, nil, errorf(ErrMalformed, "AV_PAIR %d twice", id)
		}
		l = append(l, AVPair{ID: id, Value: bytes.Clone(b[4 : 4+n])})
		b = b[4+n:]
	}
}

// marshal encodes l with its terminator, checking what parseAVList checks.
func (l AVList) marshal() ([]byte, error) {
	if len(l) > maxAVPairs {
		return nil, errorf(ErrMalformed, "more than %d AV_PAIRs", maxAVPairs)
	}
	var out []byte
	for i, p := range l {
		if p.ID == AVEOL {
			return nil, errorf(ErrMalformed, "MsvAvEOL inside an AV_PAIR list")
		}
		if size, ok := avSize[p.ID]; ok && len(p.Value) != size {
			return nil, errorf(ErrMalformed, "AV_PAIR %d of %d bytes, want %d", p.ID, len(p.Value), size)
		}
		if _, dup := l[:i].Get(p.ID); dup {
			return nil, errorf(ErrMalformed, "AV_PAIR %d twice", p.ID)
		}
		if len(out)+4+len(p.Value)+4 > maxAVListBytes {
			return nil, errorf(ErrMalformed, "AV_PAIR list longer than %d bytes", maxAVListBytes)
		}
		out = binary.LittleEndian.AppendUint16(out, uint16(p.ID))
		out = binary.LittleEndian.AppendUint16(out, uint16(len(p.Value))) // #nosec G115 -- below maxAVListBytes, checked above
		out = append(out, p.Value...)
	}
	return append(out, 0, 0, 0, 0), nil
}

// Negotiate is a NEGOTIATE_MESSAGE (MS-NLMP 2.2.1.1).
type Negotiate struct {
	Flags Flags
	// Domain and Workstation are OEM-encoded, as sent; clients supply them
	// with FlagOEMDomainSupplied and FlagOEMWorkstationSupplied. Neither is
	// used for authentication.
	Domain, Workstation []byte
	Version             Version // sent when Flags has FlagVersion
}

// ParseNegotiate parses a NEGOTIATE_MESSAGE.
func ParseNegotiate(msg []byte) (*Negotiate, error) {
	if err := checkHeader(msg, typeNegotiate, negotiateHeader); err != nil {
		return nil, err
	}
	m := &Negotiate{Flags: Flags(binary.LittleEndian.Uint32(msg[12:]))}
	end := negotiateHeader
	if m.Flags&FlagVersion != 0 {
		end += versionLen
		if len(msg) < end {
			return nil, errorf(ErrMalformed, "NEGOTIATE without room for its Version")
		}
		m.Version = parseVersion(msg[negotiateHeader:])
	}
	var err error
	if m.Domain, _, err = field(msg, 16, end, maxNameBytes, "domain"); err != nil {
		return nil, err
	}
	if m.Workstation, _, err = field(msg, 24, end, maxNameBytes, "workstation"); err != nil {
		return nil, err
	}
	return m, nil
}

// Marshal encodes m.
func (m *Negotiate) Marshal() ([]byte, error) {
	header := negotiateHeader
	if m.Flags&FlagVersion != 0 {
		header += versionLen
	}
	bd := newBuilder(typeNegotiate, header)
	binary.LittleEndian.PutUint32(bd.b[12:], uint32(m.Flags))
	if m.Flags&FlagVersion != 0 {
		m.Version.put(bd.b[negotiateHeader:])
	}
	if err := bd.field(16, m.Domain, maxNameBytes, "domain"); err != nil {
		return nil, err
	}
	if err := bd.field(24, m.Workstation, maxNameBytes, "workstation"); err != nil {
		return nil, err
	}
	return bd.b, nil
}

// Challenge is a CHALLENGE_MESSAGE (MS-NLMP 2.2.1.2). Only Unicode ones
// are supported.
type Challenge struct {
	Flags           Flags
	TargetName      string
	ServerChallenge [8]byte
	TargetInfo      AVList
	Version         Version // sent when Flags has FlagVersion
}

// ParseChallenge parses a CHALLENGE_MESSAGE.
func ParseChallenge(msg []byte) (*Challenge, error) {
	if err := checkHeader(msg, typeChallenge, challengeHeader); err != nil {
		return nil, err
	}
	m := &Challenge{Flags: Flags(binary.LittleEndian.Uint32(msg[20:]))}
	if m.Flags&FlagUnicode == 0 {
		return nil, errorf(ErrUnsupported, "CHALLENGE without Unicode")
	}
	copy(m.ServerChallenge[:], msg[24:32])
	end := challengeHeader
	if m.Flags&FlagVersion != 0 {
		end += versionLen
		if len(msg) < end {
			return nil, errorf(ErrMalformed, "CHALLENGE without room for its Version")
		}
		m.Version = parseVersion(msg[challengeHeader:])
	}
	name, _, err := field(msg, 12, end, maxNameBytes, "target name")
	if err != nil {
		return nil, err
	}
	if m.TargetName, err = decodeName(name, "target name"); err != nil {
		return nil, err
	}
	ti, _, err := field(msg, 40, end, maxAVListBytes, "target info")
	if err != nil {
		return nil, err
	}
	if len(ti) > 0 {
		if m.TargetInfo, _, err = parseAVList(ti); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Marshal encodes m.
func (m *Challenge) Marshal() ([]byte, error) {
	if err := checkName(m.TargetName, "target name"); err != nil {
		return nil, err
	}
	var ti []byte
	if len(m.TargetInfo) > 0 {
		var err error
		if ti, err = m.TargetInfo.marshal(); err != nil {
			return nil, err
		}
	}
	header := challengeHeader
	if m.Flags&FlagVersion != 0 {
		header += versionLen
	}
	bd := newBuilder(typeChallenge, header)
	binary.LittleEndian.PutUint32(bd.b[20:], uint32(m.Flags))
	copy(bd.b[24:32], m.ServerChallenge[:])
	if m.Flags&FlagVersion != 0 {
		m.Version.put(bd.b[challengeHeader:])
	}
	if err := bd.field(12, encodeName(m.TargetName), maxNameBytes, "target name"); err != nil {
		return nil, err
	}
	if err := bd.field(40, ti, maxAVListBytes, "target info"); err != nil {
		return nil, err
	}
	return bd.b, nil
}

// Authenticate is an AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3). Only Unicode
// ones are supported.
type Authenticate struct {
	Flags                     Flags
	LMResponse                []byte // empty or 24 bytes
	NTResponse                []byte
	Domain, User, Workstation string
	EncryptedRandomSessionKey []byte // empty or 16 bytes
	Version                   Version
	// MIC is the 16 bytes at offset 72 when the payload leaves room for
	// them, nil otherwise. Whether they are a MIC is said by MsvAvFlags in
	// the NTLMv2 response, which the NTProofStr covers.
	MIC []byte
}

// ParseAuthenticate parses an AUTHENTICATE_MESSAGE.
func ParseAuthenticate(msg []byte) (*Authenticate, error) {
	if err := checkHeader(msg, typeAuthenticate, authenticateHeader); err != nil {
		return nil, err
	}
	m := &Authenticate{Flags: Flags(binary.LittleEndian.Uint32(msg[60:]))}
	if m.Flags&FlagUnicode == 0 {
		return nil, errorf(ErrUnsupported, "AUTHENTICATE without Unicode")
	}
	end := authenticateHeader
	if m.Flags&FlagVersion != 0 {
		end += versionLen
		if len(msg) < end {
			return nil, errorf(ErrMalformed, "AUTHENTICATE without room for its Version")
		}
		m.Version = parseVersion(msg[authenticateHeader:])
	}
	var (
		names   [3][]byte
		lowest  = len(msg)
		err     error
		off     int
		present = func(b []byte, o int) {
			if len(b) > 0 && o < lowest {
				lowest = o
			}
		}
	)
	if m.LMResponse, off, err = field(msg, 12, end, lmResponseLen, "LM response"); err != nil {
		return nil, err
	}
	present(m.LMResponse, off)
	if m.NTResponse, off, err = field(msg, 20, end, maxNTResponse, "NT response"); err != nil {
		return nil, err
	}
	present(m.NTResponse, off)
	for i, at := range []int{28, 36, 44} {
		if names[i], off, err = field(msg, at, end, maxNameBytes, "name"); err != nil {
			return nil, err
		}
		present(names[i], off)
	}
	if m.EncryptedRandomSessionKey, off, err = field(msg, 52, end, sessionKeyLen, "session key"); err != nil {
		return nil, err
	}
	present(m.EncryptedRandomSessionKey, off)
	if n := len(m.EncryptedRandomSessionKey); n != 0 && n != sessionKeyLen {
		return nil, errorf(ErrMalformed, "encrypted session key of %d bytes", n)
	}
	if m.Domain, err = decodeName(names[0], "domain"); err != nil {
		return nil, err
	}
	if m.User, err = decodeName(names[1], "user"); err != nil {
		return nil, err
	}
	if m.Workstation, err = decodeName(names[2], "workstation"); err != nil {
		return nil, err
	}
	if lowest >= micOffset+micLen {
		m.MIC = bytes.Clone(msg[micOffset : micOffset+micLen])
	}
	return m, nil
}

// Marshal encodes m. With a MIC (16 bytes) the header holds the Version
// field (zero unless Flags has FlagVersion) and the MIC.
func (m *Authenticate) Marshal() ([]byte, error) {
	for _, n := range []struct{ s, name string }{{m.Domain, "domain"}, {m.User, "user"}, {m.Workstation, "workstation"}} {
		if err := checkName(n.s, n.name); err != nil {
			return nil, err
		}
	}
	if n := len(m.EncryptedRandomSessionKey); n != 0 && n != sessionKeyLen {
		return nil, errorf(ErrMalformed, "encrypted session key of %d bytes", n)
	}
	header := authenticateHeader
	switch {
	case m.MIC != nil:
		if len(m.MIC) != micLen {
			return nil, errorf(ErrMalformed, "MIC of %d bytes", len(m.MIC))
		}
		header = micOffset + micLen
	case m.Flags&FlagVersion != 0:
		header += versionLen
	}
	bd := newBuilder(typeAuthenticate, header)
	binary.LittleEndian.PutUint32(bd.b[60:], uint32(m.Flags))
	if m.Flags&FlagVersion != 0 {
		m.Version.put(bd.b[authenticateHeader:])
	}
	if m.MIC != nil {
		copy(bd.b[micOffset:], m.MIC)
	}
	for _, f := range []struct {
		at   int
		v    []byte
		max  int
		name string
	}{
		{12, m.LMResponse, lmResponseLen, "LM response"},
		{20, m.NTResponse, maxNTResponse, "NT response"},
		{28, encodeName(m.Domain), maxNameBytes, "domain"},
		{36, encodeName(m.User), maxNameBytes, "user"},
		{44, encodeName(m.Workstation), maxNameBytes, "workstation"},
		{52, m.EncryptedRandomSessionKey, sessionKeyLen, "session key"},
	} {
		if err := bd.field(f.at, f.v, f.max, f.name); err != nil {
			return nil, err
		}
	}
	return bd.b, nil
}

// ntv2FixedLen is the fixed part of NTLMv2_CLIENT_CHALLENGE: RespType,
// HiRespType, 6 reserved bytes, TimeStamp, ChallengeFromClient and 4
// reserved bytes.
const ntv2FixedLen = 28

// ntv2Response is a parsed NTLMv2_RESPONSE (MS-NLMP 2.2.2.8).
type ntv2Response struct {
	proof     []byte // NTProofStr
	blob      []byte // NTLMv2_CLIENT_CHALLENGE as sent: what the proof covers
	timestamp uint64 // FILETIME
	pairs     AVList
}

func parseNTv2Response(nt []byte) (*ntv2Response, error) {
	if len(nt) < 16+ntv2FixedLen+4 {
		return nil, errorf(ErrMalformed, "NT response of %d bytes is too short for NTLMv2", len(nt))
	}
	blob := nt[16:]
	if blob[0] != 1 || blob[1] != 1 {
		return nil, errorf(ErrUnsupported, "NTLMv2 client challenge version %d.%d", blob[0], blob[1])
	}
	pairs, _, err := parseAVList(blob[ntv2FixedLen:])
	if err != nil {
		return nil, err
	}
	return &ntv2Response{
		proof:     nt[:16],
		blob:      blob,
		timestamp: binary.LittleEndian.Uint64(blob[8:]),
		pairs:     pairs,
	}, nil
}

// ntv2Blob builds NTLMv2_CLIENT_CHALLENGE with the trailing 4 zero bytes
// that MS-NLMP's ComputeResponse appends.
func ntv2Blob(timestamp uint64, clientChallenge []byte, pairs AVList) ([]byte, error) {
	av, err := pairs.marshal()
	if err != nil {
		return nil, err
	}
	b := make([]byte, ntv2FixedLen, ntv2FixedLen+len(av)+4)
	b[0], b[1] = 1, 1
	binary.LittleEndian.PutUint64(b[8:], timestamp)
	copy(b[16:24], clientChallenge)
	b = append(b, av...)
	return append(b, 0, 0, 0, 0), nil
}
