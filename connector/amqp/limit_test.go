package amqp

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
)

func frame(typ byte, payload []byte) []byte {
	f := []byte{typ, 0, 1, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(f[3:], uint32(len(payload))) // #nosec G115 -- test frames are small
	f = append(f, payload...)
	return append(f, 0xCE)
}

func contentHeader(size uint64) []byte {
	p := make([]byte, 14)
	binary.BigEndian.PutUint16(p[0:], 60) // basic
	binary.BigEndian.PutUint64(p[4:], size)
	return frame(frameTypeHeader, p)
}

func stream(bodySize uint64) []byte {
	var s []byte
	s = append(s, frame(1, []byte{0, 60, 0, 60, 1, 2, 3})...) // basic.deliver-ish
	s = append(s, contentHeader(bodySize)...)
	s = append(s, frame(3, make([]byte, min(bodySize, 100)))...)
	s = append(s, frame(8, nil)...) // heartbeat
	return s
}

func TestFrameScanner(t *testing.T) {
	for _, tc := range []struct {
		name string
		size uint64
		bad  bool
	}{
		{"small", 100, false},
		{"at the limit", 1000, false},
		{"over", 1001, true},
		{"huge", 1 << 62, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunk := range []int{1, 3, 7, 13, 1 << 20} {
				s := frameScanner{max: 1000}
				var err error
				data := stream(tc.size)
				for len(data) > 0 && err == nil {
					n := min(chunk, len(data))
					err = s.scan(data[:n])
					data = data[n:]
				}
				var tooLarge *MessageTooLargeError
				if got := errors.As(err, &tooLarge); got != tc.bad {
					t.Fatalf("chunks of %d: error %v, want an error: %v", chunk, err, tc.bad)
				}
			}
		})
	}
}

// TestLimitConn: the read that brings a too-large content header fails,
// and nothing of it is handed on.
func TestLimitConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		defer b.Close()
		_, _ = b.Write(stream(10))
		_, _ = b.Write(stream(5000))
	}()
	c := &limitConn{Conn: a, scan: frameScanner{max: 1000}}
	got, err := io.ReadAll(c)
	var tooLarge *MessageTooLargeError
	if !errors.As(err, &tooLarge) || tooLarge.Size != 5000 {
		t.Fatalf("error %v, want a MessageTooLargeError for 5000 bytes", err)
	}
	if len(got) >= len(stream(10))+len(stream(5000)) {
		t.Fatalf("read all %d bytes", len(got))
	}
}

// FuzzFrameScanner: how the bytes are split across reads never changes
// the verdict.
func FuzzFrameScanner(f *testing.F) {
	f.Add(stream(10), uint8(3))
	f.Add(stream(5000), uint8(1))
	f.Add([]byte("AMQP\x00\x00\x09\x01"), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		whole := frameScanner{max: 1000}
		werr := whole.scan(data)
		parts := frameScanner{max: 1000}
		var perr error
		chunk := int(split) + 1
		for rest := data; len(rest) > 0 && perr == nil; {
			n := min(chunk, len(rest))
			perr = parts.scan(rest[:n])
			rest = rest[n:]
		}
		if (werr == nil) != (perr == nil) {
			t.Fatalf("whole: %v, in chunks of %d: %v", werr, chunk, perr)
		}
	})
}
