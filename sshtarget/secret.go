package sshtarget

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/internal/wipe"
)

// maxPasswordLen bounds a new password: far above any policy, far below
// what a line-oriented tool on the target might choke on.
const maxPasswordLen = 512

// checkNewPassword refuses a password that the line-oriented tools on the
// target (passwd's prompts, chpasswd's "account:password" lines, sudo -S)
// would cut short or misread.
func checkNewPassword(pw []byte) error {
	switch {
	case len(pw) == 0:
		return fmt.Errorf("%w: empty new password", ErrInvalid)
	case len(pw) > maxPasswordLen:
		return fmt.Errorf("%w: new password longer than %d bytes", ErrInvalid, maxPasswordLen)
	case bytes.ContainsAny(pw, "\n\r\x00"):
		return fmt.Errorf("%w: new password holds a line break or NUL", ErrInvalid)
	}
	return nil
}

// parseKey parses an unencrypted private key and returns a signer for it
// and a function that wipes the parsed key; call it once the login is over.
// Errors say what is wrong without x/crypto's detail, which might quote
// the key.
func parseKey(pemBytes []byte) (ssh.Signer, func(), error) {
	raw, err := ssh.ParseRawPrivateKey(pemBytes)
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return nil, nil, fmt.Errorf("%w: private key is encrypted", ErrInvalid)
		}
		return nil, nil, fmt.Errorf("%w: private key unparseable", ErrInvalid)
	}
	signer, err := ssh.NewSignerFromKey(raw)
	if err != nil {
		wipe.Key(raw)
		return nil, nil, fmt.Errorf("%w: private key of an unsupported type", ErrInvalid)
	}
	return signer, func() { wipe.Key(raw) }, nil
}

// maxOutput bounds what is kept of each stream a command on a target writes.
const maxOutput = 64 << 10

// capped keeps the first max bytes written to it and drops the rest. A
// write never fails, so a chatty target cannot stall the session and
// cannot make us hold more than max bytes. notify, if set, gets a token
// after each write that kept bytes.
type capped struct {
	mu      sync.Mutex
	buf     []byte
	max     int
	dropped bool
	notify  chan struct{}
}

func newCapped(max int) *capped { return &capped{max: max} }

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	room := c.max - len(c.buf)
	n := min(room, len(p))
	c.buf = append(c.buf, p[:n]...)
	if n < len(p) {
		c.dropped = true
	}
	c.mu.Unlock()
	if n > 0 && c.notify != nil {
		select {
		case c.notify <- struct{}{}:
		default: // a token is already waiting
		}
	}
	return len(p), nil
}

// Bytes returns a copy of what was kept.
func (c *capped) Bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf)
}

// detail turns a target's output into a short line for an error: its last
// non-empty lines, printable ASCII only, at most 200 bytes, with any of
// secrets that occurs in it replaced. Targets should never echo a
// password; this makes sure that one that does cannot put it in our logs.
func detail(out []byte, secrets ...[]byte) string {
	for _, s := range secrets {
		if len(s) > 0 {
			out = bytes.ReplaceAll(out, s, []byte("[REDACTED]"))
		}
	}
	var lines [][]byte
	for _, l := range bytes.FieldsFunc(out, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			lines = append(lines, l)
		}
	}
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	joined := bytes.Join(lines, []byte(" / "))
	clean := make([]byte, 0, len(joined))
	for _, b := range joined {
		if b >= 0x20 && b < 0x7f {
			clean = append(clean, b)
		} else {
			clean = append(clean, '?')
		}
	}
	const max = 200
	if len(clean) > max {
		clean = append(clean[:max-3], "..."...)
	}
	if len(clean) == 0 {
		return "no output"
	}
	return fmt.Sprintf("%q", clean)
}
