package ssh

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/internal/wipe"
	"github.com/sallyport/sallyport/workitem"
)

// userError is a failure with a message fit for the user; the wrapped error
// holds the detail for the log.
type userError struct {
	msg string
	err error
}

func (e *userError) Error() string { return e.msg + ": " + e.err.Error() }
func (e *userError) Unwrap() error { return e.err }

var errHostKeyMismatch = errors.New("target host key does not match the pinned key")

// errCredentialRejected marks a target login that failed because the
// target refused the injected credential.
var errCredentialRejected = errors.New("the target refused the credential")

// refused reports whether a handshake error is the server refusing every
// authentication method offered.
func refused(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "unable to authenticate") || strings.Contains(msg, "Too many authentication failures")
}

// targetConn is the proxy's logged-in connection to a target. The caller
// must drain chans (channels the target tries to open) and reqs (its global
// requests); they close when the connection ends.
type targetConn struct {
	gossh.Conn
	chans <-chan gossh.NewChannel
	reqs  <-chan *gossh.Request
}

// dialTarget connects to the credential's target, verifies its host key
// against the pin (or pins it on first use), and logs in with the injected
// credential.
func (c *conn) dialTarget(ctx context.Context, cred *workitem.Credential) (*targetConn, error) {
	cfg := &c.srv.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if cred.Protocol != "" && cred.Protocol != workitem.ProtocolSSH {
		return nil, &userError{fmt.Sprintf("%s is an RDP target: ask for a token with ssh %s@rdp:%s@GATEWAY", c.secret, c.id.User, c.secret),
			errors.New("not an SSH target")}
	}
	addr := net.JoinHostPort(cred.Host, strconv.Itoa(cred.Port))

	hostKeyAlgos, err := hostKeyAlgorithms(cred.HostKey)
	if err != nil {
		return nil, &userError{fmt.Sprintf("the pinned host key of target %s is unusable", c.secret), err}
	}
	var auth []gossh.AuthMethod
	switch {
	case len(cred.PrivateKey) > 0:
		raw, err := gossh.ParseRawPrivateKey(cred.PrivateKey)
		if err != nil {
			return nil, &userError{fmt.Sprintf("the stored key for target %s is unusable", c.secret), errors.New("parse private key failed")}
		}
		// The parsed key is ours to wipe once the login is over.
		defer wipe.Key(raw)
		signer, err := gossh.NewSignerFromKey(raw)
		if err != nil {
			return nil, &userError{fmt.Sprintf("the stored key for target %s is unusable", c.secret), errors.New("unsupported private key")}
		}
		auth = append(auth, gossh.PublicKeys(signer))
	case len(cred.Password) > 0:
		// x/crypto/ssh takes passwords as strings. A string(pw) conversion
		// would make a copy nobody can wipe; this view shares pw's bytes,
		// which the caller wipes once the login is over (x/crypto keeps no
		// reference to it after the handshake).
		pw := wipe.BorrowString(cred.Password)
		auth = append(auth,
			gossh.PasswordCallback(func() (string, error) { return pw, nil }),
			gossh.KeyboardInteractive(func(_, _ string, qs []string, echo []bool) ([]string, error) {
				// Answer a lone hidden prompt (PAM's "Password:") and nothing else.
				if len(qs) == 0 {
					return nil, nil
				}
				if len(qs) != 1 || echo[0] {
					return nil, errors.New("unexpected keyboard-interactive prompt from target")
				}
				return []string{pw}, nil
			}))
	default:
		return nil, &userError{fmt.Sprintf("no credential stored for target %s", c.secret), errors.New("empty credential")}
	}

	d := net.Dialer{}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &userError{fmt.Sprintf("target %s is unreachable", c.secret), err}
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()

	ccfg := &gossh.ClientConfig{
		Config: gossh.Config{
			Ciphers:      []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM, gossh.CipherChaCha20Poly1305},
			KeyExchanges: modernKex,
			MACs:         []string{gossh.HMACSHA256ETM, gossh.HMACSHA512ETM},
		},
		User:              cred.Username,
		Auth:              auth,
		HostKeyAlgorithms: hostKeyAlgos,
		HostKeyCallback:   c.checkHostKey(ctx, cred),
		ClientVersion:     "SSH-2.0-Sallyport",
	}
	sc, chans, reqs, err := gossh.NewClientConn(nc, addr, ccfg)
	if err != nil {
		_ = nc.Close()
		switch {
		case errors.Is(err, errHostKeyMismatch):
			return nil, &userError{fmt.Sprintf("the host key of target %s does not match the pinned key; refusing to connect. An administrator must check the target and its pinned key", c.secret), err}
		case timedOut(ctx, err):
			// The deadline on nc and ctx's timer fire at the same instant;
			// whichever the handshake saw first, it is the same timeout.
			return nil, &userError{fmt.Sprintf("target %s did not answer in time", c.secret), err}
		}
		if refused(err) {
			err = fmt.Errorf("%w: %w", errCredentialRejected, err)
		}
		return nil, &userError{fmt.Sprintf("could not log in to target %s", c.secret), err}
	}
	_ = nc.SetDeadline(timeZero)
	return &targetConn{Conn: sc, chans: chans, reqs: reqs}, nil
}

// timedOut reports whether a failed handshake ran out of time: the dial
// context's deadline passed, or a read or write hit the deadline set from
// it. A peer that closes or resets the connection is not a timeout.
func timedOut(ctx context.Context, err error) bool {
	var ne net.Error
	return errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

// modernHostKeyAlgos are the host key algorithms accepted from targets.
var modernHostKeyAlgos = []string{
	gossh.KeyAlgoED25519, gossh.KeyAlgoECDSA256, gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521,
	gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256,
}

// hostKeyAlgorithms puts the algorithms of the pinned key first, so that a
// target with several host keys shows the one we pinned (the client's order
// decides), and keeps the others after them, so that a target whose key
// changed to another type shows that key and is refused as a mismatch —
// reported and audited as one — rather than failing to agree on an
// algorithm, which would look like any failed login. No pin (first use):
// any modern algorithm.
func hostKeyAlgorithms(pinned []byte) ([]string, error) {
	if len(pinned) == 0 {
		return modernHostKeyAlgos, nil
	}
	pub, err := gossh.ParsePublicKey(pinned)
	if err != nil {
		return nil, fmt.Errorf("parse pinned host key: %w", err)
	}
	first := []string{pub.Type()}
	if pub.Type() == gossh.KeyAlgoRSA {
		first = []string{gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256}
	}
	algos := slices.Clone(first)
	for _, a := range modernHostKeyAlgos {
		if !slices.Contains(first, a) {
			algos = append(algos, a)
		}
	}
	return algos, nil
}

// checkHostKey verifies the target's host key before any credential is sent.
func (c *conn) checkHostKey(ctx context.Context, cred *workitem.Credential) gossh.HostKeyCallback {
	return func(_ string, _ net.Addr, key gossh.PublicKey) error {
		got := key.Marshal()
		log := c.log().With("user", c.id.User, "secret", c.secret, "host_key", gossh.FingerprintSHA256(key))
		if len(cred.HostKey) > 0 {
			if subtle.ConstantTimeCompare(got, cred.HostKey) == 1 {
				return nil
			}
			want := "unparseable"
			if pk, err := gossh.ParsePublicKey(cred.HostKey); err == nil {
				want = gossh.FingerprintSHA256(pk)
			}
			log.Error("target host key mismatch: refusing to connect", "pinned_key", want)
			c.srv.cfg.Audit.Record(ctx, audit.Event{Kind: "hostkey_mismatch", Outcome: "denied", User: c.id.User, Source: c.src.String(), Secret: c.secret})
			return errHostKeyMismatch
		}
		if !cred.PinOnFirstUse {
			return fmt.Errorf("%w: no key pinned", errHostKeyMismatch)
		}
		if err := c.srv.cfg.Credentials.PinHostKey(ctx, c.id, c.src, c.secret, got); err != nil {
			log.Error("pinning target host key on first use failed", "err", err)
			return fmt.Errorf("%w: %v", errHostKeyMismatch, err)
		}
		log.Warn("target host key pinned on first use")
		return nil
	}
}
