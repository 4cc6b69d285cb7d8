package redacttest

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// leaky redacts nothing.
type leaky struct {
	Name     string
	Password []byte
}

// halfway redacts under fmt only, as workitem.Credential once did.
type halfway struct {
	Name     string
	Password []byte
}

func (h halfway) String() string   { return "halfway{" + h.Name + " [REDACTED]}" }
func (h halfway) GoString() string { return h.String() }

// pointerOnly redacts, but with its methods on the pointer: a copy
// of it, or a field of its type, prints everything.
type pointerOnly struct {
	Password []byte
}

func (p *pointerOnly) String() string               { return "[REDACTED]" }
func (p *pointerOnly) GoString() string             { return p.String() }
func (p *pointerOnly) LogValue() slog.Value         { return slog.StringValue(p.String()) }
func (p *pointerOnly) MarshalJSON() ([]byte, error) { return json.Marshal(p.String()) }

// sealed redacts everywhere.
type sealed struct {
	Name     string
	Password []byte
}

func (s sealed) String() string               { return "sealed{" + s.Name + " [REDACTED]}" }
func (s sealed) GoString() string             { return s.String() }
func (s sealed) LogValue() slog.Value         { return slog.StringValue(s.String()) }
func (s sealed) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// TestLeaksFindsEveryChannel shows that the check can fail: a type that
// redacts nothing leaks through every rendering, one that redacts under
// fmt only leaks through the JSON handler and encoding/json, one with its
// methods on the pointer leaks as a value, and only the type that redacts
// everywhere passes.
func TestLeaksFindsEveryChannel(t *testing.T) {
	secret := Secret(24)
	all := renderings(leaky{Password: secret}, false)

	// fmt prints a pointer below the top level as an address.
	const shownAsAddress = "pointer slog text nested in a struct"
	got := map[string]bool{}
	for _, l := range Leaks(Case{Name: "leaky", Value: leaky{Name: "n", Password: secret}, Secret: secret}) {
		got[l.Via] = true
	}
	var missed []string
	for _, r := range all {
		if !got[r.via] && r.via != shownAsAddress {
			missed = append(missed, r.via+": "+r.output)
		}
	}
	if len(missed) != 0 {
		t.Errorf("an unredacted type's leak not found through:\n%s", strings.Join(missed, "\n"))
	}

	vias := func(c Case) map[string]bool {
		m := map[string]bool{}
		for _, l := range Leaks(c) {
			m[l.Via] = true
		}
		return m
	}
	half := vias(Case{Name: "halfway", Value: halfway{Name: "n", Password: secret}, Secret: secret})
	for _, want := range []string{"slog JSON key-value", "slog JSON slog.Any", "json.Marshal", "pointer json.Marshal"} {
		if !half[want] {
			t.Errorf("fmt-only redaction: no leak found through %s (found %v)", want, half)
		}
	}
	if half["fmt %v"] || half["fmt %#v"] || half["slog text key-value"] {
		t.Errorf("fmt-only redaction: leak reported where String and GoString apply: %v", half)
	}

	// Given the pointer, only the pointer is checked (its value has no
	// String); given the value, the value leaks.
	if l := Leaks(Case{Name: "pointerOnly", Value: &pointerOnly{Password: secret}, Secret: secret}); len(l) != 0 {
		t.Errorf("a redacting pointer reported as leaking: %v", l)
	}
	byValue := vias(Case{Name: "pointerOnly", Value: pointerOnly{Password: secret}, Secret: secret})
	for _, want := range []string{"fmt %v", "slog JSON nested in a struct", "json.Marshal"} {
		if !byValue[want] {
			t.Errorf("pointer-receiver methods on a value: no leak found through %s (found %v)", want, byValue)
		}
	}

	if l := Leaks(Case{Name: "sealed", Value: sealed{Name: "n", Password: secret}, Secret: secret}); len(l) != 0 {
		t.Errorf("a redacting type reported as leaking: %v", l)
	}
	// A wire type's JSON is not checked, its other renderings are.
	wire := vias(Case{Name: "leaky", Value: leaky{Password: secret}, Secret: secret, Wire: true})
	if wire["json.Marshal"] || !wire["fmt %v"] || !wire["slog JSON key-value"] {
		t.Errorf("wire type: got leaks %v", wire)
	}
}

// TestSecretForms checks that a secret is found inside a longer field in
// every encoding, whatever its offset.
func TestSecretForms(t *testing.T) {
	secret := Secret(16)
	for off := range 3 {
		field := append([]byte(strings.Repeat("\x00", off)), secret...)
		field = append(field, 0xff, 0xfe)
		js, _ := json.Marshal(struct{ B []byte }{field})
		if l := Leaks(Case{Name: "raw", Value: rawJSON(js), Secret: secret, Wire: false}); len(l) == 0 {
			t.Errorf("offset %d: base64 %s not recognised", off, js)
		}
	}
}

// rawJSON prints as the JSON it holds.
type rawJSON []byte

func (r rawJSON) String() string { return string(r) }
