package amqp

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
)

// AMQP 0-9-1 frame layout (section 2.3.5): type, channel, payload size,
// payload, frame-end octet. A content header frame's payload starts with
// class id, weight and the body size.
const (
	frameHeaderLen  = 7
	frameTypeHeader = 2
	contentSizeEnd  = 12 // class id (2) + weight (2) + body size (8)
)

// MessageTooLargeError ends a connection whose broker announces a message
// body over Config.MaxMessageSize.
type MessageTooLargeError struct{ Size, Max uint64 }

// Error says how large the message was and what the limit is.
func (e *MessageTooLargeError) Error() string {
	return fmt.Sprintf("amqp: broker sent a %d-byte message, over the %d-byte limit", e.Size, e.Max)
}

// limitConn passes a connection's bytes through unchanged while following
// the frames the broker sends: amqp091 bounds each frame but allocates a
// message's whole body from its content header, so a header announcing
// more than the limit fails the read before any of the body is taken.
type limitConn struct {
	net.Conn
	scan frameScanner
}

func (c *limitConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if serr := c.scan.scan(p[:n]); serr != nil {
		return 0, serr
	}
	return n, err
}

// ConnectionState is the TLS state of an amqps connection (amqp091's
// Connection.ConnectionState asks for it).
func (c *limitConn) ConnectionState() tls.ConnectionState {
	if tc, ok := c.Conn.(*tls.Conn); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}

// frameScanner follows AMQP frame boundaries across reads.
type frameScanner struct {
	max uint64

	inPayload bool
	head      [frameHeaderLen]byte
	headN     int
	typ       byte
	remain    uint64 // payload bytes left, then 1 for the frame-end octet
	content   [contentSizeEnd]byte
	contentN  int
	err       error
}

func (s *frameScanner) scan(p []byte) error {
	for len(p) > 0 && s.err == nil {
		if !s.inPayload {
			k := copy(s.head[s.headN:], p)
			s.headN += k
			p = p[k:]
			if s.headN == frameHeaderLen {
				s.typ = s.head[0]
				s.remain = uint64(binary.BigEndian.Uint32(s.head[3:7])) + 1
				s.headN, s.contentN = 0, 0
				s.inPayload = true
			}
			continue
		}
		k := uint64(len(p))
		if k > s.remain {
			k = s.remain
		}
		if s.typ == frameTypeHeader && s.contentN < contentSizeEnd {
			s.contentN += copy(s.content[s.contentN:], p[:k])
			if s.contentN == contentSizeEnd {
				if size := binary.BigEndian.Uint64(s.content[4:12]); size > s.max {
					s.err = &MessageTooLargeError{Size: size, Max: s.max}
				}
			}
		}
		p = p[k:]
		s.remain -= k
		if s.remain == 0 {
			s.inPayload = false
		}
	}
	return s.err
}
