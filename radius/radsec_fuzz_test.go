package radius

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	layeh "layeh.com/radius"
)

// FuzzReadFrame feeds an arbitrary stream to the RadSec frame reader, as a
// hostile server could. It must never panic, never return a frame outside
// 20..4096 octets or one that disagrees with its length field, never read
// past the frame it returns, and stop with an error that matches what is
// left of the stream.
func FuzzReadFrame(f *testing.F) {
	secret := []byte(testSecret)
	req, err := encode(accessRequest("bob", "bobpass"), Server{Addr: "x:1", Secret: secret})
	if err != nil {
		f.Fatal(err)
	}
	parsed, err := layeh.Parse(req, secret)
	if err != nil {
		f.Fatal(err)
	}
	reply := signReply(parsed.Response(layeh.CodeAccessAccept), parsed.Authenticator, secret, faultNone)
	f.Add(reply)
	f.Add(append(append([]byte(nil), reply...), reply...))
	f.Add(reply[:len(reply)-1])
	f.Add(reply[:3])
	f.Add([]byte{})
	f.Add(make([]byte, 20))
	for _, n := range []uint16{0, 4, 19, 20, 4096, 4097, 65535} {
		b := make([]byte, 24)
		binary.BigEndian.PutUint16(b[2:], n)
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, stream []byte) {
		r := bytes.NewReader(stream)
		consumed := 0
		for {
			started := false
			b, err := readFrame(r, func() { started = true })
			pos := len(stream) - r.Len()
			rest := stream[consumed:]
			if err != nil {
				if b != nil {
					t.Fatal("frame returned with an error")
				}
				switch {
				case errors.Is(err, io.EOF):
					if len(rest) != 0 || started {
						t.Fatalf("io.EOF with %d octets left", len(rest))
					}
				case errors.Is(err, io.ErrUnexpectedEOF):
					if len(rest) == 0 || pos != len(stream) || !started {
						t.Fatalf("io.ErrUnexpectedEOF with %d octets left, read to %d of %d", len(rest), pos, len(stream))
					}
					if len(rest) >= 4 {
						n := int(binary.BigEndian.Uint16(rest[2:4]))
						if n < 20 || n > 4096 || len(rest) >= n {
							t.Fatalf("io.ErrUnexpectedEOF although %d octets of a %d-octet frame are there", len(rest), n)
						}
					}
				case errors.Is(err, errFrameLength):
					n := int(binary.BigEndian.Uint16(rest[2:4]))
					if n >= 20 && n <= 4096 {
						t.Fatalf("length %d refused", n)
					}
					if pos != consumed+4 {
						t.Fatal("read past the header of a frame with a bad length")
					}
				default:
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if !started {
				t.Fatal("started not called")
			}
			if len(b) < 20 || len(b) > 4096 {
				t.Fatalf("frame of %d octets", len(b))
			}
			if int(binary.BigEndian.Uint16(b[2:4])) != len(b) {
				t.Fatal("frame length disagrees with its length field")
			}
			if !bytes.Equal(b, rest[:len(b)]) {
				t.Fatal("frame differs from the stream")
			}
			consumed += len(b)
			if pos != consumed {
				t.Fatalf("read to %d, frame ends at %d", pos, consumed)
			}
		}
	})
}
