// Package sshdtest runs a real OpenSSH sshd for tests, as root, on a free
// 127.0.0.1 port, with PAM (so passwd, chpasswd and sudo behave as they do
// on a real host) and password, keyboard-interactive and publickey logins.
// Only throwaway Unix accounts it creates may log in, plus root by a key
// the test authorizes; it removes the accounts, its groups and its sudoers
// drop-ins when they are no longer needed. It also runs the real OpenSSH
// client, so that a test can check a credential the way an administrator
// would.
//
// One Server per test package (started from TestMain or a sync.Once) is
// enough: accounts are cheap, sshd is not.
package sshdtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Server is a running sshd.
type Server struct {
	Port int
	// HostKey is the server's ed25519 host key in SSH wire format
	// (ssh.PublicKey.Marshal()).
	HostKey []byte
	// HostKeyECDSA is its second host key, ecdsa-sha2-nistp256, so that a
	// client can be shown to pick the key type it pinned.
	HostKeyECDSA []byte
	// KnownHosts is a known_hosts file that pins both host keys for
	// [127.0.0.1]:Port.
	KnownHosts string

	dir      string // under /run: sshd's StrictModes insists no directory above a key file is world-writable
	group    string // every account is in it; sshd lets in only this group and root
	kbdGroup string // accounts in it may log in by keyboard-interactive only
	rootKeys string // root's authorized_keys, so the host's own file is never touched
	askpass  string
	log      string

	cmd  *exec.Cmd
	done chan struct{}

	mu       sync.Mutex
	accounts map[string]bool // created and not yet removed
	sudoers  map[string]bool // drop-in files not yet removed
}

// Account is a throwaway Unix account.
type Account struct {
	Name     string
	Home     string
	UID, GID int
	Password []byte
}

// String describes a without its password.
func (a Account) String() string {
	return fmt.Sprintf("sshdtest.Account{Name: %q, Home: %q, Password: [REDACTED]}", a.Name, a.Home)
}

// GoString keeps the password out of %#v.
func (a Account) GoString() string { return a.String() }

// LogValue keeps the password out of slog records.
func (a Account) LogValue() slog.Value { return slog.StringValue(a.String()) }

// MarshalJSON keeps the password out of JSON.
func (a Account) MarshalJSON() ([]byte, error) { return json.Marshal(a.String()) }

// SSHDPath is where Debian's openssh-server puts sshd.
const SSHDPath = "/usr/sbin/sshd"

// Start creates the groups, host keys and configuration and starts sshd.
// It needs root. On error it undoes what it did.
func Start() (_ *Server, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("sshdtest needs root: it starts sshd and creates Unix accounts")
	}
	for _, tool := range []string{"ssh", "ssh-keygen", "useradd", "userdel", "groupadd", "groupdel", "chpasswd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (run test/setup.sh as root): %w", tool, err)
		}
	}
	if _, err := os.Stat(SSHDPath); err != nil {
		return nil, fmt.Errorf("OpenSSH sshd not found (run test/setup.sh as root): %w", err)
	}
	// sshd's privilege separation directory; nothing creates it without systemd.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // #nosec G301 -- the mode sshd expects
		return nil, fmt.Errorf("privilege separation dir: %w", err)
	}
	dir, err := os.MkdirTemp("/run", "sshdtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{
		dir:      dir,
		group:    "sptg" + randString(lowerAlnum, 8),
		kbdGroup: "sptk" + randString(lowerAlnum, 8),
		rootKeys: filepath.Join(dir, "root_authorized_keys"),
		askpass:  filepath.Join(dir, "askpass"),
		log:      filepath.Join(dir, "sshd.log"),
		accounts: map[string]bool{},
		sudoers:  map[string]bool{},
	}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	for _, g := range []string{s.group, s.kbdGroup} {
		if _, err := RunTool(nil, "groupadd", g); err != nil {
			return nil, err
		}
	}
	edKey := filepath.Join(dir, "ssh_host_ed25519_key")
	ecKey := filepath.Join(dir, "ssh_host_ecdsa_key")
	if s.HostKey, err = hostKey(edKey, "ed25519"); err != nil {
		return nil, err
	}
	if s.HostKeyECDSA, err = hostKey(ecKey, "ecdsa"); err != nil {
		return nil, err
	}
	if err := os.WriteFile(s.rootKeys, nil, 0o600); err != nil {
		return nil, err
	}
	askpass := "#!/bin/sh\nexec cat -- \"$SSHDTEST_PASSWORD_FILE\"\n"       // #nosec G101 -- a script that reads the password from a file
	if err := os.WriteFile(s.askpass, []byte(askpass), 0o700); err != nil { // #nosec G306 -- an executable script, root only
		return nil, err
	}
	if s.Port, err = FreePort(); err != nil {
		return nil, err
	}
	s.KnownHosts = filepath.Join(dir, "known_hosts")
	var kh bytes.Buffer
	for _, k := range [][]byte{s.HostKey, s.HostKeyECDSA} {
		pk, err := ssh.ParsePublicKey(k)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&kh, "[127.0.0.1]:%d %s", s.Port, ssh.MarshalAuthorizedKey(pk))
	}
	if err := os.WriteFile(s.KnownHosts, kh.Bytes(), 0o600); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(s.config(edKey, ecKey)), 0o600); err != nil {
		return nil, err
	}
	if _, err := RunTool(nil, SSHDPath, "-t", "-f", cfg); err != nil {
		return nil, fmt.Errorf("sshd rejects its config: %w", err)
	}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	s.cmd = exec.Command(SSHDPath, "-D", "-e", "-f", cfg) // #nosec G204 -- fixed program, our own config
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	if err := WaitPort(s.Port, 15*time.Second, s.done); err != nil {
		return nil, fmt.Errorf("sshd on port %d: %w; log:\n%s", s.Port, err, s.LogTail(20))
	}
	return s, nil
}

// config is sshd's configuration: a real host's (PAM, StrictModes) but
// open only to the harness's accounts and, by key, root.
func (s *Server) config(edKey, ecKey string) string {
	return fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
HostKey %s
PidFile %s
UsePAM yes
PasswordAuthentication yes
KbdInteractiveAuthentication yes
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin prohibit-password
AllowGroups %s root
StrictModes yes
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 100
MaxAuthTries 10
LogLevel VERBOSE

Match Group %s
	AuthenticationMethods keyboard-interactive

Match User root
	AuthorizedKeysFile %s
`, s.Port, edKey, ecKey, filepath.Join(s.dir, "sshd.pid"), s.group, s.kbdGroup, s.rootKeys)
}

// Addr is sshd's address.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Close stops sshd (by the PID it started) and removes every account,
// sudoers drop-in and group the server created, and its directory.
func (s *Server) Close() error {
	var errs []error
	if s.cmd != nil && s.cmd.Process != nil {
		errs = append(errs, StopProcess(s.cmd.Process, s.done, 10*time.Second))
	}
	s.mu.Lock()
	var accounts, sudoers []string
	for a := range s.accounts {
		accounts = append(accounts, a)
	}
	for f := range s.sudoers {
		sudoers = append(sudoers, f)
	}
	s.mu.Unlock()
	for _, f := range sudoers {
		errs = append(errs, s.removeSudoers(f))
	}
	for _, a := range accounts {
		errs = append(errs, s.removeAccount(a))
	}
	for _, g := range []string{s.group, s.kbdGroup} {
		if groupExists(g) {
			if _, err := RunTool(nil, "groupdel", g); err != nil {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, os.RemoveAll(s.dir))
	return errors.Join(errs...)
}

// AccountOption changes how AddAccount makes an account.
type AccountOption func(*accountOptions)

type accountOptions struct{ kbdOnly bool }

// KbdInteractiveOnly makes an account that sshd lets in by
// keyboard-interactive only (PAM's "Password:" prompt), not by the
// password method.
func KbdInteractiveOnly() AccountOption { return func(o *accountOptions) { o.kbdOnly = true } }

// AddAccount creates a throwaway account with a random name and a random
// password (set through chpasswd's stdin) and removes it, with its home,
// when tb's test ends. It fails tb on error.
func (s *Server) AddAccount(tb testing.TB, opts ...AccountOption) *Account {
	tb.Helper()
	var o accountOptions
	for _, f := range opts {
		f(&o)
	}
	groups := s.group
	if o.kbdOnly {
		groups += "," + s.kbdGroup
	}
	name := "spt" + randString(lowerAlnum, 9)
	if _, err := RunTool(nil, "useradd", "-m", "-s", "/bin/bash", "-G", groups, name); err != nil {
		tb.Fatal(err)
	}
	s.mu.Lock()
	s.accounts[name] = true
	s.mu.Unlock()
	tb.Cleanup(func() {
		if err := s.removeAccount(name); err != nil {
			tb.Error(err)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		tb.Fatal(err)
	}
	a := &Account{Name: name, Home: u.HomeDir, Password: RandomPassword()}
	if a.UID, err = strconv.Atoi(u.Uid); err != nil {
		tb.Fatal(err)
	}
	if a.GID, err = strconv.Atoi(u.Gid); err != nil {
		tb.Fatal(err)
	}
	s.SetPassword(tb, name, a.Password)
	return a
}

func (s *Server) removeAccount(name string) error {
	s.mu.Lock()
	ok := s.accounts[name]
	delete(s.accounts, name)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	// -f: a session child of sshd may still be winding down.
	_, err := RunTool(nil, "userdel", "-r", "-f", name)
	return err
}

// SetPassword sets an account's password through chpasswd's stdin.
func (s *Server) SetPassword(tb testing.TB, name string, password []byte) {
	tb.Helper()
	line := make([]byte, 0, len(name)+len(password)+2)
	line = append(append(append(append(line, name...), ':'), password...), '\n')
	defer clear(line)
	if _, err := RunTool(line, "chpasswd"); err != nil {
		tb.Fatal(err)
	}
}

// Authorize appends an authorized_keys line for an account: to
// ~/.ssh/authorized_keys (created, owned by the account, with the modes
// sshd's StrictModes wants), or for root to the server's own root file.
func (s *Server) Authorize(tb testing.TB, a *Account, line string) {
	tb.Helper()
	if err := appendAuthorized(filepath.Join(a.Home, ".ssh"), a.UID, a.GID, line); err != nil {
		tb.Fatal(err)
	}
}

// AuthorizeRoot lets root in with the key of an authorized_keys line
// until the server closes. The host's own /root/.ssh is not touched.
func (s *Server) AuthorizeRoot(tb testing.TB, line string) {
	tb.Helper()
	f, err := os.OpenFile(s.rootKeys, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = fmt.Fprintln(f, strings.TrimSpace(line))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
}

func appendAuthorized(sshDir string, uid, gid int, line string) error {
	if err := os.MkdirAll(sshDir, 0o700); err != nil {
		return err
	}
	ak := filepath.Join(sshDir, "authorized_keys")
	f, err := os.OpenFile(ak, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600) // #nosec G304 -- a throwaway account's home
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, strings.TrimSpace(line))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	for _, p := range []string{sshDir, ak} {
		if err := os.Chown(p, uid, gid); err != nil {
			return err
		}
	}
	return os.Chmod(sshDir, 0o700) // #nosec G302 -- a directory needs x
}

// AllowSudo lets an account run command (an absolute path) as root
// through sudo, asking for its password unless nopasswd, by a drop-in in
// /etc/sudoers.d that visudo has checked. The drop-in goes when tb's test
// ends.
func (s *Server) AllowSudo(tb testing.TB, a *Account, command string, nopasswd bool) {
	tb.Helper()
	if _, err := exec.LookPath("sudo"); err != nil {
		tb.Fatalf("sudo not installed (run test/setup.sh as root): %v", err)
	}
	if !filepath.IsAbs(command) || strings.ContainsAny(command, " \t\n,:=\\") {
		tb.Fatalf("AllowSudo: %q is not a plain absolute path", command)
	}
	tag := ""
	if nopasswd {
		tag = "NOPASSWD: "
	}
	rule := fmt.Sprintf("%s ALL=(root) %s%s\n", a.Name, tag, command)
	if err := os.MkdirAll("/etc/sudoers.d", 0o750); err != nil {
		tb.Fatal(err)
	}
	// sudo skips drop-ins whose names hold a dot or end in '~'.
	tmp := filepath.Join(s.dir, "sudoers-"+a.Name)
	if err := os.WriteFile(tmp, []byte(rule), 0o440); err != nil { // #nosec G306 -- the mode sudo expects of a drop-in, read-only
		tb.Fatal(err)
	}
	if _, err := RunTool(nil, "visudo", "-c", "-q", "-f", tmp); err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join("/etc/sudoers.d", "sshdtest_"+a.Name)
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
	s.mu.Lock()
	s.sudoers[path] = true
	s.mu.Unlock()
	tb.Cleanup(func() {
		if err := s.removeSudoers(path); err != nil {
			tb.Error(err)
		}
	})
}

func (s *Server) removeSudoers(path string) error {
	s.mu.Lock()
	ok := s.sudoers[path]
	delete(s.sudoers, path)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Log returns sshd's log so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// LogTail returns the last n lines of sshd's log.
func (s *Server) LogTail(n int) string {
	b, _ := os.ReadFile(s.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// hostKey makes a host key of type typ at path and returns its public
// half in wire format.
func hostKey(path, typ string) ([]byte, error) {
	if _, err := RunTool(nil, "ssh-keygen", "-q", "-t", typ, "-N", "", "-C", "sshdtest", "-f", path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path + ".pub") // #nosec G304 -- the file ssh-keygen just wrote
	if err != nil {
		return nil, err
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s.pub: %w", path, err)
	}
	return pk.Marshal(), nil
}

func groupExists(name string) bool {
	_, err := user.LookupGroup(name)
	return err == nil
}

// RunTool runs a short setup command and returns its stdout; the error
// carries the command line and its stderr. stdin carries anything secret.
func RunTool(stdin []byte, name string, args ...string) ([]byte, error) {
	for try := 0; ; try++ {
		out, err := runToolOnce(stdin, name, args...)
		// The shadow tools take a lock on /etc/passwd and give up at once
		// when another test package holds it: wait and try again.
		if err == nil || !strings.Contains(err.Error(), "cannot lock") || try == 100 {
			return out, err
		}
		time.Sleep(time.Duration(50+try*10) * time.Millisecond)
	}
}

func runToolOnce(stdin []byte, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...) // #nosec G204 -- fixed setup tools; secrets go through stdin
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitPort waits until 127.0.0.1:port accepts connections, the process
// behind done exits, or the bound runs out.
func WaitPort(port int, bound time.Duration, done <-chan struct{}) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(bound)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		select {
		case <-done:
			return errors.New("process exited before accepting connections")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no listener after %v: %w", bound, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StopProcess sends SIGTERM to p, which the caller started, waits for done
// (closed once Wait returned), and kills p if it does not stop in time.
func StopProcess(p *os.Process, done <-chan struct{}, grace time.Duration) error {
	select {
	case <-done:
		return nil
	default:
	}
	if err := p.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal pid %d: %w", p.Pid, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	_ = p.Kill()
	<-done
	return fmt.Errorf("pid %d ignored SIGTERM for %v and was killed", p.Pid, grace)
}

const (
	lowerAlnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	upper      = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	lower      = "abcdefghijklmnopqrstuvwxyz"
	digits     = "0123456789"
	// symbols leaves out ':' (chpasswd's separator), quotes, '\' and space
	// so a password can be pasted anywhere when a test fails.
	symbols = "!#%&()*+,-./;<=>?@[]^_{|}~"
)

// RandomPassword returns 24 random characters with upper and lower case
// letters, digits and symbols, which pam_unix's "obscure" checks accept
// as a new password.
func RandomPassword() []byte {
	all := upper + lower + digits + symbols
	b := make([]byte, 24)
	for i := range b {
		b[i] = all[randIntn(len(all))]
	}
	for i, set := range []string{upper, lower, digits, symbols} {
		b[i*5] = set[randIntn(len(set))]
	}
	return b
}

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
