package credssp

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/sallyport/sallyport/gateway/rdp/ntlm"
)

// NTSTATUS codes a server reports in TSRequest.errorCode.
const (
	StatusLogonFailure = 0xC000006D // wrong user name or password
	StatusAccessDenied = 0xC0000022
)

// Errors of the exchanges.
var (
	// ErrLogonFailure: the client's proof did not match (server side), or
	// the server refused the credential (client side).
	ErrLogonFailure = errors.New("credssp: logon failure")
	// ErrBinding: pubKeyAuth did not bind the TLS key, a sign of a
	// man in the middle between the TLS and the CredSSP layers.
	ErrBinding = errors.New("credssp: public key binding does not match")
)

// ServerConfig is what the server side needs.
type ServerConfig struct {
	// PublicKey is the SubjectPublicKey of the TLS certificate the client
	// is talking to (see SubjectPublicKey).
	PublicKey []byte
	// NTLM is a fresh NTLM server for this one exchange.
	NTLM *ntlm.Server
	// Lookup returns the password the client must prove for user and
	// domain (a one-time token for the gateway), or false.
	Lookup func(user, domain string) (password []byte, ok bool)
	// Authorize, when set, is called once the client has proved its
	// password and bound it to the TLS key, and before the server's
	// answer: the last point at which the client can still be told that
	// it is refused. An error refuses the logon; the client is sent the
	// NTSTATUS of a *StatusError in the error's chain, or
	// STATUS_ACCESS_DENIED.
	Authorize func(user, domain string) error
}

// StatusError carries the NTSTATUS an Authorize refusal reports to the
// client.
type StatusError struct {
	Status uint32
	Err    error
}

func (e *StatusError) Error() string { return e.Err.Error() }
func (e *StatusError) Unwrap() error { return e.Err }

// Accepted is what the server side learnt: who authenticated, and the
// credentials they delegated (the caller wipes them).
type Accepted struct {
	User, Domain string
	Creds        *PasswordCreds
}

// Serve runs the server side of CredSSP on rw (the TLS connection) to the
// end: NTLM challenge and authentication, the public-key binding both
// ways, and the delegated credentials. A failed logon is reported to the
// client as STATUS_LOGON_FAILURE before the error is returned.
func Serve(rw io.ReadWriter, cfg ServerConfig) (*Accepted, error) {
	req, err := readRequest(rw)
	if err != nil {
		return nil, err
	}
	if req.NegoToken == nil {
		return nil, fmt.Errorf("%w: the first message carries no NTLM token", ErrMalformed)
	}
	version := min(req.Version, Version)
	challenge, err := cfg.NTLM.Challenge(req.NegoToken)
	if err != nil {
		return nil, fmt.Errorf("credssp: negotiate: %w", err)
	}
	if err := writeRequest(rw, &Request{Version: version, NegoToken: challenge}); err != nil {
		return nil, err
	}
	req, err = readRequest(rw)
	if err != nil {
		return nil, err
	}
	if req.NegoToken == nil || req.PubKeyAuth == nil {
		return nil, fmt.Errorf("%w: the authenticate message lacks its token or pubKeyAuth", ErrMalformed)
	}
	sess, err := cfg.NTLM.Authenticate(req.NegoToken, cfg.Lookup)
	if err != nil {
		_ = writeRequest(rw, &Request{Version: version, ErrorCode: StatusLogonFailure})
		return nil, fmt.Errorf("%w: %w", ErrLogonFailure, err)
	}
	defer sess.Wipe()
	got, err := sess.Unseal(req.PubKeyAuth)
	if err != nil {
		return nil, fmt.Errorf("%w: pubKeyAuth: %w", ErrBinding, err)
	}
	var answer []byte
	if version >= 5 {
		if req.ClientNonce == nil {
			return nil, fmt.Errorf("%w: version %d without a client nonce", ErrMalformed, version)
		}
		if subtle.ConstantTimeCompare(got, ClientBinding(req.ClientNonce, cfg.PublicKey)) != 1 {
			return nil, ErrBinding
		}
		answer = ServerBinding(req.ClientNonce, cfg.PublicKey)
	} else {
		if subtle.ConstantTimeCompare(got, cfg.PublicKey) != 1 {
			return nil, ErrBinding
		}
		answer = LegacyServerBinding(cfg.PublicKey)
	}
	if cfg.Authorize != nil {
		if err := cfg.Authorize(sess.User, sess.Domain); err != nil {
			status := uint32(StatusAccessDenied)
			if se := (*StatusError)(nil); errors.As(err, &se) {
				status = se.Status
			}
			_ = writeRequest(rw, &Request{Version: version, ErrorCode: status})
			return nil, fmt.Errorf("credssp: not authorized: %w", err)
		}
	}
	sealed, err := sess.Seal(answer)
	if err != nil {
		return nil, err
	}
	if err := writeRequest(rw, &Request{Version: version, PubKeyAuth: sealed}); err != nil {
		return nil, err
	}
	req, err = readRequest(rw)
	if err != nil {
		return nil, err
	}
	if req.AuthInfo == nil {
		return nil, fmt.Errorf("%w: no delegated credentials", ErrMalformed)
	}
	plain, err := sess.Unseal(req.AuthInfo)
	if err != nil {
		return nil, fmt.Errorf("credssp: credentials: %w", err)
	}
	defer clear(plain)
	creds, err := UnmarshalCredentials(plain)
	if err != nil {
		return nil, err
	}
	return &Accepted{User: sess.User, Domain: sess.Domain, Creds: creds}, nil
}

// Authenticate runs the client side of CredSSP on rw (the TLS connection
// to the target) with client, binding it to the target's public key, and
// delegates creds. A server that reports an error code (a refused
// password) gives ErrLogonFailure.
func Authenticate(rw io.ReadWriter, publicKey []byte, client *ntlm.Client, creds PasswordCreds) error {
	return authenticate(rw, publicKey, client, creds, Version)
}

// authenticate is Authenticate offering version offer.
func authenticate(rw io.ReadWriter, publicKey []byte, client *ntlm.Client, creds PasswordCreds, offer int) error {
	if err := writeRequest(rw, &Request{Version: offer, NegoToken: client.Negotiate()}); err != nil {
		return err
	}
	req, err := readServer(rw)
	if err != nil {
		return err
	}
	if req.NegoToken == nil {
		return fmt.Errorf("%w: the server sent no challenge", ErrMalformed)
	}
	version := min(req.Version, offer)
	auth, sess, err := client.Authenticate(req.NegoToken, nil)
	if err != nil {
		return fmt.Errorf("credssp: challenge: %w", err)
	}
	defer sess.Wipe()
	out := &Request{Version: version, NegoToken: auth}
	var binding []byte
	if version >= 5 {
		out.ClientNonce = make([]byte, 32)
		if _, err := rand.Read(out.ClientNonce); err != nil {
			return err
		}
		binding = ClientBinding(out.ClientNonce, publicKey)
	} else {
		binding = publicKey
	}
	if out.PubKeyAuth, err = sess.Seal(binding); err != nil {
		return err
	}
	if err := writeRequest(rw, out); err != nil {
		return err
	}
	req, err = readServer(rw)
	if err != nil {
		if closedOn(err) {
			// Some servers (FreeRDP's) refuse a password by closing the
			// connection rather than with an error code.
			return fmt.Errorf("%w: the server closed the connection after the authentication: %w", ErrLogonFailure, err)
		}
		return err
	}
	if req.PubKeyAuth == nil {
		return fmt.Errorf("%w: the server sent no pubKeyAuth", ErrMalformed)
	}
	got, err := sess.Unseal(req.PubKeyAuth)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBinding, err)
	}
	want := LegacyServerBinding(publicKey)
	if version >= 5 {
		want = ServerBinding(out.ClientNonce, publicKey)
	}
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return ErrBinding
	}
	plain, err := MarshalCredentials(creds)
	if err != nil {
		return err
	}
	defer clear(plain)
	sealed, err := sess.Seal(plain)
	if err != nil {
		return err
	}
	return writeRequest(rw, &Request{Version: version, AuthInfo: sealed})
}

// readServer reads the server's next message; an error code in it is a
// refusal.
func readServer(r io.Reader) (*Request, error) {
	req, err := readRequest(r)
	if err != nil {
		return nil, err
	}
	if req.ErrorCode != 0 {
		return nil, fmt.Errorf("%w: the server reports 0x%08x", ErrLogonFailure, req.ErrorCode)
	}
	return req, nil
}

func readRequest(r io.Reader) (*Request, error) {
	b, err := Read(r)
	if err != nil {
		return nil, err
	}
	return Unmarshal(b)
}

func writeRequest(w io.Writer, r *Request) error {
	b, err := r.Marshal()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// closedOn reports whether err is the peer closing or resetting the
// connection.
func closedOn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
