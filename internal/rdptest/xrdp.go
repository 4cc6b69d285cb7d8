package rdptest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// Xrdp is a running xrdp: an RDP server with TLS security
// (security_layer=tls, a throwaway self-signed certificate) that logs the
// client's credentials in through xrdp-sesman and PAM (autologon) and
// starts an Xorg session (xorgxrdp) running a stand-in window manager.
// Only accounts made by AddAccount may log in. A session stays up for the
// account's SessionLength and then ends, and xrdp logs the client off
// (xfreerdp exits 12). A refused password leaves the client at xrdp's own
// login screen: the client does not exit, xrdp logs "login failed for
// user NAME" (LoginFailures).
//
// xrdp finds xrdp-sesman at the port /etc/xrdp/sesman.ini gives (3350
// unless changed there), whatever configuration sesman itself was started
// with, so the port cannot be chosen per test: the Xrdp servers of a test
// process share one xrdp-sesman, started by the first StartXrdp and
// stopped when the last Xrdp closes, and test processes take turns by a
// lock file (/run/rdptest-sesman.lock). A second test package that needs
// xrdp at the same time waits for the first to close its servers.
type Xrdp struct {
	Port int

	dir      string
	log      string
	console  string // xrdp's stdout and stderr
	security string
	cert     [32]byte
	sm       *sesman
	p        *process

	mu       sync.Mutex
	accounts map[string]bool // created and not yet removed
}

// XrdpOption changes how StartXrdp configures xrdp.
type XrdpOption func(*Xrdp)

// XrdpSecurityLayer sets xrdp.ini's security_layer: "tls" (the default),
// "negotiate" or "rdp" (Standard RDP Security only).
func XrdpSecurityLayer(layer string) XrdpOption {
	return func(x *Xrdp) { x.security = layer }
}

// StartXrdp starts xrdp on a free loopback port, and xrdp-sesman if this
// process has none running, with configuration files, certificate and
// logs in a temporary directory, and waits until xrdp accepts
// connections.
func StartXrdp(opts ...XrdpOption) (_ *Xrdp, err error) {
	if err := needRoot("xrdp-sesman starts sessions as other users"); err != nil {
		return nil, err
	}
	if err := needTools("xrdp", "xrdp-sesman", "useradd", "userdel", "groupadd", "groupdel", "chpasswd"); err != nil {
		return nil, err
	}
	if _, err := os.Stat(xorgxrdpDriver); err != nil {
		return nil, fmt.Errorf("xorgxrdp not installed (run test/setup.sh as root): %w", err)
	}
	x := &Xrdp{security: "tls", accounts: map[string]bool{}}
	for _, o := range opts {
		o(x)
	}
	switch x.security {
	case "tls", "negotiate", "rdp":
	default:
		return nil, fmt.Errorf("xrdp security_layer %q: want tls, negotiate or rdp", x.security)
	}
	if x.dir, err = os.MkdirTemp("", "rdptest-xrdp-"); err != nil {
		return nil, err
	}
	x.log = filepath.Join(x.dir, "xrdp.log")
	x.console = filepath.Join(x.dir, "xrdp.console")
	defer func() {
		if err != nil {
			_ = x.Close()
		}
	}()
	if x.sm, err = acquireSesman(); err != nil {
		return nil, err
	}
	certFile, keyFile := filepath.Join(x.dir, "cert.pem"), filepath.Join(x.dir, "key.pem")
	if x.cert, err = writeSelfSigned(certFile, keyFile); err != nil {
		return nil, err
	}
	if x.Port, err = sshdtest.FreePort(); err != nil {
		return nil, err
	}
	ini := filepath.Join(x.dir, "xrdp.ini")
	if err := os.WriteFile(ini, []byte(x.config(certFile, keyFile)), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command("xrdp", "-n", "-c", ini) // #nosec G204 -- a fixed program with the harness's own configuration
	cmd.Env = []string{path}
	if x.p, err = start(cmd, x.console); err != nil {
		return nil, err
	}
	// Its log says when it listens; a probe connection would leave errors
	// there.
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := waitLog(ctx, x.log, 1, contains("listening to port "+strconv.Itoa(x.Port)+" on 127.0.0.1"), x.p.done, "xrdp to listen"); err != nil {
		return nil, fmt.Errorf("xrdp on port %d: %w\n%s", x.Port, err, logTail(x.console, 10))
	}
	return x, nil
}

// xorgxrdpDriver is the Xorg driver xorgxrdp installs.
const xorgxrdpDriver = "/usr/lib/xorg/modules/drivers/xrdpdev_drv.so"

// config is xrdp.ini: TLS with the harness's certificate, autologon with
// the client's credentials into an Xorg session, no virtual channels.
func (x *Xrdp) config(certFile, keyFile string) string {
	return fmt.Sprintf(`[Globals]
ini_version=1
fork=false
port=tcp://127.0.0.1:%d
tcp_nodelay=true
security_layer=%s
crypt_level=high
certificate=%s
key_file=%s
ssl_protocols=TLSv1.2, TLSv1.3
autorun=Xorg
allow_channels=true
max_bpp=32
new_cursors=true
use_fastpath=both

[Logging]
LogFile=%s
LogLevel=INFO
EnableSyslog=false
EnableConsole=false

[Channels]
rdpdr=false
rdpsnd=false
drdynvc=false
cliprdr=false
rail=false
xrdpvr=false
tcutils=false

[Xorg]
name=Xorg
lib=libxup.so
username=ask
password=ask
ip=127.0.0.1
port=-1
code=20
`, x.Port, x.security, certFile, keyFile, x.log)
}

// writeSelfSigned writes a throwaway RSA certificate for 127.0.0.1 and
// localhost and its key, and returns the SHA-256 of the certificate's DER.
func writeSelfSigned(certFile, keyFile string) ([32]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return [32]byte{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return [32]byte{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "rdptest xrdp"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return [32]byte{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return [32]byte{}, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return [32]byte{}, err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(der), nil
}

// Addr is xrdp's address, 127.0.0.1:Port.
func (x *Xrdp) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(x.Port)) }

// CertSHA256 is the SHA-256 of the DER of xrdp's certificate.
func (x *Xrdp) CertSHA256() [32]byte { return x.cert }

// LogTail returns the last n lines of xrdp's log.
func (x *Xrdp) LogTail(n int) string { return logTail(x.log, n) }

// SesmanLogTail returns the last n lines of xrdp-sesman's log, which has
// every Xrdp's sessions (PAM results, Xorg and window manager starts).
func (x *Xrdp) SesmanLogTail(n int) string { return logTail(x.sm.log, n) }

// LogContains says whether a line of xrdp's log holds substr.
func (x *Xrdp) LogContains(substr string) bool { return x.LogCount(substr) > 0 }

// LogCount counts the lines of xrdp's log that hold substr.
func (x *Xrdp) LogCount(substr string) int { return logCount(x.log, contains(substr)) }

// WaitLog waits until at least n lines of xrdp's log hold substr, or ctx
// ends, or xrdp exits.
func (x *Xrdp) WaitLog(ctx context.Context, substr string, n int) error {
	return waitLog(ctx, x.log, n, contains(substr), x.p.done, strconv.Quote(substr)+" in the xrdp log")
}

// loginOK matches xrdp's "login successful for user NAME on display N",
// once per login (xrdp logs it twice, once through xrdp_wm_log_msg).
func loginOK(name string) func(string) bool {
	return contains("] login successful for user " + name + " on display ")
}

// loginFailed matches xrdp's "login failed for user NAME", once per
// refused login.
func loginFailed(name string) func(string) bool {
	return suffix("] login failed for user " + name)
}

// Logins counts the logins of account name that sesman accepted.
func (x *Xrdp) Logins(name string) int { return logCount(x.log, loginOK(name)) }

// WaitLogin waits until sesman has accepted n logins of account name.
func (x *Xrdp) WaitLogin(ctx context.Context, name string, n int) error {
	return waitLog(ctx, x.log, n, loginOK(name), x.p.done, "login of "+name)
}

// LoginFailures counts the logins of account name that sesman refused
// (after pam_unix's fail delay, about 2 s).
func (x *Xrdp) LoginFailures(name string) int { return logCount(x.log, loginFailed(name)) }

// WaitLoginFailure waits until sesman has refused n logins of account name.
func (x *Xrdp) WaitLoginFailure(ctx context.Context, name string, n int) error {
	return waitLog(ctx, x.log, n, loginFailed(name), x.p.done, "refused login of "+name)
}

// Sessions counts the sessions account name has started: its window
// manager ran on the session's X server.
func (x *Xrdp) Sessions(name string) int {
	return logCount(x.sm.sessionFile(name), contains("session pid="))
}

// WaitSession waits until account name has started n sessions.
func (x *Xrdp) WaitSession(ctx context.Context, name string, n int) error {
	return waitLog(ctx, x.sm.sessionFile(name), n, contains("session pid="), x.sm.p.done, "a session of "+name)
}

// AccountOption changes how AddAccount makes an account.
type AccountOption func(*accountOptions)

type accountOptions struct{ session time.Duration }

// SessionLength sets how long the account's sessions stay up (whole
// seconds, at least one; 3 s unless set). EndSessions ends them sooner.
func SessionLength(d time.Duration) AccountOption {
	return func(o *accountOptions) { o.session = d }
}

// AddAccount creates a throwaway Unix account that may log in through
// xrdp, with a random name and a random password (set through chpasswd's
// stdin), and removes it, with its home, when tb's test ends or x closes;
// its sessions are ended first. It fails tb on error.
func (x *Xrdp) AddAccount(tb testing.TB, opts ...AccountOption) *sshdtest.Account {
	tb.Helper()
	o := accountOptions{session: 3 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	secs := max(1, int((o.session+time.Second-1)/time.Second))
	name := randomName("sptx")
	if _, err := sshdtest.RunTool(nil, "useradd", "-m", "-s", "/bin/sh", "-G", x.sm.group, name); err != nil {
		tb.Fatal(err)
	}
	x.mu.Lock()
	x.accounts[name] = true
	x.mu.Unlock()
	tb.Cleanup(func() {
		if err := x.removeAccount(name); err != nil {
			tb.Error(err)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		tb.Fatal(err)
	}
	a := &sshdtest.Account{Name: name, Home: u.HomeDir, Password: sshdtest.RandomPassword()}
	if a.UID, err = strconv.Atoi(u.Uid); err != nil {
		tb.Fatal(err)
	}
	if a.GID, err = strconv.Atoi(u.Gid); err != nil {
		tb.Fatal(err)
	}
	// The window manager appends to a file of its own account's, and reads
	// its session length from one of root's.
	f := x.sm.sessionFile(name)
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chown(f, a.UID, a.GID); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(f+".seconds", []byte(strconv.Itoa(secs)+"\n"), 0o644); err != nil { // #nosec G306 -- the account's window manager reads it; it holds a number
		tb.Fatal(err)
	}
	x.SetPassword(tb, name, a.Password)
	return a
}

// SetPassword sets an account's password through chpasswd's stdin.
func (x *Xrdp) SetPassword(tb testing.TB, name string, password []byte) {
	tb.Helper()
	line := make([]byte, 0, len(name)+len(password)+2)
	line = append(append(append(append(line, name...), ':'), password...), '\n')
	defer clear(line)
	if _, err := sshdtest.RunTool(line, "chpasswd"); err != nil {
		tb.Fatal(err)
	}
}

// EndSessions ends the running sessions of account name: it stops each
// session's window manager (by the PID the window manager wrote, if that
// process still runs as the account), sesman then stops the session's X
// server and xrdp logs the client off. It waits until the window
// managers are gone. A session that ends before xrdp reached its channel
// server is noticed by xrdp only when its retries give up, about 16 s
// later (seen), and the client is logged off then.
func (x *Xrdp) EndSessions(name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return err
	}
	return x.sm.endSessions(name, u.Uid)
}

func (x *Xrdp) removeAccount(name string) error {
	x.mu.Lock()
	ok := x.accounts[name]
	delete(x.accounts, name)
	x.mu.Unlock()
	if !ok {
		return nil
	}
	errs := []error{x.EndSessions(name)}
	// -f: sesman may still be tearing a session down.
	if _, err := sshdtest.RunTool(nil, "userdel", "-r", "-f", name); err != nil {
		errs = append(errs, err)
	}
	f := x.sm.sessionFile(name)
	for _, p := range []string{f, f + ".seconds"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close removes the accounts x made (ending their sessions), stops xrdp,
// releases xrdp-sesman (stopping it if no other Xrdp of this process
// uses it) and removes x's directory.
func (x *Xrdp) Close() error {
	var errs []error
	x.mu.Lock()
	var names []string
	for n := range x.accounts {
		names = append(names, n)
	}
	x.mu.Unlock()
	if x.sm != nil {
		for _, n := range names {
			errs = append(errs, x.removeAccount(n))
		}
	}
	if x.p != nil {
		errs = append(errs, x.p.stop(10*time.Second))
	}
	if x.sm != nil {
		errs = append(errs, releaseSesman())
		x.sm = nil
	}
	return errors.Join(append(errs, os.RemoveAll(x.dir))...)
}
