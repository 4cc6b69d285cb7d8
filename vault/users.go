package vault

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/sallyport/sallyport/names"
)

// UserSpec describes a new local gateway user. Call Wipe when done with it.
type UserSpec struct {
	// Name is the login name; see ValidUserName (UPNs with '@' are fine).
	Name string
	// Password is 8..1024 bytes. It is hashed with argon2id and never stored.
	Password []byte
	// TOTP turns on a second factor; AddUser then returns the otpauth:// URI.
	TOTP bool
	// Groups the user belongs to, matched by "group:NAME" allow entries.
	Groups []string
}

// Wipe overwrites the password.
func (u *UserSpec) Wipe() {
	clear(u.Password)
	u.Password = nil
}

// String redacts the password.
func (u UserSpec) String() string {
	return fmt.Sprintf("user{%s totp=%t groups=%v password=[REDACTED]}", u.Name, u.TOTP, u.Groups)
}

// GoString redacts the password under %#v.
func (u UserSpec) GoString() string { return u.String() }

// LogValue redacts the password in slog records.
func (u UserSpec) LogValue() slog.Value { return slog.StringValue(u.String()) }

// MarshalJSON redacts the password: a UserSpec is not a wire type (the
// API's body is userRequest).
func (u UserSpec) MarshalJSON() ([]byte, error) { return json.Marshal(u.String()) }

// UserInfo is what the vault tells about a user: never the password hash
// nor the TOTP seed.
type UserInfo struct {
	Name    string    `json:"name"`
	TOTP    bool      `json:"totp"`
	Groups  []string  `json:"groups"`
	Created time.Time `json:"created"`
	// Disabled users cannot log in; their live sessions end.
	Disabled bool `json:"disabled"`
}

// validate checks a new user. Names that look like a flag are refused
// here, at creation only, so that existing users keep working (see
// ValidUserName).
func (u *UserSpec) validate() error {
	switch {
	case !names.ValidUserName(u.Name):
		return invalid("name", "must be 1..128 printable characters without whitespace, ',' or ':'")
	case names.LooksLikeFlag(u.Name):
		return invalid("name", notFlagWhy)
	case len(u.Password) < minPassword || len(u.Password) > maxPassword:
		return invalid("password", fmt.Sprintf("must be %d..%d bytes", minPassword, maxPassword))
	case len(u.Groups) > names.MaxGroups:
		return invalid("groups", fmt.Sprintf("at most %d groups", names.MaxGroups))
	}
	for _, g := range u.Groups {
		if !names.ValidGroupName(g) {
			return invalid("groups", "a group name must be 1..128 printable characters without ',' or control characters")
		}
		if names.LooksLikeFlag(g) {
			return invalid("groups", "a group name "+notFlagWhy)
		}
	}
	return nil
}

// totpAAD binds a sealed TOTP seed to its user.
func totpAAD(user string) string { return "sallyport-totp:v1:" + user }

// AddUser creates a local gateway user. With u.TOTP it returns the
// otpauth:// provisioning URI (which contains the seed: show it to the
// user once, never log it); otherwise it returns "".
func (v *Vault) AddUser(ctx context.Context, u UserSpec) (otpauthURI string, err error) {
	if err := u.validate(); err != nil {
		return "", err
	}
	groups := dedupe(u.Groups)
	hash, err := v.hashPassword(ctx, u.Password)
	if err != nil {
		return "", fmt.Errorf("vault: add user: %w", err)
	}
	var sealedSeed []byte
	kek := ""
	uri := ""
	if u.TOTP {
		seed := make([]byte, totpSeedLen)
		defer clear(seed)
		if _, err := rand.Read(seed); err != nil {
			return "", fmt.Errorf("vault: add user: %w", err)
		}
		if sealedSeed, kek, err = v.seal(ctx, seed, totpAAD(u.Name)); err != nil {
			return "", err
		}
		uri = provisioningURI(u.Name, seed)
	}
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return "", fmt.Errorf("vault: add user: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	var one int
	switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM users WHERE name = ?`, u.Name).Scan(&one); {
	case err == nil:
		return "", fmt.Errorf("user %q: %w", u.Name, ErrExists)
	case !errors.Is(err, sql.ErrNoRows):
		return "", fmt.Errorf("vault: add user: %w", err)
	}
	if kek == "" {
		kek = v.currentKEK() // nothing sealed; keeps the row out of rotations
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO users (name, password_hash, totp_seed, created, kek) VALUES (?, ?, ?, ?, ?)`,
		u.Name, hash, sealedSeed, v.now().UnixNano(), kek); err != nil {
		return "", fmt.Errorf("vault: add user: %w", err)
	}
	for _, g := range groups {
		if _, err := tx.ExecContext(ctx, `INSERT INTO user_groups (user, grp) VALUES (?, ?)`, u.Name, g); err != nil {
			return "", fmt.Errorf("vault: add user: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("vault: add user: %w", err)
	}
	v.log.Info("user added", slog.String("user", u.Name), slog.Bool("totp", u.TOTP), slog.Int("groups", len(groups)))
	return uri, nil
}

// RemoveUser deletes a local user. It returns ErrNotFound if there is none.
func (v *Vault) RemoveUser(ctx context.Context, name string) error {
	if !names.ValidUserName(name) {
		return fmt.Errorf("user: %w", ErrNotFound)
	}
	res, err := v.exec(ctx, `DELETE FROM users WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("vault: remove user: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("vault: remove user: %w", err)
	} else if n == 0 {
		return fmt.Errorf("user %q: %w", name, ErrNotFound)
	}
	v.log.Info("user removed", slog.String("user", name))
	return nil
}

// SetUserDisabled disables a local user (or enables them again): a
// disabled user cannot log in, and their live sessions end at their next
// re-check. The user keeps their password, TOTP seed and groups.
// ErrNotFound if there is none.
func (v *Vault) SetUserDisabled(ctx context.Context, name string, disabled bool) error {
	if !names.ValidUserName(name) {
		return fmt.Errorf("user: %w", ErrNotFound)
	}
	if err := v.setDisabled(ctx, `UPDATE users SET disabled = ? WHERE name = ?`, name, disabled, false); err != nil {
		return fmt.Errorf("user %q: %w", name, err)
	}
	v.log.Info("user disabled changed", slog.String("user", name), slog.Bool("disabled", disabled))
	return nil
}

// ListUsers returns every local user, sorted by name.
func (v *Vault) ListUsers(ctx context.Context) ([]UserInfo, error) {
	rows, err := v.db.QueryContext(ctx, `SELECT name, totp_seed IS NOT NULL, created, disabled FROM users ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("vault: list users: %w", err)
	}
	defer rows.Close()
	users := []UserInfo{}
	index := map[string]int{}
	for rows.Next() {
		var u UserInfo
		var created int64
		if err := rows.Scan(&u.Name, &u.TOTP, &created, &u.Disabled); err != nil {
			return nil, fmt.Errorf("vault: list users: %w", err)
		}
		u.Created, u.Groups = stamp(created), []string{}
		index[u.Name] = len(users)
		users = append(users, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("vault: list users: %w", err)
	}
	grows, err := v.db.QueryContext(ctx, `SELECT user, grp FROM user_groups ORDER BY user, grp`)
	if err != nil {
		return nil, fmt.Errorf("vault: list users: %w", err)
	}
	defer grows.Close()
	for grows.Next() {
		var user, grp string
		if err := grows.Scan(&user, &grp); err != nil {
			return nil, fmt.Errorf("vault: list users: %w", err)
		}
		if i, ok := index[user]; ok {
			users[i].Groups = append(users[i].Groups, grp)
		}
	}
	if err := grows.Err(); err != nil {
		return nil, fmt.Errorf("vault: list users: %w", err)
	}
	return users, nil
}

// userGroups returns user's groups, sorted.
func (v *Vault) userGroups(ctx context.Context, user string) ([]string, error) {
	rows, err := v.db.QueryContext(ctx, `SELECT grp FROM user_groups WHERE user = ? ORDER BY grp`, user)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	groups := []string{}
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return nil, err
		}
		groups = append(groups, g)
	}
	return groups, rows.Err()
}

// VerifyPassword checks a local user's password. It returns ErrDenied for
// an unknown user or a wrong password, and takes the same time for both:
// an unknown user's password is checked against a dummy hash. On success
// it reports whether the user must also pass TOTP, and the user's groups.
// Other errors mean the vault could not decide.
func (v *Vault) VerifyPassword(ctx context.Context, user string, password []byte) (totp bool, groups []string, err error) {
	h, known := v.dummyHash, false
	if names.ValidUserName(user) {
		var stored string
		var hasTOTP, disabled bool
		err := v.db.QueryRowContext(ctx, `SELECT password_hash, totp_seed IS NOT NULL, disabled FROM users WHERE name = ?`, user).
			Scan(&stored, &hasTOTP, &disabled)
		switch {
		case err == nil:
			parsed, perr := parsePHC(stored)
			if perr != nil {
				v.log.Error("stored password hash is malformed", slog.String("user", user))
				return false, nil, perr
			}
			// A disabled user's password is still checked, so that the
			// refusal takes the time of any other.
			h, known, totp = parsed, !disabled, hasTOTP
		case !errors.Is(err, sql.ErrNoRows):
			return false, nil, fmt.Errorf("vault: verify password: %w", err)
		}
	}
	ok, err := v.checkPassword(ctx, h, password)
	if err != nil {
		return false, nil, fmt.Errorf("vault: verify password: %w", err)
	}
	// Length bounds are checked after hashing so they do not show in timing.
	if !ok || !known || len(password) < minPassword || len(password) > maxPassword {
		return false, nil, ErrDenied
	}
	groups, err = v.userGroups(ctx, user)
	if err != nil {
		return false, nil, fmt.Errorf("vault: verify password: %w", err)
	}
	return totp, slices.Clip(groups), nil
}

// VerifyTOTP checks a user's one-time code and consumes it. A code is
// accepted only for the steps now-1, now and now+1, and only if its step is
// later than the last step accepted for this user: the same code, or an
// older one, is refused afterwards. Every refusal is ErrDenied.
func (v *Vault) VerifyTOTP(ctx context.Context, user, code string) error {
	if !names.ValidUserName(user) || !validTOTPCode(code) {
		return ErrDenied
	}
	var sealed []byte
	var kek string
	err := v.db.QueryRowContext(ctx, `SELECT totp_seed, kek FROM users WHERE name = ?`, user).Scan(&sealed, &kek)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return ErrDenied
	case err != nil:
		return fmt.Errorf("vault: verify totp: %w", err)
	case sealed == nil:
		return ErrDenied
	}
	seed, err := v.unseal(ctx, sealed, totpAAD(user), kek)
	if err != nil {
		v.log.Error("cannot open totp seed", slog.String("user", user), slog.Any("error", err))
		return fmt.Errorf("vault: verify totp: %w", err)
	}
	step, ok := matchTOTP(seed, code, v.now())
	clear(seed)
	if !ok {
		return ErrDenied
	}
	// Compare-and-set: of two concurrent logins with the same code, one wins.
	res, err := v.exec(ctx, `UPDATE users SET totp_last_step = ? WHERE name = ? AND totp_last_step < ?`, step, user, step)
	if err != nil {
		return fmt.Errorf("vault: verify totp: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("vault: verify totp: %w", err)
	}
	if n != 1 {
		return ErrDenied
	}
	return nil
}
