package rdptest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	//lint:ignore SA1019 a SAM file holds the NT hash, MD4 of the password; the format leaves no choice
	"golang.org/x/crypto/md4" // #nosec G506 -- a SAM file holds the NT hash, MD4 of the password; the format leaves no choice

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// Lines freerdp-shadow-cli logs at WLOG_LEVEL=INFO, which Shadow sets.
const (
	// ShadowActivated ends the connection sequence of a client that got
	// in: "Client from 127.0.0.1 is activated (1024x768@32)".
	ShadowActivated = "is activated ("
	// ShadowAuthFailed follows a refused NLA login, after "Message
	// Integrity Check (MIC) verification failed!" (wrong password) or
	// "Could not find user in SAM database" (unknown user).
	ShadowAuthFailed = "client authentication failure"
)

// Shadow is a running freerdp-shadow-cli: an RDP server that requires NLA
// (CredSSP with NTLM) and checks logins against a SAM file holding one
// random user and password. It shares a Display's screen. Clients exit 0
// with +auth-only and the right password and 147 with a wrong one (the
// server drops the connection without a CredSSP error code); the log says
// which happened (ShadowAuthFailed, ShadowActivated).
type Shadow struct {
	Port int
	User string
	// Password is the SAM file's password. SetPassword replaces it; do not
	// read it while SetPassword runs.
	Password []byte
	Display  *Display

	dir  string
	home string // the server's HOME: it keeps its certificate under it
	sam  string
	log  string
	args []string
	cert [32]byte

	mu sync.Mutex // SetPassword
	p  *process
}

// ShadowOption changes how StartShadow runs the server.
type ShadowOption func(*Shadow)

// ShadowArgs adds arguments to freerdp-shadow-cli's command line, after
// the harness's own (/bind-address, /port, /sec:nla, /sam-file,
// -may-interact).
func ShadowArgs(args ...string) ShadowOption {
	return func(s *Shadow) { s.args = append(s.args, args...) }
}

// StartShadow starts freerdp-shadow-cli on d with NLA on a free loopback
// port, a random SAM user and password and its own HOME, and waits until
// it accepts connections. The server makes its certificate
// ($HOME/.config/freerdp/shadow/shadow.crt and shadow.key, self-signed
// RSA) before it listens; CertSHA256 hashes it.
func StartShadow(d *Display, opts ...ShadowOption) (_ *Shadow, err error) {
	if err := needTools("freerdp-shadow-cli", "stdbuf"); err != nil {
		return nil, err
	}
	if d == nil || d.Name == "" {
		return nil, errors.New("StartShadow needs a running Display")
	}
	dir, err := os.MkdirTemp("", "rdptest-shadow-")
	if err != nil {
		return nil, err
	}
	s := &Shadow{
		User:     randomName("sptn"),
		Password: sshdtest.RandomPassword(),
		Display:  d,
		dir:      dir,
		home:     filepath.Join(dir, "home"),
		sam:      filepath.Join(dir, "SAM"),
		log:      filepath.Join(dir, "shadow.log"),
	}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	for _, o := range opts {
		o(s)
	}
	if err := os.Mkdir(s.home, 0o700); err != nil {
		return nil, err
	}
	if err := writeSAM(s.sam, s.User, s.Password); err != nil {
		return nil, err
	}
	if s.Port, err = sshdtest.FreePort(); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	if s.cert, err = s.readCert(); err != nil {
		return nil, err
	}
	return s, nil
}

// start runs the server and waits until it listens. stdbuf makes its output
// line-buffered: WLog's console appender writes INFO lines through stdio,
// which a file would otherwise buffer until exit.
func (s *Shadow) start() error {
	args := append([]string{"-oL", "-eL", "freerdp-shadow-cli",
		"/bind-address:127.0.0.1",
		"/port:" + strconv.Itoa(s.Port),
		"/sec:nla",
		"/sam-file:" + s.sam,
		"-may-interact",
	}, s.args...)
	cmd := exec.Command("stdbuf", args...) // #nosec G204 -- a fixed program; extra arguments come from the test
	cmd.Env = []string{path, "HOME=" + s.home, "DISPLAY=" + s.Display.Name, "WLOG_LEVEL=INFO"}
	p, err := start(cmd, s.log)
	if err != nil {
		return err
	}
	s.p = p
	// Its log says when it listens; a probe connection would leave a
	// transport error there.
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := waitLog(ctx, s.log, 1, suffix("Listening on [127.0.0.1]:"+strconv.Itoa(s.Port)), p.done, "freerdp-shadow-cli to listen"); err != nil {
		return fmt.Errorf("freerdp-shadow-cli on port %d: %w", s.Port, err)
	}
	return nil
}

// CertPath is where the server keeps its certificate (PEM).
func (s *Shadow) CertPath() string {
	return filepath.Join(s.home, ".config", "freerdp", "shadow", "shadow.crt")
}

func (s *Shadow) readCert() ([32]byte, error) {
	b, err := os.ReadFile(s.CertPath())
	if err != nil {
		return [32]byte{}, fmt.Errorf("shadow certificate: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return [32]byte{}, fmt.Errorf("shadow certificate %s: no PEM certificate", s.CertPath())
	}
	return sha256.Sum256(block.Bytes), nil
}

// writeSAM writes a WinPR SAM file with one entry, the line winpr-hash -f
// sam prints ("user:::nthash:::"), computed here so that the password
// goes on no command line. The file is replaced whole (rename), so the
// server never reads half of it.
func writeSAM(file, user string, password []byte) error {
	h := md4.New() // #nosec G406 -- the NT hash is MD4 of the UTF-16LE password
	u := make([]uint16, 0, len(password))
	for b := password; len(b) > 0; {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n <= 1 {
			return errors.New("SAM password: not UTF-8")
		}
		u = utf16.AppendRune(u, r)
		b = b[n:]
	}
	le := make([]byte, 0, 2*len(u))
	for _, c := range u {
		le = binary.LittleEndian.AppendUint16(le, c)
	}
	h.Write(le)
	clear(le)
	clear(u)
	line := user + ":::" + hex.EncodeToString(h.Sum(nil)) + ":::\n"
	tmp := file + ".new"
	if err := os.WriteFile(tmp, []byte(line), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// SetPassword replaces the SAM file's password. The old password stops
// working at once and the new one works: freerdp-shadow-cli reads the SAM
// file again for every NLA login (seen: no restart needed).
func (s *Shadow) SetPassword(password []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := writeSAM(s.sam, s.User, password); err != nil {
		return err
	}
	old := s.Password
	s.Password = append([]byte(nil), password...)
	clear(old)
	return nil
}

// Addr is the server's address, 127.0.0.1:Port.
func (s *Shadow) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// CertSHA256 is the SHA-256 of the DER of the certificate the server
// presents in TLS.
func (s *Shadow) CertSHA256() [32]byte { return s.cert }

// LogTail returns the last n lines of the server's log.
func (s *Shadow) LogTail(n int) string { return logTail(s.log, n) }

// LogContains says whether a line of the server's log holds substr.
func (s *Shadow) LogContains(substr string) bool { return s.LogCount(substr) > 0 }

// LogCount counts the lines of the server's log that hold substr.
func (s *Shadow) LogCount(substr string) int { return logCount(s.log, contains(substr)) }

// WaitLog waits until at least n lines of the server's log hold substr, or
// ctx ends, or the server exits.
func (s *Shadow) WaitLog(ctx context.Context, substr string, n int) error {
	return waitLog(ctx, s.log, n, contains(substr), s.p.done, strconv.Quote(substr)+" in the shadow log")
}

// Sessions counts the clients that completed the connection sequence
// (ShadowActivated lines).
func (s *Shadow) Sessions() int { return s.LogCount(ShadowActivated) }

// WaitSessions waits until n clients in all completed the connection
// sequence: Sessions() before the connection plus one waits for it.
func (s *Shadow) WaitSessions(ctx context.Context, n int) error {
	return s.WaitLog(ctx, ShadowActivated, n)
}

// AuthFailures counts refused NLA logins (ShadowAuthFailed lines).
func (s *Shadow) AuthFailures() int { return s.LogCount(ShadowAuthFailed) }

// Close stops the server and removes its directory (SAM file, HOME with
// the certificate, log).
func (s *Shadow) Close() error {
	var errs []error
	if s.p != nil {
		errs = append(errs, s.p.stop(10*time.Second))
	}
	return errors.Join(append(errs, os.RemoveAll(s.dir))...)
}

// String describes s without its password.
func (s *Shadow) String() string {
	return fmt.Sprintf("rdptest.Shadow{Addr: %q, User: %q, Password: [REDACTED]}", s.Addr(), s.User)
}

// GoString keeps the password out of %#v.
func (s *Shadow) GoString() string { return s.String() }

// LogValue keeps the password out of slog records.
func (s *Shadow) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON keeps the password out of JSON.
func (s *Shadow) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }
