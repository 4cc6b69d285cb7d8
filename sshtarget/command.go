package sshtarget

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// closeOnDone closes c when ctx ends, so that every read, write and wait
// on it returns; call the result once c is no longer in use.
func closeOnDone(ctx context.Context, c *ssh.Client) func() bool {
	return context.AfterFunc(ctx, func() { _ = c.Close() })
}

// run runs a fixed command on c with stdin (closed after it is written)
// and returns what it printed, each stream capped at maxOutput. The
// caller bounds it with closeOnDone.
func run(c *ssh.Client, cmd string, stdin []byte) (stdout, stderr []byte, err error) {
	sess, err := c.NewSession()
	if err != nil {
		return nil, nil, fmt.Errorf("open session: %w", err)
	}
	defer sess.Close()
	so, se := newCapped(maxOutput), newCapped(maxOutput)
	sess.Stdout, sess.Stderr = so, se
	sess.Stdin = bytes.NewReader(stdin)
	// Run returns after the copy of stdin has ended, so the caller may
	// wipe stdin then.
	err = sess.Run(cmd)
	return so.Bytes(), se.Bytes(), err
}

// ended is exitStatus, saying so when the command was cut short because
// ctx ran out.
func ended(ctx context.Context, err error) (desc string, exited bool) {
	desc, exited = exitStatus(err)
	if !exited && ctx.Err() != nil {
		desc = "did not finish in time"
	}
	return desc, exited
}

// exitStatus describes how a command ended and reports whether it ran to
// an exit status (as opposed to the connection or session failing first,
// which leaves what it did unknown).
func exitStatus(err error) (desc string, exited bool) {
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		if ee.Signal() != "" {
			// Killed part way: what it had done by then is unknown.
			return "killed by signal " + ee.Signal(), false
		}
		return fmt.Sprintf("exited with status %d", ee.ExitStatus()), true
	}
	var em *ssh.ExitMissingError
	if errors.As(err, &em) {
		return "ended without an exit status", false
	}
	return err.Error(), false
}
