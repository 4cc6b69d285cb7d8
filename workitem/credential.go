package workitem

// Op is what a credential request asks the vault to do.
type Op string

// Credential request operations.
const (
	OpCheckout Op = "checkout" // return the credential for one secret
	OpList     Op = "list"     // return the names of the secrets a user may use
	OpPin      Op = "pin"      // record a target host key seen on first use
)

// CredentialRequest is the body of a KindCredentialRequest item.
type CredentialRequest struct {
	Op      Op       `json:"op"`
	User    string   `json:"user"`
	Groups  []string `json:"groups,omitempty"`
	Source  string   `json:"source"` // client address, for audit and policy
	Secret  string   `json:"secret,omitempty"`
	HostKey []byte   `json:"host_key,omitempty"` // OpPin: SSH wire-format public key
	ReplyTo string   `json:"reply_to"`           // queue the reply goes to
}

// Refusal codes in a CredentialReply. They name the class of failure only;
// details stay in the vault's log.
const (
	RefusedDenied      = "denied"      // unknown secret, or not allowed for this user
	RefusedUnavailable = "unavailable" // the vault could not serve the request
	RefusedConflict    = "conflict"    // OpPin: a different key is already pinned
)

// CredentialReply is the body of a KindCredentialReply item. Its ID in the
// header equals the request's.
type CredentialReply struct {
	Refused    string      `json:"refused,omitempty"`
	Credential *Credential `json:"credential,omitempty"`
	Secrets    []string    `json:"secrets,omitempty"`
}

// Credential is a privileged account's login for one target. It redacts
// itself when printed or logged; call Wipe when done with it.
type Credential struct {
	Secret   string `json:"secret"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Username string `json:"username"`
	// Exactly one of Password and PrivateKey (PEM or OpenSSH format) is set.
	Password   []byte `json:"password,omitempty"`
	PrivateKey []byte `json:"private_key,omitempty"`
	// HostKey is the pinned target host key in SSH wire format. It is empty
	// only when PinOnFirstUse is set and no key has been seen yet.
	HostKey       []byte `json:"host_key,omitempty"`
	PinOnFirstUse bool   `json:"pin_on_first_use,omitempty"`
}

// Wipe overwrites the credential's secret bytes.
func (c *Credential) Wipe() {
	if c == nil {
		return
	}
	clear(c.Password)
	clear(c.PrivateKey)
	c.Password, c.PrivateKey = nil, nil
}

// String redacts the secret parts.
func (c *Credential) String() string {
	if c == nil {
		return "<nil>"
	}
	return "credential{" + c.Username + "@" + c.Host + " [REDACTED]}"
}

// GoString redacts the secret parts under %#v.
func (c *Credential) GoString() string { return c.String() }
