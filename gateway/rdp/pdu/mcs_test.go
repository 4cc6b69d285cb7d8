package pdu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

// diff returns the indexes at which a and b (of equal length) differ.
func diff(a, b []byte) []int {
	var d []int
	for i := range a {
		if a[i] != b[i] {
			d = append(d, i)
		}
	}
	return d
}

func TestConnectInitial(t *testing.T) {
	core := csCoreOf(234, ProtocolHybrid, "WORKSTATION")
	frame := connectInitialOf(core, csClusterOf(), csSecurityOf(), csNetOf("rdpdr", "rdpsnd", "cliprdr", "drdynvc"))
	ci, err := ParseConnectInitial(frame)
	if err != nil {
		t.Fatal(err)
	}
	want := &ConnectInitial{
		Core: ClientCore{
			Version: 0x00080004, DesktopWidth: 1280, DesktopHeight: 800, KeyboardLayout: 0x409, ClientBuild: 2600,
			ClientName: "WORKSTATION", HasServerSelectedProtocol: true, ServerSelectedProtocol: ProtocolHybrid,
		},
		Channels: []Channel{{"rdpdr", 0x80800000}, {"rdpsnd", 0x80800000}, {"cliprdr", 0x80800000}, {"drdynvc", 0x80800000}},
		Blocks:   []uint16{BlockCSCore, BlockCSCluster, BlockCSSecurity, BlockCSNet},
	}
	if !reflect.DeepEqual(ci, want) {
		t.Fatalf("parsed %+v\nwant   %+v", ci, want)
	}

	// The rewrite changes exactly the 4 bytes of serverSelectedProtocol,
	// at offset 212 of CS_CORE, and nothing else.
	orig := bytes.Clone(frame)
	out, err := SetServerSelectedProtocol(frame, 0x11223344)
	if err != nil {
		t.Fatal(err)
	}
	if &out[0] != &frame[0] {
		t.Fatal("not rewritten in place")
	}
	at := bytes.Index(orig, core) + 212
	if d := diff(orig, out); !reflect.DeepEqual(d, []int{at, at + 1, at + 2, at + 3}) {
		t.Fatalf("changed bytes %v, want %d..%d", d, at, at+3)
	}
	if got := binary.LittleEndian.Uint32(out[at:]); got != 0x11223344 {
		t.Fatalf("field holds %#x", got)
	}
	ci2, err := ParseConnectInitial(out)
	if err != nil || ci2.Core.ServerSelectedProtocol != 0x11223344 {
		t.Fatalf("re-parse: %+v %v", ci2, err)
	}
	ci2.Core.ServerSelectedProtocol = ProtocolHybrid
	if !reflect.DeepEqual(ci2, want) {
		t.Fatal("rewrite changed another field")
	}
}

func TestConnectInitialCoreLengths(t *testing.T) {
	for _, c := range []struct {
		length int
		has    bool
	}{{132, false}, {212, false}, {215, false}, {216, true}, {226, true}} {
		frame := connectInitialOf(csCoreOf(c.length, ProtocolSSL, "X"), csSecurityOf())
		ci, err := ParseConnectInitial(frame)
		if err != nil {
			t.Fatalf("CS_CORE of %d: %v", c.length, err)
		}
		if ci.Core.HasServerSelectedProtocol != c.has {
			t.Fatalf("CS_CORE of %d: has = %v", c.length, ci.Core.HasServerSelectedProtocol)
		}
		orig := bytes.Clone(frame)
		_, err = SetServerSelectedProtocol(frame, ProtocolHybrid)
		if c.has != (err == nil) || (!c.has && !errors.Is(err, ErrFieldAbsent)) {
			t.Fatalf("CS_CORE of %d: rewrite: %v", c.length, err)
		}
		if !c.has && !bytes.Equal(orig, frame) {
			t.Fatalf("CS_CORE of %d: a failed rewrite changed the PDU", c.length)
		}
	}
}

func TestConnectInitialConferenceName(t *testing.T) {
	// "12": two digits, then the flags in the following byte.
	frame := connectInitialNamed(u8s(0x01, 0x12, 0x00), csCoreOf(216, 1, "N"))
	if ci, err := ParseConnectInitial(frame); err != nil || ci.Core.ServerSelectedProtocol != 1 {
		t.Fatalf("%+v %v", ci, err)
	}
}

func TestConnectInitialRefuses(t *testing.T) {
	core := csCoreOf(216, 1, "N")
	strayBlock := append(bytes.Clone(csSecurityOf()), 0, 0)
	badBlock := csSecurityOf()
	badBlock[2] = 2 // length below the header
	longBlock := csSecurityOf()
	longBlock[2] = 200
	netTooMany := csNetOf()
	binary.LittleEndian.PutUint32(netTooMany[4:], 32)
	netShort := csNetOf("a", "b")
	binary.LittleEndian.PutUint32(netShort[4:], 3)
	wrongKey := connectInitialOf(core)
	copy(wrongKey[bytes.Index(wrongKey, []byte("Duca")):], "Dubb")
	ber := connectInitialOf(core)
	ber[11]++ // the Connect-Initial length's low byte (7F 65 82 hi lo at offset 7)
	cases := []struct {
		name string
		in   []byte
	}{
		{"no CS_CORE", connectInitialOf(csSecurityOf())},
		{"two CS_CORE", connectInitialOf(core, core)},
		{"CS_CORE too short", connectInitialOf(csCoreOf(100, 0, "x"))},
		{"stray bytes after the blocks", connectInitialOf(core, strayBlock)},
		{"block length below its header", connectInitialOf(core, badBlock)},
		{"block longer than the data", connectInitialOf(core, longBlock)},
		{"32 channels", connectInitialOf(core, netTooMany)},
		{"channels past the block", connectInitialOf(core, netShort)},
		{"no Duca key", wrongKey},
		{"BER length", ber},
		{"Connect Response", connectResponseOf(scCoreOf(12, 3))},
		{"not a Data TPDU", crOf(nil)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := ParseConnectInitial(c.in); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v", err)
			}
			if _, err := SetServerSelectedProtocol(c.in, 1); err == nil {
				t.Fatal("rewrote")
			}
		})
	}
	if _, err := ParseConnectInitial(dtOf(make([]byte, MaxSetupPDU))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
}

func TestConnectResponse(t *testing.T) {
	core := scCoreOf(12, ProtocolSSL|ProtocolHybrid)
	frame := connectResponseOf(core, scSecurityOf(), scNetOf(1003, 1004, 1005, 1006))
	cr, err := ParseConnectResponse(frame)
	if err != nil {
		t.Fatal(err)
	}
	want := &ConnectResponse{
		ServerVersion: 0x00080004, HasClientRequestedProtocols: true, ClientRequestedProtocols: 3,
		IOChannel: 1003, ChannelIDs: []uint16{1004, 1005, 1006},
		Blocks: []uint16{BlockSCCore, BlockSCSecurity, BlockSCNet},
	}
	if !reflect.DeepEqual(cr, want) {
		t.Fatalf("parsed %+v\nwant   %+v", cr, want)
	}
	orig := bytes.Clone(frame)
	out, err := SetClientRequestedProtocols(frame, 0xA1B2C3D4)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(orig, core) + 8
	if d := diff(orig, out); !reflect.DeepEqual(d, []int{at, at + 1, at + 2, at + 3}) {
		t.Fatalf("changed bytes %v, want %d..%d", d, at, at+3)
	}
	cr2, err := ParseConnectResponse(out)
	if err != nil || cr2.ClientRequestedProtocols != 0xA1B2C3D4 {
		t.Fatalf("re-parse: %+v %v", cr2, err)
	}

	// SC_CORE with earlyCapabilityFlags, and without the field.
	if cr, err := ParseConnectResponse(connectResponseOf(scCoreOf(16, 1), scNetOf(1003))); err != nil || !cr.HasClientRequestedProtocols || cr.ChannelIDs == nil {
		t.Fatalf("16-byte SC_CORE: %+v %v", cr, err)
	}
	short := connectResponseOf(scCoreOf(8, 0))
	orig = bytes.Clone(short)
	if _, err := SetClientRequestedProtocols(short, 1); !errors.Is(err, ErrFieldAbsent) || !bytes.Equal(orig, short) {
		t.Fatalf("8-byte SC_CORE: %v", err)
	}

	// An MCS failure result is reported, not refused.
	failed := connectResponseOf(core)
	failed[bytes.Index(failed, []byte{0x0A, 0x01, 0x00})+2] = 4
	if cr, err := ParseConnectResponse(failed); err != nil || cr.Result != 4 {
		t.Fatalf("failure result: %+v %v", cr, err)
	}
}

func TestConnectResponseRefuses(t *testing.T) {
	netShort := scNetOf(1003, 1004)
	binary.LittleEndian.PutUint16(netShort[6:], 5)
	for name, in := range map[string][]byte{
		"no SC_CORE":        connectResponseOf(scSecurityOf()),
		"two SC_CORE":       connectResponseOf(scCoreOf(12, 1), scCoreOf(12, 1)),
		"SC_CORE too short": connectResponseOf(scCoreOf(12, 1)[:6]),
		"SC_NET overrun":    connectResponseOf(scCoreOf(12, 1), netShort),
		"Connect Initial":   connectInitialOf(csCoreOf(216, 1, "x")),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseConnectResponse(in); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v", err)
			}
		})
	}
}
