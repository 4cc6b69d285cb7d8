package pdu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"
)

// FuzzTPKT: splitting any byte stream into PDUs never panics, never
// returns more than max, and every TPKT packet read re-frames to itself
// (but for the reserved byte, which is written as zero).
func FuzzTPKT(f *testing.F) {
	f.Add(dtOf([]byte("hello")), uint16(0))
	f.Add(cat([]byte{0x04, 0x05, 0xAA, 0xBB, 0xCC}, dtOf(nil), []byte{0x00, 0x80, 0x04, 0x11}), uint16(100))
	f.Add([]byte{0x00, 0xFF, 0xFF, 1}, uint16(0))
	f.Add(NegotiationFailure(FailureSSLRequiredByServer), uint16(19))
	f.Fuzz(func(t *testing.T, stream []byte, max16 uint16) {
		max := int(max16)
		r := bytes.NewReader(stream)
		for {
			before := r.Len()
			kind, b, err := ReadPDU(r, max)
			if err != nil {
				break
			}
			if len(b) != before-r.Len() || (max > 0 && len(b) > max) {
				t.Fatalf("%v of %d bytes (max %d) from %d consumed", kind, len(b), max, before-r.Len())
			}
			switch kind {
			case KindTPKT:
				if int(binary.BigEndian.Uint16(b[2:])) != len(b) || len(b) < MinTPKT {
					t.Fatalf("TPKT %x", b)
				}
				var w bytes.Buffer
				if err := WriteTPKT(&w, b[tpktHeaderLen:]); err != nil {
					t.Fatal(err)
				}
				want := bytes.Clone(b)
				want[1] = 0
				if !bytes.Equal(w.Bytes(), want) {
					t.Fatalf("re-framed %x, read %x", w.Bytes(), b)
				}
			case KindFastPath:
				n := int(b[1])
				if b[1]&0x80 != 0 {
					n = int(b[1]&0x7F)<<8 | int(b[2])
				}
				if n != len(b) || b[0]&3 != 0 {
					t.Fatalf("fast-path %x", b)
				}
			default:
				t.Fatalf("kind %v", kind)
			}
		}
		b, err := ReadTPKT(bytes.NewReader(stream), max)
		if err == nil && !bytes.Equal(b, stream[:len(b)]) {
			t.Fatalf("ReadTPKT returned %x from %x", b, stream)
		}
		if err != nil && len(stream) >= MinTPKT && stream[0] == 3 && !errors.Is(err, ErrMalformed) &&
			!errors.Is(err, ErrTooLarge) && err != io.ErrUnexpectedEOF {
			t.Fatalf("unexpected error %v", err)
		}
	})
}

// FuzzX224 feeds the X.224 TPDU (the fuzzer's bytes, framed in TPKT) to
// every X.224 parser: none panics, and what parses encodes to something
// that parses to the same value (a Connection Confirm to the same bytes).
func FuzzX224(f *testing.F) {
	for _, fr := range [][]byte{
		crOf(cat([]byte("Cookie: mstshash=alice\r\n"), negReqOf(0, 3))),
		crOf(cat([]byte("Cookie: mstshash=bob\r\n"), negReqOf(0x09, 1), u8s(0x06, 0), le16b(36), correlationID, make([]byte, 16))),
		crOf([]byte("Cookie: msts=1.2.3\r\n")),
		ccOf(cat(u8s(2, 0x1F), le16b(8), le32b(2))),
		NegotiationFailure(FailureHybridRequiredByServer),
		dtOf([]byte{1, 2, 3}),
	} {
		f.Add(fr[tpktHeaderLen:])
	}
	f.Fuzz(func(t *testing.T, x []byte) {
		if len(x)+tpktHeaderLen > MaxTPKT {
			return
		}
		frame := tpktOf(x)
		if cr, err := ParseConnectionRequest(frame); err == nil {
			enc, err := cr.Encode()
			if err != nil {
				t.Fatalf("encode %+v: %v", cr, err)
			}
			back, err := ParseConnectionRequest(enc)
			if err != nil || !reflect.DeepEqual(back, cr) {
				t.Fatalf("round trip %+v -> %x -> %+v, %v", cr, enc, back, err)
			}
		}
		if cc, err := ParseConnectionConfirm(frame); err == nil {
			enc, err := cc.Encode()
			if err != nil || !bytes.Equal(enc, frame) {
				t.Fatalf("round trip %x -> %+v -> %x, %v", frame, cc, enc, err)
			}
		}
		if p, err := ParseData(frame); err == nil {
			enc, err := EncodeData(p)
			if err != nil || !bytes.Equal(enc, frame) {
				t.Fatalf("round trip %x -> %x, %v", frame, enc, err)
			}
		}
	})
}

// FuzzConnectInitial: parsing the MCS PDU (the fuzzer's bytes in an X.224
// Data TPDU) never panics; when it parses, the rewrite changes only the
// field's 4 bytes and everything else parses the same, or is refused and
// changes nothing.
func FuzzConnectInitial(f *testing.F) {
	for _, fr := range [][]byte{
		connectInitialOf(csCoreOf(234, 2, "W"), csClusterOf(), csSecurityOf(), csNetOf("rdpdr", "cliprdr")),
		connectInitialOf(csCoreOf(212, 2, "W"), csSecurityOf()),
		connectInitialNamed(u8s(0x01, 0x12, 0x00), csCoreOf(216, 1, "N")),
	} {
		f.Add(fr[7:])
	}
	f.Fuzz(func(t *testing.T, mcs []byte) {
		frame := dtOf(mcs)
		if len(frame) > MaxTPKT {
			return
		}
		ci, err := ParseConnectInitial(frame)
		if err != nil {
			if _, err := SetServerSelectedProtocol(frame, 1); err == nil {
				t.Fatal("rewrote a PDU that does not parse")
			}
			return
		}
		orig := bytes.Clone(frame)
		v := ^ci.Core.ServerSelectedProtocol
		_, err = SetServerSelectedProtocol(frame, v)
		if !ci.Core.HasServerSelectedProtocol {
			if !errors.Is(err, ErrFieldAbsent) || !bytes.Equal(frame, orig) {
				t.Fatalf("absent field: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if d := diff(orig, frame); len(d) != 4 || d[3]-d[0] != 3 {
			t.Fatalf("changed bytes %v", d)
		}
		back, err := ParseConnectInitial(frame)
		if err != nil || back.Core.ServerSelectedProtocol != v {
			t.Fatalf("re-parse: %+v %v", back, err)
		}
		back.Core.ServerSelectedProtocol = ci.Core.ServerSelectedProtocol
		if !reflect.DeepEqual(back, ci) {
			t.Fatalf("rewrite changed another field: %+v, was %+v", back, ci)
		}
	})
}

// FuzzConnectResponse is FuzzConnectInitial for the server's answer.
func FuzzConnectResponse(f *testing.F) {
	for _, fr := range [][]byte{
		connectResponseOf(scCoreOf(12, 3), scSecurityOf(), scNetOf(1003, 1004, 1005)),
		connectResponseOf(scCoreOf(16, 3), scNetOf(1003)),
		connectResponseOf(scCoreOf(8, 0)),
	} {
		f.Add(fr[7:])
	}
	f.Fuzz(func(t *testing.T, mcs []byte) {
		frame := dtOf(mcs)
		if len(frame) > MaxTPKT {
			return
		}
		cr, err := ParseConnectResponse(frame)
		if err != nil {
			if _, err := SetClientRequestedProtocols(frame, 1); err == nil {
				t.Fatal("rewrote a PDU that does not parse")
			}
			return
		}
		orig := bytes.Clone(frame)
		v := ^cr.ClientRequestedProtocols
		_, err = SetClientRequestedProtocols(frame, v)
		if !cr.HasClientRequestedProtocols {
			if !errors.Is(err, ErrFieldAbsent) || !bytes.Equal(frame, orig) {
				t.Fatalf("absent field: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if d := diff(orig, frame); len(d) != 4 || d[3]-d[0] != 3 {
			t.Fatalf("changed bytes %v", d)
		}
		back, err := ParseConnectResponse(frame)
		if err != nil || back.ClientRequestedProtocols != v {
			t.Fatalf("re-parse: %+v %v", back, err)
		}
		back.ClientRequestedProtocols = cr.ClientRequestedProtocols
		if !reflect.DeepEqual(back, cr) {
			t.Fatalf("rewrite changed another field: %+v, was %+v", back, cr)
		}
	})
}

// FuzzClientInfo: parsing the MCS PDU (the fuzzer's bytes in an X.224
// Data TPDU) never panics; what parses encodes back to the same bytes and
// the same value; and the injection rewrite always encodes to a PDU that
// parses with the new values and everything else unchanged.
func FuzzClientInfo(f *testing.F) {
	full := fullInfo()
	noTZ := fullInfo()
	noTZ.timeZone, noTZ.cookie, noTZ.tail = false, nil, []byte{1, 2, 3}
	for _, s := range []infoSpec{full, noTZ, {flags: InfoUnicode}, {flags: InfoUnicode, longLen: true, user: "u"}} {
		f.Add(clientInfoOf(s)[7:])
	}
	f.Fuzz(func(t *testing.T, mcs []byte) {
		frame := dtOf(mcs)
		if len(frame) > MaxTPKT {
			return
		}
		ci, err := ParseClientInfo(frame)
		if err != nil {
			return
		}
		enc, err := ci.Encode()
		if err != nil || !bytes.Equal(enc, frame) {
			t.Fatalf("round trip:\n in  %x\n out %x, %v", frame, enc, err)
		}
		back, err := ParseClientInfo(enc)
		if err != nil || !reflect.DeepEqual(back, ci) {
			t.Fatalf("re-parse: %v", err)
		}
		if err := ci.SetDomain("WIN01"); err != nil {
			t.Fatal(err)
		}
		if err := ci.SetUser("Administrator"); err != nil {
			t.Fatal(err)
		}
		if err := ci.SetPassword([]byte("vault-pässword")); err != nil {
			t.Fatal(err)
		}
		ci.SetAutoLogon()
		ci.StripAutoReconnectCookie()
		enc, err = ci.Encode()
		if errors.Is(err, ErrTooLarge) && len(frame) > MaxSetupPDU-64 {
			return // the new values do not fit in a PDU already at the cap
		}
		if err != nil {
			t.Fatal(err)
		}
		back, err = ParseClientInfo(enc)
		if err != nil {
			t.Fatalf("rewritten PDU does not parse: %v", err)
		}
		ci.longLen = back.longLen // a grown PDU may need the two-byte length
		if !reflect.DeepEqual(back, ci) || back.User() != "Administrator" || !back.PasswordEqual([]byte("vault-pässword")) ||
			back.Flags&InfoAutologon == 0 || back.HasAutoReconnectCookie() {
			t.Fatalf("rewritten PDU parses to %+v", back)
		}
	})
}
