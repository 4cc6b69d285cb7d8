package pdu

import (
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrNotClientInfo: the frame is a valid X.224 Data TPDU but not a Client
// Info PDU (another MCS PDU, or Send Data without SEC_INFO_PKT). During the
// connection sequence, before the Client Info PDU, the gateway relays such
// frames unchanged.
var ErrNotClientInfo = errors.New("pdu: not a Client Info PDU")

// Security header flags (TS_SECURITY_HEADER.flags, MS-RDPBCGR 2.2.8.1.1.2.1).
const (
	SecExchangePkt uint16 = 0x0001 // SEC_EXCHANGE_PKT
	SecEncrypt     uint16 = 0x0008 // SEC_ENCRYPT
	SecInfoPkt     uint16 = 0x0040 // SEC_INFO_PKT
	SecLicensePkt  uint16 = 0x0080 // SEC_LICENSE_PKT
)

// TS_INFO_PACKET flags (MS-RDPBCGR 2.2.1.11.1.1), those the gateway may
// look at or change.
const (
	InfoMouse               uint32 = 0x00000001 // INFO_MOUSE
	InfoDisableCtrlAltDel   uint32 = 0x00000002 // INFO_DISABLECTRLALTDEL
	InfoAutologon           uint32 = 0x00000008 // INFO_AUTOLOGON
	InfoUnicode             uint32 = 0x00000010 // INFO_UNICODE
	InfoMaximizeShell       uint32 = 0x00000020 // INFO_MAXIMIZESHELL
	InfoLogonNotify         uint32 = 0x00000040 // INFO_LOGONNOTIFY
	InfoCompression         uint32 = 0x00000080 // INFO_COMPRESSION
	InfoEnableWindowsKey    uint32 = 0x00000100 // INFO_ENABLEWINDOWSKEY
	InfoRemoteConsoleAudio  uint32 = 0x00002000 // INFO_REMOTECONSOLEAUDIO
	InfoForceEncryptedCSPDU uint32 = 0x00004000 // INFO_FORCE_ENCRYPTED_CS_PDU
	InfoRail                uint32 = 0x00008000 // INFO_RAIL
	InfoLogonErrors         uint32 = 0x00010000 // INFO_LOGONERRORS
	InfoMouseHasWheel       uint32 = 0x00020000 // INFO_MOUSE_HAS_WHEEL
	InfoPasswordIsSCPin     uint32 = 0x00040000 // INFO_PASSWORD_IS_SC_PIN
	InfoNoAudioPlayback     uint32 = 0x00080000 // INFO_NOAUDIOPLAYBACK
	InfoUsingSavedCreds     uint32 = 0x00100000 // INFO_USING_SAVED_CREDS
	InfoAudioCapture        uint32 = 0x00200000 // INFO_AUDIOCAPTURE
	InfoVideoDisable        uint32 = 0x00400000 // INFO_VIDEO_DISABLE
	InfoHiDefRailSupported  uint32 = 0x02000000 // INFO_HIDEF_RAIL_SUPPORTED
	InfoCompressionTypeMask uint32 = 0x00001E00 // CompressionTypeMask
)

// Caps from MS-RDPBCGR 2.2.1.11.1.1 and 2.2.1.11.1.1.1, in bytes.
const (
	// MaxInfoString caps each of cbDomain, cbUserName, cbPassword,
	// cbAlternateShell and cbWorkingDir: 512 bytes with the two-byte
	// terminator the lengths leave out.
	MaxInfoString = 510
	// maxClientAddress and maxClientDir count the terminator, as their
	// length fields do.
	maxClientAddress = 80
	maxClientDir     = 512
	// maxAutoReconnectCookie caps cbAutoReconnectCookie (an
	// ARC_CS_PRIVATE_PACKET is 28 bytes).
	maxAutoReconnectCookie = 128
	timeZoneLen            = 172 // TS_TIME_ZONE_INFORMATION
	infoFixedLen           = 18  // codePage, flags and the five lengths

	mcsSendDataRequest = 25 << 2 // DomainMCSPDU choice 25, two padding bits
	mcsUserIDBase      = 1001    // UserId ::= DynamicChannelId (1001..65535)
	mcsSegBeginEnd     = 0x30    // segmentation: begin and end
	secHeaderLen       = 4
)

// ClientInfo is a Client Info PDU (MS-RDPBCGR 2.2.1.11) under Enhanced RDP
// Security: MCS Send Data Request, basic security header with
// SEC_INFO_PKT, TS_INFO_PACKET and its TS_EXTENDED_INFO_PACKET.
//
// The strings are kept as the client sent them (UTF-16LE) and read through
// methods; everything the gateway does not change is re-encoded exactly as
// received, unknown trailing fields included. The password never appears
// in String, GoString, LogValue, JSON or errors; Wipe clears it.
type ClientInfo struct {
	// Initiator is the MCS user ID (1001 and up); ChannelID the channel,
	// normally the I/O channel.
	Initiator, ChannelID uint16
	// SecFlags and SecFlagsHi are the basic security header's.
	SecFlags, SecFlagsHi uint16
	// CodePage and Flags (Info...) are TS_INFO_PACKET's.
	CodePage, Flags uint32
	// ClientAddressFamily is the extended info's (2 AF_INET, 0x17
	// AF_INET6); zero without extended info.
	ClientAddressFamily uint16
	// SessionID and PerformanceFlags are the extended info's; zero when
	// absent (HasTimeZone false).
	SessionID, PerformanceFlags uint32

	mcsFlags byte // dataPriority and segmentation, as sent
	longLen  bool // the MCS user data length was sent in two bytes

	// UTF-16LE without terminators.
	domain, user, password, shell, workDir []byte

	ext                      bool   // TS_EXTENDED_INFO_PACKET present
	clientAddress, clientDir []byte // as sent, terminators included
	hasTimeZone              bool   // clientTimeZone to cbAutoReconnectCookie present
	timeZone                 []byte
	cookie                   []byte // autoReconnectCookie
	tail                     []byte // whatever follows, as sent
}

// ParseClientInfo parses a TPKT frame holding a Client Info PDU. It returns
// an error wrapping ErrNotClientInfo for other MCS PDUs, ErrUnsupported for
// an encrypted PDU (Standard RDP Security), ANSI strings or segmented MCS
// data, ErrTooLarge for strings over their caps, and ErrMalformed for the
// rest. The result holds copies: frame may be wiped afterwards.
func ParseClientInfo(frame []byte) (*ClientInfo, error) {
	if len(frame) > MaxSetupPDU {
		return nil, tooLarge("Client Info of %d bytes", len(frame))
	}
	p, err := ParseData(frame)
	if err != nil {
		return nil, err
	}
	c := newCursor(p)
	if c.u8() != mcsSendDataRequest {
		return nil, ErrNotClientInfo
	}
	ci := &ClientInfo{}
	initiator := c.be16()
	ci.ChannelID = c.be16()
	ci.mcsFlags = c.u8()
	n, long, ok := c.perLength()
	if !ok || c.bad || n != c.left() {
		return nil, malformed("MCS Send Data Request: bad user data length")
	}
	if int(initiator) > 0xFFFF-mcsUserIDBase {
		return nil, malformed("MCS Send Data Request: initiator out of range")
	}
	ci.Initiator, ci.longLen = initiator+mcsUserIDBase, long
	if c.left() < secHeaderLen {
		return nil, ErrNotClientInfo
	}
	ci.SecFlags, ci.SecFlagsHi = c.le16(), c.le16()
	if ci.SecFlags&SecInfoPkt == 0 {
		return nil, ErrNotClientInfo
	}
	if ci.SecFlags&SecEncrypt != 0 {
		return nil, unsupported("encrypted Client Info (Standard RDP Security)")
	}
	if ci.mcsFlags&0x3F != mcsSegBeginEnd {
		return nil, unsupported("segmented MCS data")
	}
	if err := ci.parseInfo(c); err != nil {
		return nil, err
	}
	return ci, nil
}

// infoStringNames name TS_INFO_PACKET's strings in errors (never their
// contents or lengths).
var infoStringNames = [5]string{"domain", "user name", "password", "alternate shell", "working directory"}

func (ci *ClientInfo) strings() [5]*[]byte {
	return [5]*[]byte{&ci.domain, &ci.user, &ci.password, &ci.shell, &ci.workDir}
}

func (ci *ClientInfo) parseInfo(c *cursor) error {
	ci.CodePage, ci.Flags = c.le32(), c.le32()
	var cb [5]int
	for i := range cb {
		cb[i] = int(c.le16())
	}
	if c.bad {
		return malformed("TS_INFO_PACKET truncated")
	}
	if ci.Flags&InfoUnicode == 0 {
		return unsupported("TS_INFO_PACKET with ANSI strings")
	}
	for i, dst := range ci.strings() {
		switch {
		case cb[i] > MaxInfoString:
			ci.Wipe()
			return tooLarge("TS_INFO_PACKET %s over %d bytes", infoStringNames[i], MaxInfoString)
		case cb[i]%2 != 0:
			ci.Wipe()
			return malformed("TS_INFO_PACKET %s of odd length", infoStringNames[i])
		}
		s, term := c.take(cb[i]), c.take(2)
		if c.bad {
			ci.Wipe()
			return malformed("TS_INFO_PACKET %s truncated", infoStringNames[i])
		}
		if term[0] != 0 || term[1] != 0 {
			ci.Wipe()
			return malformed("TS_INFO_PACKET %s without its terminator", infoStringNames[i])
		}
		*dst = own(s)
	}
	if c.left() == 0 {
		return nil
	}
	err := ci.parseExtended(c)
	if err != nil {
		ci.Wipe()
	}
	return err
}

func (ci *ClientInfo) parseExtended(c *cursor) error {
	ci.ext = true
	ci.ClientAddressFamily = c.le16()
	n := int(c.le16())
	if n > maxClientAddress {
		return tooLarge("clientAddress of %d bytes", n)
	}
	ci.clientAddress = own(c.take(n))
	n = int(c.le16())
	if n > maxClientDir {
		return tooLarge("clientDir of %d bytes", n)
	}
	ci.clientDir = own(c.take(n))
	if c.bad {
		return malformed("TS_EXTENDED_INFO_PACKET truncated")
	}
	if c.left() >= timeZoneLen+4+4+2 {
		ci.hasTimeZone = true
		ci.timeZone = own(c.take(timeZoneLen))
		ci.SessionID, ci.PerformanceFlags = c.le32(), c.le32()
		n = int(c.le16())
		if n > maxAutoReconnectCookie {
			return tooLarge("autoReconnectCookie of %d bytes", n)
		}
		ci.cookie = own(c.take(n))
		if c.bad {
			return malformed("autoReconnectCookie truncated")
		}
	}
	ci.tail = own(c.rest())
	return nil
}

// own returns a copy of b that the ClientInfo owns, nil when b is empty.
func own(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

// Encode returns the whole Client Info PDU, TPKT to TS_INFO_PACKET, with
// every length recomputed. The result holds the password: wipe it once
// written.
func (ci *ClientInfo) Encode() ([]byte, error) {
	if ci.Initiator < mcsUserIDBase {
		return nil, malformed("MCS initiator %d below %d", ci.Initiator, mcsUserIDBase)
	}
	if ci.Flags&InfoUnicode == 0 {
		return nil, unsupported("TS_INFO_PACKET with ANSI strings")
	}
	info := infoFixedLen
	for _, s := range ci.strings() {
		info += len(*s) + 2
	}
	if ci.ext {
		info += 6 + len(ci.clientAddress) + len(ci.clientDir)
		if ci.hasTimeZone {
			info += timeZoneLen + 4 + 4 + 2 + len(ci.cookie)
		}
		info += len(ci.tail)
	}
	data := secHeaderLen + info
	if data > maxPERLength {
		return nil, tooLarge("Client Info of %d bytes", data)
	}
	long := ci.longLen || data >= 0x80
	total := tpktHeaderLen + len(DataHeader) + 6 + 1 + data
	if long {
		total++
	}
	if total > MaxSetupPDU {
		return nil, tooLarge("Client Info of %d bytes", total)
	}
	// One allocation of the exact size: appending never moves the
	// password, so no stray copy is left behind.
	b := make([]byte, 0, total)
	b = append(b, tpktVersion, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(total)) // #nosec G115 -- total is at most MaxSetupPDU
	b = append(b, DataHeader[:]...)
	b = append(b, mcsSendDataRequest)
	b = binary.BigEndian.AppendUint16(b, ci.Initiator-mcsUserIDBase)
	b = binary.BigEndian.AppendUint16(b, ci.ChannelID)
	b = append(b, ci.mcsFlags)
	b = appendPERLength(b, data, long)
	b = binary.LittleEndian.AppendUint16(b, ci.SecFlags)
	b = binary.LittleEndian.AppendUint16(b, ci.SecFlagsHi)
	b = binary.LittleEndian.AppendUint32(b, ci.CodePage)
	b = binary.LittleEndian.AppendUint32(b, ci.Flags)
	for _, s := range ci.strings() {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(*s))) // #nosec G115 -- at most MaxInfoString
	}
	for _, s := range ci.strings() {
		b = append(append(b, *s...), 0, 0)
	}
	if ci.ext {
		b = binary.LittleEndian.AppendUint16(b, ci.ClientAddressFamily)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(ci.clientAddress))) // #nosec G115 -- at most maxClientAddress
		b = append(b, ci.clientAddress...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(ci.clientDir))) // #nosec G115 -- at most maxClientDir
		b = append(b, ci.clientDir...)
		if ci.hasTimeZone {
			b = append(b, ci.timeZone...)
			b = binary.LittleEndian.AppendUint32(b, ci.SessionID)
			b = binary.LittleEndian.AppendUint32(b, ci.PerformanceFlags)
			b = binary.LittleEndian.AppendUint16(b, uint16(len(ci.cookie))) // #nosec G115 -- at most maxAutoReconnectCookie
			b = append(b, ci.cookie...)
		}
		b = append(b, ci.tail...)
	}
	if len(b) != total {
		clear(b)
		return nil, malformed("Client Info encoded to %d bytes, expected %d", len(b), total)
	}
	return b, nil
}

// Domain returns the domain the client sent (or SetDomain set).
func (ci *ClientInfo) Domain() string { return decodeUTF16LE(ci.domain) }

// User returns the user name.
func (ci *ClientInfo) User() string { return decodeUTF16LE(ci.user) }

// AlternateShell returns the program the client asked to start.
func (ci *ClientInfo) AlternateShell() string { return decodeUTF16LE(ci.shell) }

// WorkingDir returns the alternate shell's working directory.
func (ci *ClientInfo) WorkingDir() string { return decodeUTF16LE(ci.workDir) }

// HasExtendedInfo says TS_EXTENDED_INFO_PACKET is present.
func (ci *ClientInfo) HasExtendedInfo() bool { return ci.ext }

// HasTimeZone says the extended info goes at least as far as
// cbAutoReconnectCookie (so SessionID and PerformanceFlags are the
// client's).
func (ci *ClientInfo) HasTimeZone() bool { return ci.hasTimeZone }

// ClientAddress returns the address the client says it has (unverified).
func (ci *ClientInfo) ClientAddress() string { return utf16z(ci.clientAddress) }

// ClientDir returns the client's directory as it reports it.
func (ci *ClientInfo) ClientDir() string { return utf16z(ci.clientDir) }

// HasAutoReconnectCookie says the client sent an auto-reconnect cookie.
func (ci *ClientInfo) HasAutoReconnectCookie() bool { return len(ci.cookie) > 0 }

// SetDomain replaces the domain. s must be valid UTF-8 without NUL and
// at most MaxInfoString bytes in UTF-16.
func (ci *ClientInfo) SetDomain(s string) error {
	b, err := encodeUTF16LE([]byte(s), "domain")
	if err == nil {
		ci.domain = b
	}
	return err
}

// SetUser replaces the user name, with SetDomain's rules.
func (ci *ClientInfo) SetUser(s string) error {
	b, err := encodeUTF16LE([]byte(s), "user name")
	if err == nil {
		ci.user = b
	}
	return err
}

// SetPassword replaces the password with pw (UTF-8, with SetDomain's
// rules), wiping the old one. The ClientInfo keeps its own UTF-16 copy, not
// pw, which stays the caller's to wipe.
func (ci *ClientInfo) SetPassword(pw []byte) error {
	b, err := encodeUTF16LE(pw, "password")
	if err != nil {
		return err
	}
	clear(ci.password)
	ci.password = b
	return nil
}

// Password returns the password as UTF-8 (unpaired surrogates become
// U+FFFD) in a new slice the caller must wipe.
func (ci *ClientInfo) Password() []byte {
	// At most 3 bytes of UTF-8 per UTF-16 unit: one allocation, never moved.
	out := make([]byte, 0, len(ci.password)/2*3)
	for i := 0; i+1 < len(ci.password); i += 2 {
		r := rune(binary.LittleEndian.Uint16(ci.password[i:]))
		if utf16.IsSurrogate(r) && i+3 < len(ci.password) {
			r2 := rune(binary.LittleEndian.Uint16(ci.password[i+2:]))
			if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
				out = utf8.AppendRune(out, d)
				i += 2
				continue
			}
		}
		if utf16.IsSurrogate(r) {
			r = utf8.RuneError
		}
		out = utf8.AppendRune(out, r)
	}
	return out
}

// PasswordEqual reports, in time independent of the contents, whether the
// password is want (UTF-8).
func (ci *ClientInfo) PasswordEqual(want []byte) bool {
	w, err := encodeUTF16LE(want, "password")
	if err != nil {
		return false
	}
	eq := subtle.ConstantTimeCompare(w, ci.password) == 1
	clear(w)
	return eq
}

// SetAutoLogon sets INFO_AUTOLOGON: the server logs on with the PDU's
// credentials instead of asking.
func (ci *ClientInfo) SetAutoLogon() { ci.Flags |= InfoAutologon }

// StripAutoReconnectCookie removes the auto-reconnect cookie
// (cbAutoReconnectCookie becomes 0), so the target cannot resume a session
// on the client's say-so, and reports whether there was one.
func (ci *ClientInfo) StripAutoReconnectCookie() bool {
	had := len(ci.cookie) > 0
	clear(ci.cookie)
	ci.cookie = nil
	return had
}

// Wipe clears the password and the auto-reconnect cookie. The ClientInfo
// then encodes with an empty password and no cookie.
func (ci *ClientInfo) Wipe() {
	clear(ci.password)
	ci.password = nil
	ci.StripAutoReconnectCookie()
}

// String describes the PDU for logs, without the password.
func (ci ClientInfo) String() string {
	return fmt.Sprintf("pdu.ClientInfo{user %q domain %q flags %#x [password REDACTED]}", ci.User(), ci.Domain(), ci.Flags)
}

// GoString redacts the password under %#v.
func (ci ClientInfo) GoString() string { return ci.String() }

// LogValue redacts the password in slog records.
func (ci ClientInfo) LogValue() slog.Value { return slog.StringValue(ci.String()) }

// MarshalJSON redacts the password; the wire form is Encode's.
func (ci ClientInfo) MarshalJSON() ([]byte, error) { return json.Marshal(ci.String()) }

// encodeUTF16LE converts s (valid UTF-8, no NUL) to UTF-16LE in one
// allocation of the exact size, nil for an empty s. Errors name the field,
// never its contents.
func encodeUTF16LE(s []byte, field string) ([]byte, error) {
	n := 0
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return nil, malformed("%s is not valid UTF-8", field)
		case r == 0:
			return nil, malformed("%s contains NUL", field)
		case r >= 0x10000:
			n += 4
		default:
			n += 2
		}
		i += size
	}
	if n > MaxInfoString {
		return nil, tooLarge("%s over %d bytes in UTF-16", field, MaxInfoString)
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]byte, 0, n)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRune(s[i:])
		if r >= 0x10000 {
			r1, r2 := utf16.EncodeRune(r)
			out = binary.LittleEndian.AppendUint16(out, uint16(r1)) // #nosec G115 -- a surrogate fits 16 bits
			out = binary.LittleEndian.AppendUint16(out, uint16(r2)) // #nosec G115 -- a surrogate fits 16 bits
		} else {
			out = binary.LittleEndian.AppendUint16(out, uint16(r)) // #nosec G115 -- below 0x10000
		}
		i += size
	}
	return out, nil
}

// decodeUTF16LE decodes UTF-16LE for display.
func decodeUTF16LE(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(u))
}
