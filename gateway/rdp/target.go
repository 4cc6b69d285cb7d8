package rdp

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/gateway/rdp/credssp"
	"github.com/sallyport/sallyport/gateway/rdp/ntlm"
	"github.com/sallyport/sallyport/gateway/rdp/pdu"
	"github.com/sallyport/sallyport/workitem"
)

// targetProtocols is what the gateway offers targets: TLS, with NLA
// preferred by the target if it has it. Never Standard RDP Security.
const targetProtocols = pdu.ProtocolSSL | pdu.ProtocolHybrid | pdu.ProtocolHybridEx

// maxConnectionConfirm bounds the target's X.224 Connection Confirm.
const maxConnectionConfirm = 1024

// Errors of a target login, for Check's callers (heartbeats) too.
var (
	// ErrCertificateMismatch: the target's certificate is not the pinned
	// one (or none is pinned).
	ErrCertificateMismatch = errors.New("target certificate does not match the pinned SHA-256")
	// ErrRejected: the target refused the credential.
	ErrRejected = errors.New("credential rejected")
	// ErrUnreachable: no connection, or no answer in time.
	ErrUnreachable = errors.New("target unreachable")
	// ErrUnverifiable: the target (TLS only, no NLA) was reached and its
	// certificate matched, but it checks passwords only in a session.
	ErrUnverifiable = errors.New("the target does not use NLA: its password can be checked only by a session")
)

// targetError is a target failure with a short reason for the audit log.
type targetError struct {
	reason string
	err    error
}

func (e *targetError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *targetError) Unwrap() error { return e.err }

// targetConn is the gateway's logged-in TLS connection to a target.
type targetConn struct {
	*tls.Conn
	// selected is the protocol the target chose (SSL, HYBRID or
	// HYBRID_EX); flags its RDP_NEG_RSP flags.
	selected uint32
	flags    uint8
}

// dialTarget connects to the credential's target, negotiates TLS (and
// NLA if the target wants it), checks the target's certificate against
// the pin (or pins it on first use) before anything else is sent, and for
// NLA logs in with the credential. For a TLS-only target the credential
// goes in the Client Info PDU later.
func (c *conn) dialTarget(ctx context.Context, cred *workitem.Credential) (*targetConn, error) {
	cfg := &c.srv.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	return dial(ctx, cred, cfg.Rand, cfg.Now, func(sum []byte) error {
		if len(cred.HostKey) == 0 {
			if !cred.PinOnFirstUse {
				return fmt.Errorf("%w: no certificate pinned", ErrCertificateMismatch)
			}
			if err := cfg.Credentials.PinHostKey(ctx, c.id, c.src, c.secret, sum); err != nil {
				return &targetError{"pinning the target certificate failed", err}
			}
			c.log().Warn("target certificate pinned on first use", "user", c.id.User, "secret", c.secret,
				"certificate_sha256", hex.EncodeToString(sum))
			return nil
		}
		if subtle.ConstantTimeCompare(sum, cred.HostKey) == 1 {
			return nil
		}
		c.log().Error("target certificate mismatch: refusing to connect", "user", c.id.User, "secret", c.secret,
			"certificate_sha256", hex.EncodeToString(sum), "pinned_sha256", hex.EncodeToString(cred.HostKey))
		cfg.Audit.Record(ctx, audit.Event{Kind: "hostkey_mismatch", Outcome: "denied", User: c.id.User, Source: c.src.String(), Secret: c.secret,
			Attrs: []slog.Attr{slog.String("protocol", "rdp")}})
		return ErrCertificateMismatch
	})
}

// Check logs in to the RDP target of cred as a heartbeat does, and ends
// the connection: it is reached, its certificate must match the pin, and
// for an NLA target the password is proved with CredSSP. A TLS-only
// target cannot check a password without a whole session: Check returns
// ErrUnverifiable once the rest has been checked.
func Check(ctx context.Context, cred *workitem.Credential) error {
	t, err := dial(ctx, cred, rand.Reader, time.Now, func(sum []byte) error {
		if len(cred.HostKey) == 0 || subtle.ConstantTimeCompare(sum, cred.HostKey) != 1 {
			return ErrCertificateMismatch
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer t.Close()
	if t.selected == pdu.ProtocolSSL {
		return ErrUnverifiable
	}
	return nil
}

// dial connects to the target of cred, negotiates, starts TLS, has verify
// check the SHA-256 of the target's certificate before anything else is
// sent, and for an NLA target logs in. ctx bounds all of it.
func dial(ctx context.Context, cred *workitem.Credential, rnd io.Reader, now func() time.Time, verify func(sum []byte) error) (*targetConn, error) {
	if len(cred.Password) == 0 {
		return nil, &targetError{"no password stored", errors.New("an RDP target needs a password")}
	}
	addr := net.JoinHostPort(cred.Host, strconv.Itoa(cred.Port))
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &targetError{"target unreachable", fmt.Errorf("%w: %w", ErrUnreachable, err)}
	}
	ok := false
	defer func() {
		if !ok {
			_ = nc.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	timeout := func(reason string, err error) error {
		if timedOut(ctx, err) {
			return &targetError{"target did not answer in time", fmt.Errorf("%w: %w", ErrUnreachable, err)}
		}
		return &targetError{reason, err}
	}

	user, domain := splitAccount(cred.Username)
	cr := pdu.ConnectionRequest{HasNegotiation: true, RequestedProtocols: targetProtocols}
	if cookieSafe(user) {
		cr.Cookie = user
	}
	out, err := cr.Encode()
	if err != nil {
		return nil, &targetError{"negotiation failed", err}
	}
	if _, err := nc.Write(out); err != nil {
		return nil, timeout("target unreachable", fmt.Errorf("%w: %w", ErrUnreachable, err))
	}
	frame, err := pdu.ReadTPKT(nc, maxConnectionConfirm)
	if err != nil {
		return nil, timeout("negotiation failed", err)
	}
	cc, err := pdu.ParseConnectionConfirm(frame)
	if err != nil {
		return nil, &targetError{"negotiation failed", err}
	}
	switch {
	case cc.Type == pdu.NegFailure:
		return nil, &targetError{"negotiation failed", fmt.Errorf("target refused: %s", pdu.FailureString(cc.FailureCode))}
	case cc.Type != pdu.NegResponse:
		return nil, &targetError{"negotiation failed", errors.New("target offers only Standard RDP Security")}
	}
	switch cc.SelectedProtocol {
	case pdu.ProtocolSSL, pdu.ProtocolHybrid, pdu.ProtocolHybridEx:
	default:
		return nil, &targetError{"negotiation failed", fmt.Errorf("target selected %s", pdu.ProtocolString(cc.SelectedProtocol))}
	}

	tc := tls.Client(nc, &tls.Config{
		// The certificate is checked against the pin, not a CA: RDP
		// targets mostly have self-signed certificates.
		InsecureSkipVerify: true, // #nosec G402 -- verify checks the certificate's SHA-256 before anything is sent
		MinVersion:         tls.VersionTLS12,
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, timeout("target TLS failed", err)
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, &targetError{"target TLS failed", errors.New("no certificate")}
	}
	sum := sha256.Sum256(certs[0].Raw)
	if err := verify(sum[:]); err != nil {
		var te *targetError
		if errors.As(err, &te) {
			return nil, err
		}
		return nil, &targetError{"target certificate mismatch", err}
	}
	if cc.SelectedProtocol != pdu.ProtocolSSL {
		if err := targetNLA(tc, user, domain, cred.Password, cc.SelectedProtocol, rnd, now); err != nil {
			if timedOut(ctx, err) {
				return nil, &targetError{"target did not answer in time", fmt.Errorf("%w: %w", ErrUnreachable, err)}
			}
			return nil, err
		}
	}
	_ = nc.SetDeadline(timeZero)
	ok = true
	return &targetConn{Conn: tc, selected: cc.SelectedProtocol, flags: cc.Flags}, nil
}

// targetNLA logs in to the target with CredSSP (NTLMv2), and for
// HYBRID_EX reads the Early User Authorization Result.
func targetNLA(tc *tls.Conn, user, domain string, password []byte, selected uint32, rnd io.Reader, now func() time.Time) error {
	pub, err := credssp.SubjectPublicKey(tc.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	if err != nil {
		return &targetError{"target certificate unusable", err}
	}
	client, err := ntlm.NewClient(user, domain, password, rnd, now)
	if err != nil {
		return &targetError{"target login failed", err}
	}
	creds := credssp.PasswordCreds{Domain: credssp.EncodeUTF16(domain), User: credssp.EncodeUTF16(user), Password: credssp.UTF16FromUTF8(password)}
	defer creds.Wipe()
	if err := credssp.Authenticate(tc, pub, client, creds); err != nil {
		if errors.Is(err, credssp.ErrLogonFailure) {
			return &targetError{"target refused the credential", fmt.Errorf("%w: %w", ErrRejected, err)}
		}
		return &targetError{"target login failed", err}
	}
	if selected == pdu.ProtocolHybridEx {
		var res [4]byte
		if _, err := io.ReadFull(tc, res[:]); err != nil {
			return &targetError{"target login failed", fmt.Errorf("early user authorization result: %w", err)}
		}
		if v := binary.LittleEndian.Uint32(res[:]); v != authzSuccess {
			return &targetError{"target refused the credential", fmt.Errorf("%w: early user authorization result 0x%x", ErrRejected, v)}
		}
	}
	return nil
}

// cookieSafe reports whether s can go in the X.224 cookie
// (mstshash=...): printable ASCII without spaces.
func cookieSafe(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// timedOut reports whether a failure ran out of time.
func timedOut(ctx context.Context, err error) bool {
	var ne net.Error
	return errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}
