// Package redacttest checks that a secret-bearing value keeps its secret
// out of every way Sallyport prints, logs or encodes values: fmt's %v,
// %+v, %#v, %s, %q and %x; log/slog's text and JSON handlers, the value
// given as a key-value pair, as an Attr, inside a group and as a field of
// a struct; and encoding/json. A value is checked with a pointer to it,
// and a pointer with its value when the type's methods are on the value,
// so a method on the wrong receiver shows up as a leak.
//
// Each package lists its secret-bearing types in one table, one line per
// type, and passes it to Check:
//
//	redacttest.Check(t, []redacttest.Case{
//		{Name: "UserSpec", Value: UserSpec{Name: "u", Password: redacttest.Secret(16)}, Secret: redacttest.Secret(16)},
//	})
package redacttest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"reflect"
	"strings"
	"testing"
)

// Case is one secret-bearing value.
type Case struct {
	// Name names the case in test output; the type's name will do.
	Name string
	// Value holds Secret somewhere inside it.
	Value any
	// Secret is the secret Value holds. It must not occur by chance in a
	// redacted rendering: Secret's values are safe.
	Secret []byte
	// Wire says that the type's JSON encoding is its protocol and carries
	// the secret on purpose (the type's doc comment says so): encoding/json,
	// and slog's JSON handler below the top level, are not checked. Its
	// String, GoString and LogValue still are.
	Wire bool
}

// Secret returns n recognisable bytes, a different run for each n, all
// printable so that the string forms of a leak are found as well as the
// byte forms.
func Secret(n int) []byte {
	const alphabet = "qZ7xK2mW9vR4tY6pL3nB8cJ5hG1fD0s"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[(i*7+n)%len(alphabet)]
	}
	return b
}

// ECDSAScalar returns key's private scalar the way encoding/json prints a
// raw *ecdsa.PrivateKey (a decimal number): the secret to look for when a
// type holds one.
func ECDSAScalar(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := key.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(new(big.Int).SetBytes(b).String())
}

// Check runs one subtest per case and fails it for every rendering that
// shows the secret.
func Check(t *testing.T, cases []Case) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.Name] {
			t.Fatalf("case %q listed twice", c.Name)
		}
		seen[c.Name] = true
		t.Run(c.Name, func(t *testing.T) {
			if len(c.Secret) < 8 {
				t.Fatalf("secret of %d bytes: too short to be found reliably", len(c.Secret))
			}
			for _, l := range Leaks(c) {
				t.Errorf("%s shows the secret: %s", l.Via, l.Output)
			}
		})
	}
}

// Leak is one rendering that showed the secret.
type Leak struct {
	Via    string // how the value was rendered, e.g. "slog JSON: nested"
	Output string
}

// Leaks renders c.Value (and a pointer to it, or the value a pointer
// points to when its methods are on the value) every way and returns the
// renderings that show c.Secret in any of its forms.
func Leaks(c Case) []Leak {
	forms := secretForms(c.Secret)
	var out []Leak
	for _, r := range renderings(c.Value, c.Wire) {
		for _, f := range forms {
			if strings.Contains(r.output, f) {
				out = append(out, Leak{Via: r.via, Output: r.output})
				break
			}
		}
	}
	return out
}

type rendering struct{ via, output string }

// renderings renders v, and its pointer or pointee (see Leaks).
func renderings(v any, wire bool) []rendering {
	out := renderOne("", v, wire)
	rv := reflect.ValueOf(v)
	switch {
	case rv.Kind() == reflect.Pointer && !rv.IsNil() && rv.Elem().Type().Implements(reflect.TypeFor[fmt.Stringer]()):
		// The methods are on the value: check the value too.
		out = append(out, renderOne("value ", rv.Elem().Interface(), wire)...)
	case rv.Kind() != reflect.Pointer:
		p := reflect.New(rv.Type())
		p.Elem().Set(rv)
		out = append(out, renderOne("pointer ", p.Interface(), wire)...)
	}
	return out
}

func renderOne(prefix string, v any, wire bool) []rendering {
	var out []rendering
	add := func(via, s string) { out = append(out, rendering{prefix + via, s}) }
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		add("fmt "+verb, fmt.Sprintf(verb, v))
	}
	add("fmt error %v", fmt.Errorf("wrapped: %v", v).Error())
	// nested is how a secret-bearing value reaches a log inside another
	// struct: slog then calls no method of v itself.
	nested := struct{ Inner any }{v}
	for _, h := range []struct {
		name string
		new  func(*bytes.Buffer) slog.Handler
		json bool
	}{
		{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }, false},
		{"JSON", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }, true},
	} {
		logs := []struct {
			via string
			log func(*slog.Logger)
		}{
			{"key-value", func(l *slog.Logger) { l.Info("m", "v", v) }},
			{"slog.Any", func(l *slog.Logger) { l.LogAttrs(context.Background(), slog.LevelInfo, "m", slog.Any("v", v)) }},
			{"group", func(l *slog.Logger) { l.Info("m", slog.Group("g", slog.Any("v", v))) }},
			{"With", func(l *slog.Logger) { l.With("v", v).Info("m") }},
		}
		if !h.json || !wire {
			logs = append(logs, struct {
				via string
				log func(*slog.Logger)
			}{"nested in a struct", func(l *slog.Logger) { l.Info("m", "v", nested) }})
		}
		for _, lg := range logs {
			var b bytes.Buffer
			lg.log(slog.New(h.new(&b)))
			add("slog "+h.name+" "+lg.via, b.String())
		}
	}
	if !wire {
		js, err := json.Marshal(v)
		if err != nil {
			js = []byte(err.Error())
		}
		add("json.Marshal", string(js))
		js, err = json.Marshal(nested)
		if err != nil {
			js = []byte(err.Error())
		}
		add("json.Marshal nested", string(js))
	}
	return out
}

// secretForms returns the ways a secret shows in printed output: as text,
// base64 (any alignment, any alphabet), hex, and fmt's renderings of a
// byte slice (decimal and %#v).
func secretForms(s []byte) []string {
	forms := []string{string(s), hex.EncodeToString(s), strings.ToUpper(hex.EncodeToString(s))}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		// The secret may start at any offset of a longer field; the
		// characters that do not depend on its neighbours are found
		// whatever the offset.
		for off := range 3 {
			b := enc.WithPadding(base64.NoPadding).EncodeToString(s[off:])
			if len(b) > 4 {
				forms = append(forms, b[:len(b)-3])
			}
		}
	}
	dec := make([]string, len(s))
	gox := make([]string, len(s))
	for i, c := range s {
		dec[i] = fmt.Sprint(c)
		gox[i] = fmt.Sprintf("%#x", c)
	}
	return append(forms, strings.Join(dec, " "), strings.Join(gox, ", "), strings.Join(dec, ","))
}
