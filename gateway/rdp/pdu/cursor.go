package pdu

import "encoding/binary"

// cursor reads forward through b[off:end]. Every read checks what is left
// first; a read past end marks the cursor bad and returns zero values, so a
// parser can read a run of fields and check bad once. Offsets are absolute
// indexes into b, so a field found through nested cursors can be rewritten
// in b in place.
type cursor struct {
	b        []byte
	off, end int
	bad      bool
}

func newCursor(b []byte) *cursor { return &cursor{b: b, end: len(b)} }

func (c *cursor) left() int { return c.end - c.off }

// take returns the next n bytes (sharing b's memory, capacity capped).
func (c *cursor) take(n int) []byte {
	if c.bad || n < 0 || n > c.left() {
		c.bad = true
		return nil
	}
	s := c.b[c.off : c.off+n : c.off+n]
	c.off += n
	return s
}

// sub returns a cursor over the next n bytes and moves c past them.
func (c *cursor) sub(n int) *cursor {
	if c.bad || n < 0 || n > c.left() {
		c.bad = true
		return &cursor{b: c.b, off: c.off, end: c.off, bad: true}
	}
	s := &cursor{b: c.b, off: c.off, end: c.off + n}
	c.off += n
	return s
}

// rest returns everything left.
func (c *cursor) rest() []byte { return c.take(c.left()) }

func (c *cursor) u8() byte {
	if s := c.take(1); s != nil {
		return s[0]
	}
	return 0
}

func (c *cursor) le16() uint16 {
	if s := c.take(2); s != nil {
		return binary.LittleEndian.Uint16(s)
	}
	return 0
}

func (c *cursor) be16() uint16 {
	if s := c.take(2); s != nil {
		return binary.BigEndian.Uint16(s)
	}
	return 0
}

func (c *cursor) le32() uint32 {
	if s := c.take(4); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

// perLength reads an ALIGNED PER length determinant of one byte (0..127)
// or two (0x80 | 14 bits); the fragmented form (0b11...) is refused. long
// says the two-byte form was used.
func (c *cursor) perLength() (n int, long bool, ok bool) {
	b := c.u8()
	switch {
	case c.bad:
		return 0, false, false
	case b&0x80 == 0:
		return int(b), false, true
	case b&0x40 != 0:
		return 0, true, false
	}
	lo := c.u8()
	if c.bad {
		return 0, true, false
	}
	return int(b&0x3F)<<8 | int(lo), true, true
}

// maxPERLength is the largest length the two-byte PER form holds.
const maxPERLength = 0x3FFF

// appendPERLength appends n as an ALIGNED PER length determinant, in two
// bytes when long is set or n needs them. n must be at most maxPERLength.
func appendPERLength(dst []byte, n int, long bool) []byte {
	if n < 0x80 && !long {
		return append(dst, byte(n)) // #nosec G115 -- below 0x80
	}
	return binary.BigEndian.AppendUint16(dst, 0x8000|uint16(n)) // #nosec G115 -- callers keep n at most maxPERLength
}

// berLength reads a BER definite length: short form, or long form in one
// or two bytes (nothing in RDP's setup PDUs needs more).
func (c *cursor) berLength() (int, bool) {
	b := c.u8()
	switch {
	case c.bad:
		return 0, false
	case b < 0x80:
		return int(b), true
	case b == 0x81:
		n := c.u8()
		return int(n), !c.bad
	case b == 0x82:
		n := c.be16()
		return int(n), !c.bad
	}
	return 0, false
}

// berElement reads one BER element whose tag is exactly tag (one or two
// bytes) and returns a cursor over its contents.
func (c *cursor) berElement(tag ...byte) (*cursor, bool) {
	for _, t := range tag {
		if c.u8() != t || c.bad {
			c.bad = true
			return nil, false
		}
	}
	n, ok := c.berLength()
	if !ok {
		c.bad = true
		return nil, false
	}
	s := c.sub(n)
	return s, !c.bad
}
