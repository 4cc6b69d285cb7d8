package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestHarnessTarget validates the harness without the product: the OpenSSH
// clients, driven exactly as the gateway tests drive them, log in to the
// sshd target directly with the account's password and with its key.
func TestHarnessTarget(t *testing.T) {
	s := env.Target(t)
	opts := func(auth string) []string {
		return append(clientOptions(s.KnownHosts, auth), "-p", strconv.Itoa(s.Port))
	}

	t.Run("password via askpass", func(t *testing.T) {
		r := run(t, command{
			Path:    clientTool(t, "ssh"),
			Args:    append(opts("keyboard-interactive,password"), s.User+"@127.0.0.1", "id -un; exit 3"),
			Answers: &answers{Password: s.Password},
		})
		if r.Code != 3 || strings.TrimSpace(r.Stdout) != s.User {
			t.Fatalf("want %s and exit code 3:\n%s\nsshd log:\n%s", s.User, r, s.LogTail(20))
		}
		if len(r.Prompts) != 1 || !strings.Contains(r.Prompts[0], "assword") {
			t.Errorf("askpass prompts %q, want one password prompt", r.Prompts)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		r := run(t, command{
			Path:    clientTool(t, "ssh"),
			Args:    append(opts("password"), s.User+"@127.0.0.1", "true"),
			Answers: &answers{Password: "not-" + s.Password},
		})
		if r.Code != 255 || !strings.Contains(r.Stderr, "Permission denied") {
			t.Fatalf("want Permission denied and exit code 255:\n%s", r)
		}
	})

	t.Run("private key", func(t *testing.T) {
		r := run(t, command{
			Path: clientTool(t, "ssh"),
			Args: append(append([]string{"-i", s.ClientKeyFile}, opts("publickey")...),
				s.User+"@127.0.0.1", "id -un"),
		})
		if r.Code != 0 || strings.TrimSpace(r.Stdout) != s.User {
			t.Fatalf("want %s and exit code 0:\n%s\nsshd log:\n%s", s.User, r, s.LogTail(20))
		}
	})

	t.Run("sftp batch with askpass", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "src")
		if err := os.WriteFile(src, []byte("harness\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		remote := "harness-" + randString(lowerAlnum, 6)
		t.Cleanup(func() { os.Remove(s.HomeFile(remote)) })
		args := append(clientOptions(s.KnownHosts, "password"), "-P", strconv.Itoa(s.Port), "-b", "-", s.User+"@127.0.0.1")
		r := run(t, command{
			Path:    clientTool(t, "sftp"),
			Args:    args,
			Stdin:   "put " + src + " " + remote + "\nget " + remote + " " + src + ".back\n",
			Answers: &answers{Password: s.Password},
		})
		if r.Code != 0 {
			t.Fatalf("sftp:\n%s", r)
		}
		if b, err := os.ReadFile(src + ".back"); err != nil || string(b) != "harness\n" {
			t.Fatalf("round trip: %q, %v", b, err)
		}
	})
}
