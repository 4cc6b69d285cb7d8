package sshtarget

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// NewKey makes a fresh ed25519 key pair: the private key in OpenSSH PEM
// form, and its authorized_keys line with comment (which may be empty and
// must be one line of printable text).
func NewKey(comment string) (private []byte, public string, err error) {
	for _, r := range comment {
		if r < 0x20 || r == 0x7f {
			return nil, "", fmt.Errorf("%w: key comment holds a control character", ErrInvalid)
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	defer clear(priv)
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, "", err
	}
	defer clear(block.Bytes)
	pk, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, "", err
	}
	public = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
	if comment != "" {
		public += " " + comment
	}
	return pem.EncodeToMemory(block), public, nil
}

// The scripts RotateKey runs. They are fixed text, handed to /bin/sh (the
// login shell may be any shell; each is one line in single quotes, which
// every shell passes through unchanged) and read everything that varies
// from stdin: first the base64 blob of a key, then, for addKeyScript, the
// authorized_keys line. A line "holds" a key when one of its words (split
// at spaces, tabs and CRs, without globbing) is the key's blob: that finds
// it after options, even options with quoted spaces, and never matches a
// key that merely starts the same way.
const (
	// addKeyScript appends the line to ~/.ssh/authorized_keys unless a line
	// there already holds the key, creating ~/.ssh (0700) and the file
	// (0600, by umask) if missing, and ending an unterminated last line
	// first.
	addKeyScript = `set -euf; umask 077; IFS= read -r blob; IFS= read -r line; cd; ` +
		`[ -d .ssh ] || mkdir -m 700 .ssh; f=.ssh/authorized_keys; IFS=$(printf " \t\r"); ` +
		`if [ -f "$f" ]; then while IFS= read -r l || [ -n "$l" ]; do ` +
		`for w in $l; do if [ "$w" = "$blob" ]; then exit 0; fi; done; done < "$f"; fi; ` +
		`if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then echo >> "$f"; fi; ` +
		`printf "%s\n" "$line" >> "$f"`
	// removeKeyScript rewrites ~/.ssh/authorized_keys without the lines
	// that hold the key, keeping every other line as it was, through a
	// temporary file in the same directory renamed over the original, so
	// that sshd sees the old file or the new one, never a part.
	removeKeyScript = `set -euf; umask 077; IFS= read -r blob; cd; f=.ssh/authorized_keys; ` +
		`[ -f "$f" ] || exit 0; t=$(mktemp .ssh/authorized_keys.XXXXXX); trap "rm -f -- $t" EXIT; ` +
		`IFS=$(printf " \t\r"); while IFS= read -r l || [ -n "$l" ]; do keep=1; ` +
		`for w in $l; do if [ "$w" = "$blob" ]; then keep=0; fi; done; ` +
		`if [ "$keep" = 1 ]; then printf "%s\n" "$l"; fi; done < "$f" > "$t"; mv -f -- "$t" "$f"`
)

// shCommand runs a fixed script with /bin/sh whatever the login shell.
func shCommand(script string) string { return "/bin/sh -c '" + script + "'" }

// RotateKey replaces the key l logs in with (l.PrivateKey) by newPrivate,
// whose authorized_keys line is newPublic. In an order that never leaves
// the account without a key that works: it appends newPublic to
// ~/.ssh/authorized_keys, logs in with newPrivate, removes every line
// holding the old key (from that new login), then checks that the old key
// is refused and the new one still logs in. If the new key does not log
// in, its line is taken out again and the old key stays.
func RotateKey(ctx context.Context, l Login, newPrivate []byte, newPublic string) error {
	if len(l.PrivateKey) == 0 {
		return fmt.Errorf("%w: RotateKey needs a key login", ErrInvalid)
	}
	if err := l.validate(); err != nil {
		return err
	}
	oldBlob, err := publicBlob(l.PrivateKey)
	if err != nil {
		return err
	}
	newBlob, err := publicBlob(newPrivate)
	if err != nil {
		return err
	}
	if strings.ContainsAny(newPublic, "\r\n") {
		return fmt.Errorf("%w: the new public key is more than one line", ErrInvalid)
	}
	pub, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(newPublic))
	if err != nil || len(bytes.TrimSpace(rest)) > 0 {
		return fmt.Errorf("%w: the new public key is not one authorized_keys line", ErrInvalid)
	}
	if !bytes.Equal(pub.Marshal(), newBlob) {
		return fmt.Errorf("%w: the new public key is not that of the new private key", ErrInvalid)
	}
	if bytes.Equal(oldBlob, newBlob) {
		return fmt.Errorf("%w: the new key is the old one", ErrInvalid)
	}
	oldKey := base64.StdEncoding.EncodeToString(oldBlob)
	newKey := base64.StdEncoding.EncodeToString(newBlob)
	next := l
	next.PrivateKey = newPrivate
	where := fmt.Sprintf("rotate key of %s on %s", l.User, l.addr())

	ctx, cancel := l.withTimeout(ctx)
	defer cancel()
	oldc, err := dial(ctx, l)
	if err != nil {
		return err
	}
	defer oldc.Close()
	defer closeOnDone(ctx, oldc)()
	if err := script(oldc, addKeyScript, addInput(newKey, newPublic)); err != nil {
		return fmt.Errorf("%s: add the new key: %w", where, err)
	}
	newc, err := dial(ctx, next)
	if err != nil {
		// Take the new line out again: a key that does not log in is no use.
		if rerr := script(oldc, removeKeyScript, []byte(newKey+"\n")); rerr != nil {
			return fmt.Errorf("%s: the new key does not log in (%w), and removing it failed: %v", where, err, rerr)
		}
		return fmt.Errorf("%s: the new key does not log in; it was removed again, the old key stays: %w", where, err)
	}
	defer newc.Close()
	defer closeOnDone(ctx, newc)()
	_ = oldc.Close()
	if err := script(newc, removeKeyScript, []byte(oldKey+"\n")); err != nil {
		return fmt.Errorf("%s: remove the old key (both keys may log in): %w", where, err)
	}
	_ = newc.Close()

	switch err := checkDial(ctx, l); {
	case err == nil:
		return fmt.Errorf("%s: the old key still logs in after its removal from ~/.ssh/authorized_keys (is it authorized elsewhere?)", where)
	case !errors.Is(err, ErrRejected):
		return fmt.Errorf("%w: %s: could not confirm the old key is refused: %w", ErrUnconfirmed, where, err)
	}
	if err := checkDial(ctx, next); err != nil {
		return fmt.Errorf("%w: %s: the new key no longer logs in: %w", ErrUnconfirmed, where, err)
	}
	return nil
}

// addInput is addKeyScript's stdin: the new key's blob, then its line.
func addInput(blob, line string) []byte { return []byte(blob + "\n" + line + "\n") }

// checkDial logs in and out.
func checkDial(ctx context.Context, l Login) error {
	c, err := dial(ctx, l)
	if err != nil {
		return err
	}
	return c.Close()
}

// script runs one of RotateKey's scripts and fails unless it exits 0.
func script(c *ssh.Client, s string, stdin []byte) error {
	_, stderr, err := run(c, shCommand(s), stdin)
	if err != nil {
		desc, _ := exitStatus(err)
		return fmt.Errorf("%s: %s", desc, detail(stderr))
	}
	return nil
}

// publicBlob returns the wire form of a private key's public half.
func publicBlob(private []byte) ([]byte, error) {
	signer, wipe, err := parseKey(private)
	if err != nil {
		return nil, err
	}
	defer wipe()
	return signer.PublicKey().Marshal(), nil
}
