package vault

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"

	"github.com/sallyport/sallyport/hsm"
)

// KEK rotation re-wraps every value sealed under the key-encryption key —
// data keys, site keys, TOTP seeds — under a new KEK, one row at a time.
// Each row records the label of the KEK that sealed it and is updated with
// a compare-and-set on that label, so a rotation that is killed half-way
// leaves every row readable under one of the two keys and simply resumes.
// Both keys stay usable until FinishKEKRotation switches new values to the
// new one; the old key is destroyed only after that, by the caller.

// KEKState describes the key-encryption keys in use.
type KEKState struct {
	// Current seals new values.
	Current string
	// Target is the KEK of an unfinished rotation, or empty.
	Target string
	// Pending counts values not yet sealed under Target (all values under
	// another KEK than Current when no rotation is under way).
	Pending int
}

// kekTables are the sealed values: table, key column, sealed column, and
// how each value's additional data is formed.
var kekTables = []struct {
	table, key, col string
	aad             func(key string) string
}{
	{"secrets", "name", "wrapped_dek", dekAAD},
	{"site_key_versions", "id", "wrapped_key", siteKeyVersionAAD},
	{"users", "name", "totp_seed", totpAAD},
	{"sites", "name", "connector_secret", connectorSecretAAD},
	{"engines", "id", "engine_key", engineKeyAAD},
}

// kekProbeAAD is the additional data of the round trip Open makes to check
// that the current KEK is present and works.
const kekProbeAAD = "sallyport-kek-probe:v1"

func (v *Vault) currentKEK() string {
	v.kekMu.RLock()
	defer v.kekMu.RUnlock()
	return v.kek
}

// loadKEK reads the current KEK's label and checks, with a seal and open
// round trip, that the provider holds it, and by opening values stored
// under it (and under a rotation's target) that it is the right key.
func (v *Vault) loadKEK(ctx context.Context) error {
	st, err := v.kekState(ctx, v.db)
	if err != nil {
		return err
	}
	v.kekMu.Lock()
	v.kek = st.Current
	v.kekMu.Unlock()
	probe := make([]byte, 32)
	defer clear(probe)
	if _, err := rand.Read(probe); err != nil {
		return fmt.Errorf("vault: %w", err)
	}
	sealed, err := v.sealUnder(ctx, st.Current, probe, kekProbeAAD)
	if err == nil {
		var back []byte
		back, err = v.unseal(ctx, sealed, kekProbeAAD, st.Current)
		clear(back)
	}
	if err != nil {
		hint := ""
		if errors.Is(err, hsm.ErrKeyNotFound) {
			hint = " (create it with `sallyport keys init`, or restore the keystore or token this vault was created with)"
		}
		if st.Target != "" {
			hint += fmt.Sprintf("; a key rotation to %q is unfinished: finish it with `sallyport keys rotate-kek` or `sallyport keys migrate`", st.Target)
		}
		return fmt.Errorf("vault: the key-encryption key %q is not usable: %w%s", st.Current, err, hint)
	}
	// The round trip shows only that some key has the label. Values
	// already sealed under it show that it is the right one: a token or
	// keystore holding another key under the same label would otherwise
	// open the vault and then fail every read, and seal new values under a
	// key the old ones were not sealed with.
	for _, label := range []string{st.Current, st.Target} {
		if label == "" {
			continue
		}
		if err := v.checkStoredUnder(ctx, label); err != nil {
			return err
		}
	}
	if st.Target != "" {
		v.log.Warn("a key-encryption key rotation is unfinished; run `sallyport keys rotate-kek` (or `keys migrate`) to finish it",
			slog.String("current", st.Current), slog.String("target", st.Target))
	}
	return nil
}

// kekSampleRows is how many stored values checkStoredUnder tries to open.
const kekSampleRows = 3

// checkStoredUnder opens a few of the values recorded as sealed under the
// KEK label and fails if there are some and none of them opens: the
// provider's key of that name is not the one they were sealed with. One
// damaged value is not enough to refuse the vault.
func (v *Vault) checkStoredUnder(ctx context.Context, label string) error {
	tried := 0
	var last error
	for _, t := range kekTables {
		if tried >= kekSampleRows {
			break
		}
		// #nosec G202 -- table and column names are constants
		rows, err := v.db.QueryContext(ctx, `SELECT `+t.key+`, `+t.col+` FROM `+t.table+` WHERE `+t.col+` IS NOT NULL AND kek = ? LIMIT ?`,
			label, kekSampleRows-tried)
		if err != nil {
			return fmt.Errorf("vault: read sealed values: %w", err)
		}
		type item struct {
			key    string
			sealed []byte
		}
		var items []item
		for rows.Next() {
			var it item
			if err := rows.Scan(&it.key, &it.sealed); err != nil {
				_ = rows.Close()
				return fmt.Errorf("vault: read sealed values: %w", err)
			}
			items = append(items, it)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("vault: read sealed values: %w", err)
		}
		for _, it := range items {
			tried++
			plain, err := v.unseal(ctx, it.sealed, t.aad(it.key), label)
			clear(plain)
			if err == nil {
				return nil
			}
			if !errors.Is(err, hsm.ErrOpen) {
				return err
			}
			last = err
		}
	}
	if last != nil {
		return fmt.Errorf("vault: the key-encryption key %q does not open the values sealed under it: "+
			"this provider holds another key under that label (use the keystore or token they were sealed with): %w", label, last)
	}
	return nil
}

func (v *Vault) kekState(ctx context.Context, q querier) (KEKState, error) {
	var st KEKState
	var target sql.NullString
	if err := q.QueryRowContext(ctx, `SELECT current, target FROM kek_state WHERE id = 1`).Scan(&st.Current, &target); err != nil {
		return st, fmt.Errorf("vault: read key-encryption key state: %w", err)
	}
	st.Target = target.String
	want := st.Target
	if want == "" {
		want = st.Current
	}
	for _, t := range kekTables {
		var n int
		// #nosec G202 -- table and column names are constants
		if err := q.QueryRowContext(ctx, `SELECT count(*) FROM `+t.table+` WHERE `+t.col+` IS NOT NULL AND kek != ?`, want).Scan(&n); err != nil {
			return st, fmt.Errorf("vault: read key-encryption key state: %w", err)
		}
		st.Pending += n
	}
	return st, nil
}

// KEKState reports the KEKs in use and how much a rotation has left.
func (v *Vault) KEKState(ctx context.Context) (KEKState, error) {
	return v.kekState(ctx, v.db)
}

// BeginKEKRotation records target as the KEK every value is to be
// re-wrapped under. If a rotation is already under way, its target is kept
// and returned: target may then be empty or must equal it. The caller
// makes sure the provider holds target before re-wrapping.
func (v *Vault) BeginKEKRotation(ctx context.Context, target string) (string, error) {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return "", fmt.Errorf("vault: begin key rotation: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	st, err := v.kekState(ctx, tx)
	if err != nil {
		return "", err
	}
	switch {
	case st.Target != "" && (target == "" || target == st.Target):
		return st.Target, nil
	case st.Target != "":
		return "", fmt.Errorf("vault: a rotation to %q is under way; finish it before starting another: %w", st.Target, ErrExists)
	case target == "" || target == st.Current:
		return "", fmt.Errorf("vault: the new key-encryption key must differ from the current one (%q): %w", st.Current, ErrInvalid)
	case len(target) > 128:
		return "", fmt.Errorf("vault: key label longer than 128 bytes: %w", ErrInvalid)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE kek_state SET target = ? WHERE id = 1`, target); err != nil {
		return "", fmt.Errorf("vault: begin key rotation: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("vault: begin key rotation: %w", err)
	}
	v.log.Info("key-encryption key rotation started", slog.String("from", st.Current), slog.String("to", target))
	return target, nil
}

// RewrapStep re-wraps up to batch values that are not yet under the
// rotation's target KEK and returns how many it did; 0 means none is left.
// Each value is re-wrapped in its own transaction.
func (v *Vault) RewrapStep(ctx context.Context, batch int) (int, error) {
	if batch <= 0 {
		batch = 100
	}
	st, err := v.kekState(ctx, v.db)
	if err != nil {
		return 0, err
	}
	if st.Target == "" {
		return 0, fmt.Errorf("vault: no key rotation under way: %w", ErrInvalid)
	}
	done := 0
	for _, t := range kekTables {
		if done >= batch {
			break
		}
		// #nosec G202 -- table and column names are constants
		rows, err := v.db.QueryContext(ctx, `SELECT `+t.key+`, kek FROM `+t.table+` WHERE `+t.col+` IS NOT NULL AND kek != ? LIMIT ?`, st.Target, batch-done)
		if err != nil {
			return done, fmt.Errorf("vault: re-wrap: %w", err)
		}
		type item struct{ key, kek string }
		var items []item
		for rows.Next() {
			var it item
			if err := rows.Scan(&it.key, &it.kek); err != nil {
				_ = rows.Close()
				return done, fmt.Errorf("vault: re-wrap: %w", err)
			}
			items = append(items, it)
		}
		if err := rows.Close(); err != nil {
			return done, fmt.Errorf("vault: re-wrap: %w", err)
		}
		for _, it := range items {
			if err := v.rewrapOne(ctx, t.table, t.key, t.col, t.aad(it.key), it.key, it.kek, st.Target); err != nil {
				return done, err
			}
			done++
		}
	}
	return done, nil
}

// rewrapOne moves one sealed value from the KEK from to the KEK to, if it
// is still under from (compare-and-set on the label).
func (v *Vault) rewrapOne(ctx context.Context, table, keyCol, col, aad, key, from, to string) error {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return fmt.Errorf("vault: re-wrap: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	var sealed []byte
	// #nosec G202 -- table and column names are constants
	err = tx.QueryRowContext(ctx, `SELECT `+col+` FROM `+table+` WHERE `+keyCol+` = ? AND kek = ?`, key, from).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // removed, or re-wrapped by a concurrent run
	}
	if err != nil {
		return fmt.Errorf("vault: re-wrap: %w", err)
	}
	plain, err := v.unseal(ctx, sealed, aad, from)
	if err != nil {
		return fmt.Errorf("vault: re-wrap %s %q: %w", table, key, err)
	}
	resealed, err := v.sealUnder(ctx, to, plain, aad)
	clear(plain)
	if err != nil {
		return fmt.Errorf("vault: re-wrap %s %q: %w", table, key, err)
	}
	// #nosec G202 -- table and column names are constants
	if _, err := tx.ExecContext(ctx, `UPDATE `+table+` SET `+col+` = ?, kek = ? WHERE `+keyCol+` = ? AND kek = ?`, resealed, to, key, from); err != nil {
		return fmt.Errorf("vault: re-wrap: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("vault: re-wrap: %w", err)
	}
	return nil
}

// FinishKEKRotation makes the target KEK the current one, once no value is
// left under any other. It returns the label of the KEK that was current
// before, which the caller may now destroy.
func (v *Vault) FinishKEKRotation(ctx context.Context) (string, error) {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return "", fmt.Errorf("vault: finish key rotation: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	st, err := v.kekState(ctx, tx)
	if err != nil {
		return "", err
	}
	if st.Target == "" {
		return "", fmt.Errorf("vault: no key rotation under way: %w", ErrInvalid)
	}
	if st.Pending > 0 {
		return "", fmt.Errorf("vault: %d values are not yet re-wrapped under %q", st.Pending, st.Target)
	}
	// Rows with nothing sealed (users without TOTP) follow the new KEK too.
	if _, err := tx.ExecContext(ctx, `UPDATE users SET kek = ? WHERE totp_seed IS NULL`, st.Target); err != nil {
		return "", fmt.Errorf("vault: finish key rotation: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE kek_state SET current = target, target = NULL WHERE id = 1`); err != nil {
		return "", fmt.Errorf("vault: finish key rotation: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("vault: finish key rotation: %w", err)
	}
	v.kekMu.Lock()
	v.kek = st.Target
	v.kekMu.Unlock()
	v.log.Info("key-encryption key rotation finished", slog.String("from", st.Current), slog.String("to", st.Target))
	return st.Current, nil
}
