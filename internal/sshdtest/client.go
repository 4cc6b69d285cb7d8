package sshdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ErrDenied is what the OpenSSH client's "Permission denied" becomes: the
// server refused the credential (as opposed to a failure to connect or a
// host key mismatch, which are other errors).
var ErrDenied = errors.New("permission denied")

// SSHPassword logs in as user with password through the real OpenSSH
// client (password or keyboard-interactive, one try each, the password
// handed over by an SSH_ASKPASS script reading a 0600 file), with strict
// host key checking against KnownHosts, and runs `true`. It returns nil
// when the login works and an error wrapping ErrDenied when the server
// refuses the password.
func (s *Server) SSHPassword(ctx context.Context, user string, password []byte) error {
	f, err := os.CreateTemp(s.dir, "password-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(password)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return s.runSSH(ctx, user, []string{
		"SSH_ASKPASS=" + s.askpass,
		"SSH_ASKPASS_REQUIRE=force",
		"SSHDTEST_PASSWORD_FILE=" + f.Name(),
	},
		"-o", "PreferredAuthentications=password,keyboard-interactive",
		"-o", "PubkeyAuthentication=no",
		"-o", "NumberOfPasswordPrompts=1",
	)
}

// SSHKey logs in as user with an unencrypted private key (PEM or
// OpenSSH) through the real OpenSSH client in batch mode, with strict
// host key checking against KnownHosts, and runs `true`. It returns nil
// when the login works and an error wrapping ErrDenied when the server
// refuses the key.
func (s *Server) SSHKey(ctx context.Context, user string, privateKey []byte) error {
	f, err := os.CreateTemp(s.dir, "key-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(privateKey)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return s.runSSH(ctx, user, nil,
		"-i", f.Name(),
		"-o", "IdentitiesOnly=yes",
		"-o", "BatchMode=yes",
		"-o", "PreferredAuthentications=publickey",
		"-o", "PasswordAuthentication=no",
		"-o", "KbdInteractiveAuthentication=no",
	)
}

func (s *Server) runSSH(ctx context.Context, user string, env []string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	all := append([]string{
		"-F", "/dev/null", "-T",
		"-p", strconv.Itoa(s.Port),
		"-o", "UserKnownHostsFile=" + s.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "IdentityAgent=none",
		"-o", "ConnectTimeout=10",
		"-o", "LogLevel=ERROR",
	}, args...)
	all = append(all, "-l", user, "127.0.0.1", "true")
	cmd := exec.CommandContext(ctx, "ssh", all...) // #nosec G204 -- the OpenSSH client with the test's own options
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + s.dir}, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(stderr.String())
	if strings.Contains(msg, "Permission denied") {
		return fmt.Errorf("ssh %s@127.0.0.1:%d: %w: %s", user, s.Port, ErrDenied, msg)
	}
	return fmt.Errorf("ssh %s@127.0.0.1:%d: %w: %s", user, s.Port, err, msg)
}
