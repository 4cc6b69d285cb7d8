package pdu

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// crOf is an X.224 Connection Request (DST-REF 0, SRC-REF 0, class 0)
// with the given variable part.
func crOf(v []byte) []byte {
	return tpktOf(cat(u8s(byte(6+len(v)), 0xE0, 0, 0, 0, 0, 0), v))
}

func ccOf(v []byte) []byte {
	return tpktOf(cat(u8s(byte(6+len(v)), 0xD0, 0, 0, 0x12, 0x34, 0), v))
}

func negReqOf(flags byte, protocols uint32) []byte {
	return cat(u8s(0x01, flags), le16b(8), le32b(protocols))
}

var correlationID = []byte{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0x01}

func TestConnectionRequest(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want ConnectionRequest
	}{
		{
			"cookie and negotiation",
			crOf(cat([]byte("Cookie: mstshash=alice@win01\r\n"), negReqOf(0, 0x0B))),
			ConnectionRequest{Cookie: "alice@win01", HasNegotiation: true, RequestedProtocols: ProtocolSSL | ProtocolHybrid | ProtocolHybridEx},
		},
		{
			"routing token",
			crOf(cat([]byte("Cookie: msts=3640205228.15629.0000\r\n"), negReqOf(0, 0x03))),
			ConnectionRequest{RoutingToken: []byte("Cookie: msts=3640205228.15629.0000"), HasNegotiation: true, RequestedProtocols: 0x03},
		},
		{
			"empty cookie identifier is kept as a token",
			crOf([]byte("Cookie: mstshash=\r\n")),
			ConnectionRequest{RoutingToken: []byte("Cookie: mstshash=")},
		},
		{
			"correlation info",
			crOf(cat([]byte("Cookie: mstshash=bob\r\n"), negReqOf(0x09, 0x01), u8s(0x06, 0), le16b(36), correlationID, make([]byte, 16))),
			ConnectionRequest{Cookie: "bob", HasNegotiation: true, NegFlags: 0x09, RequestedProtocols: 0x01, CorrelationID: correlationID},
		},
		{
			"negotiation only",
			crOf(negReqOf(0, 0)),
			ConnectionRequest{HasNegotiation: true},
		},
		{
			"nothing (Standard RDP Security only)",
			crOf(nil),
			ConnectionRequest{},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseConnectionRequest(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, c.want) {
				t.Fatalf("parsed %+v, want %+v", *got, c.want)
			}
			enc, err := got.Encode()
			if err != nil || !bytes.Equal(enc, c.in) {
				t.Fatalf("encoded %x, %v\nwant %x", enc, err, c.in)
			}
		})
	}
}

func TestConnectionRequestRefuses(t *testing.T) {
	good := cat([]byte("Cookie: mstshash=a\r\n"), negReqOf(0, 3))
	badLI := crOf(good)
	badLI[4]++
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"LI too large", badLI, ErrMalformed},
		{"not a CR", ccOf(nil), ErrMalformed},
		{"class 4", tpktOf(cat(u8s(6, 0xE0, 0, 0, 0, 0, 0x40))), ErrUnsupported},
		{"cookie without CR LF", crOf([]byte("Cookie: mstshash=a")), ErrMalformed},
		{"short negotiation", crOf(cat(u8s(1, 0), le16b(8), u8s(3, 0, 0))), ErrMalformed},
		{"negotiation length 12", crOf(cat(u8s(1, 0), le16b(12), le32b(3))), ErrMalformed},
		{"trailing bytes", crOf(cat(good, u8s(0))), ErrMalformed},
		{"correlation flag without info", crOf(negReqOf(0x08, 3)), ErrMalformed},
		{"correlation info of the wrong type", crOf(cat(negReqOf(0x08, 3), u8s(0x07, 0), le16b(36), make([]byte, 32))), ErrMalformed},
		{"correlation info without flag", crOf(cat(negReqOf(0, 3), u8s(0x06, 0), le16b(36), make([]byte, 32))), ErrMalformed},
		{"TPKT length mismatch", append(crOf(good), 0), ErrMalformed},
		{"too short", []byte{3, 0, 0, 6, 1, 0xE0}, ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := ParseConnectionRequest(c.in); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	for _, cr := range []ConnectionRequest{
		{Cookie: "a", RoutingToken: []byte("b")},
		{Cookie: "a\r\nb"},
		{RoutingToken: []byte{0x01, 'x'}},
		{HasNegotiation: true, CorrelationID: []byte{1}},
		{CorrelationID: correlationID},
		{Cookie: string(make([]byte, 240))},
	} {
		if _, err := cr.Encode(); err == nil {
			t.Errorf("encoded %+v", cr)
		}
	}
	// Encode derives CORRELATION_INFO_PRESENT from the ID.
	b, err := (&ConnectionRequest{HasNegotiation: true, NegFlags: 0x08, RequestedProtocols: 1}).Encode()
	if err != nil || !bytes.Equal(b, crOf(negReqOf(0, 1))) {
		t.Fatalf("flag without ID: %x %v", b, err)
	}
}

func TestConnectionConfirm(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want ConnectionConfirm
	}{
		{"response", ccOf(cat(u8s(2, 0x1F), le16b(8), le32b(2))), ConnectionConfirm{SrcRef: 0x1234, Type: NegResponse, Flags: 0x1F, SelectedProtocol: ProtocolHybrid}},
		{"failure", ccOf(cat(u8s(3, 0), le16b(8), le32b(5))), ConnectionConfirm{SrcRef: 0x1234, Type: NegFailure, FailureCode: FailureHybridRequiredByServer}},
		{"no negotiation", ccOf(nil), ConnectionConfirm{SrcRef: 0x1234}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseConnectionConfirm(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if *got != c.want {
				t.Fatalf("parsed %+v, want %+v", *got, c.want)
			}
			enc, err := got.Encode()
			if err != nil || !bytes.Equal(enc, c.in) {
				t.Fatalf("encoded %x, %v\nwant %x", enc, err, c.in)
			}
		})
	}
	for _, in := range [][]byte{
		ccOf(cat(u8s(4, 0), le16b(8), le32b(1))),
		ccOf(cat(u8s(2, 0), le16b(9), le32b(1))),
		ccOf(cat(u8s(2, 0), le16b(8), le32b(1), u8s(0))),
		ccOf(u8s(2, 0, 8, 0)),
		crOf(nil),
	} {
		if _, err := ParseConnectionConfirm(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%x: %v", in, err)
		}
	}
	if _, err := (&ConnectionConfirm{Type: 7}).Encode(); err == nil {
		t.Error("encoded negotiation type 7")
	}
}

func TestNegotiationFailure(t *testing.T) {
	// TPKT, X.224 CC (LI 14, DST-REF 0, SRC-REF 0x1234, class 0),
	// RDP_NEG_FAILURE (type 3, flags 0, length 8, code).
	want := []byte{
		0x03, 0x00, 0x00, 0x13,
		0x0E, 0xD0, 0x00, 0x00, 0x12, 0x34, 0x00,
		0x03, 0x00, 0x08, 0x00, 0x05, 0x00, 0x00, 0x00,
	}
	if got := NegotiationFailure(FailureHybridRequiredByServer); !bytes.Equal(got, want) {
		t.Fatalf("got  %x\nwant %x", got, want)
	}
	cc, err := ParseConnectionConfirm(NegotiationFailure(FailureSSLRequiredByServer))
	if err != nil || cc.Type != NegFailure || cc.FailureCode != FailureSSLRequiredByServer {
		t.Fatalf("%+v %v", cc, err)
	}
}

func TestData(t *testing.T) {
	frame := dtOf([]byte{1, 2, 3})
	p, err := ParseData(frame)
	if err != nil || !bytes.Equal(p, []byte{1, 2, 3}) {
		t.Fatalf("%x %v", p, err)
	}
	enc, err := EncodeData([]byte{1, 2, 3})
	if err != nil || !bytes.Equal(enc, frame) {
		t.Fatalf("%x %v", enc, err)
	}
	if p, err := ParseData(dtOf(nil)); err != nil || len(p) != 0 {
		t.Fatalf("empty data: %x %v", p, err)
	}
	if _, err := ParseData(tpktOf(u8s(2, 0xF0, 0x00, 1))); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("without EOT: %v", err)
	}
	if _, err := ParseData(crOf(nil)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a CR: %v", err)
	}
}

func TestNames(t *testing.T) {
	for p, want := range map[uint32]string{
		0: "RDP", 1: "SSL", 3: "SSL|HYBRID", 0x1F: "SSL|HYBRID|RDSTLS|HYBRID_EX|RDSAAD", 0x41: "SSL|0x40",
	} {
		if got := ProtocolString(p); got != want {
			t.Errorf("ProtocolString(%#x) = %q, want %q", p, got, want)
		}
	}
	for code := uint32(1); code <= 6; code++ {
		if FailureString(code) == FailureString(99) {
			t.Errorf("failure %d unnamed", code)
		}
	}
}
