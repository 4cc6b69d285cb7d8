package vault

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/sallyport/sallyport/workitem"
)

func TestCheckKeys(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	deepObj := func(n int) string { return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) }
	tests := []struct {
		name, in, want string // want "" means accepted
	}{
		{"empty object", `{}`, ""},
		{"scalar", `"x"`, ""},
		{"distinct keys", `{"a":1,"b":2,"ab":3}`, ""},
		{"duplicate", `{"a":1,"a":2}`, `duplicate key "a"`},
		{"duplicate, other case", `{"name":"a","NAME":"b"}`, `duplicate key "NAME"`},
		{"duplicate, escaped", `{"name":1,"n\u0061me":2}`, `duplicate key "name"`},
		{"duplicate, escaped upper case", `{"name":1,"\u004eame":2}`, `duplicate key "Name"`},
		{"duplicate, Kelvin sign folds to k", `{"k":1,"\u212a":2}`, "duplicate key \"\u212a\""},
		{"duplicate, long s folds to s", `{"s":1,"ſ":2}`, `duplicate key "ſ"`},
		{"not a duplicate: escaped quote", `{"a\"":1,"a":2}`, ""},
		{"duplicate with escaped quote", `{"a\"":1,"A\"":2}`, `duplicate key "A\""`},
		{"duplicate, whitespace before colon", "{\"a\" : 1,\n\"a\"\t:2}", `duplicate key "a"`},
		{"values equal to keys are not keys", `{"a":"a","b":"a","c":["a","a"]}`, ""},
		{"string value ending in backslash", `{"a":"x\\","a":1}`, `duplicate key "a"`},
		{"nested duplicate", `{"a":{"b":1,"b":2}}`, `duplicate key "b"`},
		{"duplicate in array element", `[1,{"x":1,"X":2}]`, `duplicate key "X"`},
		{"same key in sibling objects", `[{"a":1},{"a":1},{"a":{"a":1}}]`, ""},
		{"same key at other depths", `{"a":{"a":{"a":1}},"b":{"a":1}}`, ""},
		{"outer key after inner object", `{"x":{"y":1},"y":2,"x":3}`, `duplicate key "x"`},
		{"invalid UTF-8 keys both become U+FFFD", "{\"\xff\":1,\"\xfe\":2}", "duplicate key \"\ufffd\""},
		{"depth 32 arrays", deep(32), ""},
		{"depth 33 arrays", deep(33), "nested deeper than 32 levels"},
		{"depth 32 objects", deepObj(32), ""},
		{"depth 33 objects", deepObj(33), "nested deeper than 32 levels"},
		{"key that needs sanitising", `{"a\u0000b":1,"A\u0000B":2}`, `duplicate key "A\x00B"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !json.Valid([]byte(tt.in)) {
				t.Fatalf("test input %q is not valid JSON", tt.in)
			}
			got := ""
			if err := checkKeys([]byte(tt.in)); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Fatalf("checkKeys(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if ref, err := referenceKeyCheck([]byte(tt.in)); err != nil || ref != tt.want {
				t.Fatalf("the reference disagrees with the table: %q, %v", ref, err)
			}
		})
	}
}

// TestCheckKeysLongKeyIsBounded: a key in the error message is cut by logSafe.
func TestCheckKeysLongKeyIsBounded(t *testing.T) {
	k := strings.Repeat("k", 10000)
	err := checkKeys([]byte(`{"` + k + `":1,"` + k + `":2}`))
	if err == nil || len(err.Error()) > 300 {
		t.Fatalf("checkKeys = %v", err)
	}
}

// TestCheckKeysCopiesNoValues: the checker allocates no more for long
// string values than for one-byte ones (which Go converts to strings
// without allocating), so it cannot be copying values.
func TestCheckKeysCopiesNoValues(t *testing.T) {
	small := []byte(`{"name":"a","password":"b","groups":["c","d"],"x":{"k":"e"}}`)
	big := strings.Repeat("QUJD", 1<<16)
	large := []byte(`{"name":"` + big + `","password":"` + big + `","groups":["` + big + `","` + big +
		`"],"x":{"k":"` + big + `"}}`)
	// AllocsPerRun counts every goroutine's allocations; the minimum of a
	// few rounds ignores what other goroutines happen to do meanwhile.
	least := func(b []byte) float64 {
		m := math.Inf(1)
		for range 5 {
			m = min(m, testing.AllocsPerRun(20, func() {
				if err := checkKeys(b); err != nil {
					t.Fatal(err)
				}
			}))
		}
		return m
	}
	if s, l := least(small), least(large); l > s {
		t.Fatalf("allocations: %v with short values, %v with long ones", s, l)
	}
	// And in bytes: copying even one of the 256 KiB values would show.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const runs = 10
	for range runs {
		if err := checkKeys(large); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / runs; per >= uint64(len(big)) {
		t.Fatalf("checkKeys allocated %d bytes per call on a body of %d", per, len(large))
	}
}

func TestDecodeStrict(t *testing.T) {
	var u userRequest
	if err := decodeStrict(strings.NewReader(`{"name":"alice","password":"cGFzc3dvcmQx","groups":["ops"]}`), &u); err != nil ||
		u.Name != "alice" || string(u.Password) != "password1" {
		t.Fatalf("decodeStrict = %+v, %v", u, err)
	}
	for in, want := range map[string]string{
		``:                           "malformed JSON",
		`{"name":`:                   "malformed JSON",
		`{} {}`:                      "malformed JSON",
		`{"name":"a","Name":"b"}`:    `duplicate key "Name"`,
		`{"admin":true}`:             `unknown field "admin"`,
		`{"name":"a","groups":[[]]}`: "cannot unmarshal",
	} {
		var u userRequest
		err := decodeStrict(strings.NewReader(in), &u)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("decodeStrict(%q) = %v, want an error containing %q", in, err, want)
		}
	}
}

// TestDecodeStrictWorkItem: the broker's sealed request bodies get the same
// treatment; a second "user" must not override the first.
func TestDecodeStrictWorkItem(t *testing.T) {
	for _, body := range []string{
		`{"op":"list","user":"alice","user":"mallory","reply_to":"site.r"}`,
		`{"op":"list","user":"alice","USER":"mallory","reply_to":"site.r"}`,
		`{"op":"list","user":"alice","\u0055ser":"mallory","reply_to":"site.r"}`,
	} {
		var req workitem.CredentialRequest
		var strict *strictJSONError
		if err := decodeStrict(bytes.NewReader([]byte(body)), &req); !errors.As(err, &strict) {
			t.Errorf("decodeStrict(%s) = %v, %+v; want a duplicate-key error", body, err, req)
		}
	}
}

// TestDuplicateKeyErrorNamesNoValue: the message shows the key, never the
// values, even when both values are credentials.
func TestDuplicateKeyErrorNamesNoValue(t *testing.T) {
	const pw1, pw2 = "Zmlyc3Qtc2VjcmV0", "c2Vjb25kLXNlY3JldA=="
	err := decodeStrict(strings.NewReader(`{"password":"`+pw1+`","Password":"`+pw2+`"}`), &userRequest{})
	msg := describeJSONError(err)
	if msg != `body: duplicate key "Password"` {
		t.Fatalf("message %q", msg)
	}
}

func TestReadAllWiping(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789"), 1000)
	for _, hint := range []int{-1, 0, 1, 10, len(content) - 1, len(content), len(content) + 1, 1 << 20} {
		for name, r := range map[string]io.Reader{
			"plain":    bytes.NewReader(content),
			"one byte": iotest.OneByteReader(bytes.NewReader(content)),
			"data+EOF": iotest.DataErrReader(bytes.NewReader(content)),
		} {
			got, err := readAllWiping(r, hint)
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("hint %d, %s reader: %d bytes, %v", hint, name, len(got), err)
			}
		}
	}
	boom := errors.New("boom")
	got, err := readAllWiping(io.MultiReader(bytes.NewReader([]byte("abc")), iotest.ErrReader(boom)), 0)
	if !errors.Is(err, boom) || string(got) != "abc" {
		t.Fatalf("error case: %q, %v", got, err)
	}
}

// referenceKeyCheck is checkKeys's verdict computed the plain way, with
// json.Decoder.Token (which copies every value: fine in a test, not in the
// vault) and bytes.EqualFold, the comparison encoding/json documents for
// matching field names. It expects valid JSON.
func referenceKeyCheck(data []byte) (string, error) {
	type frame struct {
		object, wantKey bool
		keys            []string
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // a valid 1e999 must not fail as a float64
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if len(stack) == maxJSONDepth {
					return fmt.Sprintf("nested deeper than %d levels", maxJSONDepth), nil
				}
				stack = append(stack, &frame{object: t == '{', wantKey: true})
			default:
				stack = stack[:len(stack)-1]
				if len(stack) > 0 {
					stack[len(stack)-1].wantKey = true
				}
			}
		case string:
			if top != nil && top.object && top.wantKey {
				for _, k := range top.keys {
					if bytes.EqualFold([]byte(k), []byte(t)) {
						return fmt.Sprintf("duplicate key %q", logSafe(t)), nil
					}
				}
				top.keys = append(top.keys, t)
				top.wantKey = false
			} else if top != nil {
				top.wantKey = true
			}
		default:
			if top != nil {
				top.wantKey = true
			}
		}
	}
}

// FuzzDuplicateKeys: on valid JSON the scanner's verdict (accepted,
// duplicate key K, too deep) equals the reference's; on any input it never
// panics, and decodeStrict refuses what is not valid JSON.
func FuzzDuplicateKeys(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `"s"`, `1e999`, `{"a":1,"A":2}`, `{"k":1,"\u212a":2}`, `{"a\"":1,"A\"":2}`,
		`{"a":"a","b":["b","b"]}`, `[{"x":1},{"x":1}]`, `{"x":{"y":1},"y":2,"x":3}`,
		"{\"\xff\":1,\"\xfe\":2}", `{"\ud800":1,"\ufffd":2}`, `{"a":"\\","a":1}`,
		strings.Repeat("[", 33) + strings.Repeat("]", 33),
		`{"name":"web01","host":"h","port":22,"username":"u","password":"cHc=","pin_on_first_use":true,"allow":["alice"]}`,
		`{"op":"list","user":"alice","reply_to":"site.r","USER":"bob"}`,
		`{"a":`, `"\`, `{"a"`, `}}]]`, `{"a":"b":"c"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got string
		if err := checkKeys(data); err != nil { // never panics, valid or not
			got = err.Error()
		}
		if !json.Valid(data) {
			if err := decodeStrictBytes(data, new(any)); err == nil {
				t.Fatalf("decodeStrictBytes accepted invalid JSON %q", data)
			}
			return
		}
		want, err := referenceKeyCheck(data)
		if err != nil {
			t.Fatalf("reference failed on valid JSON %q: %v", data, err)
		}
		if got != want {
			t.Fatalf("checkKeys(%q) = %q, reference says %q", data, got, want)
		}
	})
}

func TestRedactValues(t *testing.T) {
	in := []byte(`{"name":"web\"01","password":"cGFzc3dvcmQ=","nested":{"k":["a\u00e9b","\\"]},"n":5,"ok":true}`)
	out := redactValues(in)
	want := `{"name":"AAA\"AA","password":"AAAAAAAAAAA=","nested":{"k":["A\uAAAAA","\\"]},"n":5,"ok":true}`
	if string(out) != want {
		t.Fatalf("redacted\n got %s\nwant %s", out, want)
	}
	if !json.Valid(out) {
		t.Fatal("redacted JSON is not valid")
	}
	if string(in) == string(out) {
		t.Fatal("input changed in place")
	}
}

func TestDecodeStrictUnknownFieldAfterSecret(t *testing.T) {
	var req secretRequest
	err := decodeStrictBytes([]byte(`{"name":"a","password":"cGFzcw==","extra":1}`), &req)
	if err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("unknown field after a secret: %v", err)
	}
	if err := decodeStrictBytes([]byte(`{"name":"a","port":22,"password":"cGFzcw=="}`), &req); err != nil {
		t.Fatal(err)
	}
	if string(req.Password) != "pass" || req.Name != "a" || req.Port != 22 {
		t.Fatalf("decoded %+v", req)
	}
}
