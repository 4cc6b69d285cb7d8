package e2e

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// sshdTarget is an OpenSSH sshd on a loopback port that lets exactly one
// throwaway Unix account in, by password or by an ed25519 key.
type sshdTarget struct {
	Port     int
	User     string // throwaway account, removed by Close
	Password string // the account's password: what the gateway injects
	Home     string

	HostKeyPub         string // "ssh-ed25519 AAAA..." without comment
	HostKeyFingerprint string // "SHA256:..." as ssh-keygen -l prints it
	KnownHosts         string // known_hosts file for a direct connection

	ClientKeyFile string // private key in authorized_keys of User
	ClientKeyPEM  []byte // its contents

	dir  string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// startTarget creates the account and starts sshd for it, all under dir.
// On error it undoes what it did.
func startTarget(dir string) (_ *sshdTarget, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sshd, err := sshdPath()
	if err != nil {
		return nil, err
	}
	for _, tool := range []string{"ssh-keygen", "useradd", "userdel", "chpasswd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (run test/setup.sh as root): %w", tool, err)
		}
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, fmt.Errorf("privilege separation dir: %w", err)
	}
	s := &sshdTarget{
		User:     "spt" + randString(lowerAlnum, 9),
		Password: "Tgt-" + randString(alnum, 24) + "-9x",
		dir:      dir,
		log:      filepath.Join(dir, "sshd.log"),
	}
	if _, err := sshdtest.RunTool(nil, "useradd", "-m", "-s", "/bin/bash", s.User); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// The password goes through stdin, never argv.
	if _, err := sshdtest.RunTool([]byte(s.User+":"+s.Password+"\n"), "chpasswd"); err != nil {
		return nil, err
	}
	if err := s.installClientKey(); err != nil {
		return nil, err
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	if s.HostKeyPub, s.HostKeyFingerprint, err = newKeyPair(hostKey, "sallyport-e2e-target"); err != nil {
		return nil, err
	}
	if s.Port, err = sshdtest.FreePort(); err != nil {
		return nil, err
	}
	s.KnownHosts = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(s.KnownHosts, []byte(knownHostsLine(s.Port, s.HostKeyPub)), 0o600); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(s.config(hostKey)), 0o600); err != nil {
		return nil, err
	}
	if _, err := sshdtest.RunTool(nil, sshd, "-t", "-f", cfg); err != nil {
		return nil, fmt.Errorf("sshd rejects its config: %w", err)
	}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	s.cmd = exec.Command(sshd, "-D", "-e", "-f", cfg)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.done) }()
	if err := sshdtest.WaitPort(s.Port, 15*time.Second, s.done); err != nil {
		return nil, fmt.Errorf("sshd on port %d: %w; log:\n%s", s.Port, err, s.LogTail(20))
	}
	return s, nil
}

func (s *sshdTarget) config(hostKey string) string {
	return fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile %s
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
UsePAM yes
PermitRootLogin no
AllowUsers %s
Subsystem sftp internal-sftp
StrictModes no
UseDNS no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
MaxAuthTries 10
LogLevel VERBOSE
`, s.Port, hostKey, filepath.Join(s.dir, "sshd.pid"), s.User)
}

// installClientKey makes an ed25519 key pair and authorizes it for the account.
func (s *sshdTarget) installClientKey() error {
	u, err := user.Lookup(s.User)
	if err != nil {
		return err
	}
	s.Home = u.HomeDir
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	s.ClientKeyFile = filepath.Join(s.dir, "client_ed25519_key")
	pub, _, err := newKeyPair(s.ClientKeyFile, "sallyport-e2e-client")
	if err != nil {
		return err
	}
	if s.ClientKeyPEM, err = os.ReadFile(s.ClientKeyFile); err != nil {
		return err
	}
	sshDir := filepath.Join(s.Home, ".ssh")
	ak := filepath.Join(sshDir, "authorized_keys")
	if err := os.MkdirAll(sshDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(ak, []byte(pub+"\n"), 0o600); err != nil {
		return err
	}
	for _, p := range []string{sshDir, ak} {
		if err := os.Chown(p, uid, gid); err != nil {
			return err
		}
	}
	return os.Chmod(sshDir, 0o700)
}

// Close stops sshd (by the PID it started) and removes the account.
func (s *sshdTarget) Close() error {
	var errs []error
	if s.cmd != nil && s.cmd.Process != nil {
		errs = append(errs, sshdtest.StopProcess(s.cmd.Process, s.done, 10*time.Second))
	}
	// -f: a session child of sshd may still be winding down.
	if _, err := sshdtest.RunTool(nil, "userdel", "-r", "-f", s.User); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// LogTail returns the end of sshd's log.
func (s *sshdTarget) LogTail(n int) string {
	b, _ := os.ReadFile(s.log)
	return lastLines(b, n)
}

// HomeFile returns the path of name in the account's home directory.
func (s *sshdTarget) HomeFile(name string) string { return filepath.Join(s.Home, name) }

func sshdPath() (string, error) {
	if _, err := os.Stat("/usr/sbin/sshd"); err == nil {
		return "/usr/sbin/sshd", nil
	}
	p, err := exec.LookPath("sshd")
	if err != nil {
		return "", fmt.Errorf("OpenSSH sshd not found (run test/setup.sh as root): %w", err)
	}
	// sshd re-executes itself and insists on an absolute path.
	return filepath.Abs(p)
}

// newKeyPair writes an unencrypted ed25519 key pair to path and path.pub and
// returns the public key as "type base64" and its SHA256 fingerprint.
func newKeyPair(path, comment string) (pub, fingerprint string, err error) {
	if _, err := sshdtest.RunTool(nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path); err != nil {
		return "", "", err
	}
	b, err := os.ReadFile(path + ".pub")
	if err != nil {
		return "", "", err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return "", "", fmt.Errorf("%s.pub: unexpected contents %q", path, b)
	}
	pub = f[0] + " " + f[1]
	fingerprint, err = keyFingerprint(path + ".pub")
	return pub, fingerprint, err
}

// keyFingerprint returns the SHA256 fingerprint ssh-keygen -l prints for a
// public key file.
func keyFingerprint(pubFile string) (string, error) {
	out, err := sshdtest.RunTool(nil, "ssh-keygen", "-l", "-E", "sha256", "-f", pubFile)
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	if len(f) < 2 || !strings.HasPrefix(f[1], "SHA256:") {
		return "", fmt.Errorf("ssh-keygen -lf %s: unexpected output %q", pubFile, out)
	}
	return f[1], nil
}

// knownHostsLine pins key for [127.0.0.1]:port.
func knownHostsLine(port int, key string) string {
	return fmt.Sprintf("[127.0.0.1]:%d %s\n", port, key)
}

const (
	alnum      = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	lowerAlnum = "abcdefghijklmnopqrstuvwxyz0123456789"
)

// randString returns n characters drawn uniformly from set.
func randString(set string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = set[randIntn(len(set))]
	}
	return string(b)
}

// randIntn returns a uniform integer in [0, n) from crypto/rand.
func randIntn(n int) int {
	v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return int(v.Int64())
}

// LogCount counts the occurrences of substr in sshd's log.
func (s *sshdTarget) LogCount(substr string) int {
	b, _ := os.ReadFile(s.log)
	return bytes.Count(b, []byte(substr))
}

// WaitLogCount waits (bounded) until substr occurs more than before times in
// sshd's log and reports whether it did.
func (s *sshdTarget) WaitLogCount(substr string, before int) bool {
	deadline := time.Now().Add(10 * time.Second)
	for s.LogCount(substr) <= before {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}
