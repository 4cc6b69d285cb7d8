package workitem

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// Op is what a credential request asks the vault to do.
type Op string

// Credential request operations.
const (
	OpCheckout Op = "checkout" // return the credential for one secret
	OpList     Op = "list"     // return the names of the secrets a user may use
	OpPin      Op = "pin"      // record a target host key seen on first use
	OpRecheck  Op = "recheck"  // say whether live sessions' grants still hold
	// OpRejected reports that the target refused the credential the vault
	// handed out for secret: the vault checks it at once (a heartbeat).
	OpRejected Op = "rejected"
)

// MaxGrants bounds the grants of one OpRecheck request; an engine with
// more live grants sends several requests.
const MaxGrants = 256

// CredentialRequest is the body of a KindCredentialRequest item.
type CredentialRequest struct {
	Op      Op       `json:"op"`
	User    string   `json:"user"`
	Groups  []string `json:"groups,omitempty"`
	Source  string   `json:"source"` // client address, for audit and policy
	Secret  string   `json:"secret,omitempty"`
	HostKey []byte   `json:"host_key,omitempty"` // OpPin: SSH wire-format public key
	ReplyTo string   `json:"reply_to"`           // queue the reply goes to
	// Grants are the live sessions' grants an OpRecheck asks about (at
	// most MaxGrants); User, Groups, Source and Secret above are unused.
	Grants []Grant `json:"grants,omitempty"`
}

// Grant is what one live session was let through for.
type Grant struct {
	User   string   `json:"user"`
	Groups []string `json:"groups,omitempty"`
	// Local says the user was proved against the vault's local user
	// store: the re-check also requires them to still exist there, and
	// takes their groups from it.
	Local  bool   `json:"local,omitempty"`
	Source string `json:"source"`
	Secret string `json:"secret"`
}

// Refusal codes in a CredentialReply. They name the class of failure only;
// details stay in the vault's log.
const (
	RefusedDenied      = "denied"      // unknown secret, or not allowed for this user
	RefusedUnavailable = "unavailable" // the vault could not serve the request
	RefusedConflict    = "conflict"    // OpPin: a different key is already pinned
)

// CredentialReply is the body of a KindCredentialReply item (see
// EncodeReply). Its ID in the header equals the request's.
type CredentialReply struct {
	Refused    string      `json:"refused,omitempty"`
	Credential *Credential `json:"credential,omitempty"`
	Secrets    []string    `json:"secrets,omitempty"`
	// Allowed answers an OpRecheck: one entry per grant, in order.
	Allowed []bool `json:"allowed,omitempty"`
}

// Credential is a privileged account's login for one target. It redacts
// itself when printed or logged, as a value or a pointer; its JSON is the
// reply's wire form and never holds the secret (see EncodeReply). Call
// Wipe when done with it.
type Credential struct {
	Secret string `json:"secret"`
	// Protocol is how the target is reached: ProtocolSSH (also when
	// empty, as before protocols existed) or ProtocolRDP.
	Protocol string `json:"protocol,omitempty"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Username string `json:"username"`
	// Exactly one of Password and PrivateKey (PEM or OpenSSH format) is
	// set. They never pass through encoding/json (see EncodeReply).
	Password   []byte `json:"-"`
	PrivateKey []byte `json:"-"`
	// SecretKind is "password" or "private_key": which of the two the
	// secret bytes after the JSON fill. EncodeReply sets it.
	SecretKind string `json:"secret_kind,omitempty"`
	// HostKey is the pinned target host key in SSH wire format, or for an
	// RDP target the SHA-256 of its TLS certificate (DER). It is empty
	// only when PinOnFirstUse is set and no key has been seen yet.
	HostKey       []byte `json:"host_key,omitempty"`
	PinOnFirstUse bool   `json:"pin_on_first_use,omitempty"`
}

// Target protocols (Credential.Protocol).
const (
	ProtocolSSH = "ssh"
	ProtocolRDP = "rdp"
)

// Wipe overwrites the credential's secret bytes.
func (c *Credential) Wipe() {
	if c == nil {
		return
	}
	clear(c.Password)
	clear(c.PrivateKey)
	c.Password, c.PrivateKey = nil, nil
}

// String redacts the secret parts. The methods below are on the value so
// that a copy, or a field of type Credential, redacts too.
func (c Credential) String() string {
	return "credential{" + c.Username + "@" + c.Host + " [REDACTED]}"
}

// GoString redacts the secret parts under %#v.
func (c Credential) GoString() string { return c.String() }

// LogValue redacts the secret parts in slog records, whatever the handler
// (the JSON handler would otherwise print the fields, base64 and all).
func (c Credential) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Secret kinds in Credential.SecretKind.
const (
	SecretPassword   = "password"
	SecretPrivateKey = "private_key"
)

// EncodeReply lays out the body of a KindCredentialReply: the reply as
// JSON, then, when it carries a credential, the credential's secret bytes
// (see encodeWithSecret). The returned slice is the only copy made, and the
// caller wipes it.
func EncodeReply(r *CredentialReply) ([]byte, error) {
	var secret []byte
	if c := r.Credential; c != nil {
		switch {
		case len(c.Password) > 0 && len(c.PrivateKey) == 0:
			c.SecretKind, secret = SecretPassword, c.Password
		case len(c.PrivateKey) > 0 && len(c.Password) == 0:
			c.SecretKind, secret = SecretPrivateKey, c.PrivateKey
		default:
			return nil, errors.New("workitem: a credential needs exactly one of password and private key")
		}
	}
	return encodeWithSecret(r, secret, r.Credential != nil)
}

// encodeWithSecret lays out a body as v's JSON, then, if withSecret, a zero
// byte (which JSON text never contains) and secret. The secret never
// passes through encoding/json, whose buffers are pooled and cannot be
// wiped.
func encodeWithSecret(v any, secret []byte, withSecret bool) ([]byte, error) {
	js, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("workitem: encode: %w", err)
	}
	if !withSecret {
		return js, nil
	}
	out := make([]byte, 0, len(js)+1+len(secret))
	out = append(append(append(out, js...), 0), secret...)
	return out, nil
}

// decodeWithSecret reverses encodeWithSecret into v, strictly (unknown
// fields and trailing data refused). The secret is a fresh slice; nil
// means there was none.
func decodeWithSecret(body []byte, v any) (secret []byte, err error) {
	js := body
	if i := bytes.IndexByte(body, 0); i >= 0 {
		js, secret = body[:i], bytes.Clone(body[i+1:])
		if secret == nil {
			secret = []byte{}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		clear(secret)
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		clear(secret)
		return nil, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	return secret, nil
}

// DecodeReply reverses EncodeReply. The credential's secret is a fresh
// slice (the caller wipes it); body is not kept, and the caller wipes it
// too. Unknown JSON fields are refused.
func DecodeReply(body []byte) (*CredentialReply, error) {
	var r CredentialReply
	secret, err := decodeWithSecret(body, &r)
	if err != nil {
		return nil, fmt.Errorf("reply: %w", err)
	}
	c := r.Credential
	switch {
	case c == nil && secret != nil:
		clear(secret)
		return nil, fmt.Errorf("%w: reply: secret bytes without a credential", ErrMalformed)
	case c == nil:
		return &r, nil
	case len(secret) == 0:
		return nil, fmt.Errorf("%w: reply: a credential without its secret", ErrMalformed)
	case c.SecretKind == SecretPassword:
		c.Password = secret
	case c.SecretKind == SecretPrivateKey:
		c.PrivateKey = secret
	default:
		clear(secret)
		return nil, fmt.Errorf("%w: reply: unknown secret kind", ErrMalformed)
	}
	return &r, nil
}
