// Package sshtarget logs in to SSH targets and changes their credentials:
// the target side of heartbeat workers (does a stored credential still
// log in?) and password-change workers (rotate it, never lose it).
//
// Every connection checks the target's host key against a pin before any
// credential leaves, and every operation is bounded in time (Login.Timeout)
// and in how much of the target's output it reads. Credentials reach the
// target only through the SSH authentication itself or a command's stdin,
// never a command line: the commands run on targets are fixed strings.
// Passwords and keys never appear in an error.
//
// A change either succeeds, fails with the old credential still in place,
// or fails with ErrUnconfirmed when the new credential was handed to the
// target but no answer came back: then the caller must find out which of
// the two works (Check) before it forgets either.
package sshtarget

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/internal/wipe"
)

// DefaultTimeout bounds an operation whose Login has no Timeout.
const DefaultTimeout = 20 * time.Second

// Login is how to reach and log in to one account on one target.
type Login struct {
	Host string
	Port int // 0 means 22
	User string
	// Password and PrivateKey are the credential: exactly one of them is
	// set. PrivateKey is an unencrypted PEM or OpenSSH private key. The
	// caller owns both and wipes them when done; this package wipes only
	// the copies it makes.
	Password   []byte
	PrivateKey []byte
	// HostKey is the target's pinned host key in SSH wire format
	// (ssh.PublicKey.Marshal()). It is required: there is no connecting
	// unpinned here.
	HostKey []byte
	// Timeout bounds each operation as a whole (Check, ChangeSelf, ...),
	// connecting and logging in included; 0 means DefaultTimeout.
	Timeout time.Duration
}

// String describes l without its credential.
func (l Login) String() string {
	kind := "no credential"
	switch {
	case len(l.Password) > 0 && len(l.PrivateKey) > 0:
		kind = "password and key"
	case len(l.Password) > 0:
		kind = "password"
	case len(l.PrivateKey) > 0:
		kind = "key"
	}
	return "sshtarget.Login{" + l.User + "@" + l.addr() + " " + kind + " [REDACTED]}"
}

// GoString keeps the credential out of %#v.
func (l Login) GoString() string { return l.String() }

// LogValue keeps the credential out of slog records.
func (l Login) LogValue() slog.Value { return slog.StringValue(l.String()) }

// MarshalJSON keeps the credential out of JSON; no protocol carries a Login.
func (l Login) MarshalJSON() ([]byte, error) { return json.Marshal(l.String()) }

func (l Login) addr() string {
	port := l.Port
	if port == 0 {
		port = 22
	}
	return net.JoinHostPort(l.Host, strconv.Itoa(port))
}

func (l Login) timeout() time.Duration {
	if l.Timeout <= 0 {
		return DefaultTimeout
	}
	return l.Timeout
}

// withTimeout bounds ctx by l's Timeout.
func (l Login) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, l.timeout())
}

// validate checks what can be checked without the network.
func (l Login) validate() error {
	switch {
	case l.Host == "":
		return fmt.Errorf("%w: no host", ErrInvalid)
	case l.Port < 0 || l.Port > 65535:
		return fmt.Errorf("%w: port %d", ErrInvalid, l.Port)
	case l.User == "":
		return fmt.Errorf("%w: no user", ErrInvalid)
	case len(l.Password) > 0 && len(l.PrivateKey) > 0:
		return fmt.Errorf("%w: both a password and a private key", ErrInvalid)
	case len(l.Password) == 0 && len(l.PrivateKey) == 0:
		return fmt.Errorf("%w: no credential", ErrInvalid)
	case len(l.HostKey) == 0:
		return fmt.Errorf("%w: no pinned host key", ErrInvalid)
	}
	return nil
}

// Outcome is what a login attempt came to, for heartbeats and audit.
type Outcome string

// The outcomes of a login attempt.
const (
	OK             Outcome = "ok"
	Rejected       Outcome = "rejected"         // the target refused the credential
	Unreachable    Outcome = "unreachable"      // connecting failed, timed out, or the target said nothing
	HostKeyChanged Outcome = "host_key_changed" // the target's host key is not the pinned one
	// Unconfirmed: a change was handed to the target and no answer came
	// back; the old or the new credential may be the one in force.
	Unconfirmed Outcome = "unconfirmed"
	Failed      Outcome = "failed" // anything else: an invalid request, a protocol error, a command that failed
)

// Errors that callers branch on; Classify maps them to outcomes.
var (
	ErrRejected       = errors.New("credential rejected by target")
	ErrUnreachable    = errors.New("target unreachable")
	ErrHostKeyChanged = errors.New("target host key does not match the pinned key")
	ErrUnconfirmed    = errors.New("change not confirmed by target")
	ErrInvalid        = errors.New("invalid request")
)

// Classify maps an error from this package to an Outcome; nil is OK.
func Classify(err error) Outcome {
	switch {
	case err == nil:
		return OK
	case errors.Is(err, ErrUnconfirmed):
		return Unconfirmed
	case errors.Is(err, ErrHostKeyChanged):
		return HostKeyChanged
	case errors.Is(err, ErrRejected):
		return Rejected
	case errors.Is(err, ErrUnreachable):
		return Unreachable
	}
	return Failed
}

// Check is one heartbeat: log in and log out. The error, nil for OK, is a
// short detail for the log; it never holds the credential.
func Check(ctx context.Context, l Login) (Outcome, error) {
	c, err := Dial(ctx, l)
	if err != nil {
		return Classify(err), err
	}
	_ = c.Close()
	return OK, nil
}

// Dial connects to the target, checks its host key against the pin before
// any credential is sent, and logs in. Errors wrap ErrRejected,
// ErrUnreachable, ErrHostKeyChanged or ErrInvalid (see Classify). The
// Timeout bounds the connection and login; the client returned is the
// caller's to close.
func Dial(ctx context.Context, l Login) (*ssh.Client, error) {
	ctx, cancel := l.withTimeout(ctx)
	defer cancel()
	return dial(ctx, l)
}

// errPrompt is a keyboard-interactive round that is not a lone password prompt.
var errPrompt = errors.New("unexpected keyboard-interactive prompt")

// dial is Dial within ctx's deadline.
func dial(ctx context.Context, l Login) (*ssh.Client, error) {
	if err := l.validate(); err != nil {
		return nil, err
	}
	pinned, err := ssh.ParsePublicKey(l.HostKey)
	if err != nil {
		return nil, fmt.Errorf("%w: pinned host key unusable: %v", ErrInvalid, err)
	}
	var auth []ssh.AuthMethod
	if len(l.PrivateKey) > 0 {
		signer, wipe, err := parseKey(l.PrivateKey)
		if err != nil {
			return nil, err
		}
		// The signer is needed only for the login.
		defer wipe()
		auth = []ssh.AuthMethod{ssh.PublicKeys(signer)}
	} else {
		auth = passwordAuth(l.Password)
	}

	addr := l.addr()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: connect %s: %w", ErrUnreachable, addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })

	var hostKeySeen atomic.Bool
	cfg := &ssh.ClientConfig{
		Config: ssh.Config{
			KeyExchanges: modernKex,
			Ciphers:      []string{ssh.CipherAES128GCM, ssh.CipherAES256GCM, ssh.CipherChaCha20Poly1305},
			MACs:         []string{ssh.HMACSHA256ETM, ssh.HMACSHA512ETM},
		},
		User:              l.User,
		Auth:              auth,
		HostKeyAlgorithms: hostKeyAlgorithms(pinned),
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			hostKeySeen.Store(true)
			if subtle.ConstantTimeCompare(key.Marshal(), l.HostKey) == 1 {
				return nil
			}
			return fmt.Errorf("%w: %s offered %s %s, pinned %s %s", ErrHostKeyChanged, addr,
				key.Type(), ssh.FingerprintSHA256(key), pinned.Type(), ssh.FingerprintSHA256(pinned))
		},
		ClientVersion: "SSH-2.0-Sallyport",
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	stopped := stop()
	if err != nil {
		_ = nc.Close()
		return nil, loginError(ctx, addr, l.User, hostKeySeen.Load(), err)
	}
	if !stopped {
		// ctx ended just as the login finished, and nc is closed.
		_ = sc.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, addr, ctx.Err())
	}
	_ = nc.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

// loginError says why a handshake failed, wrapping the sentinel that
// Classify maps to an outcome.
func loginError(ctx context.Context, addr, user string, hostKeySeen bool, err error) error {
	switch {
	case errors.Is(err, ErrHostKeyChanged):
		return err
	case errors.Is(err, errPrompt):
		return fmt.Errorf("%w: log in to %s as %s: %w", ErrRejected, addr, user, err)
	case hostKeySeen && authRefused(err):
		return fmt.Errorf("%w: log in to %s as %s: %w", ErrRejected, addr, user, err)
	case timedOut(ctx, err):
		return fmt.Errorf("%w: %s did not answer in time: %w", ErrUnreachable, addr, err)
	case !hostKeySeen:
		// Closed, reset or not speaking SSH before showing a host key:
		// the target is not there for us.
		return fmt.Errorf("%w: SSH handshake with %s: %w", ErrUnreachable, addr, err)
	}
	return fmt.Errorf("log in to %s as %s: %w", addr, user, err)
}

// authRefused reports whether x/crypto/ssh gave up because the server
// refused every method tried, or disconnected after too many tries. It
// has no error type for this: the message is all there is.
func authRefused(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "unable to authenticate") || strings.Contains(msg, "Too many authentication failures")
}

// timedOut reports whether a failed handshake ran out of time: ctx's
// deadline passed, or a read or write hit the deadline set from it.
func timedOut(ctx context.Context, err error) bool {
	var ne net.Error
	return errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

// passwordAuth offers pw by the password method and, for targets that
// take passwords through PAM's prompts only, by keyboard-interactive,
// answering a single hidden prompt once and nothing else.
func passwordAuth(pw []byte) []ssh.AuthMethod {
	// x/crypto/ssh takes passwords as strings. string(pw) would make a copy
	// nobody can wipe; this view shares pw's bytes, which the caller owns
	// (x/crypto reads it only during the login).
	s := wipe.BorrowString(pw)
	var answered atomic.Bool
	return []ssh.AuthMethod{
		ssh.PasswordCallback(func() (string, error) { return s, nil }),
		ssh.KeyboardInteractive(func(_, _ string, qs []string, echo []bool) ([]string, error) {
			if len(qs) == 0 {
				return nil, nil // an information-only round
			}
			if len(qs) != 1 || echo[0] {
				return nil, fmt.Errorf("%w: %d questions", errPrompt, len(qs))
			}
			if answered.Swap(true) {
				// A second hidden prompt is a second factor or a retry: the
				// password is not sent twice.
				return nil, fmt.Errorf("%w: asked again", errPrompt)
			}
			return []string{s}, nil
		}),
	}
}

// modernKex are the key exchanges offered to targets.
var modernKex = []string{
	ssh.KeyExchangeMLKEM768X25519,
	ssh.KeyExchangeCurve25519,
	ssh.KeyExchangeECDHP256,
	ssh.KeyExchangeECDHP384,
	ssh.KeyExchangeECDHP521,
}

// modernHostKeyAlgos are the host key algorithms accepted from targets.
var modernHostKeyAlgos = []string{
	ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

// hostKeyAlgorithms puts the pinned key's algorithms first, so that a
// target with several host keys shows the one we pinned (the client's
// order decides), and keeps the others after them, so that a target whose
// key changed to another type shows that key and is reported as a changed
// host key rather than failing to agree on an algorithm.
func hostKeyAlgorithms(pinned ssh.PublicKey) []string {
	first := []string{pinned.Type()}
	if pinned.Type() == ssh.KeyAlgoRSA {
		first = []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	algos := slices.Clone(first)
	for _, a := range modernHostKeyAlgos {
		if !slices.Contains(first, a) {
			algos = append(algos, a)
		}
	}
	return algos
}
