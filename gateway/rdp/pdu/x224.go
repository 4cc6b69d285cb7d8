package pdu

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// Security protocols: RDP_NEG_REQ.requestedProtocols (a set) and
// RDP_NEG_RSP.selectedProtocol (one), also echoed in CS_CORE and SC_CORE
// (MS-RDPBCGR 2.2.1.1.1).
const (
	ProtocolRDP      uint32 = 0x00 // PROTOCOL_RDP: Standard RDP Security
	ProtocolSSL      uint32 = 0x01 // PROTOCOL_SSL: TLS
	ProtocolHybrid   uint32 = 0x02 // PROTOCOL_HYBRID: CredSSP (NLA)
	ProtocolRDSTLS   uint32 = 0x04 // PROTOCOL_RDSTLS
	ProtocolHybridEx uint32 = 0x08 // PROTOCOL_HYBRID_EX: CredSSP and the Early User Authorization Result
	ProtocolRDSAAD   uint32 = 0x10 // PROTOCOL_RDSAAD: Azure AD authentication
)

// ProtocolString names a protocol set for logs, e.g. "SSL|HYBRID"; zero
// is "RDP".
func ProtocolString(p uint32) string {
	if p == ProtocolRDP {
		return "RDP"
	}
	names := []struct {
		bit  uint32
		name string
	}{
		{ProtocolSSL, "SSL"}, {ProtocolHybrid, "HYBRID"}, {ProtocolRDSTLS, "RDSTLS"},
		{ProtocolHybridEx, "HYBRID_EX"}, {ProtocolRDSAAD, "RDSAAD"},
	}
	var parts []string
	for _, n := range names {
		if p&n.bit != 0 {
			parts = append(parts, n.name)
			p &^= n.bit
		}
	}
	if p != 0 {
		parts = append(parts, fmt.Sprintf("%#x", p))
	}
	return strings.Join(parts, "|")
}

// RDP_NEG_FAILURE.failureCode values (MS-RDPBCGR 2.2.1.2.2).
const (
	FailureSSLRequiredByServer             uint32 = 0x01 // SSL_REQUIRED_BY_SERVER
	FailureSSLNotAllowedByServer           uint32 = 0x02 // SSL_NOT_ALLOWED_BY_SERVER
	FailureSSLCertNotOnServer              uint32 = 0x03 // SSL_CERT_NOT_ON_SERVER
	FailureInconsistentFlags               uint32 = 0x04 // INCONSISTENT_FLAGS
	FailureHybridRequiredByServer          uint32 = 0x05 // HYBRID_REQUIRED_BY_SERVER
	FailureSSLWithUserAuthRequiredByServer uint32 = 0x06 // SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER
)

// FailureString names a failure code for logs.
func FailureString(code uint32) string {
	switch code {
	case FailureSSLRequiredByServer:
		return "SSL_REQUIRED_BY_SERVER"
	case FailureSSLNotAllowedByServer:
		return "SSL_NOT_ALLOWED_BY_SERVER"
	case FailureSSLCertNotOnServer:
		return "SSL_CERT_NOT_ON_SERVER"
	case FailureInconsistentFlags:
		return "INCONSISTENT_FLAGS"
	case FailureHybridRequiredByServer:
		return "HYBRID_REQUIRED_BY_SERVER"
	case FailureSSLWithUserAuthRequiredByServer:
		return "SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER"
	}
	return fmt.Sprintf("failure(%#x)", code)
}

// RDP_NEG_REQ flags (MS-RDPBCGR 2.2.1.1.1).
const (
	NegReqRestrictedAdminModeRequired          uint8 = 0x01 // RESTRICTED_ADMIN_MODE_REQUIRED
	NegReqRedirectedAuthenticationModeRequired uint8 = 0x02 // REDIRECTED_AUTHENTICATION_MODE_REQUIRED
	NegReqCorrelationInfoPresent               uint8 = 0x08 // CORRELATION_INFO_PRESENT
)

// RDP_NEG_RSP flags (MS-RDPBCGR 2.2.1.2.1).
const (
	NegRspExtendedClientDataSupported           uint8 = 0x01 // EXTENDED_CLIENT_DATA_SUPPORTED
	NegRspDynVCGFXProtocolSupported             uint8 = 0x02 // DYNVC_GFX_PROTOCOL_SUPPORTED
	NegRspReserved                              uint8 = 0x04 // NEGRSP_FLAG_RESERVED
	NegRspRestrictedAdminModeSupported          uint8 = 0x08 // RESTRICTED_ADMIN_MODE_SUPPORTED
	NegRspRedirectedAuthenticationModeSupported uint8 = 0x10 // REDIRECTED_AUTHENTICATION_MODE_SUPPORTED
)

// Types of the negotiation structures (their first byte).
const (
	negTypeRequest      uint8 = 0x01 // RDP_NEG_REQ
	negTypeResponse     uint8 = 0x02 // RDP_NEG_RSP
	negTypeFail         uint8 = 0x03 // RDP_NEG_FAILURE
	typeCorrelationInfo uint8 = 0x06 // RDP_CORRELATION_INFO
)

// X.224 class 0 TPDU codes, sizes and limits (X.224 13.3, 13.4, 13.7).
const (
	x224CR         = 0xE0 // Connection Request, CDT 0
	x224CC         = 0xD0 // Connection Confirm, CDT 0
	x224DT         = 0xF0 // Data
	x224EOT        = 0x80 // Data: last TPDU of the TSDU
	x224FixedLen   = 7    // LI, code, DST-REF, SRC-REF, class option
	x224MaxLI      = 254  // 255 is reserved
	negLen         = 8    // RDP_NEG_REQ, RDP_NEG_RSP, RDP_NEG_FAILURE
	correlationLen = 36   // RDP_CORRELATION_INFO
	// CorrelationIDLen is the size of RDP_CORRELATION_INFO.correlationId.
	CorrelationIDLen = 16
)

// cookiePrefix starts the cookie line of a Connection Request.
var cookiePrefix = []byte("Cookie: mstshash=")

var crlf = []byte("\r\n")

// DataHeader is the X.224 Data TPDU header every RDP PDU after the
// connection sequence's first two carries: LI 2, DT, EOT.
var DataHeader = [3]byte{2, x224DT, x224EOT}

// ConnectionRequest is an X.224 Connection Request with RDP's variable
// part (MS-RDPBCGR 2.2.1.1): a cookie or a routing token, then optionally
// RDP_NEG_REQ and RDP_CORRELATION_INFO.
type ConnectionRequest struct {
	DstRef, SrcRef uint16
	// Cookie is IDENTIFIER in "Cookie: mstshash=IDENTIFIER\r\n", usually
	// the user name the client was given; empty when there is none.
	Cookie string
	// RoutingToken is any other CR LF terminated line before RDP_NEG_REQ
	// (a load balancer's "Cookie: msts=..." or similar), without its CR LF;
	// nil when there is none. At most one of Cookie and RoutingToken is set.
	RoutingToken []byte
	// HasNegotiation says RDP_NEG_REQ is present. Without it the client
	// offers Standard RDP Security only.
	HasNegotiation bool
	// NegFlags are RDP_NEG_REQ.flags (NegReq...).
	NegFlags uint8
	// RequestedProtocols is the set of Protocol... values the client offers.
	RequestedProtocols uint32
	// CorrelationID is RDP_CORRELATION_INFO.correlationId, present (16
	// bytes) exactly when NegFlags has NegReqCorrelationInfoPresent.
	CorrelationID []byte
}

// x224Fixed checks the fixed part of a CR or CC TPDU in frame and returns
// a cursor at the variable part.
func x224Fixed(frame []byte, code byte, what string) (c *cursor, dst, src uint16, err error) {
	p, err := tpktPayload(frame)
	if err != nil {
		return nil, 0, 0, err
	}
	c = newCursor(p)
	li := int(c.u8())
	if li+1 != len(p) || li < x224FixedLen-1 || li > x224MaxLI {
		return nil, 0, 0, malformed("X.224 length indicator %d for %d bytes", li, len(p))
	}
	if got := c.u8(); got != code {
		return nil, 0, 0, malformed("X.224 TPDU code %#02x, want %s", got, what)
	}
	dst, src = c.be16(), c.be16()
	if class := c.u8(); class != 0 {
		return nil, 0, 0, unsupported("X.224 class option %#02x", class)
	}
	return c, dst, src, nil
}

// ParseConnectionRequest parses a TPKT frame holding an X.224 Connection
// Request.
func ParseConnectionRequest(frame []byte) (*ConnectionRequest, error) {
	c, dst, src, err := x224Fixed(frame, x224CR, "Connection Request")
	if err != nil {
		return nil, err
	}
	cr := &ConnectionRequest{DstRef: dst, SrcRef: src}
	v := c.rest()
	if len(v) > 0 && v[0] != negTypeRequest {
		i := bytes.Index(v, crlf)
		if i < 0 {
			return nil, malformed("Connection Request: cookie or routing token without CR LF")
		}
		line := v[:i]
		v = v[i+len(crlf):]
		if len(line) > len(cookiePrefix) && bytes.HasPrefix(line, cookiePrefix) {
			cr.Cookie = string(line[len(cookiePrefix):])
		} else {
			cr.RoutingToken = bytes.Clone(line)
			if cr.RoutingToken == nil {
				cr.RoutingToken = []byte{}
			}
		}
	}
	if len(v) == 0 {
		return cr, nil
	}
	if len(v) < negLen || v[0] != negTypeRequest || binary.LittleEndian.Uint16(v[2:]) != negLen {
		return nil, malformed("Connection Request: bad RDP_NEG_REQ")
	}
	cr.HasNegotiation = true
	cr.NegFlags = v[1]
	cr.RequestedProtocols = binary.LittleEndian.Uint32(v[4:])
	v = v[negLen:]
	if cr.NegFlags&NegReqCorrelationInfoPresent != 0 {
		if len(v) < correlationLen || v[0] != typeCorrelationInfo || binary.LittleEndian.Uint16(v[2:]) != correlationLen {
			return nil, malformed("Connection Request: bad RDP_CORRELATION_INFO")
		}
		// flags and the 16 reserved bytes must be zero; they carry
		// nothing, so they are not checked and are written as zero.
		cr.CorrelationID = bytes.Clone(v[4 : 4+CorrelationIDLen])
		v = v[correlationLen:]
	}
	if len(v) != 0 {
		return nil, malformed("Connection Request: %d trailing bytes", len(v))
	}
	return cr, nil
}

// Encode returns the Connection Request as a TPKT frame. It sets or clears
// NegReqCorrelationInfoPresent to match CorrelationID.
func (cr *ConnectionRequest) Encode() ([]byte, error) {
	var v []byte
	switch {
	case cr.Cookie != "" && cr.RoutingToken != nil:
		return nil, malformed("Connection Request: both a cookie and a routing token")
	case cr.Cookie != "":
		if strings.Contains(cr.Cookie, "\r\n") {
			return nil, malformed("Connection Request: CR LF in the cookie")
		}
		v = append(append(append(v, cookiePrefix...), cr.Cookie...), crlf...)
	case cr.RoutingToken != nil:
		if bytes.Contains(cr.RoutingToken, crlf) || (len(cr.RoutingToken) > 0 && cr.RoutingToken[0] == negTypeRequest) {
			return nil, malformed("Connection Request: routing token would not parse back")
		}
		v = append(append(v, cr.RoutingToken...), crlf...)
	}
	if cr.HasNegotiation {
		flags := cr.NegFlags &^ NegReqCorrelationInfoPresent
		switch len(cr.CorrelationID) {
		case 0:
		case CorrelationIDLen:
			flags |= NegReqCorrelationInfoPresent
		default:
			return nil, malformed("Connection Request: correlation ID of %d bytes", len(cr.CorrelationID))
		}
		v = append(v, negTypeRequest, flags, negLen, 0)
		v = binary.LittleEndian.AppendUint32(v, cr.RequestedProtocols)
		if flags&NegReqCorrelationInfoPresent != 0 {
			v = append(v, typeCorrelationInfo, 0, correlationLen, 0)
			v = append(v, cr.CorrelationID...)
			v = append(v, make([]byte, correlationLen-4-CorrelationIDLen)...)
		}
	} else if len(cr.CorrelationID) != 0 {
		return nil, malformed("Connection Request: correlation ID without RDP_NEG_REQ")
	}
	return encodeX224(x224CR, cr.DstRef, cr.SrcRef, v)
}

func encodeX224(code byte, dst, src uint16, v []byte) ([]byte, error) {
	li := x224FixedLen - 1 + len(v)
	if li > x224MaxLI {
		return nil, tooLarge("X.224 TPDU of %d bytes", li+1)
	}
	x := make([]byte, 0, li+1)
	x = append(x, byte(li), code) // #nosec G115 -- li is at most x224MaxLI
	x = binary.BigEndian.AppendUint16(x, dst)
	x = binary.BigEndian.AppendUint16(x, src)
	x = append(x, 0)
	return AppendTPKT(nil, append(x, v...))
}

// NegType says what a Connection Confirm carries.
type NegType uint8

const (
	// NegNone: no negotiation structure; the server speaks Standard RDP
	// Security only.
	NegNone NegType = 0
	// NegResponse: RDP_NEG_RSP with the selected protocol.
	NegResponse NegType = NegType(negTypeResponse)
	// NegFailure: RDP_NEG_FAILURE with a failure code.
	NegFailure NegType = NegType(negTypeFail)
)

// ConnectionConfirm is an X.224 Connection Confirm with RDP_NEG_RSP or
// RDP_NEG_FAILURE (MS-RDPBCGR 2.2.1.2).
type ConnectionConfirm struct {
	DstRef, SrcRef uint16
	Type           NegType
	// Flags are RDP_NEG_RSP.flags (NegRsp...) or RDP_NEG_FAILURE.flags.
	Flags uint8
	// SelectedProtocol is RDP_NEG_RSP.selectedProtocol (Type NegResponse).
	SelectedProtocol uint32
	// FailureCode is RDP_NEG_FAILURE.failureCode (Type NegFailure).
	FailureCode uint32
}

// ParseConnectionConfirm parses a TPKT frame holding an X.224 Connection
// Confirm.
func ParseConnectionConfirm(frame []byte) (*ConnectionConfirm, error) {
	c, dst, src, err := x224Fixed(frame, x224CC, "Connection Confirm")
	if err != nil {
		return nil, err
	}
	cc := &ConnectionConfirm{DstRef: dst, SrcRef: src}
	v := c.rest()
	if len(v) == 0 {
		return cc, nil
	}
	if len(v) != negLen || binary.LittleEndian.Uint16(v[2:]) != negLen {
		return nil, malformed("Connection Confirm: negotiation structure of %d bytes", len(v))
	}
	cc.Flags = v[1]
	val := binary.LittleEndian.Uint32(v[4:])
	switch v[0] {
	case negTypeResponse:
		cc.Type, cc.SelectedProtocol = NegResponse, val
	case negTypeFail:
		cc.Type, cc.FailureCode = NegFailure, val
	default:
		return nil, malformed("Connection Confirm: negotiation type %d", v[0])
	}
	return cc, nil
}

// Encode returns the Connection Confirm as a TPKT frame.
func (cc *ConnectionConfirm) Encode() ([]byte, error) {
	var v []byte
	switch cc.Type {
	case NegNone:
	case NegResponse:
		v = binary.LittleEndian.AppendUint32([]byte{negTypeResponse, cc.Flags, negLen, 0}, cc.SelectedProtocol)
	case NegFailure:
		v = binary.LittleEndian.AppendUint32([]byte{negTypeFail, cc.Flags, negLen, 0}, cc.FailureCode)
	default:
		return nil, malformed("Connection Confirm: negotiation type %d", cc.Type)
	}
	return encodeX224(x224CC, cc.DstRef, cc.SrcRef, v)
}

// negotiationSrcRef is the SRC-REF the gateway puts in Connection Confirms
// it writes itself; any value is valid, this is the one Windows uses.
const negotiationSrcRef = 0x1234

// NegotiationFailure returns a complete TPKT frame holding an X.224
// Connection Confirm with RDP_NEG_FAILURE and code (Failure...): what a
// server answers a Connection Request it will not serve, and what clients
// report as a security negotiation failure.
func NegotiationFailure(code uint32) []byte {
	b, err := (&ConnectionConfirm{SrcRef: negotiationSrcRef, Type: NegFailure, FailureCode: code}).Encode()
	if err != nil {
		panic("pdu: fixed-size Connection Confirm failed to encode: " + err.Error())
	}
	return b
}

// ParseData checks that frame is a TPKT frame holding one X.224 Data TPDU
// (the last of its TSDU) and returns the user data it carries, sharing
// frame's memory.
func ParseData(frame []byte) ([]byte, error) {
	p, err := tpktPayload(frame)
	if err != nil {
		return nil, err
	}
	if len(p) < len(DataHeader) || p[0] != DataHeader[0] || p[1] != DataHeader[1] {
		return nil, malformed("not an X.224 Data TPDU")
	}
	if p[2] != DataHeader[2] {
		return nil, unsupported("X.224 Data TPDU without EOT")
	}
	return p[len(DataHeader):], nil
}

// EncodeData returns payload in an X.224 Data TPDU in a TPKT frame.
func EncodeData(payload []byte) ([]byte, error) {
	x := make([]byte, 0, len(DataHeader)+len(payload))
	x = append(append(x, DataHeader[:]...), payload...)
	return AppendTPKT(make([]byte, 0, tpktHeaderLen+len(x)), x)
}
