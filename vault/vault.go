package vault

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/workitem"
)

// Named errors callers branch on. Every other error is internal: callers
// should treat it as "unavailable" and never show its text to an end user.
var (
	// ErrNotFound means the named user, secret or site does not exist.
	ErrNotFound = errors.New("vault: not found")
	// ErrExists means a user or secret with that name already exists.
	ErrExists = errors.New("vault: already exists")
	// ErrDenied is returned for every failed verification (unknown user,
	// wrong password, wrong or reused TOTP code), whatever the cause.
	ErrDenied = errors.New("vault: access denied")
	// ErrInvalid is wrapped by every validation error; the message names the
	// offending field but never repeats its value.
	ErrInvalid = errors.New("vault: invalid input")
)

// invalid returns a validation error for field.
func invalid(field, why string) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, why)
}

// Option adjusts a Vault at Open.
type Option func(*options)

type options struct {
	now      func() time.Time
	fallback hsm.Provider
	timings  MaintenanceTimings
	// busyTimeout is how long SQLite waits for another process's write
	// lock (defaultBusyTimeout when zero).
	busyTimeout time.Duration
}

// defaultBusyTimeout is how long a write waits for the lock of another
// process (a `sallyport keys` tool, a backup) before it fails. Writers of
// this process never meet each other's lock: they queue for wdb.
const defaultBusyTimeout = 10 * time.Second

// WithFallbackKeys tells the vault to look for a key-encryption key its own
// provider does not hold in p. `sallyport keys migrate` opens the vault on
// the token with the soft keystore as fallback, and re-wraps everything
// under a KEK on the token.
func WithFallbackKeys(p hsm.Provider) Option {
	return func(o *options) { o.fallback = p }
}

// WithClock replaces time.Now, for tests of TOTP steps and item expiry.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}

// Vault is the credential store. It is safe for concurrent use.
type Vault struct {
	// db serves reads outside transactions, on as many connections as
	// there are readers (WAL lets them run beside the writer).
	db *sql.DB
	// wdb is the one connection every write goes through (beginWrite,
	// exec): database/sql queues this process's writers for it, each for
	// as long as its context allows, so that SQLite's busy handler, which
	// is unfair and gives up after busy_timeout, only ever stands between
	// this process and others. The rule: code holding a write
	// transaction writes and reads through that transaction only, and
	// never calls anything that begins another write (it would wait for
	// itself; beginWrite and exec refuse it).
	wdb  *sql.DB
	keys hsm.Provider
	// fallback holds KEKs that keys does not (the soft keystore during a
	// migration to a token); where maps each label seen to its provider.
	fallback hsm.Provider
	where    sync.Map // label → hsm.Provider

	// kekMu guards kek, the label of the KEK that seals new values.
	kekMu sync.RWMutex
	kek   string
	log   *slog.Logger
	sink  audit.Sink
	now   func() time.Time

	// hashSem bounds concurrent argon2id computations (each takes ~19 MiB).
	hashSem chan struct{}
	// dummyHash is verified against for unknown users so that their timing
	// matches that of known users with a wrong password.
	dummyHash phc

	// engineKeys caches approved engines' keys (id → cachedEngineKey).
	engineKeys sync.Map
	// replays remembers the requests taken, so a replayed or redelivered
	// one is acted on once.
	replays *workitem.ReplayCache
	// timings are the maintenance scheduler's (heartbeats, rotations).
	timings MaintenanceTimings
}

// Open opens (creating and migrating) the SQLite vault at path. keys must
// hold the current key-encryption key (hsm.LabelKEK until a rotation):
// Open checks that it seals and opens, and never creates it, so a missing
// or wrong key is a clear error rather than a vault nobody can read.
// log receives operational messages (never secrets); sink receives audit
// events. The database file must not be accessible to group or others, and
// its directory (created 0700 if missing) must not be writable by them.
func Open(ctx context.Context, path string, keys hsm.Provider, log *slog.Logger, sink audit.Sink, opts ...Option) (*Vault, error) {
	if keys == nil {
		return nil, errors.New("vault: no key provider")
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if sink == nil {
		sink = audit.Log{L: log}
	}
	o := options{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if err := prepareDBFile(path, log); err != nil {
		return nil, err
	}
	busyTimeout := o.busyTimeout
	if busyTimeout <= 0 {
		busyTimeout = defaultBusyTimeout
	}
	// The _pragma parameters apply to every pooled connection, which
	// matters for foreign_keys (a per-connection setting). _txlock=immediate
	// takes the write lock at BEGIN, so a read-modify-write transaction
	// waits (busy_timeout) for another process's writer instead of failing
	// on upgrade.
	dsn := fmt.Sprintf("%s?_pragma=busy_timeout(%d)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)"+
		"&_pragma=synchronous(FULL)&_pragma=secure_delete(1)&_txlock=immediate", path, busyTimeout.Milliseconds())
	wdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("vault: open database: %w", err)
	}
	// One connection, kept open: writers wait for it in turn.
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		_ = wdb.Close() // the open error is the one worth reporting
		return nil, fmt.Errorf("vault: open database: %w", err)
	}
	v := &Vault{
		db:       db,
		wdb:      wdb,
		keys:     keys,
		log:      log,
		sink:     sink,
		now:      o.now,
		hashSem:  make(chan struct{}, 2*runtime.GOMAXPROCS(0)),
		fallback: o.fallback,
		replays:  workitem.NewReplayCache(0, o.now),
		timings:  o.timings.withDefaults(),
	}
	if err := v.migrate(ctx); err != nil {
		_ = v.closeDB() // the open error is the one worth reporting
		return nil, err
	}
	if err := v.loadKEK(ctx); err != nil {
		_ = v.closeDB() // the open error is the one worth reporting
		return nil, err
	}
	dummy, err := newPHC([]byte("sallyport-dummy-password"))
	if err != nil {
		_ = v.closeDB() // the open error is the one worth reporting
		return nil, err
	}
	v.dummyHash = dummy
	return v, nil
}

// prepareDBFile creates the directory (0700) and the file (0600) before
// SQLite touches them, and refuses a file that group or others can read, or
// a directory they can write.
// SQLite gives its -wal and -shm files the database file's mode.
func prepareDBFile(path string, log *slog.Logger) error {
	if path == "" || strings.ContainsRune(path, '?') {
		return fmt.Errorf("vault: database path %q is not usable", path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("vault: database directory: %w", err)
	}
	di, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("vault: database directory: %w", err)
	}
	// Others who can write the directory could swap the database or its
	// WAL for their own: refuse. Merely listing it reveals only file names,
	// so that gets a warning.
	if di.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("vault: database directory %s: mode %v lets others write to it; chmod 700 it", dir, di.Mode().Perm())
	}
	if di.Mode().Perm()&0o077 != 0 {
		log.Warn("vault database directory is readable by others; chmod 700 it", slog.String("dir", dir))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) // #nosec G304 -- operator-chosen database path
	if err != nil {
		return fmt.Errorf("vault: database file: %w", err)
	}
	fi, err := f.Stat()
	_ = f.Close() // opened only to create it; nothing was written
	if err != nil {
		return fmt.Errorf("vault: database file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("vault: database file %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("vault: database file %s: mode %v is readable by others; chmod 600 it", path, fi.Mode().Perm())
	}
	return nil
}

// Close closes the database. It does not close the key provider, which the
// caller owns.
func (v *Vault) Close() error {
	v.engineKeys.Range(func(id, _ any) bool {
		v.forgetEngineKey(id.(string))
		return true
	})
	return v.closeDB()
}

// closeDB closes the readers, then the writer, whose connection, closing
// last, checkpoints the WAL into the database file.
func (v *Vault) closeDB() error {
	return errors.Join(v.db.Close(), v.wdb.Close())
}

// errNestedWrite is a write begun with the context of a write
// transaction: it would wait for the connection that transaction holds.
// It is a bug, not a passing condition.
var errNestedWrite = errors.New("vault: a write begun inside another write's transaction")

// holdsWriter marks the context of a write transaction (beginWrite).
type holdsWriter struct{}

// beginWrite begins a write transaction on the writer connection, after
// the writers before it (for as long as ctx allows). The context it
// returns goes with the transaction: use it for everything done inside,
// so that a nested beginWrite or exec fails at once instead of waiting
// for the connection the transaction holds.
func (v *Vault) beginWrite(ctx context.Context) (context.Context, *sql.Tx, error) {
	if ctx.Value(holdsWriter{}) != nil {
		return ctx, nil, errNestedWrite
	}
	tx, err := v.wdb.BeginTx(ctx, nil)
	if err != nil {
		return ctx, nil, err
	}
	return context.WithValue(ctx, holdsWriter{}, true), tx, nil
}

// exec runs one write statement (its own transaction) on the writer
// connection, after the writers before it.
func (v *Vault) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if ctx.Value(holdsWriter{}) != nil {
		return nil, errNestedWrite
	}
	return v.wdb.ExecContext(ctx, query, args...)
}

// migrations are applied in order; migrations[i] takes the schema from
// version i to i+1. Never edit one that has shipped: append a new one.
var migrations = []string{
	`
CREATE TABLE users (
	name           TEXT PRIMARY KEY,
	password_hash  TEXT NOT NULL,
	totp_seed      BLOB,               -- sealed under the KEK; NULL when TOTP is off
	totp_last_step INTEGER NOT NULL DEFAULT 0,
	created        INTEGER NOT NULL    -- unix nanoseconds
) STRICT;
CREATE TABLE user_groups (
	user  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
	grp   TEXT NOT NULL,
	PRIMARY KEY (user, grp)
) STRICT;
CREATE TABLE secrets (
	name             TEXT PRIMARY KEY,
	host             TEXT NOT NULL,
	port             INTEGER NOT NULL,
	username         TEXT NOT NULL,
	kind             TEXT NOT NULL CHECK (kind IN ('password', 'private-key')),
	wrapped_dek      BLOB NOT NULL,    -- the data key, sealed under the KEK
	credential       BLOB NOT NULL,    -- the credential, sealed under the data key
	host_key         BLOB,             -- SSH wire format; NULL until pinned
	pin_on_first_use INTEGER NOT NULL CHECK (pin_on_first_use IN (0, 1)),
	created          INTEGER NOT NULL,
	updated          INTEGER NOT NULL
) STRICT;
CREATE TABLE secret_allow (
	secret TEXT NOT NULL REFERENCES secrets(name) ON DELETE CASCADE,
	entry  TEXT NOT NULL,
	PRIMARY KEY (secret, entry)
) STRICT;
CREATE INDEX secret_allow_entry ON secret_allow(entry);
CREATE TABLE site_keys (
	site        TEXT PRIMARY KEY,
	wrapped_key BLOB NOT NULL,         -- sealed under the KEK
	created     INTEGER NOT NULL
) STRICT;
`,
	// Version 2: every sealed value records the label of the KEK that
	// sealed it, so that a KEK rotation can proceed row by row and resume.
	`
ALTER TABLE secrets ADD COLUMN kek TEXT NOT NULL DEFAULT 'sallyport-kek';
ALTER TABLE site_keys ADD COLUMN kek TEXT NOT NULL DEFAULT 'sallyport-kek';
ALTER TABLE users ADD COLUMN kek TEXT NOT NULL DEFAULT 'sallyport-kek';
CREATE TABLE kek_state (
	id      INTEGER PRIMARY KEY CHECK (id = 1),
	current TEXT NOT NULL,             -- seals new values
	target  TEXT                       -- a rotation in progress re-wraps to this
) STRICT;
INSERT INTO kek_state (id, current) VALUES (1, 'sallyport-kek');
`,
	// Version 3: users and secrets can be disabled without being removed.
	`
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1));
ALTER TABLE secrets ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1));
`,
	// Version 4: sites with their connectors and versioned keys, engines,
	// and a site for every secret (existing ones go to "default").
	`
CREATE TABLE sites (
	name             TEXT PRIMARY KEY,
	connector        TEXT NOT NULL CHECK (connector IN ('builtin', 'amqp')),
	connector_url    TEXT NOT NULL DEFAULT '',
	connector_secret BLOB,             -- sealed under the KEK: the broker password
	created          INTEGER NOT NULL,
	kek              TEXT NOT NULL
) STRICT;
INSERT INTO sites (name, connector, created, kek) SELECT site, 'builtin', created, kek FROM site_keys;
INSERT OR IGNORE INTO sites (name, connector, created, kek)
	VALUES ('default', 'builtin', CAST(strftime('%s', 'now') AS INTEGER) * 1000000000, (SELECT current FROM kek_state));
CREATE TABLE site_key_versions (
	id          TEXT PRIMARY KEY,      -- "SITE/VERSION"
	site        TEXT NOT NULL,
	version     INTEGER NOT NULL CHECK (version >= 1),
	wrapped_key BLOB NOT NULL,         -- sealed under the KEK
	created     INTEGER NOT NULL,
	retired     INTEGER,               -- when a newer version took over
	kek         TEXT NOT NULL,
	UNIQUE (site, version)
) STRICT;
INSERT INTO site_key_versions (id, site, version, wrapped_key, created, kek)
	SELECT site || '/1', site, 1, wrapped_key, created, kek FROM site_keys;
DROP TABLE site_keys;
ALTER TABLE secrets ADD COLUMN site TEXT NOT NULL DEFAULT 'default';
CREATE INDEX secrets_site ON secrets(site);
CREATE TABLE engines (
	id          TEXT PRIMARY KEY,      -- hex of the first 64 bits of SHA-256(public key)
	site        TEXT NOT NULL,
	name        TEXT NOT NULL DEFAULT '',
	public_key  BLOB NOT NULL,         -- PKIX DER, ECDSA P-256
	fingerprint TEXT NOT NULL,
	state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'revoked')),
	engine_key  BLOB,                  -- sealed under the KEK; set on approval, dropped on revocation
	key_version INTEGER NOT NULL DEFAULT 0,
	registered  INTEGER NOT NULL,
	changed     INTEGER NOT NULL,
	last_seen   INTEGER,
	address     TEXT NOT NULL DEFAULT '',
	kek         TEXT NOT NULL
) STRICT;
CREATE INDEX engines_site ON engines(site);
`,
	// Version 5: heartbeats and rotations. Every secret has a schedule
	// row; rotations keep their sealed candidates until settled; history
	// holds every step (never a value).
	`
CREATE TABLE secret_schedule (
	secret           TEXT PRIMARY KEY REFERENCES secrets(name) ON DELETE CASCADE ON UPDATE CASCADE,
	heartbeat_every  INTEGER NOT NULL DEFAULT 0,  -- nanoseconds; 0 = off
	rotate_every     INTEGER NOT NULL DEFAULT 0,
	rotate_after_use INTEGER NOT NULL DEFAULT 0 CHECK (rotate_after_use IN (0, 1)),
	change_method    TEXT NOT NULL,               -- self, privileged:SECRET, key
	password_rule    TEXT NOT NULL DEFAULT '',
	generation       INTEGER NOT NULL DEFAULT 0,  -- +1 per promoted rotation
	hb_due           INTEGER NOT NULL DEFAULT 0,  -- next heartbeat (unix ns); 0 = none planned
	hb_item          TEXT NOT NULL DEFAULT '',    -- the heartbeat item in flight
	hb_resend        INTEGER NOT NULL DEFAULT 0,  -- no other heartbeat before this
	hb_outcome       TEXT NOT NULL DEFAULT '',
	hb_at            INTEGER NOT NULL DEFAULT 0,
	hb_engine        TEXT NOT NULL DEFAULT '',
	rotate_due       INTEGER NOT NULL DEFAULT 0,
	rotate_now       INTEGER NOT NULL DEFAULT 0 CHECK (rotate_now IN (0, 1)),
	rotated_at       INTEGER NOT NULL DEFAULT 0,
	used             INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1)),
	last_use         INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO secret_schedule (secret, change_method)
	SELECT name, CASE kind WHEN 'private-key' THEN 'key' ELSE 'self' END FROM secrets;
CREATE TABLE rotations (
	id              TEXT PRIMARY KEY,
	secret          TEXT NOT NULL REFERENCES secrets(name) ON DELETE CASCADE ON UPDATE CASCADE,
	state           TEXT NOT NULL CHECK (state IN ('open', 'done', 'failed')),
	phase           TEXT NOT NULL CHECK (phase IN ('change', 'verify')),
	candidate       BLOB NOT NULL,                -- sealed under the secret's data key; empty once settled
	candidate_kind  TEXT NOT NULL,
	reason          TEXT NOT NULL,
	base_generation INTEGER NOT NULL,             -- the credential generation it replaces
	item            TEXT NOT NULL DEFAULT '',     -- the item in flight
	sent            INTEGER NOT NULL DEFAULT 0,
	resend          INTEGER NOT NULL DEFAULT 0,   -- no other item before this
	verify_set      TEXT NOT NULL DEFAULT '',     -- rotation ids of a verify's candidates, in order
	outcome         TEXT NOT NULL DEFAULT '',
	created         INTEGER NOT NULL,
	updated         INTEGER NOT NULL
) STRICT;
CREATE INDEX rotations_secret ON rotations(secret, state);
CREATE TABLE secret_history (
	id       INTEGER PRIMARY KEY AUTOINCREMENT,
	secret   TEXT NOT NULL REFERENCES secrets(name) ON DELETE CASCADE ON UPDATE CASCADE,
	at       INTEGER NOT NULL,
	event    TEXT NOT NULL,
	outcome  TEXT NOT NULL,
	engine   TEXT NOT NULL DEFAULT '',
	rotation TEXT NOT NULL DEFAULT '',
	detail   TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX secret_history_secret ON secret_history(secret, id);
`,
	// Version 6: RDP targets. An RDP secret's host_key is the SHA-256 of
	// its TLS certificate.
	`
ALTER TABLE secrets ADD COLUMN protocol TEXT NOT NULL DEFAULT 'ssh' CHECK (protocol IN ('ssh', 'rdp'));
`,
}

func (v *Vault) migrate(ctx context.Context) error {
	if _, err := v.exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("vault: migrate: %w", err)
	}
	for {
		done, err := v.migrateOne(ctx)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// migrateOne applies the next migration, if any, in its own transaction.
func (v *Vault) migrateOne(ctx context.Context) (done bool, err error) {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return false, fmt.Errorf("vault: migrate: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	var version int
	err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
			return false, fmt.Errorf("vault: migrate: %w", err)
		}
	case err != nil:
		return false, fmt.Errorf("vault: migrate: %w", err)
	}
	if version > len(migrations) || version < 0 {
		return false, fmt.Errorf("vault: database schema version %d is newer than this sallyport (%d)", version, len(migrations))
	}
	if version == len(migrations) {
		return true, tx.Commit()
	}
	if _, err := tx.ExecContext(ctx, migrations[version]); err != nil {
		return false, fmt.Errorf("vault: migrate to version %d: %w", version+1, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, version+1); err != nil {
		return false, fmt.Errorf("vault: migrate: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("vault: migrate: %w", err)
	}
	v.log.Info("vault schema migrated", slog.Int("version", version+1))
	return false, nil
}

// seal wraps plaintext under the current KEK and returns that KEK's label,
// which the caller stores next to the sealed value.
func (v *Vault) seal(ctx context.Context, plaintext []byte, aad string) ([]byte, string, error) {
	v.kekMu.RLock()
	label := v.kek
	v.kekMu.RUnlock()
	out, err := v.sealUnder(ctx, label, plaintext, aad)
	return out, label, err
}

func (v *Vault) sealUnder(ctx context.Context, label string, plaintext []byte, aad string) ([]byte, error) {
	out, err := v.provider(label).Seal(ctx, label, plaintext, []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("vault: seal under key-encryption key %q: %w", label, err)
	}
	return out, nil
}

// unseal reverses seal; label is the one seal returned.
func (v *Vault) unseal(ctx context.Context, sealed []byte, aad, label string) ([]byte, error) {
	out, err := v.provider(label).Open(ctx, label, sealed, []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("vault: open under key-encryption key %q: %w", label, err)
	}
	return out, nil
}

// provider returns the key provider that holds the KEK called label: the
// vault's own, or the fallback if only that one holds it.
func (v *Vault) provider(label string) hsm.Provider {
	if v.fallback == nil {
		return v.keys
	}
	if p, ok := v.where.Load(label); ok {
		return p.(hsm.Provider)
	}
	p := v.keys
	// A failed lookup is not cached: the next call asks again.
	ok, err := v.keys.HasKey(context.Background(), label)
	if err != nil {
		return p
	}
	if !ok {
		if fok, ferr := v.fallback.HasKey(context.Background(), label); ferr != nil || !fok {
			return p
		}
		p = v.fallback
	}
	v.where.Store(label, p)
	return p
}

// stamp converts a stored unix-nanosecond time.
func stamp(ns int64) time.Time { return time.Unix(0, ns).UTC() }
