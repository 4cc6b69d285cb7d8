package pdu

// A tiny PDU builder for the tests, written from the MS-RDPBCGR layouts and
// independent of the package's own encoders, so that a mistake in one is
// not mirrored in the other.

import (
	"encoding/binary"
	"unicode/utf16"
)

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func u8s(v ...byte) []byte { return v }

func le16b(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func le32b(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func be16b(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// tpktOf frames payload in TPKT (T.123): version 3, reserved, length.
func tpktOf(payload []byte) []byte {
	n := 4 + len(payload)
	return cat(u8s(3, 0, byte(n>>8), byte(n)), payload)
}

// dtOf frames payload in an X.224 Data TPDU and TPKT.
func dtOf(payload []byte) []byte { return tpktOf(cat(u8s(2, 0xF0, 0x80), payload)) }

// berLenOf is a BER definite length.
func berLenOf(n int) []byte {
	switch {
	case n < 0x80:
		return u8s(byte(n))
	case n < 0x100:
		return u8s(0x81, byte(n))
	}
	return u8s(0x82, byte(n>>8), byte(n))
}

func berOf(tag []byte, content []byte) []byte { return cat(tag, berLenOf(len(content)), content) }

// perLenOf is an ALIGNED PER length determinant (n < 16384).
func perLenOf(n int) []byte {
	if n < 0x80 {
		return u8s(byte(n))
	}
	return u8s(0x80|byte(n>>8), byte(n))
}

// utf16Of is s in UTF-16LE without a terminator.
func utf16Of(s string) []byte {
	var out []byte
	for _, u := range utf16.Encode([]rune(s)) {
		out = binary.LittleEndian.AppendUint16(out, u)
	}
	return out
}

// utf16zOf is s in UTF-16LE with its two-byte terminator.
func utf16zOf(s string) []byte { return cat(utf16Of(s), u8s(0, 0)) }

// domainParams is a T.125 DomainParameters SEQUENCE of eight INTEGERs.
func domainParams(vals ...uint16) []byte {
	var c []byte
	for _, v := range vals {
		if v < 0x80 {
			c = cat(c, berOf(u8s(0x02), u8s(byte(v))))
		} else {
			c = cat(c, berOf(u8s(0x02), u8s(0, byte(v>>8), byte(v))))
		}
	}
	return berOf(u8s(0x30), c)
}

// csCoreOf is a CS_CORE block of the given length (132 to 234; optional
// fields appear as the length allows), with serverSelectedProtocol sel
// when the length reaches it.
func csCoreOf(length int, sel uint32, name string) []byte {
	b := cat(le16b(0xC001), le16b(uint16(length)),
		le32b(0x00080004),       // version RDP 5.0+
		le16b(1280), le16b(800), // desktop
		le16b(0xCA01), le16b(0xAA03), // colorDepth, SASSequence
		le32b(0x409), le32b(2600), // keyboardLayout, clientBuild
		padTo(utf16Of(name), 32),      // clientName
		le32b(4), le32b(0), le32b(12), // keyboard type, subtype, function keys
		make([]byte, 64),        // imeFileName
		le16b(0xCA01), le16b(1), // postBeta2ColorDepth, clientProductId
		le32b(0),                 // serialNumber
		le16b(24), le16b(0x000F), // highColorDepth, supportedColorDepths
		le16b(0x0001),                    // earlyCapabilityFlags
		padTo(utf16Of("product-id"), 64), // clientDigProductId
		u8s(0x06, 0),                     // connectionType, pad1octet
		le32b(sel),                       // serverSelectedProtocol (offset 212)
		le32b(300), le32b(200), le16b(0), // physical size, orientation
		le32b(100), le32b(100), // scale factors
	)
	if length > len(b) {
		panic("CS_CORE longer than its fields")
	}
	return b[:length]
}

func padTo(b []byte, n int) []byte { return append(b, make([]byte, n-len(b))...) }

func csSecurityOf() []byte { return cat(le16b(0xC002), le16b(12), le32b(0x1B), le32b(0)) }

func csClusterOf() []byte { return cat(le16b(0xC004), le16b(12), le32b(0x0D), le32b(0)) }

func csNetOf(names ...string) []byte {
	body := le32b(uint32(len(names)))
	for _, n := range names {
		body = cat(body, padTo([]byte(n), 8), le32b(0x80800000))
	}
	return cat(le16b(0xC003), le16b(uint16(4+len(body))), body)
}

// connectInitialOf is an MCS Connect Initial carrying a GCC Conference
// Create Request with the given client data blocks.
func connectInitialOf(blocks ...[]byte) []byte {
	return connectInitialNamed(u8s(0x00, 0x10, 0x00), blocks...)
}

// connectInitialNamed takes the conference name's PER bytes (length-1,
// digits, and the flags that share their last byte).
func connectInitialNamed(name []byte, blocks ...[]byte) []byte {
	ud := cat(blocks...)
	ccr := cat(u8s(0x00, 0x08), name, u8s(0x01, 0xC0, 0x00), []byte("Duca"), perLenOf(len(ud)), ud)
	gcc := cat(u8s(0x00, 0x05, 0x00, 0x14, 0x7C, 0x00, 0x01), perLenOf(len(ccr)), ccr)
	body := cat(
		berOf(u8s(0x04), u8s(1)), berOf(u8s(0x04), u8s(1)), berOf(u8s(0x01), u8s(0xFF)),
		domainParams(34, 2, 0, 1, 0, 1, 0xFFFF, 2),
		domainParams(1, 1, 1, 1, 0, 1, 0x420, 2),
		domainParams(0xFFFF, 0xFC17, 0xFFFF, 1, 0, 1, 0xFFFF, 2),
		berOf(u8s(0x04), gcc),
	)
	return dtOf(berOf(u8s(0x7F, 0x65), body))
}

func scCoreOf(length int, req uint32) []byte {
	b := cat(le16b(0x0C01), le16b(uint16(length)), le32b(0x00080004), le32b(req), le32b(1))
	return b[:length]
}

func scSecurityOf() []byte { return cat(le16b(0x0C02), le16b(12), le32b(0), le32b(0)) }

func scNetOf(io uint16, ids ...uint16) []byte {
	body := cat(le16b(io), le16b(uint16(len(ids))))
	for _, id := range ids {
		body = cat(body, le16b(id))
	}
	if len(ids)%2 == 1 {
		body = cat(body, le16b(0))
	}
	return cat(le16b(0x0C03), le16b(uint16(4+len(body))), body)
}

// connectResponseOf is an MCS Connect Response carrying a GCC Conference
// Create Response (laid out as xrdp and Windows send it) with the given
// server data blocks.
func connectResponseOf(blocks ...[]byte) []byte {
	ud := cat(blocks...)
	ccr := cat(u8s(0x14, 0x76, 0x0A, 0x01, 0x01, 0x00, 0x01, 0xC0, 0x00), []byte("McDn"), perLenOf(len(ud)), ud)
	gcc := cat(u8s(0x00, 0x05, 0x00, 0x14, 0x7C, 0x00, 0x01), perLenOf(len(ccr)), ccr)
	body := cat(
		berOf(u8s(0x0A), u8s(0)), berOf(u8s(0x02), u8s(0)),
		domainParams(34, 3, 0, 1, 0, 1, 0xFFF8, 2),
		berOf(u8s(0x04), gcc),
	)
	return dtOf(berOf(u8s(0x7F, 0x66), body))
}

// infoSpec describes a Client Info PDU for clientInfoOf.
type infoSpec struct {
	flags                              uint32
	domain, user, pass, shell, workDir string
	ext                                bool
	addr, clientDir                    string
	timeZone                           bool   // clientTimeZone to cbAutoReconnectCookie
	cookie                             []byte // autoReconnectCookie
	tail                               []byte // after the cookie (or clientDir without timeZone)
	longLen                            bool   // force the two-byte MCS length
}

func arcCookie() []byte {
	return cat(le32b(28), le32b(1), le32b(7), []byte("0123456789abcdef"))
}

// extTail is reserved1, reserved2, cbDynamicDSTTimeZoneKeyName,
// dynamicDSTTimeZoneKeyName and dynamicDaylightTimeDisabled, then bytes no
// version of the specification defines.
func extTail() []byte {
	key := utf16Of("W. Europe Standard Time")
	return cat(le16b(0), le16b(0), le16b(uint16(len(key))), key, le16b(0), u8s(0xDE, 0xAD, 0xBE, 0xEF))
}

func timeZoneBytes() []byte {
	tz := make([]byte, 172)
	for i := range tz {
		tz[i] = byte(i*7 + 1)
	}
	return tz
}

func clientInfoOf(s infoSpec) []byte {
	strs := []string{s.domain, s.user, s.pass, s.shell, s.workDir}
	info := cat(le32b(0x0409), le32b(s.flags))
	for _, str := range strs {
		info = cat(info, le16b(uint16(len(utf16Of(str)))))
	}
	for _, str := range strs {
		info = cat(info, utf16zOf(str))
	}
	if s.ext {
		a, d := utf16zOf(s.addr), utf16zOf(s.clientDir)
		info = cat(info, le16b(2), le16b(uint16(len(a))), a, le16b(uint16(len(d))), d)
		if s.timeZone {
			info = cat(info, timeZoneBytes(), le32b(0), le32b(0x2F), le16b(uint16(len(s.cookie))), s.cookie)
		}
		info = cat(info, s.tail)
	}
	data := cat(le16b(0x0040), le16b(0), info)
	l := perLenOf(len(data))
	if s.longLen && len(data) < 0x80 {
		l = u8s(0x80, byte(len(data)))
	}
	return dtOf(cat(u8s(0x64), be16b(1007-1001), be16b(1003), u8s(0x70), l, data))
}

// fullInfo is what a current client sends.
func fullInfo() infoSpec {
	return infoSpec{
		flags:  0x0001_0000 | 0x0002_0000 | 0x10 | 0x08 | 0x01 | 0x40 | 0x100,
		domain: "CORP", user: "alice@win01", pass: "one-time-token-42",
		ext: true, addr: "192.0.2.10", clientDir: `C:\Windows\System32\mstscax.dll`,
		timeZone: true, cookie: arcCookie(), tail: extTail(),
	}
}
