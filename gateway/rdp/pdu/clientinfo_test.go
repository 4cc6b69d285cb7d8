package pdu

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestClientInfoParse(t *testing.T) {
	spec := fullInfo()
	spec.shell, spec.workDir = `C:\tools\app.exe`, `C:\tools`
	frame := clientInfoOf(spec)
	ci, err := ParseClientInfo(frame)
	if err != nil {
		t.Fatal(err)
	}
	if ci.Initiator != 1007 || ci.ChannelID != 1003 || ci.SecFlags != SecInfoPkt || ci.CodePage != 0x409 || ci.Flags != spec.flags {
		t.Fatalf("header fields: %+v", *ci)
	}
	if ci.Domain() != "CORP" || ci.User() != "alice@win01" || ci.AlternateShell() != `C:\tools\app.exe` || ci.WorkingDir() != `C:\tools` {
		t.Fatalf("strings: %q %q %q %q", ci.Domain(), ci.User(), ci.AlternateShell(), ci.WorkingDir())
	}
	if pw := ci.Password(); string(pw) != "one-time-token-42" {
		t.Fatalf("password %q", pw)
	}
	if !ci.PasswordEqual([]byte("one-time-token-42")) || ci.PasswordEqual([]byte("one-time-token-43")) || ci.PasswordEqual(nil) {
		t.Fatal("PasswordEqual")
	}
	if !ci.HasExtendedInfo() || !ci.HasTimeZone() || !ci.HasAutoReconnectCookie() || ci.ClientAddressFamily != 2 ||
		ci.ClientAddress() != "192.0.2.10" || ci.ClientDir() != spec.clientDir || ci.PerformanceFlags != 0x2F {
		t.Fatalf("extended info: %+v", *ci)
	}
	// Unchanged, it encodes to the same bytes, unknown trailing fields
	// included.
	enc, err := ci.Encode()
	if err != nil || !bytes.Equal(enc, frame) {
		t.Fatalf("round trip:\n got  %x, %v\n want %x", enc, err, frame)
	}
	// The parse holds copies: wiping the frame changes nothing.
	clear(frame)
	if string(ci.Password()) != "one-time-token-42" || ci.User() != "alice@win01" {
		t.Fatal("ClientInfo shares the frame's memory")
	}
}

// Injection: new domain, user and password, INFO_AUTOLOGON, no cookie;
// the result is what the independent builder makes of the same values, so
// every other field is kept byte for byte.
func TestClientInfoRewrite(t *testing.T) {
	for _, c := range []struct {
		name string
		in   infoSpec
	}{
		{"full", fullInfo()},
		{"no auto-reconnect cookie", func() infoSpec { s := fullInfo(); s.cookie = nil; return s }()},
		{"extended info up to clientDir", func() infoSpec { s := fullInfo(); s.timeZone, s.cookie, s.tail = false, nil, nil; return s }()},
		{"extended info with a short tail", func() infoSpec {
			s := fullInfo()
			s.timeZone, s.cookie, s.tail = false, nil, timeZoneBytes()[:100]
			return s
		}()},
		{"no extended info", infoSpec{flags: InfoUnicode, user: "u"}},
		{"small, one-byte MCS length", infoSpec{flags: InfoUnicode}},
		{"small, two-byte MCS length", infoSpec{flags: InfoUnicode, longLen: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ci, err := ParseClientInfo(clientInfoOf(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if err := ci.SetDomain("WIN01"); err != nil {
				t.Fatal(err)
			}
			if err := ci.SetUser("Administrator"); err != nil {
				t.Fatal(err)
			}
			if err := ci.SetPassword([]byte("vault-päss-𝄞")); err != nil {
				t.Fatal(err)
			}
			ci.SetAutoLogon()
			if had := ci.StripAutoReconnectCookie(); had != (len(c.in.cookie) > 0) {
				t.Fatalf("StripAutoReconnectCookie = %v", had)
			}
			got, err := ci.Encode()
			if err != nil {
				t.Fatal(err)
			}
			want := c.in
			want.domain, want.user, want.pass = "WIN01", "Administrator", "vault-päss-𝄞"
			want.flags |= InfoAutologon
			want.cookie = nil
			if w := clientInfoOf(want); !bytes.Equal(got, w) {
				t.Fatalf("rewritten:\n got  %x\n want %x", got, w)
			}
			back, err := ParseClientInfo(got)
			if err != nil || back.User() != "Administrator" || !back.PasswordEqual([]byte("vault-päss-𝄞")) || back.HasAutoReconnectCookie() {
				t.Fatalf("re-parse: %v %v", back, err)
			}
		})
	}
}

func TestClientInfoLengthGrows(t *testing.T) {
	// A small PDU with a one-byte MCS length gets a two-byte one when a
	// long user name pushes it past 127 bytes.
	ci, err := ParseClientInfo(clientInfoOf(infoSpec{flags: InfoUnicode}))
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 200)
	if err := ci.SetUser(long); err != nil {
		t.Fatal(err)
	}
	got, err := ci.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if w := clientInfoOf(infoSpec{flags: InfoUnicode, user: long}); !bytes.Equal(got, w) {
		t.Fatalf("got  %x\nwant %x", got, w)
	}
}

func TestClientInfoNotClientInfo(t *testing.T) {
	noInfo := clientInfoOf(fullInfo())
	noInfo[4+3+8] = 0x00 // security flags low byte (after the 8-byte MCS header): no SEC_INFO_PKT
	for name, in := range map[string][]byte{
		"Erect Domain Request":     dtOf(u8s(0x04, 0x01, 0x00, 0x01, 0x00)),
		"Attach User Request":      dtOf(u8s(0x28)),
		"Channel Join Request":     dtOf(u8s(0x38, 0x00, 0x06, 0x03, 0xEB)),
		"Send Data without header": dtOf(u8s(0x64, 0, 6, 3, 0xEB, 0x70, 2, 0, 0)),
		"no SEC_INFO_PKT":          noInfo,
	} {
		if _, err := ParseClientInfo(in); !errors.Is(err, ErrNotClientInfo) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestClientInfoRefuses(t *testing.T) {
	const secret = "S3cr3t-Passw0rd"
	base := func() infoSpec { s := fullInfo(); s.pass = secret; return s }
	mutate := func(f func(b []byte, at func(field []byte) int)) []byte {
		b := clientInfoOf(base())
		f(b, func(field []byte) int { return bytes.Index(b, field) })
		return b
	}
	infoAt := 4 + 3 + 8 + 4 // TPKT, X.224, MCS (two-byte length), security header
	// A TS_INFO_PACKET followed by 3 bytes: too short for an extended info
	// packet (the MCS length byte is at 13).
	short := clientInfoOf(infoSpec{flags: InfoUnicode})
	short = dtOf(cat(short[7:13], u8s(short[13]+3), short[14:], u8s(1, 2, 3)))
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"encrypted", mutate(func(b []byte, _ func([]byte) int) { b[infoAt-4] |= byte(SecEncrypt) }), ErrUnsupported},
		{"segmented", mutate(func(b []byte, _ func([]byte) int) { b[4+3+5] = 0x50 }), ErrUnsupported},
		{"ANSI", mutate(func(b []byte, _ func([]byte) int) { b[infoAt+4] &^= byte(InfoUnicode) }), ErrUnsupported},
		{"MCS length", mutate(func(b []byte, _ func([]byte) int) { b[4+3+7]++ }), ErrMalformed},
		{"initiator out of range", mutate(func(b []byte, _ func([]byte) int) { b[4+3+1], b[4+3+2] = 0xFF, 0xFF }), ErrMalformed},
		{"password over 510 bytes", mutate(func(b []byte, _ func([]byte) int) { b[infoAt+12], b[infoAt+13] = 0x00, 0x02 }), ErrTooLarge},
		{"odd password length", mutate(func(b []byte, _ func([]byte) int) { b[infoAt+12]-- }), ErrMalformed},
		{"password without terminator", mutate(func(b []byte, at func([]byte) int) {
			b[at(utf16zOf(secret))+len(utf16Of(secret))] = 'x'
		}), ErrMalformed},
		{"clientAddress over 80 bytes", mutate(func(b []byte, at func([]byte) int) {
			i := at(utf16zOf("192.0.2.10")) - 2
			b[i], b[i+1] = 82, 0
		}), ErrTooLarge},
		{"clientDir past the end", mutate(func(b []byte, at func([]byte) int) {
			i := at(utf16zOf(fullInfo().clientDir)) - 2
			b[i], b[i+1] = 0xFE, 0x01
		}), ErrMalformed},
		{"cookie over 128 bytes", mutate(func(b []byte, at func([]byte) int) {
			i := at(arcCookie()) - 2
			b[i], b[i+1] = 130, 0
		}), ErrTooLarge},
		{"extended info of 3 bytes", short, ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ci, err := ParseClientInfo(c.in)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v (%v), want %v", err, ci, c.want)
			}
			if strings.Contains(err.Error(), secret) || bytes.Contains([]byte(err.Error()), utf16Of(secret)) {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
	if _, err := ParseClientInfo(dtOf(make([]byte, MaxSetupPDU))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
}

func TestClientInfoSetters(t *testing.T) {
	ci, err := ParseClientInfo(clientInfoOf(fullInfo()))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := ci.Encode()
	for name, err := range map[string]error{
		"NUL in user":        ci.SetUser("adm\x00in"),
		"invalid UTF-8":      ci.SetDomain("\xff"),
		"256 chars":          ci.SetUser(strings.Repeat("a", 256)),
		"128 non-BMP chars":  ci.SetUser(strings.Repeat("𝄞", 128)),
		"NUL in password":    ci.SetPassword([]byte("pw\x00")),
		"password too long":  ci.SetPassword(bytes.Repeat([]byte("p"), 256)),
		"lone surrogate":     ci.SetPassword([]byte("\xed\xa0\x80")),
		"invalid UTF-8 pass": ci.SetPassword([]byte{0xC3}),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("%s: error shows the value: %v", name, err)
		}
	}
	if after, _ := ci.Encode(); !bytes.Equal(before, after) {
		t.Fatal("a refused setter changed the PDU")
	}
	if err := ci.SetUser(strings.Repeat("a", 255)); err != nil {
		t.Fatalf("255 chars (510 bytes): %v", err)
	}
	if err := ci.SetDomain(""); err != nil || ci.Domain() != "" {
		t.Fatalf("empty domain: %v", err)
	}
	// A password with a non-BMP character and one of every UTF-8 length.
	pw := []byte("a\u00e9\u20ac\U0001F511")
	if err := ci.SetPassword(pw); err != nil {
		t.Fatal(err)
	}
	if got := ci.Password(); !bytes.Equal(got, pw) {
		t.Fatalf("password %q", got)
	}
	if !ci.PasswordEqual(pw) || ci.PasswordEqual([]byte{0xff}) {
		t.Fatal("PasswordEqual")
	}
	// An unpaired surrogate from the wire reads as U+FFFD.
	ci.password = []byte{0x00, 0xD8, 'a', 0}
	if got := string(ci.Password()); got != "\uFFFDa" {
		t.Fatalf("lone surrogate read as %q", got)
	}
}

func TestClientInfoWipe(t *testing.T) {
	ci, err := ParseClientInfo(clientInfoOf(fullInfo()))
	if err != nil {
		t.Fatal(err)
	}
	pw, cookie := ci.password, ci.cookie
	if err := ci.SetPassword([]byte("replacement")); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pw, make([]byte, len(pw))) {
		t.Fatal("SetPassword left the old password in memory")
	}
	pw = ci.password
	ci.Wipe()
	if !bytes.Equal(pw, make([]byte, len(pw))) || !bytes.Equal(cookie, make([]byte, len(cookie))) {
		t.Fatal("Wipe left the password or the cookie in memory")
	}
	if len(ci.Password()) != 0 || ci.HasAutoReconnectCookie() {
		t.Fatal("Wipe left a password or a cookie")
	}
	if ci.String() == "" || ci.GoString() != ci.String() {
		t.Fatal("String")
	}
}
