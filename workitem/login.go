package workitem

import (
	"errors"
	"fmt"
	"log/slog"
)

// Login operations: what a KindLoginRequest asks the vault to check.
const (
	LoginPassword = "password" // the user's password; the reply says whether a code must follow
	LoginTOTP     = "totp"     // a one-time code, consumed if right
)

// LoginRequest is the body of a KindLoginRequest: a local gateway user's
// password or one-time code, checked by the vault, so that engines never
// hold password hashes or TOTP seeds. The secret itself travels after the
// JSON (EncodeLoginRequest), so the JSON encoding, which is the wire form,
// never holds it.
type LoginRequest struct {
	Op      string `json:"op"`
	User    string `json:"user"`
	Source  string `json:"source"`   // client address, for audit
	ReplyTo string `json:"reply_to"` // the asking engine's reply queue
	// Secret is the password or code. It never passes through encoding/json.
	Secret []byte `json:"-"`
}

// String redacts the secret. The methods are on the value so that a copy
// redacts too.
func (r LoginRequest) String() string {
	return fmt.Sprintf("login{%s %s [REDACTED]}", r.Op, r.User)
}

// GoString redacts the secret under %#v.
func (r LoginRequest) GoString() string { return r.String() }

// LogValue redacts the secret in slog records.
func (r LoginRequest) LogValue() slog.Value { return slog.StringValue(r.String()) }

// Wipe overwrites the secret.
func (r *LoginRequest) Wipe() {
	if r != nil {
		clear(r.Secret)
		r.Secret = nil
	}
}

// EncodeLoginRequest lays out a KindLoginRequest body: JSON, a zero byte,
// the secret. The caller wipes the result.
func EncodeLoginRequest(r *LoginRequest) ([]byte, error) {
	if len(r.Secret) == 0 {
		return nil, errors.New("workitem: a login request needs its secret")
	}
	return encodeWithSecret(r, r.Secret, true)
}

// DecodeLoginRequest reverses EncodeLoginRequest. The secret is a fresh
// slice the caller wipes (with Wipe).
func DecodeLoginRequest(body []byte) (*LoginRequest, error) {
	var r LoginRequest
	secret, err := decodeWithSecret(body, &r)
	if err != nil {
		return nil, fmt.Errorf("login request: %w", err)
	}
	if len(secret) == 0 {
		return nil, fmt.Errorf("%w: login request without its secret", ErrMalformed)
	}
	r.Secret = secret
	return &r, nil
}

// LoginReply is the body of a KindLoginReply.
type LoginReply struct {
	// Refused is "" when the check passed, else RefusedDenied or
	// RefusedUnavailable: the gateway tells the user no more.
	Refused string `json:"refused,omitempty"`
	// TOTP says a one-time code must follow (LoginPassword).
	TOTP bool `json:"totp,omitempty"`
	// Groups are the user's groups (LoginPassword).
	Groups []string `json:"groups,omitempty"`
}

// DecodeLoginReply decodes a KindLoginReply body strictly.
func DecodeLoginReply(body []byte) (*LoginReply, error) {
	var r LoginReply
	secret, err := decodeWithSecret(body, &r)
	if err != nil {
		return nil, fmt.Errorf("login reply: %w", err)
	}
	if secret != nil {
		return nil, fmt.Errorf("%w: login reply with trailing bytes", ErrMalformed)
	}
	return &r, nil
}

// EncodeLoginReply encodes a KindLoginReply body.
func EncodeLoginReply(r *LoginReply) ([]byte, error) { return encodeWithSecret(r, nil, false) }

// Ping is the body of a KindPing: work any engine of the site answers with
// a KindPong to its site's result queue, so that an administrator can see
// which engines read the site's work queue, and how fast.
type Ping struct {
	// Sent is when the vault sent it, in unix nanoseconds.
	Sent int64 `json:"sent"`
}

// Pong is the body of a KindPong; its header names the engine.
type Pong struct {
	PingID   string `json:"ping_id"`
	Received int64  `json:"received"` // unix nanoseconds, the engine's clock
	Version  string `json:"version"`
}

// DecodeJSON decodes a body without a secret (Ping, Pong, CredentialRequest)
// strictly: unknown fields, trailing data and a secret part are refused.
func DecodeJSON(body []byte, v any) error {
	secret, err := decodeWithSecret(body, v)
	if err != nil {
		return err
	}
	if secret != nil {
		clear(secret)
		return fmt.Errorf("%w: unexpected trailing bytes", ErrMalformed)
	}
	return nil
}
