package ntlm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// header returns a message header of the given type and size.
func header(typ uint32, size int) []byte {
	b := make([]byte, size)
	copy(b, signature[:])
	binary.LittleEndian.PutUint32(b[8:], typ)
	return b
}

// setField writes a field descriptor.
func setField(b []byte, at int, n uint16, off uint32) []byte {
	binary.LittleEndian.PutUint16(b[at:], n)
	binary.LittleEndian.PutUint16(b[at+2:], n)
	binary.LittleEndian.PutUint32(b[at+4:], off)
	return b
}

func put32(b []byte, at int, v uint32) []byte {
	binary.LittleEndian.PutUint32(b[at:], v)
	return b
}

// validAuthenticate is a well-formed AUTHENTICATE_MESSAGE with a MIC.
func validAuthenticate(t *testing.T) []byte {
	t.Helper()
	x := newExchange(t, testPassword(), nil, nil)
	return x.auth
}

func TestParseRefuses(t *testing.T) {
	auth := validAuthenticate(t)
	ntOff := ntOffset(auth)
	// A CHALLENGE with a target info field of the given AV bytes.
	chalWith := func(av []byte) []byte {
		b := put32(header(typeChallenge, challengeHeader), 20, uint32(FlagUnicode))
		return append(setField(b, 40, uint16(len(av)), challengeHeader), av...)
	}
	av := func(pairs ...[]byte) []byte { return bytes.Join(pairs, nil) }
	pair := func(id AVID, v []byte) []byte {
		b := binary.LittleEndian.AppendUint16(nil, uint16(id))
		b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
		return append(b, v...)
	}
	eol := []byte{0, 0, 0, 0}
	many := make([][]byte, 0, maxAVPairs+2)
	for i := range maxAVPairs + 1 {
		many = append(many, pair(AVID(100+i), nil))
	}
	many = append(many, eol)
	// A CHALLENGE with a target name of the given UTF-16 bytes.
	chalName := func(name []byte) []byte {
		b := put32(header(typeChallenge, challengeHeader), 20, uint32(FlagUnicode))
		return append(setField(b, 12, uint16(len(name)), challengeHeader), name...)
	}
	for _, c := range []struct {
		name  string
		parse func([]byte) error
		msg   []byte
		want  error
	}{
		{"empty", parseN, nil, ErrMalformed},
		{"wrong signature", parseN, append([]byte("NTLMSSQ\x00"), make([]byte, 32)...), ErrMalformed},
		{"wrong type", parseN, header(typeChallenge, 40), ErrMalformed},
		{"short header", parseN, header(typeNegotiate, 31), ErrMalformed},
		{"version flag without room", parseN, put32(header(typeNegotiate, 32), 12, uint32(FlagVersion)), ErrMalformed},
		{"too large", parseN, header(typeNegotiate, MaxMessageSize+1), ErrMalformed},
		{"field past the end", parseN, setField(header(typeNegotiate, 40), 16, 9, 32), ErrMalformed},
		{"field inside the header", parseN, setField(header(typeNegotiate, 40), 16, 4, 28), ErrMalformed},
		{"field offset overflow", parseN, setField(header(typeNegotiate, 40), 24, 8, 0xfffffffc), ErrMalformed},
		{"field over its cap", parseN, setField(header(typeNegotiate, 32+1025), 16, 1025, 32), ErrMalformed},
		{"challenge not Unicode", parseC, header(typeChallenge, 48), ErrUnsupported},
		{"target name odd length", parseC, chalName([]byte{'a', 0, 'b'}), ErrMalformed},
		{"target name lone high surrogate", parseC, chalName([]byte{0x00, 0xd8}), ErrMalformed},
		{"target name high surrogate then letter", parseC, chalName([]byte{0x00, 0xd8, 'a', 0}), ErrMalformed},
		{"target name lone low surrogate", parseC, chalName([]byte{0x00, 0xdc, 'a', 0}), ErrMalformed},
		{"target name NUL", parseC, chalName([]byte{'a', 0, 0, 0}), ErrMalformed},
		{"target name control", parseC, chalName([]byte{'a', 0, '\n', 0}), ErrMalformed},
		{"AV list without EOL", parseC, chalWith(pair(AVNbComputerName, []byte{'a', 0})), ErrMalformed},
		{"AV pair past the list", parseC, chalWith([]byte{1, 0, 9, 0, 'a', 0}), ErrMalformed},
		{"AV pair twice", parseC, chalWith(av(pair(AVNbComputerName, nil), pair(AVNbComputerName, nil), eol)), ErrMalformed},
		{"MsvAvFlags of 2 bytes", parseC, chalWith(av(pair(AVFlags, []byte{2, 0}), eol)), ErrMalformed},
		{"MsvAvTimestamp of 4 bytes", parseC, chalWith(av(pair(AVTimestamp, []byte{1, 2, 3, 4}), eol)), ErrMalformed},
		{"channel bindings of 8 bytes", parseC, chalWith(av(pair(AVChannelBindings, make([]byte, 8)), eol)), ErrMalformed},
		{"EOL with a value", parseC, chalWith([]byte{0, 0, 1, 0, 0}), ErrMalformed},
		{"too many AV pairs", parseC, chalWith(av(many...)), ErrMalformed},
		{"authenticate not Unicode", parseA, put32(bytes.Clone(auth), 60, uint32(FlagNTLM|FlagVersion)), ErrUnsupported},
		{"LM response of 25 bytes", parseA, setField(bytes.Clone(auth), 12, 25, 88), ErrMalformed},
		{"session key of 8 bytes", parseA, setField(bytes.Clone(auth), 52, 8, 88), ErrMalformed},
		{"NT response too long", parseA, setField(append(bytes.Clone(auth), make([]byte, maxNTResponse)...), 20, maxNTResponse+1, 88), ErrMalformed},
		{"user name odd length", parseA, mutate(auth, func(b []byte) { binary.LittleEndian.PutUint16(b[36:], 3) }), ErrMalformed},
		{"NT response past the end", parseA, setField(bytes.Clone(auth), 20, 60000, uint32(ntOff)), ErrMalformed},
		{"truncated", parseA, auth[:63], ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.parse(c.msg); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func parseN(b []byte) error { _, err := ParseNegotiate(b); return err }
func parseC(b []byte) error { _, err := ParseChallenge(b); return err }
func parseA(b []byte) error { _, err := ParseAuthenticate(b); return err }

func TestNTv2ResponseRefuses(t *testing.T) {
	good, err := ntv2Blob(1, []byte("cchallng"), nil)
	if err != nil {
		t.Fatal(err)
	}
	nt := append(make([]byte, 16), good...)
	if _, err := parseNTv2Response(nt); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"short":          nt[:47],
		"no EOL":         append(append(make([]byte, 16), good[:28]...), 1, 0, 0, 0, 2, 0, 0, 0),
		"HiRespType 2":   mutate(nt, func(b []byte) { b[17] = 2 }),
		"AV pair broken": mutate(nt, func(b []byte) { b[16+28+2] = 1 }),
	} {
		if _, err := parseNTv2Response(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestMICPlacement: bytes 72–88 are the MIC only when the payload leaves
// room for them.
func TestMICPlacement(t *testing.T) {
	m := &Authenticate{Flags: FlagUnicode | FlagVersion, User: "u", NTResponse: []byte("nt"), Version: ourVersion}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseAuthenticate(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.MIC != nil || got.Version != ourVersion {
		t.Fatalf("without a MIC: %+v", got)
	}
	m.MIC = []byte("0123456789abcdef")
	if b, err = m.Marshal(); err != nil {
		t.Fatal(err)
	}
	if got, err = ParseAuthenticate(b); err != nil || string(got.MIC) != "0123456789abcdef" {
		t.Fatalf("with a MIC: %+v, %v", got, err)
	}
	m.MIC = []byte("short")
	if _, err := m.Marshal(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("5-byte MIC: %v", err)
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	neg := &Negotiate{
		Flags:       clientFlags | FlagOEMDomainSupplied | FlagOEMWorkstationSupplied,
		Domain:      []byte("DOMAIN"),
		Workstation: []byte("WS"),
		Version:     ourVersion,
	}
	b, err := neg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	neg2, err := ParseNegotiate(b)
	if err != nil || !reflect.DeepEqual(neg, neg2) {
		t.Fatalf("NEGOTIATE %+v, %v", neg2, err)
	}
	ch := &Challenge{
		Flags:      FlagUnicode | FlagTargetInfo,
		TargetName: "Sérveur 𝄞",
		TargetInfo: AVList{{ID: AVNbComputerName, Value: encodeName("S")}, {ID: 200, Value: []byte{1}}},
	}
	copy(ch.ServerChallenge[:], "chalenge")
	if b, err = ch.Marshal(); err != nil {
		t.Fatal(err)
	}
	ch2, err := ParseChallenge(b)
	if err != nil || !reflect.DeepEqual(ch, ch2) {
		t.Fatalf("CHALLENGE %+v, %v", ch2, err)
	}
	au := &Authenticate{
		Flags:                     clientFlags,
		LMResponse:                make([]byte, 24),
		NTResponse:                []byte("an NT response"),
		Domain:                    "Dömain",
		User:                      "üser",
		Workstation:               "WS",
		EncryptedRandomSessionKey: []byte("0123456789abcdef"),
		Version:                   ourVersion,
		MIC:                       []byte("fedcba9876543210"),
	}
	if b, err = au.Marshal(); err != nil {
		t.Fatal(err)
	}
	au2, err := ParseAuthenticate(b)
	if err != nil || !reflect.DeepEqual(au, au2) {
		t.Fatalf("AUTHENTICATE %+v, %v", au2, err)
	}
	// The Client's NEGOTIATE is what Marshal makes of the same fields.
	cli := mustClient(t, testPassword())
	want, _ := (&Negotiate{Flags: clientFlags, Version: ourVersion}).Marshal()
	if !bytes.Equal(cli.Negotiate(), want) {
		t.Fatalf("client NEGOTIATE %x, want %x", cli.Negotiate(), want)
	}
}

func TestMarshalRefuses(t *testing.T) {
	long := strings.Repeat("x", 513)
	for name, f := range map[string]func() error{
		"long target name": func() error { _, err := (&Challenge{Flags: FlagUnicode, TargetName: long}).Marshal(); return err },
		"EOL in AV list": func() error {
			_, err := (&Challenge{Flags: FlagUnicode, TargetInfo: AVList{{ID: AVEOL}}}).Marshal()
			return err
		},
		"AV pair twice": func() error {
			_, err := (&Challenge{Flags: FlagUnicode, TargetInfo: AVList{{ID: 1}, {ID: 1}}}).Marshal()
			return err
		},
		"MsvAvFlags of 3 bytes": func() error {
			_, err := (&Challenge{Flags: FlagUnicode, TargetInfo: AVList{{ID: AVFlags, Value: []byte{1, 2, 3}}}}).Marshal()
			return err
		},
		"AV list too long": func() error {
			_, err := (&Challenge{Flags: FlagUnicode, TargetInfo: AVList{{ID: 99, Value: make([]byte, maxAVListBytes)}}}).Marshal()
			return err
		},
		"long user":     func() error { _, err := (&Authenticate{User: long}).Marshal(); return err },
		"user not UTF8": func() error { _, err := (&Authenticate{User: "\xff"}).Marshal(); return err },
		"session key of 5 bytes": func() error {
			_, err := (&Authenticate{EncryptedRandomSessionKey: []byte("short")}).Marshal()
			return err
		},
		"LM response of 25 bytes": func() error { _, err := (&Authenticate{LMResponse: make([]byte, 25)}).Marshal(); return err },
		"long OEM domain":         func() error { _, err := (&Negotiate{Domain: make([]byte, 1025)}).Marshal(); return err },
	} {
		if err := f(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestNames(t *testing.T) {
	for _, s := range []string{"", "alice", "Ünïcødé", "𝄞 clef", "日本語"} {
		got, err := decodeName(encodeName(s), "name")
		if err != nil || got != s {
			t.Errorf("%q: %q, %v", s, got, err)
		}
	}
	pw, err := passwordUTF16([]byte("a€𝄞"))
	if err != nil || !bytes.Equal(pw, refUTF16("a€𝄞")) {
		t.Fatalf("password in UTF-16: %x, %v", pw, err)
	}
	for _, ts := range []uint64{0, 1, toFiletime(t0), 1<<63 + 12345} {
		if got := toFiletime(fromFiletime(ts)); got != ts {
			t.Errorf("FILETIME %d round-trips to %d", ts, got)
		}
	}
	if toFiletime(fromFiletime(0).Add(-1)) != 0 {
		t.Error("a time before 1601 is not FILETIME 0")
	}
}
