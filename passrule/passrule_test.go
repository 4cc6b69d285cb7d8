package passrule

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// maxErrLen bounds an error message: the fixed text plus a short excerpt.
const maxErrLen = 200

const symbols = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

func TestClasses(t *testing.T) {
	want := [len(classOrder)]string{
		"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
		"abcdefghijklmnopqrstuvwxyz",
		"0123456789",
		symbols,
	}
	var got [len(classOrder)]string
	for c := 0; c < 256; c++ {
		if k := classOf(byte(c)); k >= 0 {
			got[k] += string(rune(c))
		}
	}
	if got != want {
		t.Fatalf("classes = %q; want %q", got, want)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in    string
		want  Rule
		canon string
	}{
		{"", Default, "len=24,classes=ulds"},
		{"len=24,classes=ulds", Default, "len=24,classes=ulds"},
		{"len=24,classes=ulds,exclude=@:/", Rule{24, "ulds", "/:@"}, "len=24,classes=ulds,exclude=/:@"},
		{"len=32", Rule{32, "ulds", ""}, "len=32,classes=ulds"},
		{"len=8", Rule{8, "ulds", ""}, "len=8,classes=ulds"},
		{"len=128", Rule{128, "ulds", ""}, "len=128,classes=ulds"},
		{"len=024", Rule{24, "ulds", ""}, "len=24,classes=ulds"},
		{"classes=ld", Rule{24, "ld", ""}, "len=24,classes=ld"},
		{"classes=sdlu", Default, "len=24,classes=ulds"},
		{"classes=uuld", Rule{24, "uld", ""}, "len=24,classes=uld"},
		{"classes=d,len=12", Rule{12, "d", ""}, "len=12,classes=d"},
		{"exclude=", Default, "len=24,classes=ulds"},
		{"exclude=zz0O1lI", Rule{24, "ulds", "01IOlz"}, "len=24,classes=ulds,exclude=01IOlz"},
		{"len=16,exclude=,;", Rule{16, "ulds", ",;"}, "len=16,classes=ulds,exclude=,;"},
		{"exclude=,", Rule{24, "ulds", ","}, "len=24,classes=ulds,exclude=,"},
		{"exclude=a,b", Rule{24, "ulds", ",ab"}, "len=24,classes=ulds,exclude=,ab"},
		{"exclude==,=", Rule{24, "ulds", ",="}, "len=24,classes=ulds,exclude=,="},
		{"exclude=,=@eln", Rule{24, "ulds", ",=@eln"}, "len=24,classes=ulds,exclude=,=@eln"},
		{"exclude=,1=", Rule{24, "ulds", ",1="}, "len=24,classes=ulds,exclude=,1="},
		{"classes=d,exclude=123456789", Rule{24, "d", "123456789"}, "len=24,classes=d,exclude=123456789"},
		{"classes=u,exclude=0123456789", Rule{24, "u", "0123456789"}, "len=24,classes=u,exclude=0123456789"},
		{"exclude=" + symbols[1:], Rule{24, "ulds", symbols[1:]}, "len=24,classes=ulds,exclude=" + symbols[1:]},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil || got != tt.want {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if s := got.String(); s != tt.canon {
				t.Fatalf("String() = %q; want %q", s, tt.canon)
			}
			again, err := Parse(got.String())
			if err != nil || again != got {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	secret := "correct-horse-battery-staple-and-then-some-more-secret-text"
	tests := []struct {
		in   string
		want string // in the error message
	}{
		{"len", "not key=value"},
		{"len=", "whole number"},
		{"len=abc", "whole number"},
		{"len=+24", "whole number"},
		{"len=-24", "whole number"},
		{"len= 24", "whole number"},
		{"len=24 ", "whole number"},
		{"len=0x20", "whole number"},
		{"len=1000", "whole number"},
		{"len=99999999999999999999", "whole number"},
		{"len=7", "outside 8..128"},
		{"len=3,classes=ulds", "outside 8..128"},
		{"len=0", "outside 8..128"},
		{"len=129", "outside 8..128"},
		{"len=999", "outside 8..128"},
		{"len=24,len=24", "len given twice"},
		{"classes=u,classes=l", "classes given twice"},
		{"classes=", "at least one"},
		{"classes=x", `"x" is not one of`},
		{"classes=U", `"U" is not one of`},
		{"classes=ul ds", `" " is not one of`},
		{"Len=24", "unknown key"},
		{"length=24", "unknown key"},
		{" len=24", "unknown key"},
		{"len=24, classes=ulds", "unknown key"},
		{"=24", "unknown key"},
		{"len=24,", "stray comma"},
		{",len=24", "stray comma"},
		{"len=24,,classes=ul", "stray comma"},
		{",", "stray comma"},
		{"exclude=@,len=20", "must come last"},
		{"exclude=,classes=u", "must come last"},
		{"exclude=@,foo=bar", "must come last"},
		{"exclude=@,exclude=:", "must come last"},
		{"exclude= ", "not printable"},
		{"exclude=\t", "not printable"},
		{"exclude=\x00", "not printable"},
		{"exclude=\x7f", "not printable"},
		{"exclude=é", "not printable"},
		{"classes=d,exclude=0123456789", "class d (digits)"},
		{"classes=uds,exclude=" + symbols, "class s (symbols)"},
		{"exclude=ABCDEFGHIJKLMNOPQRSTUVWXYZ", "class u (upper case)"},
		{"classes=l,exclude=abcdefghijklmnopqrstuvwxyz", "class l (lower case)"},
		{strings.Repeat("len=24,", 40), "longer than 256"},
		{"exclude=" + strings.Repeat("a", MaxInput), "longer than 256"},
		{secret, "not key=value"},
		{secret + "=x", "unknown key"},
		{"len=" + secret, "whole number"},
		{"\x00\xff=1", "unknown key"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v; want error", tt.in, got)
			}
			if got != (Rule{}) {
				t.Fatalf("Parse(%q) = %+v with error; want the zero Rule", tt.in, got)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Fatalf("Parse(%q) error %q; want it to mention %q", tt.in, msg, tt.want)
			}
			if len(msg) > maxErrLen {
				t.Fatalf("Parse(%q) error is %d bytes long: %q", tt.in, len(msg), msg)
			}
			if strings.Contains(msg, secret[:excerptLen+1]) {
				t.Fatalf("Parse error echoes more than %d bytes of the input: %q", excerptLen, msg)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		r    Rule
		want string // "" for valid, else in the error message
	}{
		{Default, ""},
		{Rule{8, "u", ""}, ""},
		{Rule{128, "ulds", ""}, ""},
		{Rule{8, "ulds", "02345678BCDEFGHIJKLMNOPQRSTUVWXYZbcdefghijklmnopqrstuvwxyz"}, ""},
		{Rule{24, "d", "012345678"}, ""},
		{Rule{24, "u", "0123456789"}, ""},
		{Rule{}, "outside"},
		{Rule{7, "ulds", ""}, "outside"},
		{Rule{129, "ulds", ""}, "outside"},
		{Rule{-1, "ulds", ""}, "outside"},
		{Rule{3, "ulds", ""}, "outside"},
		{Rule{24, "", ""}, "at least one"},
		{Rule{24, "du", ""}, "in that order"},
		{Rule{24, "uu", ""}, "in that order"},
		{Rule{24, "x", ""}, "in that order"},
		{Rule{24, "ULDS", ""}, "in that order"},
		{Rule{24, "uldsu", ""}, "in that order"},
		{Rule{24, "ulds", "@/"}, "sorted"},
		{Rule{24, "ulds", "@@"}, "sorted"},
		{Rule{24, "ulds", " "}, "printable"},
		{Rule{24, "ulds", "\x00"}, "printable"},
		{Rule{24, "ulds", "\xff"}, "printable"},
		{Rule{24, "d", "0123456789"}, "class d (digits)"},
		{Rule{24, "ud", "0123456789"}, "class d (digits)"},
		{Rule{24, "s", symbols}, "class s (symbols)"},
	}
	for _, tt := range tests {
		t.Run(tt.r.String(), func(t *testing.T) {
			err := tt.r.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("%+v.Validate() = %v; want nil", tt.r, err)
				}
				if got, err := Parse(tt.r.String()); err != nil || got != tt.r {
					t.Fatalf("Parse(%q) = %+v, %v; want %+v", tt.r.String(), got, err, tt.r)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%+v.Validate() = %v; want an error mentioning %q", tt.r, err, tt.want)
			}
			if pw, err := tt.r.Generate(); err == nil {
				t.Fatalf("%+v.Generate() = %q for an invalid rule", tt.r, pw)
			}
			if tt.r.Allows([]byte("Aa0!Aa0!Aa0!Aa0!Aa0!Aa0!")) {
				t.Fatalf("%+v.Allows(...) = true for an invalid rule", tt.r)
			}
		})
	}
}

func TestAllows(t *testing.T) {
	r := Rule{8, "uld", "0O"}
	tests := []struct {
		pw   string
		want bool
	}{
		{"Abcdefg1", true},
		{"1Abcdefg", true},
		{"Abcdefg", false},     // short
		{"Abcdefgh1", false},   // long
		{"abcdefg1", false},    // no upper case
		{"ABCDEFG1", false},    // no lower case
		{"Abcdefgh", false},    // no digit
		{"Abcdefg0", false},    // excluded
		{"Obcdefg1", false},    // excluded
		{"Abcdef!1", false},    // symbol not selected
		{"Abcdef 1", false},    // space
		{"Abcdef\x001", false}, // control
		{"Abcdef\xff1", false}, // not ASCII
		{"", false},
	}
	for _, tt := range tests {
		if got := r.Allows([]byte(tt.pw)); got != tt.want {
			t.Errorf("%v.Allows(%q) = %v; want %v", r, tt.pw, got, tt.want)
		}
	}
}

// generateMany draws n passwords under r, checks each, and returns how
// often every byte value appeared.
func generateMany(t *testing.T, r Rule, n int) (counts [256]int) {
	t.Helper()
	cs := r.charset()
	for i := 0; i < n; i++ {
		pw, err := r.Generate()
		if err != nil {
			t.Fatalf("%v.Generate(): %v", r, err)
		}
		if len(pw) != r.Length {
			t.Fatalf("%v.Generate() = %q: length %d", r, pw, len(pw))
		}
		var seen [len(classOrder)]bool
		for _, c := range pw {
			if c <= ' ' || c >= 0x7f {
				t.Fatalf("%v.Generate() = %q: holds byte %#x", r, pw, c)
			}
			if strings.IndexByte(r.Exclude, c) >= 0 {
				t.Fatalf("%v.Generate() = %q: holds excluded %q", r, pw, c)
			}
			k := classOf(c)
			if strings.IndexByte(r.Classes, classOrder[k]) < 0 {
				t.Fatalf("%v.Generate() = %q: holds %q of class %c", r, pw, c, classOrder[k])
			}
			seen[k] = true
			counts[c]++
		}
		for k, ok := range seen {
			if !ok && strings.IndexByte(r.Classes, classOrder[k]) >= 0 {
				t.Fatalf("%v.Generate() = %q: no character of class %c", r, pw, classOrder[k])
			}
		}
		if !r.Allows(pw) {
			t.Fatalf("%v.Allows(%q) = false for its own password", r, pw)
		}
	}
	for c := range counts {
		if counts[c] > 0 && (c >= 128 || !cs.allowed[c]) {
			t.Fatalf("%v: generated %q, which is not allowed", r, rune(c))
		}
	}
	return counts
}

func TestGenerate(t *testing.T) {
	rules := []struct {
		rule string
		n    int
		// uniform is false for rules whose every-class guarantee visibly
		// skews the frequencies (a small class in a short password turns up
		// more often than chance, as it must).
		uniform bool
	}{
		{"", 10000, true},
		{"len=24,classes=ulds,exclude=@:/", 10000, true},
		{"len=40,classes=ld,exclude=0O1lI", 5000, true},
		{"len=128,classes=s", 2000, true},
		{"len=32,classes=d", 7000, true},
		{"len=8,classes=ulds", 2000, false},
		{"len=8,classes=ulds,exclude=012345678ABCDEFGHIJKLMNOPQRSTUVWXYabcdefghijklmnopqrstuvwxy" + symbols[1:], 2000, false},
		{"len=8,classes=ulds,exclude=012345678ABCDEFGHIJKLMNOPQRSTUVWXYabcdefghijklmnopqrstuvwxy", 2000, false},
	}
	for _, tt := range rules {
		t.Run(tt.rule, func(t *testing.T) {
			r, err := Parse(tt.rule)
			if err != nil {
				t.Fatal(err)
			}
			counts := generateMany(t, r, tt.n)
			alpha := r.charset().alpha
			for _, c := range alpha {
				if counts[c] == 0 {
					t.Errorf("%q never appeared", c)
				}
			}
			if !tt.uniform {
				return
			}
			// Loose enough never to flake (each count is at least ~1,000
			// expected, a 50% deviation is over 15 standard deviations),
			// tight enough to catch a biased draw such as a plain modulo
			// of 256 (which over-weights some characters by a third or
			// more for most alphabet sizes) or an off-by-one in the alphabet.
			total := tt.n * r.Length
			want := float64(total) / float64(len(alpha))
			if want < 1000 {
				t.Fatalf("test too small: %.0f draws a character", want)
			}
			var chi2 float64
			for _, c := range alpha {
				got := float64(counts[c])
				if got < want*0.5 || got > want*1.5 {
					t.Errorf("%q appeared %d times; expected about %.0f", c, counts[c], want)
				}
				chi2 += (got - want) * (got - want) / want
			}
			// The chi-square statistic for k-1 degrees of freedom has mean
			// k-1 and standard deviation sqrt(2(k-1)); five times the mean
			// (plus a margin for small k) is far in the tail.
			df := float64(len(alpha) - 1)
			if chi2 > 5*df+50 {
				t.Errorf("chi-square %.1f over %d characters; expected about %.0f", chi2, len(alpha), df)
			}
		})
	}
}

// TestGenerateDistinct is a smoke test that passwords are not repeated.
func TestGenerateDistinct(t *testing.T) {
	seen := make(map[string]bool)
	for i := 0; i < 1000; i++ {
		pw, err := Default.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if seen[string(pw)] {
			t.Fatalf("password %q generated twice", pw)
		}
		seen[string(pw)] = true
	}
}

// TestGenerateRejects checks the rejection sampling on a fixed byte
// stream: for an alphabet of n characters, bytes from 256-256%n up are
// skipped and the rest map to byte%n.
func TestGenerateRejects(t *testing.T) {
	r := Rule{8, "d", ""} // n = 10, limit = 250
	stream := []byte{
		0, 250, 251, 255, 1, 249, 12, 23, 254, 34, 45, 56,
	}
	stream = append(stream, make([]byte, 64-len(stream))...)
	pw, err := r.generate(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if want := "01923456"; string(pw) != want {
		t.Fatalf("generate = %q; want %q", pw, want)
	}

	// An alphabet whose size divides 256 rejects nothing.
	r = Rule{8, "s", ""} // n = 32
	stream = make([]byte, 64)
	for i := range stream {
		stream[i] = byte(255 - i)
	}
	pw, err = r.generate(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8)
	for i := range want {
		want[i] = symbols[(255-i)%32]
	}
	if !bytes.Equal(pw, want) {
		t.Fatalf("generate = %q; want %q", pw, want)
	}
}

// TestGenerateRetries checks that a draw missing a class is thrown away
// whole: the first eight digits lack the upper case letter the rule needs.
func TestGenerateRetries(t *testing.T) {
	r := Rule{8, "ud", ""} // alphabet 0-9A-Z, n = 36, limit = 252
	stream := make([]byte, 64)
	for i := range stream {
		stream[i] = byte(i % 10) // digits only
	}
	stream[9] = 10 // 'A', in the second draw
	pw, err := r.generate(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if want := "8A012345"; string(pw) != want {
		t.Fatalf("generate = %q; want %q", pw, want)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

func TestGenerateSourceFails(t *testing.T) {
	pw, err := Default.generate(failingReader{})
	if err == nil || pw != nil {
		t.Fatalf("generate = %q, %v; want an error", pw, err)
	}
	// A source that never yields a password meeting the rule.
	pw, err = Rule{8, "ud", ""}.generate(bytes.NewReader(make([]byte, 1<<20)))
	if err == nil || pw != nil {
		t.Fatalf("generate over zeros = %q, %v; want an error", pw, err)
	}
}

func TestText(t *testing.T) {
	type config struct {
		Rule Rule `json:"rule"`
	}
	var c config
	if err := json.Unmarshal([]byte(`{"rule":"len=30,classes=dul,exclude=@@:"}`), &c); err != nil {
		t.Fatal(err)
	}
	if want := (Rule{30, "uld", ":@"}); c.Rule != want {
		t.Fatalf("unmarshalled %+v; want %+v", c.Rule, want)
	}
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"rule":"len=30,classes=uld,exclude=:@"}`; string(out) != want {
		t.Fatalf("marshalled %s; want %s", out, want)
	}

	c.Rule = Default
	if err := json.Unmarshal([]byte(`{"rule":"len=3"}`), &c); err == nil {
		t.Fatal("unmarshalled len=3")
	}
	if c.Rule != Default {
		t.Fatalf("failed unmarshal changed the rule to %+v", c.Rule)
	}
	if err := json.Unmarshal([]byte(`{"rule":""}`), &c); err != nil || c.Rule != Default {
		t.Fatalf(`unmarshalled "" to %+v, %v; want Default`, c.Rule, err)
	}
	if _, err := json.Marshal(config{}); err == nil {
		t.Fatal("marshalled the zero Rule")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "len=24,classes=ulds,exclude=@:/", "len=8", "classes=d,exclude=012345678",
		"exclude=,", "exclude=@,len=20", "len=24,len=24", "classes=uuld", "len=7",
		"classes=ulds,exclude=" + symbols, "exclude= ", ",", "len=128,classes=s",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		r, err := Parse(in)
		if err != nil {
			if r != (Rule{}) {
				t.Fatalf("Parse(%q) = %+v with error %v", in, r, err)
			}
			if len(err.Error()) > maxErrLen {
				t.Fatalf("Parse(%q) error is %d bytes long", in, len(err.Error()))
			}
			return
		}
		if len(in) > MaxInput {
			t.Fatalf("Parse accepted %d bytes", len(in))
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("Parse(%q) = %+v, which Validate refuses: %v", in, r, err)
		}
		s := r.String()
		again, err := Parse(s)
		if err != nil || again != r {
			t.Fatalf("Parse(%q) = %+v, %v; want %+v (from %q)", s, again, err, r, in)
		}
		if again.String() != s {
			t.Fatalf("String not stable: %q then %q", s, again.String())
		}
		pw, err := r.Generate()
		if err != nil {
			t.Fatalf("%v.Generate(): %v", r, err)
		}
		if !r.Allows(pw) {
			t.Fatalf("%v.Allows(%q) = false for its own password", r, pw)
		}
	})
}

// FuzzRule checks Validate's verdict on arbitrary Rule values: a rule it
// accepts round-trips through String and generates passwords it allows; a
// rule it refuses generates nothing and allows nothing.
func FuzzRule(f *testing.F) {
	f.Add(24, "ulds", "")
	f.Add(8, "ulds", "/:@")
	f.Add(8, "d", "0123456789")
	f.Add(3, "ulds", "")
	f.Add(24, "du", "@/")
	f.Add(12, "s", symbols[1:])
	f.Fuzz(func(t *testing.T, n int, classes, exclude string) {
		r := Rule{n, classes, exclude}
		pw, genErr := r.Generate()
		if err := r.Validate(); err != nil {
			if genErr == nil {
				t.Fatalf("%+v: Validate refuses (%v) but Generate gave %q", r, err, pw)
			}
			if r.Allows(pw) || r.Allows([]byte(classes)) {
				t.Fatalf("%+v: Validate refuses (%v) but Allows said yes", r, err)
			}
			if _, err := r.MarshalText(); err == nil {
				t.Fatalf("%+v: Validate refuses but MarshalText accepts", r)
			}
			return
		}
		if genErr != nil {
			t.Fatalf("%+v: Validate accepts but Generate: %v", r, genErr)
		}
		if !r.Allows(pw) {
			t.Fatalf("%+v.Allows(%q) = false for its own password", r, pw)
		}
		if got, err := Parse(r.String()); err != nil || got != r {
			t.Fatalf("Parse(%q) = %+v, %v; want %+v", r.String(), got, err, r)
		}
	})
}

func BenchmarkGenerate(b *testing.B) {
	for _, rule := range []string{"", "len=8,classes=ulds", "len=128,classes=ulds,exclude=@:/", "len=8,classes=ulds,exclude=012345678ABCDEFGHIJKLMNOPQRSTUVWXYabcdefghijklmnopqrstuvwxy"} {
		r, err := Parse(rule)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(r.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pw, err := r.Generate()
				if err != nil {
					b.Fatal(err)
				}
				clear(pw)
			}
		})
	}
}
