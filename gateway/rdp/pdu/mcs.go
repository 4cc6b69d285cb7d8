package pdu

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf16"
)

// GCC user data block types (TS_UD_HEADER.type, MS-RDPBCGR 2.2.1.3.1).
const (
	BlockCSCore           uint16 = 0xC001 // CS_CORE
	BlockCSSecurity       uint16 = 0xC002 // CS_SECURITY
	BlockCSNet            uint16 = 0xC003 // CS_NET
	BlockCSCluster        uint16 = 0xC004 // CS_CLUSTER
	BlockCSMonitor        uint16 = 0xC005 // CS_MONITOR
	BlockCSMCSMsgChannel  uint16 = 0xC006 // CS_MCS_MSGCHANNEL
	BlockCSMonitorEx      uint16 = 0xC008 // CS_MONITOR_EX
	BlockCSMultitransport uint16 = 0xC00A // CS_MULTITRANSPORT
	BlockSCCore           uint16 = 0x0C01 // SC_CORE
	BlockSCSecurity       uint16 = 0x0C02 // SC_SECURITY
	BlockSCNet            uint16 = 0x0C03 // SC_NET
	BlockSCMCSMsgChannel  uint16 = 0x0C04 // SC_MCS_MSGCHANNEL
	BlockSCMultitransport uint16 = 0x0C08 // SC_MULTITRANSPORT
)

const (
	udHeaderLen = 4 // TS_UD_HEADER: type, length (including the header)

	// CS_CORE: the fields up to imeFileName are mandatory; the optional
	// ones that follow are present up to the block's length, each only
	// with all before it. serverSelectedProtocol is at offset 212.
	csCoreMinLen            = 132
	csCoreClientNameOff     = 24
	csCoreClientNameLen     = 32
	csCoreServerSelectedOff = 212

	// SC_CORE: version, then the optional clientRequestedProtocols.
	scCoreMinLen              = 8
	scCoreClientRequestedOff  = 8
	csNetMaxChannels          = 31 // MS-RDPBCGR 2.2.1.3.4: at most 31 static channels
	channelDefLen             = 12 // CHANNEL_DEF: name[8], options
	mcsConnectInitialTag      = 0x65
	mcsConnectResponseTag     = 0x66
	gccCreateRequestSelection = 0x00 // ConnectGCCPDU choice 0, no extension
	gccCreateResponseChoice   = 0x14 // ConnectGCCPDU choice 1, userData present
)

// t124Identifier is the GCC ConnectData key: an object identifier
// (choice 0), length 5, {itu-t(0) recommendation(0) t(20) t124(124)
// version(0) 1}.
var t124Identifier = []byte{0x00, 0x05, 0x00, 0x14, 0x7C, 0x00, 0x01}

// H.221 non-standard keys of RDP's GCC user data.
var (
	clientH221Key = []byte("Duca")
	serverH221Key = []byte("McDn")
)

// Channel is a static virtual channel a client asks for (CHANNEL_DEF).
type Channel struct {
	Name    string
	Options uint32
}

// ClientCore is what ParseConnectInitial reports of CS_CORE.
type ClientCore struct {
	Version                     uint32
	DesktopWidth, DesktopHeight uint16
	KeyboardLayout, ClientBuild uint32
	ClientName                  string
	// HasServerSelectedProtocol says the block is long enough to hold
	// serverSelectedProtocol.
	HasServerSelectedProtocol bool
	ServerSelectedProtocol    uint32
}

// ConnectInitial is what ParseConnectInitial reports of an MCS Connect
// Initial PDU and its GCC Conference Create Request (MS-RDPBCGR 2.2.1.3).
type ConnectInitial struct {
	Core ClientCore
	// Channels are CS_NET's channel definitions, nil without CS_NET.
	Channels []Channel
	// Blocks are the client data block types in the order sent.
	Blocks []uint16
}

// ParseConnectInitial parses a TPKT frame holding an MCS Connect Initial
// far enough to read CS_CORE and CS_NET.
func ParseConnectInitial(frame []byte) (*ConnectInitial, error) {
	ci, _, err := parseConnectInitial(frame)
	return ci, err
}

// SetServerSelectedProtocol overwrites CS_CORE.serverSelectedProtocol in
// the MCS Connect Initial in pdu with proto, in place (the field has a
// fixed size, so no length changes), and returns pdu. It fails, leaving pdu
// unchanged, when pdu does not parse or CS_CORE is too short to hold the
// field (ErrFieldAbsent).
func SetServerSelectedProtocol(pdu []byte, proto uint32) ([]byte, error) {
	ci, off, err := parseConnectInitial(pdu)
	if err != nil {
		return nil, err
	}
	if !ci.Core.HasServerSelectedProtocol {
		return nil, fmt.Errorf("%w: CS_CORE without serverSelectedProtocol", ErrFieldAbsent)
	}
	binary.LittleEndian.PutUint32(pdu[off:], proto)
	return pdu, nil
}

// parseConnectInitial also returns serverSelectedProtocol's offset in
// frame (0 when absent).
func parseConnectInitial(frame []byte) (*ConnectInitial, int, error) {
	c, err := mcsConnectPDU(frame, mcsConnectInitialTag, "Connect Initial")
	if err != nil {
		return nil, 0, err
	}
	c.berElement(0x04)          // callingDomainSelector
	c.berElement(0x04)          // calledDomainSelector
	c.berElement(0x01)          // upwardFlag
	c.berElement(0x30)          // targetParameters
	c.berElement(0x30)          // minimumParameters
	c.berElement(0x30)          // maximumParameters
	ud, _ := c.berElement(0x04) // userData
	if c.bad || c.left() != 0 {
		return nil, 0, malformed("MCS Connect Initial: bad BER structure")
	}
	blocks, err := gccUserData(ud, false)
	if err != nil {
		return nil, 0, err
	}
	ci := &ConnectInitial{}
	off := 0
	seen := map[uint16]bool{}
	for blocks.left() > 0 {
		typ, b, err := nextBlock(blocks)
		if err != nil {
			return nil, 0, err
		}
		ci.Blocks = append(ci.Blocks, typ)
		if seen[typ] && (typ == BlockCSCore || typ == BlockCSNet) {
			return nil, 0, malformed("MCS Connect Initial: two blocks of type %#04x", typ)
		}
		seen[typ] = true
		switch typ {
		case BlockCSCore:
			if off, err = parseCSCore(b, &ci.Core); err != nil {
				return nil, 0, err
			}
		case BlockCSNet:
			if ci.Channels, err = parseCSNet(b); err != nil {
				return nil, 0, err
			}
		}
	}
	if !seen[BlockCSCore] {
		return nil, 0, malformed("MCS Connect Initial without CS_CORE")
	}
	return ci, off, nil
}

// mcsConnectPDU checks the X.224 and BER framing of an MCS Connect Initial
// or Response (application tag 101 or 102) and returns a cursor over its
// contents, which must fill the frame.
func mcsConnectPDU(frame []byte, tag byte, what string) (*cursor, error) {
	if len(frame) > MaxSetupPDU {
		return nil, tooLarge("MCS %s of %d bytes", what, len(frame))
	}
	p, err := ParseData(frame)
	if err != nil {
		return nil, err
	}
	top := &cursor{b: frame, off: len(frame) - len(p), end: len(frame)}
	c, ok := top.berElement(0x7F, tag)
	if !ok || top.left() != 0 {
		return nil, malformed("not an MCS %s", what)
	}
	return c, nil
}

// gccUserData reads the GCC ConnectData in c (T.124, ALIGNED PER, as
// MS-RDPBCGR 2.2.1.3 and 2.2.1.4 use it) down to the user data set whose
// H.221 key is RDP's, and returns a cursor over the data blocks.
//
// The connectPDU length is read but not relied on: the blocks' own
// lengths decide, as they do for deployed servers and clients.
func gccUserData(c *cursor, response bool) (*cursor, error) {
	what, key := "Conference Create Request", clientH221Key
	if response {
		what, key = "Conference Create Response", serverH221Key
	}
	if !bytes.Equal(c.take(len(t124Identifier)), t124Identifier) {
		return nil, malformed("GCC %s: not T.124 ConnectData", what)
	}
	if _, _, ok := c.perLength(); !ok {
		return nil, malformed("GCC %s: bad connectPDU length", what)
	}
	if response {
		// choice, nodeID (2), tag (unconstrained INTEGER), result.
		if c.u8() != gccCreateResponseChoice {
			return nil, unsupported("GCC %s: unexpected options", what)
		}
		c.take(2)
		n, _, ok := c.perLength()
		if !ok || n == 0 || n > 4 {
			return nil, malformed("GCC %s: bad tag", what)
		}
		c.take(n)
		c.u8()
	} else {
		// choice and ConferenceCreateRequest options: only userData
		// present; conferenceName numeric only.
		if c.u8() != gccCreateRequestSelection || c.u8() != 0x08 {
			return nil, unsupported("GCC %s: unexpected options", what)
		}
		// SimpleNumericString (SIZE 1..255): length-1 in a byte, then 4
		// bits a digit, then lockedConference, listedConference,
		// conductibleConference and terminationMethod (5 bits), padded.
		digits := int(c.u8()) + 1
		c.take((4*digits + 5 + 7) / 8)
	}
	sets, _, ok := c.perLength()
	if !ok || c.bad {
		return nil, malformed("GCC %s: truncated", what)
	}
	for range sets {
		if c.bad {
			break
		}
		// UserData element: value-present bit, key choice bit
		// (h221NonStandard), padding; then the key and the value.
		sel := c.u8()
		var k []byte
		if sel&0x40 != 0 {
			k = c.take(int(c.u8()) + 4) // OCTET STRING (SIZE 4..255)
		} else {
			k = c.take(int(c.u8())) // OBJECT IDENTIFIER
		}
		if sel&0x80 == 0 {
			continue
		}
		n, _, ok := c.perLength()
		if !ok || c.bad {
			break
		}
		v := c.sub(n)
		if c.bad {
			break
		}
		if sel&0x40 != 0 && bytes.Equal(k, key) {
			return v, nil
		}
	}
	if c.bad {
		return nil, malformed("GCC %s: truncated user data", what)
	}
	return nil, malformed("GCC %s: no %q user data", what, key)
}

// nextBlock reads one TS_UD_HEADER-framed data block and returns its type
// and a cursor over the whole block (header included).
func nextBlock(c *cursor) (uint16, *cursor, error) {
	if c.left() < udHeaderLen {
		return 0, nil, malformed("GCC user data: %d stray bytes", c.left())
	}
	start := c.off
	typ, n := c.le16(), int(c.le16())
	c.off = start
	if n < udHeaderLen || n > c.left() {
		return 0, nil, malformed("GCC user data: block %#04x of length %d", typ, n)
	}
	return typ, c.sub(n), nil
}

// parseCSCore reads CS_CORE (whole block in b) into core and returns the
// absolute offset of serverSelectedProtocol, or 0.
func parseCSCore(b *cursor, core *ClientCore) (int, error) {
	n := b.left()
	if n < csCoreMinLen {
		return 0, malformed("CS_CORE of %d bytes", n)
	}
	start := b.off
	b.take(udHeaderLen)
	core.Version = b.le32()
	core.DesktopWidth, core.DesktopHeight = b.le16(), b.le16()
	b.take(4) // colorDepth, SASSequence
	core.KeyboardLayout, core.ClientBuild = b.le32(), b.le32()
	core.ClientName = utf16z(b.take(csCoreClientNameLen))
	if n < csCoreServerSelectedOff+4 {
		return 0, nil
	}
	off := start + csCoreServerSelectedOff
	core.HasServerSelectedProtocol = true
	core.ServerSelectedProtocol = binary.LittleEndian.Uint32(b.b[off:])
	return off, nil
}

// parseCSNet reads CS_NET's channel definitions.
func parseCSNet(b *cursor) ([]Channel, error) {
	b.take(udHeaderLen)
	count := b.le32()
	if b.bad || count > csNetMaxChannels || int(count)*channelDefLen > b.left() {
		return nil, malformed("CS_NET: %d channels in %d bytes", count, b.left())
	}
	chans := make([]Channel, 0, count)
	for range count {
		name := b.take(8)
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		chans = append(chans, Channel{Name: printable(name), Options: b.le32()})
	}
	return chans, nil
}

// printable returns b as a string with anything but printable ASCII
// replaced by '?': channel names are ASCII and end up in logs.
func printable(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		if c < 0x20 || c > 0x7E {
			c = '?'
		}
		s.WriteByte(c)
	}
	return s.String()
}

// utf16z decodes little-endian UTF-16 up to the first NUL, for display.
func utf16z(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		v := binary.LittleEndian.Uint16(b[i:])
		if v == 0 {
			break
		}
		u = append(u, v)
	}
	return string(utf16.Decode(u))
}

// ConnectResponse is what ParseConnectResponse reports of an MCS Connect
// Response and its GCC Conference Create Response (MS-RDPBCGR 2.2.1.4).
type ConnectResponse struct {
	// Result is the MCS result; 0 is rt-successful.
	Result        uint8
	ServerVersion uint32
	// HasClientRequestedProtocols says SC_CORE is long enough to hold
	// clientRequestedProtocols, the server's echo of RDP_NEG_REQ's.
	HasClientRequestedProtocols bool
	ClientRequestedProtocols    uint32
	// IOChannel and ChannelIDs are SC_NET's: the MCS I/O channel and the
	// channel IDs given to the client's static channels, in order.
	IOChannel  uint16
	ChannelIDs []uint16
	// Blocks are the server data block types in the order sent.
	Blocks []uint16
}

// ParseConnectResponse parses a TPKT frame holding an MCS Connect Response
// far enough to read SC_CORE and SC_NET.
func ParseConnectResponse(frame []byte) (*ConnectResponse, error) {
	cr, _, err := parseConnectResponse(frame)
	return cr, err
}

// SetClientRequestedProtocols overwrites SC_CORE.clientRequestedProtocols
// in the MCS Connect Response in pdu with proto, in place, and returns pdu.
// It fails, leaving pdu unchanged, when pdu does not parse or SC_CORE is
// too short to hold the field (ErrFieldAbsent).
func SetClientRequestedProtocols(pdu []byte, proto uint32) ([]byte, error) {
	cr, off, err := parseConnectResponse(pdu)
	if err != nil {
		return nil, err
	}
	if !cr.HasClientRequestedProtocols {
		return nil, fmt.Errorf("%w: SC_CORE without clientRequestedProtocols", ErrFieldAbsent)
	}
	binary.LittleEndian.PutUint32(pdu[off:], proto)
	return pdu, nil
}

func parseConnectResponse(frame []byte) (*ConnectResponse, int, error) {
	c, err := mcsConnectPDU(frame, mcsConnectResponseTag, "Connect Response")
	if err != nil {
		return nil, 0, err
	}
	res, _ := c.berElement(0x0A) // result
	c.berElement(0x02)           // calledConnectId
	c.berElement(0x30)           // domainParameters
	ud, _ := c.berElement(0x04)  // userData
	if c.bad || c.left() != 0 || res.left() != 1 {
		return nil, 0, malformed("MCS Connect Response: bad BER structure")
	}
	cr := &ConnectResponse{Result: res.u8()}
	blocks, err := gccUserData(ud, true)
	if err != nil {
		return nil, 0, err
	}
	off := 0
	seen := map[uint16]bool{}
	for blocks.left() > 0 {
		typ, b, err := nextBlock(blocks)
		if err != nil {
			return nil, 0, err
		}
		cr.Blocks = append(cr.Blocks, typ)
		if seen[typ] && (typ == BlockSCCore || typ == BlockSCNet) {
			return nil, 0, malformed("MCS Connect Response: two blocks of type %#04x", typ)
		}
		seen[typ] = true
		switch typ {
		case BlockSCCore:
			if b.left() < scCoreMinLen {
				return nil, 0, malformed("SC_CORE of %d bytes", b.left())
			}
			start, n := b.off, b.left()
			b.take(udHeaderLen)
			cr.ServerVersion = b.le32()
			if n >= scCoreClientRequestedOff+4 {
				off = start + scCoreClientRequestedOff
				cr.HasClientRequestedProtocols = true
				cr.ClientRequestedProtocols = b.le32()
			}
		case BlockSCNet:
			b.take(udHeaderLen)
			cr.IOChannel = b.le16()
			count := int(b.le16())
			if b.bad || 2*count > b.left() {
				return nil, 0, malformed("SC_NET: %d channels in %d bytes", count, b.left())
			}
			cr.ChannelIDs = make([]uint16, count)
			for i := range cr.ChannelIDs {
				cr.ChannelIDs[i] = b.le16()
			}
		}
	}
	if !seen[BlockSCCore] {
		return nil, 0, malformed("MCS Connect Response without SC_CORE")
	}
	return cr, off, nil
}
