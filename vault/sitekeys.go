package vault

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"

	"github.com/sallyport/sallyport/names"
)

// siteKeyLen is the AES-256 key length of a site key.
const siteKeyLen = 32

func siteKeyAAD(site string) string { return "site-key:" + site }

// SiteKey returns site's 32-byte AES-256 work-item key, creating it on the
// first call. It is stored only wrapped by the key-encryption key. The
// caller owns the returned slice and should clear it when done.
func (v *Vault) SiteKey(ctx context.Context, site string) ([]byte, error) {
	if !names.ValidSiteName(site) {
		return nil, invalid("site", "must be 1..64 characters of [A-Za-z0-9_-], not starting with '-'")
	}
	key, err := v.lookupSiteKey(ctx, site)
	if !errors.Is(err, ErrNotFound) {
		return key, err
	}
	fresh := make([]byte, siteKeyLen)
	defer clear(fresh)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("vault: site key: %w", err)
	}
	wrapped, kek, err := v.seal(ctx, fresh, siteKeyAAD(site))
	if err != nil {
		return nil, err
	}
	// Of two racing creators, the first insert wins; both then read it back.
	res, err := v.db.ExecContext(ctx, `INSERT INTO site_keys (site, wrapped_key, created, kek) VALUES (?, ?, ?, ?) ON CONFLICT (site) DO NOTHING`,
		site, wrapped, v.now().UnixNano(), kek)
	if err != nil {
		return nil, fmt.Errorf("vault: site key: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		v.log.Info("site key created", slog.String("site", site))
	}
	return v.lookupSiteKey(ctx, site)
}

// lookupSiteKey returns site's key, or ErrNotFound; it never creates one,
// so a forged item naming an arbitrary site cannot make the vault store keys.
func (v *Vault) lookupSiteKey(ctx context.Context, site string) ([]byte, error) {
	if !names.ValidSiteName(site) {
		return nil, fmt.Errorf("site: %w", ErrNotFound)
	}
	var wrapped []byte
	var kek string
	err := v.db.QueryRowContext(ctx, `SELECT wrapped_key, kek FROM site_keys WHERE site = ?`, site).Scan(&wrapped, &kek)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("site %q: %w", site, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("vault: site key: %w", err)
	}
	key, err := v.unseal(ctx, wrapped, siteKeyAAD(site), kek)
	if err != nil {
		return nil, err
	}
	if len(key) != siteKeyLen {
		clear(key)
		return nil, fmt.Errorf("vault: site key for %q has a bad length", site)
	}
	return key, nil
}
