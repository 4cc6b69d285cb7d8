package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"

	"github.com/sallyport/sallyport/enroll"
	"github.com/sallyport/sallyport/names"
)

// Engine states.
const (
	EnginePending  = enroll.StatePending
	EngineApproved = enroll.StateApproved
	EngineRevoked  = enroll.StateRevoked
)

// Bounds on engine registration.
const (
	// maxPendingEngines bounds the engines waiting for approval, so that
	// registrations (which need no token, only a key) cannot fill the
	// database.
	maxPendingEngines = 1000
	maxEngineName     = 128
	engineKeyLen      = 32
)

// ErrRevoked is returned for an engine that was revoked: it may not
// register again under the same key.
var ErrRevoked = errors.New("vault: engine revoked")

// ErrPending is returned for an engine not approved yet.
var ErrPending = errors.New("vault: engine not approved yet")

// EngineInfo is what the vault knows about an engine (never its key).
type EngineInfo struct {
	ID          string    `json:"id"`
	Site        string    `json:"site"`
	Name        string    `json:"name"`
	Fingerprint string    `json:"fingerprint"`
	State       string    `json:"state"`
	Registered  time.Time `json:"registered"`
	Changed     time.Time `json:"changed"`
	// LastSeen is the engine's last configuration pull (zero: never).
	LastSeen time.Time `json:"last_seen"`
	Address  string    `json:"address"`
}

func engineKeyAAD(id string) string { return "engine-key:v1:" + id }

// cleanEngineName keeps an engine's self-chosen name printable and short.
func cleanEngineName(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) && r != '\t' {
			return r
		}
		return -1
	}, strings.ToValidUTF8(s, ""))
	if len(s) > maxEngineName {
		s = strings.ToValidUTF8(s[:maxEngineName], "")
	}
	return s
}

// RegisterEngine records an engine that proved it holds the private key of
// pubDER (the caller checked its signature): pending until approved. An
// engine already registered gets its record back (its name and address
// refreshed); a revoked one gets ErrRevoked.
func (v *Vault) RegisterEngine(ctx context.Context, site string, pubDER []byte, name, address string) (EngineInfo, error) {
	pub, err := enroll.ParsePublicKey(pubDER)
	if err != nil {
		return EngineInfo{}, invalid("public_key", "must be a PKIX DER ECDSA P-256 key")
	}
	id, err := enroll.EngineID(pub)
	if err != nil {
		return EngineInfo{}, err
	}
	fp, err := enroll.Fingerprint(pub)
	if err != nil {
		return EngineInfo{}, err
	}
	name, address = cleanEngineName(name), logSafe(address)
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return EngineInfo{}, fmt.Errorf("vault: register engine: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	if ok, err := v.siteExists(ctx, tx, site); err != nil {
		return EngineInfo{}, err
	} else if !ok {
		return EngineInfo{}, fmt.Errorf("site %q: %w", logSafe(site), ErrNotFound)
	}
	existing, err := v.loadEngine(ctx, tx, id)
	switch {
	case err == nil && existing.State == EngineRevoked:
		return EngineInfo{}, fmt.Errorf("engine %s: %w", id, ErrRevoked)
	case err == nil && existing.Site != site:
		return EngineInfo{}, invalid("site", "this engine key is registered to another site")
	case err == nil:
		if _, err := tx.ExecContext(ctx, `UPDATE engines SET name = ?, address = ? WHERE id = ?`, name, address, id); err != nil {
			return EngineInfo{}, fmt.Errorf("vault: register engine: %w", err)
		}
	case errors.Is(err, ErrNotFound):
		var pending int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM engines WHERE state = 'pending'`).Scan(&pending); err != nil {
			return EngineInfo{}, fmt.Errorf("vault: register engine: %w", err)
		}
		if pending >= maxPendingEngines {
			return EngineInfo{}, fmt.Errorf("vault: register engine: %d engines already wait for approval", pending)
		}
		now := v.now().UnixNano()
		if _, err := tx.ExecContext(ctx, `INSERT INTO engines (id, site, name, public_key, fingerprint, state, registered, changed, address, kek)
			VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)`, id, site, name, pubDER, fp, now, now, address, v.currentKEK()); err != nil {
			return EngineInfo{}, fmt.Errorf("vault: register engine: %w", err)
		}
		v.log.Info("engine registered, waiting for approval", slog.String("engine", id), slog.String("site", site),
			slog.String("fingerprint", fp), slog.String("name", name))
	default:
		return EngineInfo{}, err
	}
	info, err := v.loadEngine(ctx, tx, id)
	if err != nil {
		return EngineInfo{}, err
	}
	if err := tx.Commit(); err != nil {
		return EngineInfo{}, fmt.Errorf("vault: register engine: %w", err)
	}
	return info.EngineInfo, nil
}

// engineRow is an engines row.
type engineRow struct {
	EngineInfo
	publicKey  []byte
	engineKey  []byte // sealed
	keyVersion int
	kek        string
}

// String leaves out the keys (the engine key is sealed, but no business of
// a log).
func (r engineRow) String() string {
	return fmt.Sprintf("engine{%s %s %s [SEALED]}", r.ID, r.Site, r.State)
}

// GoString leaves out the keys under %#v.
func (r engineRow) GoString() string { return r.String() }

// LogValue leaves out the keys in slog records.
func (r engineRow) LogValue() slog.Value { return slog.StringValue(r.String()) }

const engineColumns = `id, site, name, fingerprint, state, registered, changed, last_seen, address, public_key, engine_key, key_version, kek`

func scanEngine(sc scanner) (*engineRow, error) {
	var r engineRow
	var registered, changed int64
	var lastSeen sql.NullInt64
	if err := sc.Scan(&r.ID, &r.Site, &r.Name, &r.Fingerprint, &r.State, &registered, &changed, &lastSeen, &r.Address,
		&r.publicKey, &r.engineKey, &r.keyVersion, &r.kek); err != nil {
		return nil, err
	}
	r.Registered, r.Changed = stamp(registered), stamp(changed)
	if lastSeen.Valid {
		r.LastSeen = stamp(lastSeen.Int64)
	}
	return &r, nil
}

func (v *Vault) loadEngine(ctx context.Context, q querier, id string) (*engineRow, error) {
	if !names.ValidEngineID(id) {
		return nil, fmt.Errorf("engine: %w", ErrNotFound)
	}
	r, err := scanEngine(q.QueryRowContext(ctx, `SELECT `+engineColumns+` FROM engines WHERE id = ?`, id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("engine %s: %w", id, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("vault: engine: %w", err)
	}
	return r, nil
}

// ListEngines returns every engine, by site then id.
func (v *Vault) ListEngines(ctx context.Context) ([]EngineInfo, error) {
	rows, err := v.db.QueryContext(ctx, `SELECT `+engineColumns+` FROM engines ORDER BY site, id`)
	if err != nil {
		return nil, fmt.Errorf("vault: list engines: %w", err)
	}
	defer rows.Close()
	out := []EngineInfo{}
	for rows.Next() {
		r, err := scanEngine(rows)
		if err != nil {
			return nil, fmt.Errorf("vault: list engines: %w", err)
		}
		out = append(out, r.EngineInfo)
	}
	return out, rows.Err()
}

// ApproveEngine lets a pending engine in: it gets an engine key of its own,
// which, with its site's keys and connector, it can fetch from then on. It
// returns ErrRevoked for a revoked engine, which must register a new key.
func (v *Vault) ApproveEngine(ctx context.Context, id string) (EngineInfo, error) {
	key := make([]byte, engineKeyLen)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return EngineInfo{}, fmt.Errorf("vault: approve engine: %w", err)
	}
	sealed, kek, err := v.seal(ctx, key, engineKeyAAD(id))
	if err != nil {
		return EngineInfo{}, err
	}
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return EngineInfo{}, fmt.Errorf("vault: approve engine: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	r, err := v.loadEngine(ctx, tx, id)
	if err != nil {
		return EngineInfo{}, err
	}
	switch r.State {
	case EngineRevoked:
		return EngineInfo{}, fmt.Errorf("engine %s: %w", id, ErrRevoked)
	case EngineApproved:
		return r.EngineInfo, tx.Commit()
	}
	now := v.now().UnixNano()
	if _, err := tx.ExecContext(ctx, `UPDATE engines SET state = 'approved', engine_key = ?, key_version = key_version + 1, kek = ?, changed = ? WHERE id = ?`,
		sealed, kek, now, id); err != nil {
		return EngineInfo{}, fmt.Errorf("vault: approve engine: %w", err)
	}
	r, err = v.loadEngine(ctx, tx, id)
	if err != nil {
		return EngineInfo{}, err
	}
	if err := tx.Commit(); err != nil {
		return EngineInfo{}, fmt.Errorf("vault: approve engine: %w", err)
	}
	v.forgetEngineKey(id)
	v.log.Info("engine approved", slog.String("engine", id), slog.String("site", r.Site))
	return r.EngineInfo, nil
}

// RevokeEngine cuts an engine off: its key is dropped (it can open no reply
// and send no request from now on), and its site's key is rotated so that
// its copy opens no new work. The caller closes its connector sessions.
func (v *Vault) RevokeEngine(ctx context.Context, id string) (EngineInfo, error) {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return EngineInfo{}, fmt.Errorf("vault: revoke engine: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	r, err := v.loadEngine(ctx, tx, id)
	if err != nil {
		return EngineInfo{}, err
	}
	if r.State == EngineRevoked {
		return r.EngineInfo, tx.Commit()
	}
	if _, err := tx.ExecContext(ctx, `UPDATE engines SET state = 'revoked', engine_key = NULL, changed = ? WHERE id = ?`,
		v.now().UnixNano(), id); err != nil {
		return EngineInfo{}, fmt.Errorf("vault: revoke engine: %w", err)
	}
	if r.State == EngineApproved {
		if _, err := v.addSiteKeyVersion(ctx, tx, r.Site); err != nil {
			return EngineInfo{}, err
		}
	}
	r, err = v.loadEngine(ctx, tx, id)
	if err != nil {
		return EngineInfo{}, err
	}
	if err := tx.Commit(); err != nil {
		return EngineInfo{}, fmt.Errorf("vault: revoke engine: %w", err)
	}
	v.forgetEngineKey(id)
	v.log.Warn("engine revoked; site key rotated", slog.String("engine", id), slog.String("site", r.Site))
	return r.EngineInfo, nil
}

// EnginePublicKey returns an engine's public key, state and site, for
// checking its signatures.
func (v *Vault) EnginePublicKey(ctx context.Context, id string) (*ecdsa.PublicKey, EngineInfo, error) {
	r, err := v.loadEngine(ctx, v.db, id)
	if err != nil {
		return nil, EngineInfo{}, err
	}
	pub, err := enroll.ParsePublicKey(r.publicKey)
	if err != nil {
		return nil, EngineInfo{}, fmt.Errorf("vault: engine %s: stored key: %w", id, err)
	}
	return pub, r.EngineInfo, nil
}

// TouchEngine records an engine's check-in.
func (v *Vault) TouchEngine(ctx context.Context, id, address string) error {
	_, err := v.exec(ctx, `UPDATE engines SET last_seen = ?, address = ? WHERE id = ?`, v.now().UnixNano(), logSafe(address), id)
	if err != nil {
		return fmt.Errorf("vault: touch engine: %w", err)
	}
	return nil
}

// engineKeyOf returns an approved engine's key and version, and its site.
// Unapproved, revoked and unknown engines are ErrNotFound, ErrPending or
// ErrRevoked. Keys are cached (cleared on approval and revocation).
func (v *Vault) engineKeyOf(ctx context.Context, id string) (key []byte, version int, site string, err error) {
	if c, ok := v.engineKeys.Load(id); ok {
		ck := c.(cachedEngineKey)
		return append([]byte(nil), ck.key...), ck.version, ck.site, nil
	}
	r, err := v.loadEngine(ctx, v.db, id)
	if err != nil {
		return nil, 0, "", err
	}
	switch r.State {
	case EnginePending:
		return nil, 0, "", fmt.Errorf("engine %s: %w", id, ErrPending)
	case EngineRevoked:
		return nil, 0, "", fmt.Errorf("engine %s: %w", id, ErrRevoked)
	}
	key, err = v.unseal(ctx, r.engineKey, engineKeyAAD(id), r.kek)
	if err != nil {
		return nil, 0, "", err
	}
	if len(key) != engineKeyLen {
		clear(key)
		return nil, 0, "", fmt.Errorf("vault: engine key of %s has a bad length", id)
	}
	v.engineKeys.Store(id, cachedEngineKey{key: append([]byte(nil), key...), version: r.keyVersion, site: r.Site})
	// A revocation that committed while the key was being unsealed has
	// already cleared the cache, before the key above went in: look
	// again, so that a revoked engine's key is never kept.
	if again, err := v.loadEngine(ctx, v.db, id); err != nil || again.State != EngineApproved {
		v.forgetEngineKey(id)
		clear(key)
		if err == nil {
			err = fmt.Errorf("engine %s: %w", id, ErrRevoked)
		}
		return nil, 0, "", err
	}
	return key, r.keyVersion, r.Site, nil
}

type cachedEngineKey struct {
	key     []byte
	version int
	site    string
}

// String redacts the key.
func (c cachedEngineKey) String() string {
	return fmt.Sprintf("engine key v%d of site %s [REDACTED]", c.version, c.site)
}

// GoString redacts the key under %#v.
func (c cachedEngineKey) GoString() string { return c.String() }

// LogValue redacts the key in slog records.
func (c cachedEngineKey) LogValue() slog.Value { return slog.StringValue(c.String()) }

// forgetEngineKey drops a cached engine key, wiping it.
func (v *Vault) forgetEngineKey(id string) {
	if c, ok := v.engineKeys.LoadAndDelete(id); ok {
		clear(c.(cachedEngineKey).key)
	}
}

// EngineConfigFor builds id's configuration. builtinURL is where engines
// reach the vault's built-in connector (used when the site's connector is
// builtin).
func (v *Vault) EngineConfigFor(ctx context.Context, id, builtinURL string) (*enroll.EngineConfig, error) {
	r, err := v.loadEngine(ctx, v.db, id)
	if err != nil {
		return nil, err
	}
	cfg := &enroll.EngineConfig{ID: id, Site: r.Site, State: r.State, VaultTime: v.now().UnixMilli()}
	if r.State != EngineApproved {
		return cfg, nil
	}
	pub, err := enroll.ParsePublicKey(r.publicKey)
	if err != nil {
		return nil, fmt.Errorf("vault: engine %s: stored key: %w", id, err)
	}
	key, version, _, err := v.engineKeyOf(ctx, id)
	if err != nil {
		return nil, err
	}
	wrapped, err := enroll.Wrap(pub, enroll.EngineKeyLabel(id, version), key)
	clear(key)
	if err != nil {
		return nil, err
	}
	cfg.EngineKey = &enroll.WrappedKey{Version: version, Wrapped: wrapped}
	versions, err := v.siteKeyVersions(ctx, r.Site)
	if err != nil {
		return nil, err
	}
	defer wipeVersions(versions)
	for _, kv := range versions {
		w, err := enroll.Wrap(pub, enroll.SiteKeyLabel(r.Site, kv.Version), kv.Key)
		if err != nil {
			return nil, err
		}
		cfg.SiteKeys = append(cfg.SiteKeys, enroll.WrappedKey{Version: kv.Version, Wrapped: w})
	}
	conn, err := v.siteConnector(ctx, r.Site)
	if err != nil {
		return nil, err
	}
	defer conn.Wipe()
	cfg.Connector = enroll.Connector{Kind: conn.Kind, URL: conn.URL}
	if conn.Kind == ConnectorBuiltin {
		cfg.Connector.URL = builtinURL
	}
	if len(conn.Secret) > 0 {
		if cfg.Connector.Secret, err = enroll.Wrap(pub, enroll.ConnectorSecretLabel(r.Site), conn.Secret); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}
