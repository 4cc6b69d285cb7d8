package pdu

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestReadTPKT(t *testing.T) {
	frame := dtOf([]byte("hello"))
	got, err := ReadTPKT(bytes.NewReader(frame), 0)
	if err != nil || !bytes.Equal(got, frame) {
		t.Fatalf("ReadTPKT = %x, %v", got, err)
	}
	if got, err = ReadTPKT(bytes.NewReader(frame), len(frame)); err != nil || !bytes.Equal(got, frame) {
		t.Fatalf("at exactly max: %x, %v", got, err)
	}
	cases := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"empty", nil, 0, io.EOF},
		{"cut header", frame[:3], 0, io.ErrUnexpectedEOF},
		{"cut body", frame[:len(frame)-1], 0, io.ErrUnexpectedEOF},
		{"version 2", append([]byte{2}, frame[1:]...), 0, ErrMalformed},
		{"length below minimum", []byte{3, 0, 0, 6, 2, 0xF0}, 0, ErrMalformed},
		{"length below header", []byte{3, 0, 0, 0}, 0, ErrMalformed},
		{"over max", frame, len(frame) - 1, ErrTooLarge},
		{"over a small max", []byte{3, 0, 0xFF, 0xFF}, 100, ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := ReadTPKT(bytes.NewReader(c.in), c.max); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// A stream of slow-path and fast-path PDUs splits into the same PDUs.
func TestReadPDUStream(t *testing.T) {
	short := []byte{0x04, 0x05, 0xAA, 0xBB, 0xCC}                    // fast-path, one-byte length
	long := append([]byte{0x00, 0x81, 0x03}, make([]byte, 0x100)...) // two-byte length 0x103
	nonMinimal := []byte{0x08, 0x80, 0x04, 0x11}                     // two-byte form of a small length
	slow := dtOf([]byte{0x64, 0, 6, 3, 0xEB, 0x70, 1, 0})
	want := []struct {
		kind Kind
		b    []byte
	}{{KindFastPath, short}, {KindTPKT, slow}, {KindFastPath, long}, {KindFastPath, nonMinimal}, {KindTPKT, slow}}
	var stream []byte
	for _, w := range want {
		stream = append(stream, w.b...)
	}
	r := bytes.NewReader(stream)
	for i, w := range want {
		k, b, err := ReadPDU(r, 0)
		if err != nil || k != w.kind || !bytes.Equal(b, w.b) {
			t.Fatalf("PDU %d: %v %x %v, want %v %x", i, k, b, err, w.kind, w.b)
		}
	}
	if _, _, err := ReadPDU(r, 0); err != io.EOF {
		t.Fatalf("after the last PDU: %v", err)
	}
}

func TestReadPDURefuses(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"action 1", []byte{0x01, 0x05, 0, 0, 0}, 0, ErrMalformed},
		{"action 2", []byte{0x02, 0x05, 0, 0, 0}, 0, ErrMalformed},
		{"TPKT-like with other high bits", []byte{0x07, 0x00, 0x00, 0x07, 2, 0xF0, 0x80}, 0, ErrMalformed},
		{"fast-path length below header", []byte{0x00, 0x01}, 0, ErrMalformed},
		{"two-byte length below header", []byte{0x00, 0x80, 0x02}, 0, ErrMalformed},
		{"fast-path over max", []byte{0x00, 0xFF, 0xFF}, 1000, ErrTooLarge},
		{"TPKT over max", []byte{3, 0, 0x10, 0x00}, 1000, ErrTooLarge},
		{"cut fast-path", []byte{0x00, 0x05, 1}, 0, io.ErrUnexpectedEOF},
		{"cut two-byte length", []byte{0x00, 0x80}, 0, io.ErrUnexpectedEOF},
		{"cut TPKT header", []byte{3, 0, 0}, 0, io.ErrUnexpectedEOF},
		{"one byte", []byte{3}, 0, io.ErrUnexpectedEOF},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := ReadPDU(bytes.NewReader(c.in), c.max); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	// The largest fast-path length passes with the default max.
	big := append([]byte{0x00, 0xFF, 0xFF}, make([]byte, MaxFastPath-3)...)
	if k, b, err := ReadPDU(bytes.NewReader(big), 0); err != nil || k != KindFastPath || len(b) != MaxFastPath {
		t.Fatalf("largest fast-path PDU: %v %d %v", k, len(b), err)
	}
}

// countingWriter records each Write.
type countingWriter struct{ writes [][]byte }

func (w *countingWriter) Write(b []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(b))
	return len(b), nil
}

func TestWriteTPKT(t *testing.T) {
	payload := []byte{2, 0xF0, 0x80, 1, 2, 3}
	var w countingWriter
	if err := WriteTPKT(&w, payload); err != nil {
		t.Fatal(err)
	}
	if len(w.writes) != 1 || !bytes.Equal(w.writes[0], tpktOf(payload)) {
		t.Fatalf("writes %x, want one %x", w.writes, tpktOf(payload))
	}
	if err := WriteTPKT(&w, make([]byte, MaxTPKT-3)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized payload: %v", err)
	}
	if err := WriteTPKT(&w, []byte{1, 2}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("payload too short for X.224: %v", err)
	}
	if err := WriteTPKT(&w, make([]byte, MaxTPKT-4)); err != nil {
		t.Fatalf("largest payload: %v", err)
	}
	if KindTPKT.String() != "tpkt" || KindFastPath.String() != "fast-path" || Kind(9).String() != "kind(9)" {
		t.Fatal("Kind names")
	}
}
