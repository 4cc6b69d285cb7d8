package vault

// Strict JSON decoding for every body the vault accepts: the admin API's
// request bodies (readBody) and the sealed work-item bodies the broker
// opens (handleRequest).
//
// encoding/json lets the last of two equal keys win, and it matches struct
// fields case-insensitively, so {"name":"a","NAME":"b"} quietly becomes
// "b". A body that two parsers (or a reviewer and a parser) read
// differently is how a request smuggles a value past a check, so a body
// with two keys that encoding/json would give the same field is refused.
//
// Bodies carry credentials (base64 passwords and private keys) that the
// callers wipe after use. The checker here therefore never copies a string
// value: it walks the raw bytes and materialises object keys only, which
// are field names and never secret. (json.Decoder.Token would allocate
// every value as a new string that no one can wipe.)

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxJSONDepth bounds the nesting of arrays and objects in a body. The
// vault's request types nest two levels deep; the slack costs nothing,
// while a hostile body cannot make the checker keep a deep stack.
const maxJSONDepth = 32

// strictJSONError is a body that encoding/json would accept but the vault
// does not: malformed, nested too deeply, or with a duplicate key. Its
// message names at most a key (sanitised), never a value.
type strictJSONError struct{ msg string }

func (e *strictJSONError) Error() string { return e.msg }

// decodeStrict decodes exactly one JSON value from r into dst, refusing
// malformed input, trailing data, unknown fields, duplicate keys and
// nesting deeper than maxJSONDepth. r must already be bounded. The copy of
// r's content it reads is wiped before it returns.
func decodeStrict(r io.Reader, dst any) error {
	size := 512
	if l, ok := r.(interface{ Len() int }); ok {
		size = l.Len()
	}
	raw, err := readAllWiping(r, size)
	defer clear(raw)
	if err != nil {
		return err
	}
	return decodeStrictBytes(raw, dst)
}

// readAllWiping reads r to its end like io.ReadAll, but clears every
// buffer it outgrows, so no stale partial copy of the content is left for
// the garbage collector. sizeHint is the expected length. The caller
// clears the result, which it gets (possibly partial) even with an error.
func readAllWiping(r io.Reader, sizeHint int) ([]byte, error) {
	// One spare byte lets the final Read report io.EOF without a regrowth.
	buf := make([]byte, 0, max(sizeHint, 0)+1)
	for {
		if len(buf) == cap(buf) {
			bigger := make([]byte, len(buf), 2*cap(buf))
			copy(bigger, buf)
			clear(buf)
			buf = bigger
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// decodeStrictBytes is decodeStrict over bytes the caller owns (and wipes).
func decodeStrictBytes(raw []byte, dst any) error {
	// json.Valid only scans; it copies nothing. It also rules out trailing
	// data, and it is the precondition of checkKeys.
	if !json.Valid(raw) {
		return &strictJSONError{"malformed JSON"}
	}
	if err := checkKeys(raw); err != nil {
		return err
	}
	// Only json.Decoder refuses unknown fields, and it reads its input into
	// a buffer of its own that nobody can wipe. So it reads a redacted copy,
	// every string value blanked, into a throwaway value of dst's type;
	// json.Unmarshal then decodes the real values straight from raw, which
	// copies nothing but what it stores in dst (the []byte fields the
	// callers wipe; a base64 value is decoded from raw in place unless it
	// holds escapes, which no Go encoder writes).
	red := redactValues(raw)
	dec := json.NewDecoder(bytes.NewReader(red))
	dec.DisallowUnknownFields()
	if err := dec.Decode(reflect.New(reflect.TypeOf(dst).Elem()).Interface()); err != nil &&
		strings.HasPrefix(err.Error(), "json: unknown field ") {
		return err
	}
	// Other errors of the redacted pass (a blanked value that no longer
	// parses as its type) are the real pass's to find, on the real values.
	return json.Unmarshal(raw, dst)
}

// redactValues returns a copy of data, which must be valid JSON, with the
// content of every string that is not an object key replaced by 'A's of
// the same length ('=' padding and the shape of escapes kept), so that it
// decodes into the same types (base64 stays base64) and holds no value.
func redactValues(data []byte) []byte {
	out := bytes.Clone(data)
	for i := 0; i < len(out); {
		if out[i] != '"' {
			i++
			continue
		}
		end := stringEnd(out, i)
		if j := skipSpace(out, end); j < len(out) && out[j] == ':' {
			i = end // a key: field names are not secret, and must match
			continue
		}
		for k := i + 1; k < end-1; k++ {
			switch out[k] {
			case '\\':
				k++ // keep the escape's letter
				if k < end-1 && out[k] == 'u' {
					for h := k + 1; h <= k+4 && h < end-1; h++ {
						out[h] = 'A' // \uAAAA is a valid escape
					}
					k += 4
				}
			case '=':
			default:
				out[k] = 'A'
			}
		}
		i = end
	}
	return out
}

// checkKeys walks data, which must be valid JSON (json.Valid), and refuses
// nesting deeper than maxJSONDepth and any object holding two keys that
// encoding/json would match to the same struct field: equal after
// unescaping and case folding (see foldKey). The comparison folds case in
// every object, map-bound ones included, where encoding/json would keep
// both: stricter than needed, never weaker.
//
// String values are skipped by finding their closing quote; they are never
// copied. On input that is not valid JSON the verdict is meaningless, but
// checkKeys still terminates without panicking.
func checkKeys(data []byte) error {
	// open holds one entry per open container, innermost last: the folded
	// keys seen so far for an object, nil for an array. Objects at the same
	// depth reuse one map from pool (cleared), so a long array of objects
	// allocates a map per depth, not per object.
	open := make([]map[string]struct{}, 0, maxJSONDepth)
	pool := make([]map[string]struct{}, 0, maxJSONDepth)
	for i := 0; i < len(data); {
		switch c := data[i]; c {
		case '{', '[':
			if len(open) == maxJSONDepth {
				return &strictJSONError{fmt.Sprintf("nested deeper than %d levels", maxJSONDepth)}
			}
			var keys map[string]struct{}
			if c == '{' {
				for len(pool) <= len(open) {
					pool = append(pool, make(map[string]struct{}))
				}
				keys = pool[len(open)]
				clear(keys)
			}
			open = append(open, keys)
			i++
		case '}', ']':
			if len(open) > 0 {
				open = open[:len(open)-1]
			}
			i++
		case '"':
			end := stringEnd(data, i)
			// In valid JSON a string followed by ':' is an object key, and
			// the innermost open container is that object.
			if j := skipSpace(data, end); j < len(data) && data[j] == ':' && len(open) > 0 {
				if keys := open[len(open)-1]; keys != nil {
					key := jsonKey(data[i:end])
					folded := foldKey(key)
					if _, dup := keys[folded]; dup {
						return &strictJSONError{fmt.Sprintf("duplicate key %q", logSafe(key))}
					}
					keys[folded] = struct{}{}
				}
			}
			i = end
		default:
			i++
		}
	}
	return nil
}

// stringEnd returns the index just past the closing quote of the JSON
// string whose opening quote is at data[start], or len(data) if it is
// unterminated. It only looks at bytes; nothing is copied.
func stringEnd(data []byte, start int) int {
	for k := start + 1; k < len(data); k++ {
		switch data[k] {
		case '\\':
			k++ // the escaped byte cannot end the string
		case '"':
			return k + 1
		}
	}
	return len(data)
}

// skipSpace returns the index of the first non-whitespace byte at or after i.
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// jsonKey unquotes a key token (quotes included) exactly as encoding/json
// does before it matches a field: escapes resolved, invalid UTF-8 and lone
// surrogates replaced by U+FFFD.
func jsonKey(quoted []byte) string {
	if len(quoted) < 2 {
		return string(quoted) // not a key of valid JSON; keeps checkKeys total
	}
	inner := quoted[1 : len(quoted)-1]
	if bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return string(inner)
	}
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return string(inner)
	}
	return s
}

// foldKey maps key so that foldKey(a) == foldKey(b) exactly when
// encoding/json would match both to the same field name, i.e. when
// bytes.EqualFold(a, b): ASCII letters to upper case, every other rune to
// the smallest rune of its Unicode simple-fold orbit (so 'k', 'K' and
// U+212A KELVIN SIGN fold alike). This mirrors encoding/json's unexported
// foldName.
func foldKey(key string) string {
	out := make([]byte, 0, len(key))
	for i := 0; i < len(key); {
		if c := key[i]; c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			out = append(out, c)
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(key[i:])
		out = utf8.AppendRune(out, foldRune(r))
		i += n
	}
	return string(out)
}

// foldRune returns the smallest rune of r's simple-fold orbit.
func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}
