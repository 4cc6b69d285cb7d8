// Package passrule holds the rule a secret's rotated password must meet, and
// generates passwords that meet it from crypto/rand.
//
// # Syntax
//
// A rule is written as comma-separated key=value pairs, as given to
// --password-rule:
//
//	len=24,classes=ulds,exclude=@:/
//
// The keys, each at most once and in any order except that exclude comes
// last:
//
//	len=N        the password length, a whole number from MinLength to
//	             MaxLength
//	classes=...  the character classes to draw from, a non-empty set of
//	             u (A-Z), l (a-z), d (0-9) and s (the ASCII punctuation
//	             !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~), in any order; a
//	             repeated letter counts once
//	exclude=...  characters never to use, printable ASCII other than
//	             space, in any order; a repeated character counts once
//
// A missing key keeps its value from Default, so "" is Default (len=24,
// classes=ulds, nothing excluded) and "len=32" is Default at 32 characters.
// Keys and class letters are case-sensitive; no spaces are allowed around
// them. Input longer than MaxInput bytes is refused.
//
// The value of exclude is the rest of the string, commas included, which is
// how a comma is excluded: "len=20,exclude=,;" excludes ',' and ';'. So that a
// key written after exclude by mistake is not silently taken as characters
// to exclude, an exclude value in which a comma is followed by letters and
// '=' (as in "exclude=@,len=20") is refused; to exclude such characters,
// list them in another order ("exclude=,=@eln" instead of "exclude=@,len=").
//
// Unknown keys, repeated keys, empty elements (a stray comma) and bad values
// are refused. Errors quote at most a short excerpt of the input, so a
// password pasted into the wrong flag is never echoed whole into a log.
//
// # Canonical form
//
// Rule.String writes the canonical form: len, then classes in the order
// u, l, d, s, then (if anything is excluded) exclude, its characters sorted
// in ASCII order without repeats. A Rule from Parse always holds these
// canonical values, and Parse(r.String()) == r for every valid Rule.
//
// # Guarantees
//
// Parse only returns rules that Validate accepts, and Validate accepts only
// rules that can be met: the length is within bounds, every selected class
// keeps at least one character after the exclusions, and the length is at
// least the number of classes.
//
// Generate draws each character uniformly from the allowed alphabet (the
// selected classes minus the exclusions) by rejection sampling crypto/rand
// bytes, so there is no modulo bias, and draws the whole password again
// until it holds at least one character of every selected class. The
// result is therefore uniform over all passwords that meet the rule. It
// never holds a space, a control character or a byte outside printable
// ASCII.
package passrule

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Bounds on a rule and on its written form.
const (
	MinLength = 8   // shortest password a rule may ask for
	MaxLength = 128 // longest password a rule may ask for
	MaxInput  = 256 // longest rule string Parse reads, in bytes
)

// classOrder lists the class letters in canonical order.
const classOrder = "ulds"

// classNames describes each class of classOrder in error messages.
var classNames = [len(classOrder)]string{"upper case", "lower case", "digits", "symbols"}

// maxAttempts bounds how many whole passwords Generate draws before giving
// up. The hardest valid rule (len=8 with four classes, three of them cut
// down to a single character) is met by a draw with probability about
// 0.0063, so giving up wrongly has a probability below 1e-80.
const maxAttempts = 1 << 15

// excerptLen bounds how much of the input an error message quotes.
const excerptLen = 20

// Rule is a password rule. Its zero value is not valid; start from Default.
type Rule struct {
	// Length is the password length, MinLength to MaxLength.
	Length int
	// Classes is a non-empty subset of "ulds", in that order.
	Classes string
	// Exclude lists the characters never used, printable ASCII other than
	// space, sorted and without repeats.
	Exclude string
}

// Default is the rule for a secret that names none, and the value of every
// key a rule leaves out.
var Default = Rule{Length: 24, Classes: "ulds"}

// classOf returns the index in classOrder of the class holding c, or -1 if
// c is in none (space, control characters and non-ASCII bytes).
func classOf(c byte) int {
	switch {
	case 'A' <= c && c <= 'Z':
		return 0
	case 'a' <= c && c <= 'z':
		return 1
	case '0' <= c && c <= '9':
		return 2
	case '!' <= c && c <= '~':
		return 3
	}
	return -1
}

// printable reports whether c may appear in Exclude: printable ASCII other
// than space, which is exactly the union of all classes.
func printable(c byte) bool { return classOf(c) >= 0 }

// excerpt quotes at most excerptLen bytes of s for an error message.
func excerpt(s string) string {
	if len(s) > excerptLen {
		return strconv.Quote(s[:excerptLen]) + "..."
	}
	return strconv.Quote(s)
}

func errorf(format string, args ...any) error {
	return fmt.Errorf("password rule: "+format, args...)
}

// Parse reads a rule in the syntax the package documentation describes.
// "" is Default. The rule returned is canonical and passes Validate.
func Parse(s string) (Rule, error) {
	if len(s) > MaxInput {
		return Rule{}, errorf("longer than %d bytes", MaxInput)
	}
	r := Default
	if s == "" {
		return r, nil
	}
	var seenLen, seenClasses bool
	rest := s
	for {
		var elem string
		more := false
		if strings.HasPrefix(rest, "exclude=") {
			elem, rest = rest, ""
		} else {
			elem, rest, more = strings.Cut(rest, ",")
		}
		if elem == "" {
			return Rule{}, errorf("empty element (a stray comma)")
		}
		key, val, ok := strings.Cut(elem, "=")
		if !ok {
			return Rule{}, errorf("%s is not key=value", excerpt(elem))
		}
		switch key {
		case "len":
			if seenLen {
				return Rule{}, errorf("len given twice")
			}
			seenLen = true
			n, err := parseLen(val)
			if err != nil {
				return Rule{}, err
			}
			r.Length = n
		case "classes":
			if seenClasses {
				return Rule{}, errorf("classes given twice")
			}
			seenClasses = true
			c, err := parseClasses(val)
			if err != nil {
				return Rule{}, err
			}
			r.Classes = c
		case "exclude":
			// Reached only through the prefix test above, which takes the
			// rest of the string, so exclude cannot repeat.
			x, err := parseExclude(val)
			if err != nil {
				return Rule{}, err
			}
			r.Exclude = x
		default:
			return Rule{}, errorf("unknown key %s (want len, classes or exclude)", excerpt(key))
		}
		if !more {
			break
		}
	}
	if err := r.Validate(); err != nil {
		return Rule{}, err
	}
	return r, nil
}

// parseLen reads the value of len: one to three decimal digits. The range
// is Validate's to check, so its message names the bounds.
func parseLen(val string) (int, error) {
	if val == "" || len(val) > 3 {
		return 0, errorf("len must be a whole number from %d to %d", MinLength, MaxLength)
	}
	n := 0
	for i := 0; i < len(val); i++ {
		c := val[i]
		if c < '0' || c > '9' {
			return 0, errorf("len must be a whole number from %d to %d", MinLength, MaxLength)
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}

// parseClasses reads the value of classes into canonical order.
func parseClasses(val string) (string, error) {
	if val == "" {
		return "", errorf("classes must name at least one of u, l, d, s")
	}
	var have [len(classOrder)]bool
	for i := 0; i < len(val); i++ {
		k := strings.IndexByte(classOrder, val[i])
		if k < 0 {
			return "", errorf("classes: %s is not one of u, l, d, s", strconv.Quote(val[i:i+1]))
		}
		have[k] = true
	}
	var b strings.Builder
	for k, ok := range have {
		if ok {
			b.WriteByte(classOrder[k])
		}
	}
	return b.String(), nil
}

// parseExclude reads the value of exclude into sorted order without
// repeats.
func parseExclude(val string) (string, error) {
	var have [128]bool
	for i := 0; i < len(val); i++ {
		c := val[i]
		if !printable(c) {
			return "", errorf("exclude: %s is not printable ASCII other than space", strconv.Quote(val[i:i+1]))
		}
		if c == ',' && keyFollows(val[i+1:]) {
			return "", errorf("exclude takes the rest of the rule, commas included, so it must come last " +
				"(to exclude a comma followed by letters and '=', list them in another order)")
		}
		have[c] = true
	}
	var b strings.Builder
	for c, ok := range have {
		if ok {
			b.WriteByte(byte(c))
		}
	}
	return b.String(), nil
}

// keyFollows reports whether s starts with one or more ASCII letters and
// then '=', which is what a key written after exclude looks like. Exclude
// values in canonical (sorted) form never hold a comma followed by this:
// '=' sorts before every letter.
func keyFollows(s string) bool {
	i := 0
	for i < len(s) && ('a' <= s[i] && s[i] <= 'z' || 'A' <= s[i] && s[i] <= 'Z') {
		i++
	}
	return i > 0 && i < len(s) && s[i] == '='
}

// String returns the rule in canonical form: "len=N,classes=C" followed by
// ",exclude=X" when X is not empty. For a valid rule, Parse(r.String())
// returns r.
func (r Rule) String() string {
	s := "len=" + strconv.Itoa(r.Length) + ",classes=" + r.Classes
	if r.Exclude != "" {
		s += ",exclude=" + r.Exclude
	}
	return s
}

// Validate reports whether r is well formed and can be met: Length is from
// MinLength to MaxLength, Classes is a non-empty subset of "ulds" in that
// order, Exclude is sorted printable ASCII without space or repeats, every
// selected class keeps at least one character after the exclusions, and
// Length is at least the number of classes.
func (r Rule) Validate() error {
	if r.Length < MinLength || r.Length > MaxLength {
		return errorf("len %d is outside %d..%d", r.Length, MinLength, MaxLength)
	}
	if r.Classes == "" {
		return errorf("classes must name at least one of u, l, d, s")
	}
	last := -1
	for i := 0; i < len(r.Classes); i++ {
		k := strings.IndexByte(classOrder, r.Classes[i])
		if k <= last {
			return errorf("classes must be a subset of \"ulds\" in that order, without repeats")
		}
		last = k
	}
	for i := 0; i < len(r.Exclude); i++ {
		c := r.Exclude[i]
		if !printable(c) || i > 0 && c <= r.Exclude[i-1] {
			return errorf("exclude must be printable ASCII other than space, sorted, without repeats")
		}
	}
	cs := r.charset()
	for k := range classOrder {
		if cs.need&(1<<k) != 0 && cs.left[k] == 0 {
			return errorf("exclude removes every character of class %c (%s)", classOrder[k], classNames[k])
		}
	}
	if r.Length < len(r.Classes) {
		return errorf("len %d is shorter than the %d classes it must hold", r.Length, len(r.Classes))
	}
	return nil
}

// charset is a rule's alphabet, worked out from a rule whose Classes and
// Exclude are well formed.
type charset struct {
	alpha   []byte               // allowed characters, in ASCII order
	allowed [128]bool            // allowed[c] for c in alpha
	need    uint8                // bit k set for each class k of classOrder in the rule
	left    [len(classOrder)]int // characters each class keeps after exclusions
}

func (r Rule) charset() *charset {
	cs := &charset{alpha: make([]byte, 0, '~'-'!'+1)}
	for i := 0; i < len(r.Classes); i++ {
		if k := strings.IndexByte(classOrder, r.Classes[i]); k >= 0 {
			cs.need |= 1 << k
		}
	}
	var excluded [128]bool
	for i := 0; i < len(r.Exclude); i++ {
		if c := r.Exclude[i]; c < 128 {
			excluded[c] = true
		}
	}
	for c := byte('!'); c <= '~'; c++ {
		k := classOf(c)
		if cs.need&(1<<k) == 0 || excluded[c] {
			continue
		}
		cs.alpha = append(cs.alpha, c)
		cs.allowed[c] = true
		cs.left[k]++
	}
	return cs
}

// meets reports whether pw has length n, only allowed characters and at
// least one of every class cs needs.
func (cs *charset) meets(pw []byte, n int) bool {
	if len(pw) != n {
		return false
	}
	var seen uint8
	for _, c := range pw {
		if c >= 128 || !cs.allowed[c] {
			return false
		}
		seen |= 1 << classOf(c)
	}
	return seen == cs.need
}

// Allows reports whether pw meets r: it has r.Length characters, all from
// the selected classes and none excluded, with at least one of every
// selected class. It reports false for every pw if r is not valid.
func (r Rule) Allows(pw []byte) bool {
	if r.Validate() != nil {
		return false
	}
	return r.charset().meets(pw, r.Length)
}

// Generate returns a new password meeting r, drawn from crypto/rand and
// uniform over all passwords r allows (see the package documentation). The
// caller owns the slice and may wipe it once the password is stored.
func (r Rule) Generate() ([]byte, error) {
	return r.generate(rand.Reader)
}

// generate is Generate drawing from src.
func (r Rule) generate(src io.Reader) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	cs := r.charset()
	n := len(cs.alpha)
	// Bytes from limit up are rejected, so every allowed character is
	// reached from the same number of byte values: limit is the largest
	// multiple of n not above 256.
	limit := 256 - 256%n
	var buf [64]byte
	defer clear(buf[:])
	next := len(buf)
	pw := make([]byte, r.Length)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		for i := range pw {
			for {
				if next == len(buf) {
					if _, err := io.ReadFull(src, buf[:]); err != nil {
						clear(pw)
						return nil, fmt.Errorf("password rule: reading random bytes: %w", err)
					}
					next = 0
				}
				b := int(buf[next])
				next++
				if b < limit {
					pw[i] = cs.alpha[b%n]
					break
				}
			}
		}
		if cs.meets(pw, r.Length) {
			return pw, nil
		}
	}
	clear(pw)
	return nil, errors.New("password rule: no draw met the rule; the random source is broken")
}

// MarshalText returns r.String(), refusing a rule that is not valid so that
// a configuration never records one.
func (r Rule) MarshalText() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return []byte(r.String()), nil
}

// UnmarshalText sets r to Parse(text), leaving r unchanged on error.
func (r *Rule) UnmarshalText(text []byte) error {
	p, err := Parse(string(text))
	if err != nil {
		return err
	}
	*r = p
	return nil
}
