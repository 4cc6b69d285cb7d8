package pdu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Errors every parser and encoder wraps, so callers can tell a broken peer
// from a feature the gateway refuses.
var (
	// ErrMalformed: the bytes do not follow the specification.
	ErrMalformed = errors.New("pdu: malformed")
	// ErrTooLarge: a length exceeds the caller's or the specification's cap.
	ErrTooLarge = errors.New("pdu: too large")
	// ErrUnsupported: valid, but not something the gateway handles (Standard
	// RDP Security encryption, ANSI strings, segmented MCS data).
	ErrUnsupported = errors.New("pdu: unsupported")
	// ErrFieldAbsent: the field to rewrite is not in the PDU.
	ErrFieldAbsent = errors.New("pdu: field absent")
)

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
}

func tooLarge(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrTooLarge}, a...)...)
}

func unsupported(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnsupported}, a...)...)
}

const (
	// tpktVersion is the first byte of every TPKT header (T.123).
	tpktVersion = 3
	// tpktHeaderLen is the size of the TPKT header: version, reserved and a
	// big-endian length that counts the header itself.
	tpktHeaderLen = 4
	// MaxTPKT is the largest TPKT packet the 16-bit length can describe.
	MaxTPKT = 0xFFFF
	// MinTPKT is the smallest TPKT packet accepted: the header and the
	// shortest X.224 TPDU RDP uses (a Data TPDU header, 3 bytes).
	MinTPKT = tpktHeaderLen + 3
	// MaxFastPath is the largest fast-path PDU its 15-bit length can describe.
	MaxFastPath = 0x7FFF
	// MaxSetupPDU is a cap for the connection-setup PDUs this package parses
	// (X.224 negotiation, MCS Connect Initial and Response, Client Info):
	// generous for all of them, and the size to pass to ReadTPKT while the
	// gateway still inspects the client's PDUs.
	MaxSetupPDU = 16 << 10
)

// Kind says how a PDU read by ReadPDU was framed.
type Kind uint8

const (
	// KindTPKT is a slow-path PDU: TPKT, X.224 and what they carry.
	KindTPKT Kind = iota + 1
	// KindFastPath is a fast-path input or output PDU (MS-RDPBCGR 2.2.8.1.2
	// and 2.2.9.1.2).
	KindFastPath
)

// String names the kind for logs.
func (k Kind) String() string {
	switch k {
	case KindTPKT:
		return "tpkt"
	case KindFastPath:
		return "fast-path"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// clampMax turns a caller's maximum into the effective one for a framing
// whose own limit is limit: a max of zero or less, or above limit, means limit.
func clampMax(max, limit int) int {
	if max <= 0 || max > limit {
		return limit
	}
	return max
}

// ReadTPKT reads one TPKT packet from r and returns all of it, header
// included. The version must be 3 and the length at least MinTPKT and at
// most max (max <= 0 means MaxTPKT); nothing is allocated before the length
// has been checked. An r at its end before the first byte gives io.EOF, a
// packet cut short io.ErrUnexpectedEOF.
func ReadTPKT(r io.Reader, max int) ([]byte, error) {
	var hdr [tpktHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	return readTPKTRest(r, hdr, max)
}

func readTPKTRest(r io.Reader, hdr [tpktHeaderLen]byte, max int) ([]byte, error) {
	if hdr[0] != tpktVersion {
		return nil, malformed("TPKT version %d", hdr[0])
	}
	n := int(binary.BigEndian.Uint16(hdr[2:]))
	if n < MinTPKT {
		return nil, malformed("TPKT length %d", n)
	}
	if n > clampMax(max, MaxTPKT) {
		return nil, tooLarge("TPKT length %d over %d", n, clampMax(max, MaxTPKT))
	}
	buf := make([]byte, n)
	copy(buf, hdr[:])
	if _, err := io.ReadFull(r, buf[tpktHeaderLen:]); err != nil {
		return nil, noEOF(err)
	}
	return buf, nil
}

// noEOF turns an io.EOF met inside a PDU into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ReadPDU reads one slow-path (TPKT) or fast-path PDU from r and returns
// its kind and all of its bytes, header included. The first byte decides:
// 3 is a TPKT version, a value whose two low bits (the action) are zero is
// a fast-path header, and anything else is malformed. A fast-path length is
// one byte, or two when the first has its high bit set (15 bits, MS-RDPBCGR
// 2.2.9.1.2), and counts the whole PDU. Lengths above max (max <= 0 means
// the framing's own limit) are refused before anything is allocated.
func ReadPDU(r io.Reader, max int) (Kind, []byte, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:2]); err != nil {
		return 0, nil, err
	}
	switch {
	case hdr[0] == tpktVersion:
		var th [tpktHeaderLen]byte
		th[0], th[1] = hdr[0], hdr[1]
		if _, err := io.ReadFull(r, th[2:]); err != nil {
			return 0, nil, noEOF(err)
		}
		b, err := readTPKTRest(r, th, max)
		return KindTPKT, b, err
	case hdr[0]&0x03 == 0:
		hl, n := 2, int(hdr[1])
		if hdr[1]&0x80 != 0 {
			if _, err := io.ReadFull(r, hdr[2:3]); err != nil {
				return 0, nil, noEOF(err)
			}
			hl, n = 3, int(hdr[1]&0x7F)<<8|int(hdr[2])
		}
		if n < hl {
			return 0, nil, malformed("fast-path length %d", n)
		}
		if n > clampMax(max, MaxFastPath) {
			return 0, nil, tooLarge("fast-path length %d over %d", n, clampMax(max, MaxFastPath))
		}
		buf := make([]byte, n)
		copy(buf, hdr[:hl])
		if _, err := io.ReadFull(r, buf[hl:]); err != nil {
			return 0, nil, noEOF(err)
		}
		return KindFastPath, buf, nil
	}
	return 0, nil, malformed("PDU header byte %#02x", hdr[0])
}

// AppendTPKT appends a TPKT header and payload to dst.
func AppendTPKT(dst, payload []byte) ([]byte, error) {
	n := tpktHeaderLen + len(payload)
	if n > MaxTPKT {
		return dst, tooLarge("TPKT payload of %d bytes", len(payload))
	}
	if n < MinTPKT {
		return dst, malformed("TPKT payload of %d bytes", len(payload))
	}
	dst = append(dst, tpktVersion, 0)
	dst = binary.BigEndian.AppendUint16(dst, uint16(n)) // #nosec G115 -- n is at most MaxTPKT
	return append(dst, payload...), nil
}

// WriteTPKT writes payload to w as one TPKT packet, in a single Write.
func WriteTPKT(w io.Writer, payload []byte) error {
	b, err := AppendTPKT(make([]byte, 0, tpktHeaderLen+len(payload)), payload)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// tpktPayload checks that frame is exactly one TPKT packet and returns what
// it carries.
func tpktPayload(frame []byte) ([]byte, error) {
	if len(frame) < MinTPKT {
		return nil, malformed("TPKT packet of %d bytes", len(frame))
	}
	if frame[0] != tpktVersion {
		return nil, malformed("TPKT version %d", frame[0])
	}
	if n := int(binary.BigEndian.Uint16(frame[2:])); n != len(frame) {
		return nil, malformed("TPKT length %d for %d bytes", n, len(frame))
	}
	return frame[tpktHeaderLen:], nil
}
