package sshtarget

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/ssh"
)

// passwdCommand changes the login's own password. LC_ALL=C keeps PAM's
// prompts in English, which is what promptIn understands.
const passwdCommand = "env LC_ALL=C passwd" // #nosec G101 -- a command, not a credential

// ChangeSelf changes the password of l's account to newPassword by
// running passwd on the target over a pty and answering PAM's prompts:
// the current password (l.Password) and the new one, twice. It succeeds
// only when passwd exits 0. A prompt it does not understand, or a second
// prompt for the new password (the target refused it), ends passwd
// without a change.
func ChangeSelf(ctx context.Context, l Login, newPassword []byte) error {
	if len(l.Password) == 0 {
		return fmt.Errorf("%w: ChangeSelf needs a password login: the current password answers passwd", ErrInvalid)
	}
	return changeSelf(ctx, l, l.Password, newPassword)
}

// changeSelf is ChangeSelf with the answer to passwd's "current password"
// prompt apart from the login's credential.
func changeSelf(ctx context.Context, l Login, current, newPassword []byte) error {
	if err := checkNewPassword(newPassword); err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(current, newPassword) == 1 {
		return fmt.Errorf("%w: the new password is the current one", ErrInvalid)
	}
	ctx, cancel := l.withTimeout(ctx)
	defer cancel()
	c, err := dial(ctx, l)
	if err != nil {
		return err
	}
	defer c.Close()
	defer closeOnDone(ctx, c)()

	sess, err := c.NewSession()
	if err != nil {
		return fmt.Errorf("passwd on %s: open session: %w", l.addr(), err)
	}
	defer sess.Close()
	// Echo off from the start: PAM turns it off for its hidden prompts, and
	// this way no answer is ever echoed back, whatever the target does.
	modes := ssh.TerminalModes{ssh.ECHO: 0, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty("dumb", 24, 200, modes); err != nil {
		return fmt.Errorf("passwd on %s: request pty: %w", l.addr(), err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		return err
	}
	if err := sess.Start(passwdCommand); err != nil {
		return fmt.Errorf("passwd on %s: start: %w", l.addr(), err)
	}
	d := passwdDialog{current: current, next: newPassword}
	convErr := d.run(stdout, stdin)
	if convErr != nil {
		// Ending the session hangs passwd up before it has a new password
		// it would take (see passwdDialog.run).
		_ = sess.Close()
	}
	waitErr := sess.Wait()
	out := detail(d.out, current, newPassword)
	if convErr != nil {
		// Once passwd has the new password, it may have taken it, unless it
		// asked for it again, which is how it says no.
		if d.sentNew && !d.refused {
			return fmt.Errorf("%w: passwd on %s: %w after the new password was sent: %s", ErrUnconfirmed, l.addr(), convErr, out)
		}
		return fmt.Errorf("passwd on %s: %w: %s", l.addr(), convErr, out)
	}
	if waitErr == nil {
		if !d.sentNew {
			return fmt.Errorf("passwd on %s exited 0 without asking for a new password: %s", l.addr(), out)
		}
		return nil
	}
	desc, exited := ended(ctx, waitErr)
	if !exited && d.sentNew {
		return fmt.Errorf("%w: passwd on %s %s after the new password was sent: %s", ErrUnconfirmed, l.addr(), desc, out)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: passwd on %s did not finish in time: %s", ErrUnreachable, l.addr(), out)
	}
	return fmt.Errorf("passwd on %s %s: %s", l.addr(), desc, out)
}

// prompt is what passwd asks for.
type prompt int

const (
	noPrompt      prompt = iota
	promptCurrent        // the current password
	promptNew            // the new password
	promptRetype         // the new password again
	promptOther          // something else: not answered
)

// promptIn returns the prompt that out (what passwd printed since the last
// answer) ends with: a last line, not yet ended, that ends in ':'. Words
// tell the prompts apart, whichever PAM module asks: "Current password:",
// "(current) UNIX password:", "Old Password:", "New password:", "Enter new
// UNIX password:", "Retype new password:", "New password (again):".
func promptIn(out []byte) prompt {
	line := out[bytes.LastIndexAny(out, "\r\n")+1:]
	line = bytes.TrimRight(line, " \t")
	if !bytes.HasSuffix(line, []byte(":")) {
		return noPrompt
	}
	l := strings.ToLower(string(line))
	has := func(words ...string) bool {
		for _, w := range words {
			if strings.Contains(l, w) {
				return true
			}
		}
		return false
	}
	switch {
	case has("retype", "again", "repeat", "re-enter", "reenter", "confirm", "verify"):
		return promptRetype
	case has("current", "old"):
		return promptCurrent
	case has("new"):
		return promptNew
	}
	return promptOther
}

// passwdDialog answers passwd's prompts, each at most once, in order.
type passwdDialog struct {
	current, next []byte

	out                              []byte // what passwd printed, at most maxOutput
	sentCurrent, sentNew, sentRetype bool
	refused                          bool // passwd asked for the new password again: it refused it
}

// run reads passwd's output until it ends, answering prompts. It stops at
// the first prompt it will not answer; the caller then ends the session.
// passwd takes a new password only once it has it twice, so stopping
// before the retype leaves the old one in place.
func (d *passwdDialog) run(r io.Reader, w io.Writer) error {
	buf := make([]byte, 4096)
	mark := 0 // out[mark:] is what came after the last answer
	for {
		n, err := r.Read(buf)
		if len(d.out)+n > maxOutput {
			return errors.New("passwd printed too much")
		}
		d.out = append(d.out, buf[:n]...)
		if p := promptIn(d.out[mark:]); p != noPrompt {
			if err := d.answer(p, w); err != nil {
				return err
			}
			mark = len(d.out)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read passwd's output: %w", err)
		}
	}
}

func (d *passwdDialog) answer(p prompt, w io.Writer) error {
	var pw []byte
	switch {
	case p == promptCurrent && !d.sentCurrent && !d.sentNew:
		pw, d.sentCurrent = d.current, true
	case p == promptNew && !d.sentNew:
		pw, d.sentNew = d.next, true
	case p == promptNew:
		d.refused = true
		return errors.New("the target refused the new password")
	case p == promptRetype && d.sentNew && !d.sentRetype:
		pw, d.sentRetype = d.next, true
	case p == promptCurrent:
		return errors.New("passwd asked for the current password again")
	default:
		return errors.New("passwd asked something unexpected")
	}
	line := make([]byte, 0, len(pw)+1)
	line = append(append(line, pw...), '\n')
	defer clear(line)
	if _, err := w.Write(line); err != nil {
		return fmt.Errorf("answer passwd: %w", err)
	}
	return nil
}

// chpasswd and sudo commands for ChangePrivileged. sudoPrompt marks sudo's
// password prompt on stderr: the privileged password is sent only once it
// shows, so a sudo that does not ask (a NOPASSWD rule) never passes it to
// chpasswd as a line, where chpasswd would report an error for it and
// still apply the next line. -k makes sudo ask even when a timestamp of
// an earlier run would let it skip the password.
const (
	sudoPrompt          = "[sallyport] sudo password:"
	chpasswdCommand     = "chpasswd"
	sudoPasswordCommand = "sudo -S -k -p '" + sudoPrompt + "' chpasswd"
	sudoKeyCommand      = "sudo -n chpasswd"
)

// ChangePrivileged sets account's password to newPassword through a
// privileged login on the same host: chpasswd, reading
// "account:newpassword" on stdin, run directly (priv is root) or, with
// sudo, through sudo: `sudo -S` with priv's password on stdin when priv
// logs in with a password, `sudo -n` (no password; a NOPASSWD rule)
// when it logs in with a key.
func ChangePrivileged(ctx context.Context, priv Login, account string, newPassword []byte, sudo bool) error {
	if err := checkAccount(account); err != nil {
		return err
	}
	if err := checkNewPassword(newPassword); err != nil {
		return err
	}
	ctx, cancel := priv.withTimeout(ctx)
	defer cancel()
	c, err := dial(ctx, priv)
	if err != nil {
		return err
	}
	defer c.Close()
	defer closeOnDone(ctx, c)()

	line := make([]byte, 0, len(account)+len(newPassword)+2)
	line = append(append(append(append(line, account...), ':'), newPassword...), '\n')
	defer clear(line)
	where := fmt.Sprintf("chpasswd for %s on %s", account, priv.addr())
	if sudo && len(priv.Password) > 0 {
		return sudoChpasswd(ctx, c, where, priv.Password, line, newPassword)
	}
	cmd := chpasswdCommand
	if sudo {
		cmd = sudoKeyCommand
	}
	_, stderr, err := run(c, cmd, line)
	if err == nil {
		return nil
	}
	desc, exited := ended(ctx, err)
	if !exited {
		return fmt.Errorf("%w: %s %s: %s", ErrUnconfirmed, where, desc, detail(stderr, newPassword))
	}
	return fmt.Errorf("%s %s: %s", where, desc, detail(stderr, newPassword))
}

// sudoChpasswd runs chpasswd through `sudo -S`: it waits for sudo's
// prompt, then sends the privileged password and the chpasswd line.
func sudoChpasswd(ctx context.Context, c *ssh.Client, where string, sudoPassword, line, newPassword []byte) error {
	sess, err := c.NewSession()
	if err != nil {
		return fmt.Errorf("%s: open session: %w", where, err)
	}
	defer sess.Close()
	stdout, stderr := newCapped(maxOutput), newCapped(maxOutput)
	stderr.notify = make(chan struct{}, 1)
	sess.Stdout, sess.Stderr = stdout, stderr
	stdin, err := sess.StdinPipe()
	if err != nil {
		return err
	}
	if err := sess.Start(sudoPasswordCommand); err != nil {
		return fmt.Errorf("%s: start sudo: %w", where, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()
	// Every return below comes after the Wait above has returned: closeOnDone
	// closes the connection when ctx ends, which ends it.
	failed := func(msg string) error {
		_ = sess.Close()
		<-waited
		return fmt.Errorf("%s: %s: %s", where, msg, detail(unmark(stderr.Bytes()), sudoPassword, newPassword))
	}
	for asked := false; !asked; {
		select {
		case <-stderr.notify:
			asked = bytes.Contains(stderr.Bytes(), []byte(sudoPrompt))
		case err := <-waited:
			desc, _ := exitStatus(err)
			return fmt.Errorf("%s: sudo %s before asking for a password: %s", where, desc, detail(unmark(stderr.Bytes()), sudoPassword, newPassword))
		case <-ctx.Done():
			return failed("sudo did not ask for a password (does a NOPASSWD rule cover chpasswd? then log in with a key)")
		}
	}
	input := make([]byte, 0, len(sudoPassword)+1+len(line))
	input = append(append(append(input, sudoPassword...), '\n'), line...)
	defer clear(input)
	// A failed write may still have delivered some of input: what follows
	// treats it as delivered.
	_, _ = stdin.Write(input)
	_ = stdin.Close()
	err = <-waited
	errOut := stderr.Bytes()
	if err == nil {
		return nil
	}
	desc, exited := ended(ctx, err)
	out := detail(unmark(errOut), sudoPassword, newPassword)
	if bytes.Count(errOut, []byte(sudoPrompt)) > 1 {
		// sudo refused the password and read the chpasswd line as a second
		// try; chpasswd never ran.
		return fmt.Errorf("%s: sudo refused the privileged password (%s): %s", where, desc, out)
	}
	if !exited {
		return fmt.Errorf("%w: %s: sudo %s: %s", ErrUnconfirmed, where, desc, out)
	}
	return fmt.Errorf("%s: sudo %s: %s", where, desc, out)
}

// unmark removes sudo's prompts from its stderr.
func unmark(b []byte) []byte { return bytes.ReplaceAll(b, []byte(sudoPrompt), nil) }

// maxAccountLen bounds an account name; Linux allows 32 bytes, directory
// services more.
const maxAccountLen = 256

// checkAccount refuses an account name that could be read as more than a
// name: by chpasswd (':' ends it, a line break starts another entry) or by
// a command line (a leading '-'). Letters, digits, '.', '_', '-' and '@'
// are allowed, and a final '$' (Samba machine accounts).
func checkAccount(name string) error {
	if name == "" || len(name) > maxAccountLen {
		return fmt.Errorf("%w: account name empty or longer than %d bytes", ErrInvalid, maxAccountLen)
	}
	if name[0] == '-' {
		return fmt.Errorf("%w: account name starts with '-'", ErrInvalid)
	}
	for i := 0; i < len(name); i++ {
		switch b := name[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '.', b == '_', b == '-', b == '@':
		case b == '$' && i == len(name)-1 && i > 0:
		default:
			return fmt.Errorf("%w: account name holds %q", ErrInvalid, b)
		}
	}
	return nil
}
