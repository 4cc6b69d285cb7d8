package builtin

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// sampleFrames holds one valid frame of every op.
func sampleFrames() []frame {
	return []frame{
		{op: opChallenge, body: bytes.Repeat([]byte{7}, NonceSize)},
		{op: opHello, id: 0, name: "0123456789abcdef", body: []byte{0x30, 0x44, 1, 2}},
		{op: opWelcome, name: "paris", num: DefaultMaxFrameSize},
		{op: opDeclare, id: 1, flags: flagPrivate, name: "sallyport.paris.reply.0123456789abcdef"},
		{op: opPublish, id: 2, name: "sallyport.paris.requests", ttl: 30_000, body: []byte("sealed")},
		{op: opPublish, id: 3, name: "q", body: nil},
		{op: opOK, id: 2},
		{op: opError, id: 3, num: codeFull},
		{op: opConsume, id: 4, name: "sallyport.paris.work", num: 16},
		{op: opCancel, id: 4},
		{op: opDone, id: 4, num: codeForbidden},
		{op: opDeliver, id: 4, tag: 1 << 40, flags: flagRedelivered, body: []byte("item")},
		{op: opAck, tag: 9},
		{op: opReject, tag: 10, flags: flagRequeue},
		{op: opReject, tag: 11},
	}
}

func equalFrames(a, b frame) bool {
	return a.op == b.op && a.flags == b.flags && a.id == b.id && a.tag == b.tag && a.name == b.name &&
		a.num == b.num && a.ttl == b.ttl && bytes.Equal(a.body, b.body)
}

func TestFrameRoundTrip(t *testing.T) {
	for _, f := range sampleFrames() {
		t.Run(f.op.String(), func(t *testing.T) {
			b, err := appendFrame(nil, &f)
			if err != nil {
				t.Fatal(err)
			}
			g, err := decodeFrame(b)
			if err != nil {
				t.Fatalf("decode %x: %v", b, err)
			}
			if !equalFrames(f, g) {
				t.Fatalf("got %+v, want %+v", g, f)
			}
			// Every strict prefix is refused: no field may claim more than
			// the frame holds.
			for n := 0; n < len(b); n++ {
				if _, err := decodeFrame(b[:n]); err == nil {
					t.Fatalf("a %d-byte prefix of a %d-byte frame decoded", n, len(b))
				}
			}
			if _, err := decodeFrame(append(b, 0)); !errors.Is(err, errLongFrame) {
				t.Fatalf("trailing byte: %v", err)
			}
		})
	}
}

func TestFrameRefused(t *testing.T) {
	long := strings.Repeat("q", maxName+1)
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errShortFrame},
		{"op zero", []byte{0, 0, 0, 0, 0, 0}, errUnknownOp},
		{"op unknown", []byte{byte(opMax), 0, 0, 0, 0, 0}, errUnknownOp},
		{"flag not allowed", []byte{byte(opOK), 1, 0, 0, 0, 0}, errBadFlags},
		{"flag beyond the op's", []byte{byte(opReject), 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, errBadFlags},
		{"body claims more", []byte{byte(opChallenge), 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2}, errShortFrame},
		{"body claims 4 GiB", []byte{byte(opChallenge), 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, errShortFrame},
		{"name claims more", []byte{byte(opDeclare), 0, 0, 0, 0, 0, 9, 'a'}, errShortFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeFrame(tc.b); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := appendFrame(nil, &frame{op: opDeclare, name: long}); !errors.Is(err, errLongName) {
		t.Fatalf("encode a long name: %v", err)
	}
	if _, err := appendFrame(nil, &frame{op: opAck, flags: flagRequeue}); !errors.Is(err, errBadFlags) {
		t.Fatalf("encode a bad flag: %v", err)
	}
}

// FuzzDecodeFrame: decoding never panics, and a frame that decodes
// encodes back to the same bytes (the encoding is unique).
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range sampleFrames() {
		b, err := appendFrame(nil, &fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{byte(opPublish), 0, 0, 0, 0, 1, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := decodeFrame(b)
		if err != nil {
			return
		}
		if len(fr.body) > len(b) || len(fr.name) > maxName {
			t.Fatalf("decoded fields larger than the frame: %+v", fr)
		}
		out, err := appendFrame(nil, &fr)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", fr, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip changed the frame:\n in  %x\n out %x", b, out)
		}
	})
}
