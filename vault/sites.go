package vault

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sallyport/sallyport/names"
)

// Site connector kinds.
const (
	// ConnectorBuiltin is the TLS WebSocket connector the vault serves.
	ConnectorBuiltin = "builtin"
	// ConnectorAMQP is a RabbitMQ broker.
	ConnectorAMQP = "amqp"
)

// DefaultSite is the site of every secret stored before sites existed, and
// of `sallyport dev`'s engine.
const DefaultSite = "default"

// SiteKeyGrace is how long a site key version that a newer one replaced
// still opens items: longer than any item lives (a password change's 20
// minutes and its 5 of margin), so a rotation loses nothing queued.
const SiteKeyGrace = 30 * time.Minute

// Bounds on connector settings, and the site key's length (AES-256).
const (
	siteKeyLen         = 32
	maxConnectorURL    = 512
	maxConnectorSecret = 1024
)

// ConnectorSpec says how a site's engines and the vault reach each other.
type ConnectorSpec struct {
	// Kind is ConnectorBuiltin or ConnectorAMQP.
	Kind string
	// URL is the broker for ConnectorAMQP: amqp:// or amqps://, with a
	// user name but never a password. Empty for ConnectorBuiltin.
	URL string
	// Secret is the broker password for ConnectorAMQP (read from a file
	// by the caller); sealed under the KEK at rest. Call Wipe when done.
	Secret []byte
}

// Wipe overwrites the secret.
func (c *ConnectorSpec) Wipe() {
	clear(c.Secret)
	c.Secret = nil
}

// String redacts the secret.
func (c ConnectorSpec) String() string {
	return fmt.Sprintf("connector{%s %s [REDACTED]}", c.Kind, c.URL)
}

// GoString redacts the secret under %#v.
func (c ConnectorSpec) GoString() string { return c.String() }

// LogValue redacts the secret in slog records.
func (c ConnectorSpec) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalJSON redacts the secret: a ConnectorSpec is not a wire type (the
// API's body is siteRequest).
func (c ConnectorSpec) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }

func (c *ConnectorSpec) validate() error {
	switch c.Kind {
	case ConnectorBuiltin:
		if c.URL != "" || len(c.Secret) > 0 {
			return invalid("connector", "the built-in connector takes no URL and no secret")
		}
		return nil
	case ConnectorAMQP:
	default:
		return invalid("connector", "must be builtin or amqp")
	}
	if len(c.URL) > maxConnectorURL {
		return invalid("connector_url", fmt.Sprintf("at most %d bytes", maxConnectorURL))
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return invalid("connector_url", "must look like amqps://user@host:5671/vhost")
	}
	if _, has := u.User.Password(); has {
		return invalid("connector_url", "must not hold a password: give it in a file (--connector-secret-file)")
	}
	if len(c.Secret) > maxConnectorSecret {
		return invalid("connector_secret", fmt.Sprintf("at most %d bytes", maxConnectorSecret))
	}
	return nil
}

// SiteSpec describes a new site.
type SiteSpec struct {
	Name      string
	Connector ConnectorSpec
}

// SiteInfo is everything about a site but its keys and its broker
// password.
type SiteInfo struct {
	Name         string `json:"name"`
	Connector    string `json:"connector"`
	ConnectorURL string `json:"connector_url,omitempty"`
	// ConnectorSecret says whether a broker password is stored.
	ConnectorSecret bool `json:"connector_secret"`
	// KeyVersion is the current site key's version.
	KeyVersion int `json:"key_version"`
	// Engines counts the site's engines by state.
	Engines map[string]int `json:"engines"`
	// Secrets counts the site's secrets.
	Secrets int       `json:"secrets"`
	Created time.Time `json:"created"`
}

func connectorSecretAAD(site string) string { return "connector-secret:v1:" + site }

// siteKeyVersionAAD binds a wrapped site key to its "SITE/VERSION" id.
// Version 1 keeps the binding of the keys made before versions existed.
func siteKeyVersionAAD(id string) string {
	site, version, _ := strings.Cut(id, "/")
	if version == "1" {
		return "site-key:" + site
	}
	return "site-key:" + id
}

func siteKeyID(site string, version int) string { return site + "/" + strconv.Itoa(version) }

// AddSite creates a site and its first key. It returns ErrExists if the
// name is taken.
func (v *Vault) AddSite(ctx context.Context, s SiteSpec) error {
	if !names.ValidSiteName(s.Name) {
		return invalid("name", "must be 1..64 characters of [A-Za-z0-9_-], not starting with '-'")
	}
	if err := s.Connector.validate(); err != nil {
		return err
	}
	sealed, kek, err := v.sealConnectorSecret(ctx, s.Name, s.Connector.Secret)
	if err != nil {
		return err
	}
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return fmt.Errorf("vault: add site: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	res, err := tx.ExecContext(ctx, `INSERT INTO sites (name, connector, connector_url, connector_secret, created, kek)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING`,
		s.Name, s.Connector.Kind, s.Connector.URL, sealed, v.now().UnixNano(), kek)
	if err != nil {
		return fmt.Errorf("vault: add site: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("site %q: %w", s.Name, ErrExists)
	}
	if _, err := v.addSiteKeyVersion(ctx, tx, s.Name); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("vault: add site: %w", err)
	}
	v.log.Info("site added", slog.String("site", s.Name), slog.String("connector", s.Connector.Kind))
	return nil
}

// sealConnectorSecret seals a broker password (nil stays nil).
func (v *Vault) sealConnectorSecret(ctx context.Context, site string, secret []byte) ([]byte, string, error) {
	if len(secret) == 0 {
		return nil, v.currentKEK(), nil
	}
	return v.seal(ctx, secret, connectorSecretAAD(site))
}

// SetSiteConnector moves a site to another connector (or changes its
// broker or password). Engines pick it up at their next configuration
// pull; items queued on the old connector stay valid there until they are
// taken or expire, and engines keep draining it for that long.
func (v *Vault) SetSiteConnector(ctx context.Context, site string, c ConnectorSpec) error {
	if !names.ValidSiteName(site) {
		return fmt.Errorf("site: %w", ErrNotFound)
	}
	if err := c.validate(); err != nil {
		return err
	}
	sealed, kek, err := v.sealConnectorSecret(ctx, site, c.Secret)
	if err != nil {
		return err
	}
	res, err := v.exec(ctx, `UPDATE sites SET connector = ?, connector_url = ?, connector_secret = ?, kek = ? WHERE name = ?`,
		c.Kind, c.URL, sealed, kek, site)
	if err != nil {
		return fmt.Errorf("vault: set connector: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("site %q: %w", site, ErrNotFound)
	}
	v.log.Info("site connector changed", slog.String("site", site), slog.String("connector", c.Kind))
	return nil
}

// addSiteKeyVersion makes the next key version of site inside tx, retires
// the current one, and returns the new version.
func (v *Vault) addSiteKeyVersion(ctx context.Context, tx *sql.Tx, site string) (int, error) {
	var current sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT max(version) FROM site_key_versions WHERE site = ?`, site).Scan(&current); err != nil {
		return 0, fmt.Errorf("vault: site key: %w", err)
	}
	next := int(current.Int64) + 1
	key := make([]byte, siteKeyLen)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return 0, fmt.Errorf("vault: site key: %w", err)
	}
	id := siteKeyID(site, next)
	wrapped, kek, err := v.seal(ctx, key, siteKeyVersionAAD(id))
	if err != nil {
		return 0, err
	}
	now := v.now().UnixNano()
	if _, err := tx.ExecContext(ctx, `UPDATE site_key_versions SET retired = ? WHERE site = ? AND retired IS NULL`, now, site); err != nil {
		return 0, fmt.Errorf("vault: site key: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO site_key_versions (id, site, version, wrapped_key, created, kek) VALUES (?, ?, ?, ?, ?, ?)`,
		id, site, next, wrapped, now, kek); err != nil {
		return 0, fmt.Errorf("vault: site key: %w", err)
	}
	// Versions retired for longer than the grace open nothing any more.
	if _, err := tx.ExecContext(ctx, `DELETE FROM site_key_versions WHERE site = ? AND retired IS NOT NULL AND retired < ?`,
		site, now-int64(SiteKeyGrace)); err != nil {
		return 0, fmt.Errorf("vault: site key: %w", err)
	}
	return next, nil
}

// RotateSiteKey makes a new key version for site; the old one still opens
// items for SiteKeyGrace, so nothing queued is lost. Engines get the new
// version at their next configuration pull.
func (v *Vault) RotateSiteKey(ctx context.Context, site string) (int, error) {
	if !names.ValidSiteName(site) {
		return 0, fmt.Errorf("site: %w", ErrNotFound)
	}
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return 0, fmt.Errorf("vault: rotate site key: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	var one int
	switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM sites WHERE name = ?`, site).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return 0, fmt.Errorf("site %q: %w", site, ErrNotFound)
	case err != nil:
		return 0, fmt.Errorf("vault: rotate site key: %w", err)
	}
	version, err := v.addSiteKeyVersion(ctx, tx, site)
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("vault: rotate site key: %w", err)
	}
	v.log.Info("site key rotated", slog.String("site", site), slog.Int("version", version))
	return version, nil
}

// SiteKeyVersion is one usable version of a site key. Key is wiped by the
// caller.
type SiteKeyVersion struct {
	Version int
	Key     []byte
	// Retired is when a newer version replaced it (zero for the current
	// one); it opens items until Retired + SiteKeyGrace.
	Retired time.Time
}

// String redacts the key.
func (k SiteKeyVersion) String() string {
	return fmt.Sprintf("site key v%d [REDACTED]", k.Version)
}

// GoString redacts the key under %#v.
func (k SiteKeyVersion) GoString() string { return k.String() }

// LogValue redacts the key in slog records.
func (k SiteKeyVersion) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalJSON redacts the key; no protocol carries a SiteKeyVersion.
func (k SiteKeyVersion) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// siteKeyVersions returns site's usable key versions, newest first. A site
// that exists but has no key yet (the migrated "default") gets one now.
func (v *Vault) siteKeyVersions(ctx context.Context, site string) ([]SiteKeyVersion, error) {
	if !names.ValidSiteName(site) {
		return nil, fmt.Errorf("site: %w", ErrNotFound)
	}
	for attempt := 0; ; attempt++ {
		rows, err := v.db.QueryContext(ctx, `SELECT id, version, wrapped_key, retired, kek FROM site_key_versions
			WHERE site = ? AND (retired IS NULL OR retired >= ?) ORDER BY version DESC`, site, v.now().UnixNano()-int64(SiteKeyGrace))
		if err != nil {
			return nil, fmt.Errorf("vault: site keys: %w", err)
		}
		var out []SiteKeyVersion
		for rows.Next() {
			var id, kek string
			var version int
			var wrapped []byte
			var retired sql.NullInt64
			if err := rows.Scan(&id, &version, &wrapped, &retired, &kek); err != nil {
				_ = rows.Close()
				wipeVersions(out)
				return nil, fmt.Errorf("vault: site keys: %w", err)
			}
			key, err := v.unseal(ctx, wrapped, siteKeyVersionAAD(id), kek)
			if err != nil {
				_ = rows.Close()
				wipeVersions(out)
				return nil, err
			}
			if len(key) != siteKeyLen {
				clear(key)
				_ = rows.Close()
				wipeVersions(out)
				return nil, fmt.Errorf("vault: site key %s has a bad length", id)
			}
			kv := SiteKeyVersion{Version: version, Key: key}
			if retired.Valid {
				kv.Retired = stamp(retired.Int64)
			}
			out = append(out, kv)
		}
		err = rows.Err()
		_ = rows.Close()
		if err != nil {
			wipeVersions(out)
			return nil, fmt.Errorf("vault: site keys: %w", err)
		}
		if len(out) > 0 || attempt > 0 {
			if len(out) == 0 {
				return nil, fmt.Errorf("site %q: no key", site)
			}
			return out, nil
		}
		if err := v.ensureSiteKey(ctx, site); err != nil {
			return nil, err
		}
	}
}

// ensureSiteKey gives an existing site without a key its first version.
func (v *Vault) ensureSiteKey(ctx context.Context, site string) error {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return fmt.Errorf("vault: site key: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	if ok, err := v.siteExists(ctx, tx, site); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("site %q: %w", site, ErrNotFound)
	}
	var keys int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM site_key_versions WHERE site = ?`, site).Scan(&keys); err != nil {
		return fmt.Errorf("vault: site key: %w", err)
	}
	if keys > 0 {
		return nil
	}
	if _, err := v.addSiteKeyVersion(ctx, tx, site); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("vault: site key: %w", err)
	}
	v.log.Info("site key created", slog.String("site", site))
	return nil
}

func wipeVersions(vs []SiteKeyVersion) {
	for _, kv := range vs {
		clear(kv.Key)
	}
}

// SiteKey returns the current key of site (which must exist), and its
// version. The caller wipes it.
func (v *Vault) SiteKey(ctx context.Context, site string) ([]byte, int, error) {
	vs, err := v.siteKeyVersions(ctx, site)
	if err != nil {
		return nil, 0, err
	}
	for _, kv := range vs[1:] {
		clear(kv.Key)
	}
	return vs[0].Key, vs[0].Version, nil
}

// siteKeyAt returns version of site's key if it still opens items, or
// ErrNotFound.
func (v *Vault) siteKeyAt(ctx context.Context, site string, version int) ([]byte, error) {
	vs, err := v.siteKeyVersions(ctx, site)
	if err != nil {
		return nil, err
	}
	var key []byte
	for _, kv := range vs {
		if kv.Version == version {
			key = kv.Key
			continue
		}
		clear(kv.Key)
	}
	if key == nil {
		return nil, fmt.Errorf("site %q key version %d: %w", site, version, ErrNotFound)
	}
	return key, nil
}

// ListSites returns every site, sorted by name.
func (v *Vault) ListSites(ctx context.Context) ([]SiteInfo, error) {
	rows, err := v.db.QueryContext(ctx, `SELECT name, connector, connector_url, connector_secret IS NOT NULL, created,
		(SELECT coalesce(max(version), 0) FROM site_key_versions WHERE site = sites.name),
		(SELECT count(*) FROM secrets WHERE site = sites.name)
		FROM sites ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("vault: list sites: %w", err)
	}
	defer rows.Close()
	out := []SiteInfo{}
	index := map[string]int{}
	for rows.Next() {
		var s SiteInfo
		var created int64
		if err := rows.Scan(&s.Name, &s.Connector, &s.ConnectorURL, &s.ConnectorSecret, &created, &s.KeyVersion, &s.Secrets); err != nil {
			return nil, fmt.Errorf("vault: list sites: %w", err)
		}
		s.Created, s.Engines = stamp(created), map[string]int{}
		index[s.Name] = len(out)
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("vault: list sites: %w", err)
	}
	erows, err := v.db.QueryContext(ctx, `SELECT site, state, count(*) FROM engines GROUP BY site, state`)
	if err != nil {
		return nil, fmt.Errorf("vault: list sites: %w", err)
	}
	defer erows.Close()
	for erows.Next() {
		var site, state string
		var n int
		if err := erows.Scan(&site, &state, &n); err != nil {
			return nil, fmt.Errorf("vault: list sites: %w", err)
		}
		if i, ok := index[site]; ok {
			out[i].Engines[state] = n
		}
	}
	return out, erows.Err()
}

// siteStamp names a site and what its connector is: kind, URL and a
// digest of the stored (sealed) broker password, so that a changed
// password alone is a change too.
type siteStamp struct {
	Name  string
	kind  string
	stamp string
}

// connectorStamps returns every site's connector stamp.
func (v *Vault) connectorStamps(ctx context.Context) ([]siteStamp, error) {
	rows, err := v.db.QueryContext(ctx, `SELECT name, connector, connector_url, connector_secret FROM sites ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("vault: list sites: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []siteStamp
	for rows.Next() {
		var name, kind, url string
		var sealed []byte
		if err := rows.Scan(&name, &kind, &url, &sealed); err != nil {
			return nil, fmt.Errorf("vault: list sites: %w", err)
		}
		sum := sha256.Sum256(sealed)
		out = append(out, siteStamp{Name: name, kind: kind, stamp: kind + " " + url + " " + hex.EncodeToString(sum[:8])})
	}
	return out, rows.Err()
}

// ShowSite returns one site, or ErrNotFound.
func (v *Vault) ShowSite(ctx context.Context, name string) (SiteInfo, error) {
	all, err := v.ListSites(ctx)
	if err != nil {
		return SiteInfo{}, err
	}
	for _, s := range all {
		if s.Name == name {
			return s, nil
		}
	}
	return SiteInfo{}, fmt.Errorf("site %q: %w", name, ErrNotFound)
}

// siteConnector returns a site's connector settings with its secret opened
// (the caller wipes it).
func (v *Vault) siteConnector(ctx context.Context, site string) (ConnectorSpec, error) {
	var c ConnectorSpec
	var sealed []byte
	var kek string
	err := v.db.QueryRowContext(ctx, `SELECT connector, connector_url, connector_secret, kek FROM sites WHERE name = ?`, site).
		Scan(&c.Kind, &c.URL, &sealed, &kek)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return c, fmt.Errorf("site %q: %w", site, ErrNotFound)
	case err != nil:
		return c, fmt.Errorf("vault: site connector: %w", err)
	}
	if len(sealed) > 0 {
		if c.Secret, err = v.unseal(ctx, sealed, connectorSecretAAD(site), kek); err != nil {
			return c, err
		}
	}
	return c, nil
}

// siteExists reports whether site exists.
func (v *Vault) siteExists(ctx context.Context, q querier, site string) (bool, error) {
	if !names.ValidSiteName(site) {
		return false, nil
	}
	var one int
	switch err := q.QueryRowContext(ctx, `SELECT 1 FROM sites WHERE name = ?`, site).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("vault: site: %w", err)
	}
	return true, nil
}
