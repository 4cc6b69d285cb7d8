package vault

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/workitem"
)

// Credential kinds, as reported in SecretInfo.Kind.
const (
	KindPassword   = "password"
	KindPrivateKey = "private-key"
)

// Bounds on stored credentials, in bytes.
const (
	maxTargetPassword = 4096
	maxPrivateKey     = 64 << 10
	maxHostKey        = 16 << 10
)

// SecretSpec describes a new target credential. Call Wipe when done.
type SecretSpec struct {
	// Name identifies the secret; see ValidSecretName. A new name must not
	// start with '-' (LooksLikeFlag).
	Name string
	// Host is the target's DNS name or IP address.
	Host string
	// Port is the target's SSH port, 1..65535. It has no default: a zero
	// Port (a JSON body without "port") is refused rather than guessed.
	Port int
	// Username is the account on the target.
	Username string
	// Exactly one of Password and PrivateKey (PEM or OpenSSH format, not
	// passphrase-protected) is set.
	Password   []byte
	PrivateKey []byte
	// Exactly one of HostKey (an authorized_keys line, "ssh-ed25519
	// AAAA...") and PinOnFirstUse (trust and record the first key seen) is set.
	HostKey       string
	PinOnFirstUse bool
	// Allow lists who may use the secret: user names and "group:NAME" entries.
	Allow []string
	// Site is where the target is: only that site's engines check it out.
	// Empty means DefaultSite.
	Site string
	// Heartbeat and Rotate are how often the credential is checked and
	// changed (0: never; at least a minute).
	Heartbeat time.Duration
	Rotate    time.Duration
	// RotateAfterUse rotates the credential once the last session on it
	// has ended.
	RotateAfterUse bool
	// ChangeMethod is how a rotation changes the credential: ChangeSelf,
	// "privileged:SECRET" or ChangeKey; empty takes self for a password
	// and key for a private key.
	ChangeMethod string
	// PasswordRule is the rule new passwords follow (see package
	// passrule); empty is passrule.Default.
	PasswordRule string
	// Protocol is how the target is reached: ProtocolSSH (also when
	// empty) or ProtocolRDP. An RDP secret holds a password, is pinned by
	// CertSHA256 (the SHA-256 of the target's TLS certificate, hex, colons
	// allowed) or PinOnFirstUse instead of HostKey, and is heartbeaten but
	// not rotated.
	Protocol   string
	CertSHA256 string
}

// Target protocols (SecretSpec.Protocol, SecretInfo.Protocol).
const (
	ProtocolSSH = workitem.ProtocolSSH
	ProtocolRDP = workitem.ProtocolRDP
)

// Wipe overwrites the credential.
func (s *SecretSpec) Wipe() {
	clear(s.Password)
	clear(s.PrivateKey)
	s.Password, s.PrivateKey = nil, nil
}

// String redacts the credential.
func (s SecretSpec) String() string {
	return fmt.Sprintf("secret{%s %s@%s:%d [REDACTED]}", s.Name, s.Username, s.Host, s.Port)
}

// GoString redacts the credential under %#v.
func (s SecretSpec) GoString() string { return s.String() }

// LogValue redacts the credential in slog records.
func (s SecretSpec) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts the credential: a SecretSpec is not a wire type (the
// API's body is secretRequest).
func (s SecretSpec) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// SecretInfo is everything about a secret except the credential itself.
type SecretInfo struct {
	Name     string `json:"name"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Username string `json:"username"`
	// Kind is KindPassword or KindPrivateKey.
	Kind string `json:"kind"`
	// HostKey is the configured or pinned host key as an authorized_keys
	// line, or "" while a pin-on-first-use secret has not been used.
	HostKey string `json:"host_key"`
	// HostKeyFingerprint is HostKey's SHA256:... fingerprint, or "".
	HostKeyFingerprint string `json:"host_key_fingerprint"`
	PinOnFirstUse      bool   `json:"pin_on_first_use"`
	// Disabled secrets are checked out to nobody; their live sessions end.
	Disabled bool      `json:"disabled"`
	Allow    []string  `json:"allow"`
	Site     string    `json:"site"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
	// Maintenance is the heartbeat and rotation settings and state.
	Maintenance Maintenance `json:"maintenance"`
	// Protocol is ProtocolSSH or ProtocolRDP. For RDP, HostKey is empty
	// and CertSHA256 (also in HostKeyFingerprint) is the pinned
	// certificate's SHA-256, hex, or "" until pinned on first use.
	Protocol   string `json:"protocol"`
	CertSHA256 string `json:"cert_sha256,omitempty"`
}

// parseHostKey parses a single authorized_keys line without options;
// certificates are refused (a pin is a plain key).
func parseHostKey(line string) (ssh.PublicKey, error) {
	if len(line) > maxHostKey {
		return nil, errors.New("too long")
	}
	pub, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil || len(options) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("not one authorized_keys line")
	}
	if _, cert := pub.(*ssh.Certificate); cert {
		return nil, errors.New("a certificate, not a key")
	}
	return pub, nil
}

// parseWireHostKey parses an SSH wire-format public key (not a certificate).
func parseWireHostKey(b []byte) (ssh.PublicKey, error) {
	if len(b) == 0 || len(b) > maxHostKey {
		return nil, errors.New("bad length")
	}
	pub, err := ssh.ParsePublicKey(b)
	if err != nil {
		return nil, err
	}
	if _, cert := pub.(*ssh.Certificate); cert {
		return nil, errors.New("a certificate, not a key")
	}
	return pub, nil
}

// validate checks a new secret and returns its pin: the host key in SSH
// wire format, or an RDP certificate's SHA-256 (nil with PinOnFirstUse).
// It changes nothing in s: a missing port is an error, not a silent 22,
// so that what is stored is what the caller said.
func (s *SecretSpec) validate() ([]byte, error) {
	switch s.Protocol {
	case "", ProtocolSSH:
		if s.CertSHA256 != "" {
			return nil, invalid("cert_sha256", "is for RDP targets; an SSH target is pinned by host_key")
		}
	case ProtocolRDP:
		switch {
		case len(s.PrivateKey) > 0:
			return nil, invalid("private_key", "an RDP target takes a password")
		case s.HostKey != "":
			return nil, invalid("host_key", "an RDP target is pinned by cert_sha256")
		case s.Rotate != 0 || s.RotateAfterUse || s.ChangeMethod != "" || s.PasswordRule != "":
			return nil, invalid("rotate", "password changes of RDP targets are not supported (heartbeats are)")
		}
	default:
		return nil, invalid("protocol", "must be ssh or rdp")
	}
	switch {
	case !names.ValidSecretName(s.Name):
		return nil, invalid("name", "must be 1..64 characters of [A-Za-z0-9._-]")
	case names.LooksLikeFlag(s.Name):
		return nil, invalid("name", notFlagWhy)
	case !validHost(s.Host):
		return nil, invalid("host", "must be a DNS name or IP address of at most 253 characters")
	case s.Port < 1 || s.Port > 65535:
		return nil, invalid("port", "must be 1..65535")
	case !validTargetUser(s.Username):
		return nil, invalid("username", "must be 1..256 printable characters without whitespace")
	case (len(s.Password) == 0) == (len(s.PrivateKey) == 0):
		return nil, invalid("password/private_key", "exactly one must be set")
	case len(s.Password) > maxTargetPassword:
		return nil, invalid("password", fmt.Sprintf("at most %d bytes", maxTargetPassword))
	case len(s.PrivateKey) > maxPrivateKey:
		return nil, invalid("private_key", fmt.Sprintf("at most %d bytes", maxPrivateKey))
	case s.Protocol == ProtocolRDP && (s.CertSHA256 == "") == !s.PinOnFirstUse:
		return nil, invalid("cert_sha256/pin_on_first_use", "exactly one must be set")
	case s.Protocol != ProtocolRDP && (s.HostKey == "") == !s.PinOnFirstUse:
		return nil, invalid("host_key/pin_on_first_use", "exactly one must be set")
	case len(s.Allow) == 0:
		return nil, invalid("allow", "must name at least one user or group:NAME")
	case len(s.Allow) > maxAllow:
		return nil, invalid("allow", fmt.Sprintf("at most %d entries", maxAllow))
	}
	for _, e := range s.Allow {
		if !validAllowEntry(e) {
			return nil, invalid("allow", "each entry must be a user name or group:NAME")
		}
	}
	if len(s.PrivateKey) > 0 {
		if _, err := ssh.ParsePrivateKey(s.PrivateKey); err != nil {
			var pp *ssh.PassphraseMissingError
			if errors.As(err, &pp) {
				return nil, invalid("private_key", "passphrase-protected keys are not supported")
			}
			return nil, invalid("private_key", "not a PEM or OpenSSH private key")
		}
	}
	if s.PinOnFirstUse {
		return nil, nil
	}
	if s.Protocol == ProtocolRDP {
		sum, err := parseCertSHA256(s.CertSHA256)
		if err != nil {
			return nil, invalid("cert_sha256", "must be the 64 hex digits of a SHA-256 (colons allowed)")
		}
		return sum, nil
	}
	pub, err := parseHostKey(s.HostKey)
	if err != nil {
		return nil, invalid("host_key", "must be one authorized_keys line such as 'ssh-ed25519 AAAA...' ("+err.Error()+")")
	}
	return pub.Marshal(), nil
}

// parseCertSHA256 reads a certificate's SHA-256 as hex, with or without
// colons between the bytes (as openssl and RDP clients print it).
func parseCertSHA256(s string) ([]byte, error) {
	s = strings.ReplaceAll(strings.TrimSpace(s), ":", "")
	if len(s) != 2*sha256.Size {
		return nil, errors.New("not 32 bytes")
	}
	return hex.DecodeString(s)
}

// secretRow is one row of the secrets table.
type secretRow struct {
	name, host, username, kind string
	port                       int
	wrappedDEK, credential     []byte
	kek                        string // label of the KEK that wraps wrappedDEK
	hostKey                    []byte // wire format, or an RDP certificate's SHA-256; nil until pinned
	protocol                   string // ProtocolSSH or ProtocolRDP
	pinOnFirstUse              bool
	disabled                   bool
	site                       string
	created, updated           int64
}

// String leaves out the sealed credential (ciphertext, but no business of
// a log).
func (r secretRow) String() string {
	return fmt.Sprintf("secretRow{%s %s@%s:%d [SEALED]}", r.name, r.username, r.host, r.port)
}

// GoString leaves out the sealed credential under %#v.
func (r secretRow) GoString() string { return r.String() }

// LogValue leaves out the sealed credential in slog records.
func (r secretRow) LogValue() slog.Value { return slog.StringValue(r.String()) }

func dekAAD(name string) string { return "sallyport-dek:v1:" + name }

// credentialAAD binds a sealed credential to the secret's name and to
// everything that decides where it is sent: kind, host, port, target user,
// pin mode and host key. Editing any of them in the database makes the
// credential fail to open instead of going to another host.
func credentialAAD(r *secretRow) []byte {
	pin := "0"
	if r.pinOnFirstUse {
		pin = "1"
	}
	b := []byte("sallyport-secret:v1:")
	for _, f := range [][]byte{
		[]byte(r.name), []byte(r.kind), []byte(r.host), []byte(strconv.Itoa(r.port)),
		[]byte(r.username), []byte(pin), r.hostKey,
	} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f))) // #nosec G115 -- fields are bounded far below 4 GiB
		b = append(b, f...)
	}
	if r.protocol == ProtocolRDP {
		// Bound too, so that turning an SSH secret into an RDP one (or
		// back) in the database makes it fail to open. SSH secrets keep
		// the data they were sealed with before protocols existed.
		f := []byte("protocol=rdp")
		b = binary.BigEndian.AppendUint32(b, uint32(len(f))) // #nosec G115 -- a constant
		b = append(b, f...)
	}
	return b
}

func dekAEAD(dek []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(dek)
	if err != nil {
		return nil, fmt.Errorf("vault: data key: %w", err)
	}
	return cipher.NewGCM(block)
}

// sealWithDEK returns nonce || AES-256-GCM(dek, plaintext, aad).
func sealWithDEK(dek, plaintext, aad []byte) ([]byte, error) {
	a, err := dekAEAD(dek)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, a.NonceSize(), a.NonceSize()+len(plaintext)+a.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	return a.Seal(nonce, nonce, plaintext, aad), nil
}

var errCredentialOpen = errors.New("vault: stored credential failed authentication")

// openWithDEK reverses sealWithDEK.
func openWithDEK(dek, sealed, aad []byte) ([]byte, error) {
	a, err := dekAEAD(dek)
	if err != nil {
		return nil, err
	}
	if len(sealed) < a.NonceSize()+a.Overhead() {
		return nil, errCredentialOpen
	}
	pt, err := a.Open(nil, sealed[:a.NonceSize()], sealed[a.NonceSize():], aad)
	if err != nil {
		return nil, errCredentialOpen
	}
	return pt, nil
}

// AddSecret stores a target credential under a fresh data key. It returns
// ErrExists if the name is taken, or an ErrInvalid error naming the field:
// among others when the name starts with '-' (LooksLikeFlag) or the port
// is not 1..65535 (0 included; there is no default port).
func (v *Vault) AddSecret(ctx context.Context, s SecretSpec) error {
	pin, err := s.validate()
	if err != nil {
		return err
	}
	now := v.now().UnixNano()
	if s.Site == "" {
		s.Site = DefaultSite
	}
	row := secretRow{
		name: s.Name, host: s.Host, port: s.Port, username: s.Username, protocol: ProtocolSSH,
		kind: KindPassword, pinOnFirstUse: s.PinOnFirstUse, created: now, updated: now, site: s.Site,
	}
	if s.Protocol == ProtocolRDP {
		row.protocol = ProtocolRDP
	}
	cred := s.Password
	if len(s.PrivateKey) > 0 {
		row.kind, cred = KindPrivateKey, s.PrivateKey
	}
	row.hostKey = pin
	if err := s.validateSchedule(row.kind); err != nil {
		return err
	}
	dek := make([]byte, 32)
	defer clear(dek)
	if _, err := rand.Read(dek); err != nil {
		return fmt.Errorf("vault: add secret: %w", err)
	}
	if row.credential, err = sealWithDEK(dek, cred, credentialAAD(&row)); err != nil {
		return fmt.Errorf("vault: add secret: %w", err)
	}
	if row.wrappedDEK, row.kek, err = v.seal(ctx, dek, dekAAD(row.name)); err != nil {
		return err
	}

	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return fmt.Errorf("vault: add secret: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	var one int
	switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM secrets WHERE name = ?`, row.name).Scan(&one); {
	case err == nil:
		return fmt.Errorf("secret %q: %w", row.name, ErrExists)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("vault: add secret: %w", err)
	}
	if ok, err := v.siteExists(ctx, tx, row.site); err != nil {
		return err
	} else if !ok {
		return invalid("site", "no such site (sallyport ctl site list)")
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO secrets
		(name, host, port, username, kind, wrapped_dek, credential, host_key, pin_on_first_use, created, updated, kek, site, protocol)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		row.name, row.host, row.port, row.username, row.kind, row.wrappedDEK, row.credential,
		row.hostKey, row.pinOnFirstUse, row.created, row.updated, row.kek, row.site, row.protocol); err != nil {
		return fmt.Errorf("vault: add secret: %w", err)
	}
	for _, e := range dedupe(s.Allow) {
		if _, err := tx.ExecContext(ctx, `INSERT INTO secret_allow (secret, entry) VALUES (?, ?)`, row.name, e); err != nil {
			return fmt.Errorf("vault: add secret: %w", err)
		}
	}
	if err := v.checkPrivileged(ctx, tx, &s); err != nil {
		return err
	}
	if err := v.insertSchedule(ctx, tx, &s, now); err != nil {
		return fmt.Errorf("vault: add secret: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("vault: add secret: %w", err)
	}
	v.log.Info("secret added", slog.String("secret", row.name), slog.String("kind", row.kind),
		slog.Bool("pin_on_first_use", row.pinOnFirstUse))
	return nil
}

// RemoveSecret deletes a secret and its allow list. It returns ErrNotFound
// if there is none.
func (v *Vault) RemoveSecret(ctx context.Context, name string) error {
	if !names.ValidSecretName(name) {
		return fmt.Errorf("secret: %w", ErrNotFound)
	}
	res, err := v.exec(ctx, `DELETE FROM secrets WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("vault: remove secret: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("vault: remove secret: %w", err)
	} else if n == 0 {
		return fmt.Errorf("secret %q: %w", name, ErrNotFound)
	}
	v.log.Info("secret removed", slog.String("secret", name))
	return nil
}

// SetSecretDisabled disables a secret (or enables it again): a disabled
// secret is checked out to nobody and left out of menus, and its live
// sessions end at their next re-check. It keeps its credential, pin and
// allow list. ErrNotFound if there is none.
func (v *Vault) SetSecretDisabled(ctx context.Context, name string, disabled bool) error {
	if !names.ValidSecretName(name) {
		return fmt.Errorf("secret: %w", ErrNotFound)
	}
	if err := v.setDisabled(ctx, `UPDATE secrets SET disabled = ?, updated = ? WHERE name = ?`, name, disabled, true); err != nil {
		return fmt.Errorf("secret %q: %w", name, err)
	}
	v.log.Info("secret disabled changed", slog.String("secret", name), slog.Bool("disabled", disabled))
	return nil
}

// setDisabled runs one of the two fixed disable statements; withStamp says
// whether it takes the updated time.
func (v *Vault) setDisabled(ctx context.Context, query, name string, disabled, withStamp bool) error {
	args := []any{disabled}
	if withStamp {
		args = append(args, v.now().UnixNano())
	}
	res, err := v.exec(ctx, query, append(args, name)...)
	if err != nil {
		return fmt.Errorf("vault: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("vault: %w", err)
	} else if n == 0 {
		return ErrNotFound
	}
	return nil
}

const secretColumns = /* #nosec G101 -- a column list, not a credential */ `name, host, port, username, kind, wrapped_dek, credential, host_key, pin_on_first_use, created, updated, kek, disabled, site, protocol`

type scanner interface{ Scan(dest ...any) error }

func scanSecret(sc scanner) (*secretRow, error) {
	var r secretRow
	if err := sc.Scan(&r.name, &r.host, &r.port, &r.username, &r.kind, &r.wrappedDEK, &r.credential,
		&r.hostKey, &r.pinOnFirstUse, &r.created, &r.updated, &r.kek, &r.disabled, &r.site, &r.protocol); err != nil {
		return nil, err
	}
	return &r, nil
}

// info converts a row (and its allow list) into a SecretInfo.
func (r *secretRow) info(allow []string) SecretInfo {
	si := SecretInfo{
		Name: r.name, Host: r.host, Port: r.port, Username: r.username, Kind: r.kind,
		PinOnFirstUse: r.pinOnFirstUse, Disabled: r.disabled, Allow: allow, Site: r.site, Created: stamp(r.created), Updated: stamp(r.updated),
		Protocol: r.protocol,
	}
	if si.Allow == nil {
		si.Allow = []string{}
	}
	switch {
	case r.protocol == ProtocolRDP && len(r.hostKey) > 0:
		si.CertSHA256 = hex.EncodeToString(r.hostKey)
		si.HostKeyFingerprint = "SHA256:" + si.CertSHA256
	case len(r.hostKey) > 0:
		if pub, err := ssh.ParsePublicKey(r.hostKey); err == nil {
			si.HostKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
			si.HostKeyFingerprint = ssh.FingerprintSHA256(pub)
		} else {
			si.HostKey, si.HostKeyFingerprint = "(unparseable)", "(unparseable)"
		}
	}
	return si
}

// ListSecrets returns every secret (without credentials), sorted by name.
func (v *Vault) ListSecrets(ctx context.Context) ([]SecretInfo, error) {
	rows, err := v.db.QueryContext(ctx, `SELECT `+secretColumns+` FROM secrets ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("vault: list secrets: %w", err)
	}
	defer rows.Close()
	var list []*secretRow
	for rows.Next() {
		r, err := scanSecret(rows)
		if err != nil {
			return nil, fmt.Errorf("vault: list secrets: %w", err)
		}
		list = append(list, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("vault: list secrets: %w", err)
	}
	allow := map[string][]string{}
	arows, err := v.db.QueryContext(ctx, `SELECT secret, entry FROM secret_allow ORDER BY secret, entry`)
	if err != nil {
		return nil, fmt.Errorf("vault: list secrets: %w", err)
	}
	defer arows.Close()
	for arows.Next() {
		var s, e string
		if err := arows.Scan(&s, &e); err != nil {
			return nil, fmt.Errorf("vault: list secrets: %w", err)
		}
		allow[s] = append(allow[s], e)
	}
	if err := arows.Err(); err != nil {
		return nil, fmt.Errorf("vault: list secrets: %w", err)
	}
	maint, err := v.maintenanceOf(ctx)
	if err != nil {
		return nil, fmt.Errorf("vault: list secrets: %w", err)
	}
	out := make([]SecretInfo, 0, len(list))
	for _, r := range list {
		si := r.info(allow[r.name])
		si.Maintenance = maint[r.name]
		out = append(out, si)
	}
	return out, nil
}

// ShowSecret returns one secret without its credential, or ErrNotFound.
func (v *Vault) ShowSecret(ctx context.Context, name string) (SecretInfo, error) {
	r, err := v.loadSecret(ctx, v.db, name)
	if err != nil {
		return SecretInfo{}, err
	}
	allow, err := v.allowList(ctx, name)
	if err != nil {
		return SecretInfo{}, fmt.Errorf("vault: show secret: %w", err)
	}
	si := r.info(allow)
	if si.Maintenance, err = scanMaintenance(v.db.QueryRowContext(ctx, `SELECT `+scheduleColumns+` FROM secret_schedule WHERE secret = ?`, name)); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return SecretInfo{}, fmt.Errorf("vault: show secret: %w", err)
	}
	return si, nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// loadSecret reads one row, or returns ErrNotFound.
func (v *Vault) loadSecret(ctx context.Context, q querier, name string) (*secretRow, error) {
	if !names.ValidSecretName(name) {
		return nil, fmt.Errorf("secret: %w", ErrNotFound)
	}
	r, err := scanSecret(q.QueryRowContext(ctx, `SELECT `+secretColumns+` FROM secrets WHERE name = ?`, name))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("secret %q: %w", name, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("vault: load secret: %w", err)
	}
	return r, nil
}

func (v *Vault) allowList(ctx context.Context, name string) ([]string, error) {
	rows, err := v.db.QueryContext(ctx, `SELECT entry FROM secret_allow WHERE secret = ? ORDER BY entry`, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	list := []string{}
	for rows.Next() {
		var e string
		if err := rows.Scan(&e); err != nil {
			return nil, err
		}
		list = append(list, e)
	}
	return list, rows.Err()
}

// principals returns the allow-list entries that identify user and groups.
// Invalid names are skipped: they can never match a stored entry.
func principals(user string, groups []string) []any {
	out := []any{}
	if names.ValidUserName(user) {
		out = append(out, user)
	}
	for _, g := range groups {
		if names.ValidGroupName(g) {
			out = append(out, groupPrefix+g)
		}
	}
	return out
}

// placeholders returns "?, ?, ..." for n arguments (n ≥ 1).
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// allowed reports whether user, or one of groups, is on secret's allow list
// and the secret is not disabled.
func (v *Vault) allowed(ctx context.Context, secret, user string, groups []string) (bool, error) {
	p := principals(user, groups)
	if len(p) == 0 {
		return false, nil
	}
	args := append([]any{secret}, p...)
	var one int
	// Only "?" placeholders are concatenated; every value is a bound argument.
	query := `SELECT 1 FROM secret_allow JOIN secrets ON secrets.name = secret_allow.secret
		WHERE secret = ? AND secrets.disabled = 0 AND entry IN (` + placeholders(len(p)) + `) LIMIT 1` // #nosec G202 -- placeholders only
	err := v.db.QueryRowContext(ctx, query, args...).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

// allowedSecrets returns the sorted names of site's secrets that user or
// groups may use (disabled ones left out).
func (v *Vault) allowedSecrets(ctx context.Context, site, user string, groups []string) ([]string, error) {
	p := principals(user, groups)
	names := []string{}
	if len(p) == 0 {
		return names, nil
	}
	// Only "?" placeholders are concatenated; every value is a bound argument.
	query := `SELECT DISTINCT secret FROM secret_allow JOIN secrets ON secrets.name = secret_allow.secret
		WHERE secrets.disabled = 0 AND secrets.site = ? AND entry IN (` + placeholders(len(p)) + `) ORDER BY secret` // #nosec G202 -- placeholders only
	rows, err := v.db.QueryContext(ctx, query, append([]any{site}, p...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	return names, rows.Err()
}

// openCredential unwraps r's data key and opens its credential. The caller
// wipes the result.
func (v *Vault) openCredential(ctx context.Context, r *secretRow) ([]byte, error) {
	dek, err := v.unseal(ctx, r.wrappedDEK, dekAAD(r.name), r.kek)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	return openWithDEK(dek, r.credential, credentialAAD(r))
}

// pinResult is the outcome of pinHostKey.
type pinResult int

const (
	pinStored     pinResult = iota // no key was pinned; key is now
	pinSame                        // the same key was already pinned
	pinConflict                    // another key is pinned
	pinNotAllowed                  // the secret does not pin on first use
)

// pinHostKey records key (wire format, already parsed) as secret's host key
// if none is pinned yet. The credential is re-sealed so that its additional
// data covers the new key. Compare-and-set: of two racing pins, one wins
// and the other sees pinSame or pinConflict.
func (v *Vault) pinHostKey(ctx context.Context, secret string, key []byte) (pinResult, error) {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return 0, fmt.Errorf("vault: pin host key: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	r, err := v.loadSecret(ctx, tx, secret)
	if err != nil {
		return 0, err
	}
	switch {
	case !r.pinOnFirstUse:
		return pinNotAllowed, nil
	case len(r.hostKey) > 0 && bytes.Equal(r.hostKey, key):
		return pinSame, nil
	case len(r.hostKey) > 0:
		return pinConflict, nil
	}
	dek, err := v.unseal(ctx, r.wrappedDEK, dekAAD(r.name), r.kek)
	if err != nil {
		return 0, err
	}
	defer clear(dek)
	cred, err := openWithDEK(dek, r.credential, credentialAAD(r))
	if err != nil {
		return 0, err
	}
	defer clear(cred)
	r.hostKey = bytes.Clone(key)
	resealed, err := sealWithDEK(dek, cred, credentialAAD(r))
	if err != nil {
		return 0, err
	}
	res, err := tx.ExecContext(ctx, `UPDATE secrets SET host_key = ?, credential = ?, updated = ? WHERE name = ? AND host_key IS NULL`,
		r.hostKey, resealed, v.now().UnixNano(), r.name)
	if err != nil {
		return 0, fmt.Errorf("vault: pin host key: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return 0, fmt.Errorf("vault: pin host key: row changed underneath (%d, %v)", n, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("vault: pin host key: %w", err)
	}
	return pinStored, nil
}
