package vault

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/passrule"
	"github.com/sallyport/sallyport/workitem"
)

// Maintenance keeps stored credentials true: heartbeats (does a credential
// still log in?) and rotations (change it on the target, never lose it).
//
// A rotation is two-phase and crash-safe. The vault makes the candidate
// and stores it, sealed under the secret's data key, in the same
// transaction that records the change item's id, BEFORE the item is sent.
// The engine changes the credential, tries both, and reports which logs
// in; only then is the candidate promoted. An outcome the vault does not
// learn (engine killed, result lost, item expired, vault restarted) is
// found out by a verify item that tries the current credential and every
// candidate that may be on the target; whichever logs in is kept. The
// candidates of rotations that did not complete stay sealed in the store,
// so a change that happened late (or was reported lost) can still be
// found by a later verify.

// Change methods, as stored and shown (ChangeMethod).
const (
	ChangeSelf       = "self"        // the account runs passwd
	ChangeKey        = "key"         // SSH key rotation in authorized_keys
	changePrivileged = "privileged:" // + the privileged secret's name
)

// Maintenance timing defaults.
const (
	DefaultHeartbeatTTL  = 5 * time.Minute
	DefaultChangeTTL     = 20 * time.Minute
	DefaultResendGrace   = 5 * time.Minute
	DefaultAfterUseDelay = 10 * time.Second
	DefaultHostChanges   = 1
	// keptCandidates is how many candidates of unfinished rotations a
	// secret keeps for reconciliation.
	keptCandidates = workitem.MaxCandidates
)

// MaintenanceTimings are the scheduler's knobs; zero fields take the
// defaults above.
type MaintenanceTimings struct {
	// HeartbeatTTL and ChangeTTL are the items' lifetimes (a verify lives
	// as long as a heartbeat). An item is not re-sent for a secret until
	// ResendGrace after its expiry.
	HeartbeatTTL, ChangeTTL, ResendGrace time.Duration
	// AfterUseDelay: a rotate-after-use secret rotates once no engine
	// has reported a live session on it for this long.
	AfterUseDelay time.Duration
	// HostChanges bounds the changes in flight per target host.
	HostChanges int
}

func (t MaintenanceTimings) withDefaults() MaintenanceTimings {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.HeartbeatTTL, DefaultHeartbeatTTL)
	def(&t.ChangeTTL, DefaultChangeTTL)
	def(&t.ResendGrace, DefaultResendGrace)
	def(&t.AfterUseDelay, DefaultAfterUseDelay)
	if t.HostChanges <= 0 {
		t.HostChanges = DefaultHostChanges
	}
	return t
}

// WithMaintenanceTimings sets the scheduler's timings.
func WithMaintenanceTimings(t MaintenanceTimings) Option {
	return func(o *options) { o.timings = t }
}

// Bounds on maintenance settings.
const (
	minInterval = time.Minute
	maxInterval = 10 * 365 * 24 * time.Hour
)

// validateSchedule checks a new secret's maintenance settings and fills
// the default change method. kind is the secret's credential kind.
func (s *SecretSpec) validateSchedule(kind string) error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"heartbeat", s.Heartbeat}, {"rotate", s.Rotate}} {
		if f.d != 0 && (f.d < minInterval || f.d > maxInterval) {
			return invalid(f.name, "must be off (0) or between 1m and 10 years")
		}
	}
	if s.ChangeMethod == "" {
		s.ChangeMethod = ChangeSelf
		if kind == KindPrivateKey {
			s.ChangeMethod = ChangeKey
		}
	}
	switch m := s.ChangeMethod; {
	case m == ChangeKey:
		if kind != KindPrivateKey {
			return invalid("change_method", "key rotation needs a private-key secret")
		}
		if s.PasswordRule != "" {
			return invalid("password_rule", "a key secret has no password rule")
		}
	case m == ChangeSelf:
		if kind != KindPassword {
			return invalid("change_method", "self needs a password secret (use key for a private key)")
		}
	case strings.HasPrefix(m, changePrivileged):
		if kind != KindPassword {
			return invalid("change_method", "privileged needs a password secret (use key for a private key)")
		}
		p := strings.TrimPrefix(m, changePrivileged)
		if !names.ValidSecretName(p) || p == s.Name {
			return invalid("change_method", "privileged:NAME must name another secret")
		}
	default:
		return invalid("change_method", "must be self, privileged:SECRET or key")
	}
	if s.PasswordRule != "" {
		r, err := passrule.Parse(s.PasswordRule)
		if err != nil {
			return invalid("password_rule", err.Error())
		}
		if err := r.Validate(); err != nil {
			return invalid("password_rule", err.Error())
		}
		s.PasswordRule = r.String()
	}
	return nil
}

// checkPrivileged checks, inside the adding transaction, that a
// privileged change method names a password secret on the same host and
// site.
func (v *Vault) checkPrivileged(ctx context.Context, tx *sql.Tx, s *SecretSpec) error {
	p, ok := strings.CutPrefix(s.ChangeMethod, changePrivileged)
	if !ok {
		return nil
	}
	r, err := v.loadSecret(ctx, tx, p)
	if errors.Is(err, ErrNotFound) {
		return invalid("change_method", "the privileged secret does not exist")
	}
	if err != nil {
		return err
	}
	if r.host != s.Host || r.port != s.Port || r.site != s.Site {
		return invalid("change_method", "the privileged secret must be on the same host, port and site")
	}
	return nil
}

// insertSchedule adds a new secret's schedule row.
func (v *Vault) insertSchedule(ctx context.Context, tx *sql.Tx, s *SecretSpec, now int64) error {
	hbDue, rotDue := int64(0), int64(0)
	if s.Heartbeat > 0 {
		hbDue = now // a first heartbeat at once
	}
	if s.Rotate > 0 {
		rotDue = now + int64(s.Rotate)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO secret_schedule
		(secret, heartbeat_every, rotate_every, rotate_after_use, change_method, password_rule, hb_due, rotate_due)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		s.Name, int64(s.Heartbeat), int64(s.Rotate), s.RotateAfterUse, s.ChangeMethod, s.PasswordRule, hbDue, rotDue)
	return err
}

// Maintenance is a secret's maintenance settings and state, as listed.
type Maintenance struct {
	Heartbeat      Duration `json:"heartbeat"`
	Rotate         Duration `json:"rotate"`
	RotateAfterUse bool     `json:"rotate_after_use"`
	ChangeMethod   string   `json:"change_method"`
	PasswordRule   string   `json:"password_rule,omitempty"`

	LastHeartbeat       string    `json:"last_heartbeat,omitempty"` // an Outcome, or ""
	LastHeartbeatAt     time.Time `json:"last_heartbeat_at,omitzero"`
	LastHeartbeatEngine string    `json:"last_heartbeat_engine,omitempty"`
	LastRotation        time.Time `json:"last_rotation,omitzero"`
	NextHeartbeat       time.Time `json:"next_heartbeat,omitzero"`
	NextRotation        time.Time `json:"next_rotation,omitzero"`
	// Rotation is the open rotation's phase ("change" or "verify"), or "".
	Rotation string `json:"rotation,omitempty"`
	// Generation counts the credential's versions: +1 per promotion.
	Generation int64 `json:"generation"`
}

// Duration is a time.Duration that reads and writes as "1h30m0s" in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as Go's String form.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// UnmarshalJSON reads Go's duration syntax.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	x, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(x)
	return nil
}

const scheduleColumns = `heartbeat_every, rotate_every, rotate_after_use, change_method, password_rule,
	hb_outcome, hb_at, hb_engine, rotated_at, hb_due, rotate_due, generation,
	COALESCE((SELECT phase FROM rotations WHERE rotations.secret = secret_schedule.secret AND state = 'open'), '')`

func scanMaintenance(sc scanner) (Maintenance, error) {
	var m Maintenance
	var hb, rot, hbAt, rotAt, hbDue, rotDue int64
	err := sc.Scan(&hb, &rot, &m.RotateAfterUse, &m.ChangeMethod, &m.PasswordRule,
		&m.LastHeartbeat, &hbAt, &m.LastHeartbeatEngine, &rotAt, &hbDue, &rotDue, &m.Generation, &m.Rotation)
	m.Heartbeat, m.Rotate = Duration(hb), Duration(rot)
	for _, t := range []struct {
		dst *time.Time
		ns  int64
	}{{&m.LastHeartbeatAt, hbAt}, {&m.LastRotation, rotAt}, {&m.NextHeartbeat, hbDue}, {&m.NextRotation, rotDue}} {
		if t.ns > 0 {
			*t.dst = stamp(t.ns)
		}
	}
	return m, err
}

// maintenanceOf reads the maintenance of every secret, by name.
func (v *Vault) maintenanceOf(ctx context.Context) (map[string]Maintenance, error) {
	rows, err := v.db.QueryContext(ctx, `SELECT secret, `+scheduleColumns+` FROM secret_schedule`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Maintenance{}
	for rows.Next() {
		var name string
		m, err := scanMaintenance(scanFunc(func(dst ...any) error { return rows.Scan(append([]any{&name}, dst...)...) }))
		if err != nil {
			return nil, err
		}
		out[name] = m
	}
	return out, rows.Err()
}

// scanFunc adapts a function to scanner.
type scanFunc func(dst ...any) error

func (f scanFunc) Scan(dst ...any) error { return f(dst...) }

// HistoryEntry is one heartbeat or rotation step of a secret. It never
// holds a credential.
type HistoryEntry struct {
	At       time.Time `json:"at"`
	Event    string    `json:"event"`
	Outcome  string    `json:"outcome"`
	Engine   string    `json:"engine,omitempty"`
	Rotation string    `json:"rotation,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}

// maxHistory bounds the history kept per secret.
const maxHistory = 1000

// History returns a secret's heartbeats and rotation steps, oldest first.
func (v *Vault) History(ctx context.Context, name string) ([]HistoryEntry, error) {
	if _, err := v.loadSecret(ctx, v.db, name); err != nil {
		return nil, err
	}
	rows, err := v.db.QueryContext(ctx, `SELECT at, event, outcome, engine, rotation, detail FROM secret_history
		WHERE secret = ? ORDER BY id`, name)
	if err != nil {
		return nil, fmt.Errorf("vault: history: %w", err)
	}
	defer rows.Close()
	out := []HistoryEntry{}
	for rows.Next() {
		var e HistoryEntry
		var at int64
		if err := rows.Scan(&at, &e.Event, &e.Outcome, &e.Engine, &e.Rotation, &e.Detail); err != nil {
			return nil, fmt.Errorf("vault: history: %w", err)
		}
		e.At = stamp(at)
		out = append(out, e)
	}
	return out, rows.Err()
}

// record appends a history entry inside the write transaction tx, audits
// it, and logs it.
func (v *Vault) record(ctx context.Context, tx *sql.Tx, secret, event, outcome, engine, rotation, detail string) error {
	if len(detail) > workitem.MaxDetail {
		detail = detail[:workitem.MaxDetail]
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO secret_history (secret, at, event, outcome, engine, rotation, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, secret, v.now().UnixNano(), event, outcome, engine, rotation, detail); err != nil {
		return fmt.Errorf("vault: history: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM secret_history WHERE secret = ? AND id <= (SELECT id FROM secret_history
		WHERE secret = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`, secret, secret, maxHistory); err != nil {
		return fmt.Errorf("vault: history: %w", err)
	}
	var attrs []slog.Attr
	if engine != "" {
		attrs = append(attrs, slog.String("engine", engine))
	}
	if rotation != "" {
		attrs = append(attrs, slog.String("rotation", rotation))
	}
	if detail != "" {
		attrs = append(attrs, slog.String("detail", detail))
	}
	v.sink.Record(ctx, audit.Event{Kind: event, Outcome: outcome, Secret: secret, Attrs: attrs})
	return nil
}

// RequestHeartbeat makes a heartbeat of secret due now (at most one is in
// flight per secret).
func (v *Vault) RequestHeartbeat(ctx context.Context, name string) error {
	return v.requestNow(ctx, name, `UPDATE secret_schedule SET hb_due = ? WHERE secret = ?`)
}

// RequestRotation makes a rotation of secret due now. It is refused while
// a rotation of the secret is open.
func (v *Vault) RequestRotation(ctx context.Context, name string) error {
	if r, err := v.loadSecret(ctx, v.db, name); err != nil {
		return err
	} else if r.protocol == ProtocolRDP {
		return invalid("secret", "password changes of RDP targets are not supported (heartbeats are)")
	}
	var open int
	if err := v.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM rotations WHERE secret = ? AND state = 'open'`, name).Scan(&open); err != nil {
		return fmt.Errorf("vault: rotate: %w", err)
	}
	if open > 0 {
		return fmt.Errorf("secret %q: %w: a rotation is under way", name, ErrConflict)
	}
	return v.requestNow(ctx, name, `UPDATE secret_schedule SET rotate_due = ?, rotate_now = 1 WHERE secret = ?`)
}

// ErrConflict means the request conflicts with work under way.
var ErrConflict = errors.New("vault: conflict")

func (v *Vault) requestNow(ctx context.Context, name, query string) error {
	r, err := v.loadSecret(ctx, v.db, name)
	if err != nil {
		return err
	}
	if len(r.hostKey) == 0 {
		return invalid("secret", "its host key is not pinned yet (log in through it once, or set host_key)")
	}
	res, err := v.exec(ctx, query, v.now().UnixNano(), name)
	if err != nil {
		return fmt.Errorf("vault: schedule: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("secret %q: %w", name, ErrNotFound)
	}
	return nil
}

// noteUse records a checkout of a rotate-after-use secret, or a live
// session on it reported by an engine's re-check.
func (v *Vault) noteUse(ctx context.Context, secret string) {
	if _, err := v.exec(ctx, `UPDATE secret_schedule SET used = 1, last_use = ? WHERE secret = ? AND rotate_after_use = 1`,
		v.now().UnixNano(), secret); err != nil {
		v.log.Warn("recording a use for rotate-after-use", "secret", secret, "err", err)
	}
}

// Outgoing is a task ready to be sealed under the site's key and sent to
// the site's work queue.
type Outgoing struct {
	Site   string
	ID     string
	Expiry time.Time
	TTL    time.Duration
	Task   *workitem.Task // the caller wipes it
}

// NextTasks picks the maintenance work due now, at most limit items, and
// records each as sent (with its candidate, for a change) before it
// returns: the caller then seals and publishes them. What is recorded and
// not published is found out later like a lost item.
func (v *Vault) NextTasks(ctx context.Context, limit int) ([]Outgoing, error) {
	var out []Outgoing
	fail := func(err error) ([]Outgoing, error) {
		for _, o := range out {
			o.Task.Wipe()
		}
		return nil, err
	}
	now := v.now()
	if due, err := v.anythingDue(ctx, now); err != nil || !due {
		return nil, err
	}
	// Rotations first: open ones whose item is due (re)sending, then new
	// ones.
	for len(out) < limit {
		o, err := v.nextRotationTask(ctx, now)
		if err != nil {
			return fail(err)
		}
		if o == nil {
			break
		}
		out = append(out, *o)
	}
	for len(out) < limit {
		o, err := v.nextHeartbeat(ctx, now)
		if err != nil {
			return fail(err)
		}
		if o == nil {
			break
		}
		out = append(out, *o)
	}
	return out, nil
}

// anythingDue is a read-only look for work, so that a scheduler round
// with nothing to do takes no write lock on the store.
func (v *Vault) anythingDue(ctx context.Context, now time.Time) (bool, error) {
	ns := now.UnixNano()
	var due bool
	err := v.db.QueryRowContext(ctx, `SELECT
		EXISTS (SELECT 1 FROM rotations WHERE state = 'open' AND resend <= ?) OR
		EXISTS (SELECT 1 FROM secret_schedule s JOIN secrets ON secrets.name = s.secret
			WHERE secrets.host_key IS NOT NULL AND secrets.disabled = 0
			  AND ((s.hb_due > 0 AND s.hb_due <= ? AND s.hb_resend <= ?)
			    OR (s.rotate_due > 0 AND s.rotate_due <= ?) OR (s.used = 1 AND s.last_use <= ?)))`,
		ns, ns, ns, ns, now.Add(-v.timings.AfterUseDelay).UnixNano()).Scan(&due)
	return due, err
}

// nextHeartbeat picks one due heartbeat and records it as sent.
func (v *Vault) nextHeartbeat(ctx context.Context, now time.Time) (*Outgoing, error) {
	t := v.timings
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	var name string
	err = tx.QueryRowContext(ctx, `SELECT s.secret FROM secret_schedule s JOIN secrets ON secrets.name = s.secret
		WHERE s.hb_due > 0 AND s.hb_due <= ? AND s.hb_resend <= ? AND secrets.host_key IS NOT NULL AND secrets.disabled = 0
		  AND NOT EXISTS (SELECT 1 FROM rotations r WHERE r.secret = s.secret AND r.state = 'open')
		ORDER BY s.hb_due LIMIT 1`, now.UnixNano(), now.UnixNano()).Scan(&name)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r, err := v.loadSecret(ctx, tx, name)
	if err != nil {
		return nil, err
	}
	cred, err := v.openCredential(ctx, r)
	if err != nil {
		// Unopenable: stop asking every tick, say so once per interval.
		_, _ = tx.ExecContext(ctx, `UPDATE secret_schedule SET hb_due = 0 WHERE secret = ?`, name)
		_ = v.record(ctx, tx, name, "heartbeat", workitem.OutcomeError, "", "", "the stored credential cannot be opened")
		_ = tx.Commit()
		return nil, nil
	}
	id := workitem.NewID()
	expiry := now.Add(t.HeartbeatTTL)
	// Unanswered, it goes again once it has expired and the grace passed.
	resend := expiry.Add(t.ResendGrace).UnixNano()
	if _, err := tx.ExecContext(ctx, `UPDATE secret_schedule SET hb_item = ?, hb_resend = ?, hb_due = ? WHERE secret = ?`,
		id, resend, resend, name); err != nil {
		clear(cred)
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		clear(cred)
		return nil, err
	}
	task := r.task(workitem.TaskHeartbeat, "")
	task.Current = secretOf(r.kind, cred)
	return &Outgoing{Site: r.site, ID: id, Expiry: expiry, TTL: t.HeartbeatTTL, Task: task}, nil
}

// task fills a task's target from the row.
func (r *secretRow) task(op workitem.TaskOp, rotation string) *workitem.Task {
	t := &workitem.Task{Op: op, Secret: r.name, Rotation: rotation, Host: r.host, Port: r.port, Username: r.username,
		HostKey: r.hostKey}
	if r.protocol == ProtocolRDP {
		t.Protocol = ProtocolRDP
	}
	return t
}

func secretOf(kind string, b []byte) workitem.Secret {
	if kind == KindPrivateKey {
		return workitem.Secret{PrivateKey: b}
	}
	return workitem.Secret{Password: b}
}

// rotationRow is one row of the rotations table.
type rotationRow struct {
	id, secret, state, phase, kind, item, reason, verifySet string
	candidate                                               []byte
	resend, base                                            int64
}

const rotationColumns = `id, secret, state, phase, candidate_kind, item, reason, verify_set, candidate, resend, base_generation`

func scanRotation(sc scanner) (*rotationRow, error) {
	var r rotationRow
	err := sc.Scan(&r.id, &r.secret, &r.state, &r.phase, &r.kind, &r.item, &r.reason, &r.verifySet, &r.candidate, &r.resend, &r.base)
	return &r, err
}

func candidateAAD(secret, rotation string) string {
	return "sallyport-candidate:v1:" + secret + ":" + rotation
}

// nextRotationTask picks one rotation step due now: a change or verify of
// an open rotation whose item is due, or a new rotation. It records the
// step as sent and returns its task.
func (v *Vault) nextRotationTask(ctx context.Context, now time.Time) (*Outgoing, error) {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	ns := now.UnixNano()
	// An open rotation whose item is due: never sent (item ''), or sent
	// and unanswered past its expiry and the grace (the outcome is
	// unknown: verify).
	rot, err := scanRotation(tx.QueryRowContext(ctx, `SELECT `+rotationColumns+` FROM rotations r
		WHERE r.state = 'open' AND r.resend <= ? ORDER BY r.resend LIMIT 1`, ns))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		rot = nil
	case err != nil:
		return nil, err
	}
	if rot == nil {
		rot, err = v.startRotation(ctx, tx, now)
		if err != nil || rot == nil {
			return nil, err
		}
	} else if rot.item != "" {
		// Sent, unanswered, past expiry and grace: the outcome is unknown.
		rot.phase = "verify"
		if err := v.record(ctx, tx, rot.secret, "rotation_unknown", "unknown", "", rot.id,
			"no result before the item expired; verifying which credential logs in"); err != nil {
			return nil, err
		}
	}
	r, err := v.loadSecret(ctx, tx, rot.secret)
	if err != nil {
		return nil, err
	}
	if rot.phase == "change" && !v.hostHasRoom(ctx, tx, r, now) {
		// Wait for the host's other change; check again in a while.
		_, err := tx.ExecContext(ctx, `UPDATE rotations SET resend = ? WHERE id = ?`, now.Add(time.Second).UnixNano(), rot.id)
		if err != nil {
			return nil, err
		}
		return nil, tx.Commit()
	}
	out, verifySet, err := v.buildRotationTask(ctx, tx, r, rot)
	if err != nil {
		return nil, err
	}
	ttl := v.timings.ChangeTTL
	if rot.phase == "verify" {
		ttl = v.timings.HeartbeatTTL
	}
	out.ID, out.TTL, out.Expiry = workitem.NewID(), ttl, now.Add(ttl)
	if _, err := tx.ExecContext(ctx, `UPDATE rotations SET phase = ?, item = ?, resend = ?, sent = ?, verify_set = ?, updated = ? WHERE id = ?`,
		rot.phase, out.ID, out.Expiry.Add(v.timings.ResendGrace).UnixNano(), ns, verifySet, ns, rot.id); err != nil {
		out.Task.Wipe()
		return nil, err
	}
	event := "rotation_change_sent"
	if rot.phase == "verify" {
		event = "rotation_verify_sent"
	}
	if err := v.record(ctx, tx, rot.secret, event, "ok", "", rot.id, ""); err != nil {
		out.Task.Wipe()
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		out.Task.Wipe()
		return nil, err
	}
	return out, nil
}

// hostHasRoom reports whether another change may be sent to r's host.
func (v *Vault) hostHasRoom(ctx context.Context, tx *sql.Tx, r *secretRow, now time.Time) bool {
	var n int
	err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM rotations JOIN secrets ON secrets.name = rotations.secret
		WHERE rotations.state = 'open' AND rotations.phase = 'change' AND rotations.item != '' AND rotations.resend > ?
		  AND secrets.host = ? AND secrets.name != ?`, now.UnixNano(), r.host, r.name).Scan(&n)
	return err == nil && n < v.timings.HostChanges
}

// startRotation opens a rotation for the first secret due one: its
// candidate is made and stored sealed here, before any item is sent.
func (v *Vault) startRotation(ctx context.Context, tx *sql.Tx, now time.Time) (*rotationRow, error) {
	ns := now.UnixNano()
	var name, rule, reason string
	var base int64
	err := tx.QueryRowContext(ctx, `SELECT s.secret, s.password_rule, s.generation,
			CASE WHEN s.rotate_now = 1 THEN 'on-demand' WHEN s.rotate_due > 0 AND s.rotate_due <= ? THEN 'scheduled' ELSE 'after-use' END
		FROM secret_schedule s JOIN secrets ON secrets.name = s.secret
		WHERE secrets.host_key IS NOT NULL AND secrets.disabled = 0
		  AND ((s.rotate_due > 0 AND s.rotate_due <= ?) OR (s.used = 1 AND s.last_use <= ?))
		  AND NOT EXISTS (SELECT 1 FROM rotations r WHERE r.secret = s.secret AND r.state = 'open')
		ORDER BY s.rotate_now DESC, s.rotate_due LIMIT 1`,
		ns, ns, now.Add(-v.timings.AfterUseDelay).UnixNano()).Scan(&name, &rule, &base, &reason)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r, err := v.loadSecret(ctx, tx, name)
	if err != nil {
		return nil, err
	}
	var candidate []byte
	if r.kind == KindPrivateKey {
		candidate, err = newPrivateKey(name)
	} else {
		pr := passrule.Default
		if rule != "" {
			if pr, err = passrule.Parse(rule); err != nil {
				return nil, fmt.Errorf("vault: rotate %s: stored rule: %w", name, err)
			}
		}
		candidate, err = pr.Generate()
	}
	if err != nil {
		return nil, fmt.Errorf("vault: rotate %s: %w", name, err)
	}
	defer clear(candidate)
	id := workitem.NewID()[:16]
	dek, err := v.unseal(ctx, r.wrappedDEK, dekAAD(r.name), r.kek)
	if err != nil {
		return nil, err
	}
	sealed, err := sealWithDEK(dek, candidate, []byte(candidateAAD(name, id)))
	clear(dek)
	if err != nil {
		return nil, err
	}
	rot := &rotationRow{id: id, secret: name, state: "open", phase: "change", kind: r.kind, reason: reason, candidate: sealed, base: base}
	if _, err := tx.ExecContext(ctx, `INSERT INTO rotations (id, secret, state, phase, candidate, candidate_kind, reason,
		base_generation, created, updated) VALUES (?, ?, 'open', 'change', ?, ?, ?, ?, ?, ?)`,
		id, name, sealed, r.kind, reason, base, ns, ns); err != nil {
		return nil, err
	}
	// The schedule moves on now: a rotation that fails is tried again at
	// the next interval (or on demand), never in a tight loop.
	if _, err := tx.ExecContext(ctx, `UPDATE secret_schedule SET rotate_now = 0, used = 0,
		rotate_due = CASE WHEN rotate_every > 0 THEN ? + rotate_every ELSE 0 END WHERE secret = ?`, ns, name); err != nil {
		return nil, err
	}
	if err := v.record(ctx, tx, name, "rotation_started", "ok", "", id, reason); err != nil {
		return nil, err
	}
	return rot, nil
}

// newPrivateKey makes an ed25519 key pair and returns the private key in
// OpenSSH PEM form.
func newPrivateKey(comment string) ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	defer clear(priv)
	block, err := ssh.MarshalPrivateKey(priv, "sallyport "+comment)
	if err != nil {
		return nil, err
	}
	out := pem.EncodeToMemory(block)
	clear(block.Bytes)
	return out, nil
}

// buildRotationTask makes the change or verify task of rot. For a verify,
// the candidates are rot's own and those of the secret's earlier
// unfinished rotations on the same credential generation, newest first;
// the returned set lists their rotation ids in that order.
func (v *Vault) buildRotationTask(ctx context.Context, tx *sql.Tx, r *secretRow, rot *rotationRow) (*Outgoing, string, error) {
	dek, err := v.unseal(ctx, r.wrappedDEK, dekAAD(r.name), r.kek)
	if err != nil {
		return nil, "", err
	}
	defer clear(dek)
	cred, err := openWithDEK(dek, r.credential, credentialAAD(r))
	if err != nil {
		return nil, "", err
	}
	task := r.task(workitem.TaskOp(rot.phase), rot.id)
	task.Current = secretOf(r.kind, cred)
	openCandidate := func(row *rotationRow) error {
		c, err := openWithDEK(dek, row.candidate, []byte(candidateAAD(row.secret, row.id)))
		if err != nil {
			return err
		}
		task.Candidates = append(task.Candidates, secretOf(row.kind, c))
		return nil
	}
	if err := openCandidate(rot); err != nil {
		task.Wipe()
		return nil, "", err
	}
	set := []string{rot.id}
	if rot.phase == "change" {
		switch m := v.changeMethod(ctx, tx, r.name); {
		case m == ChangeKey:
			task.Method = workitem.MethodKey
		case strings.HasPrefix(m, changePrivileged):
			task.Method = workitem.MethodPrivileged
			p, err := v.loadSecret(ctx, tx, strings.TrimPrefix(m, changePrivileged))
			if err != nil {
				task.Wipe()
				return nil, "", fmt.Errorf("the privileged secret: %w", err)
			}
			pc, err := v.openCredential(ctx, p)
			if err != nil {
				task.Wipe()
				return nil, "", err
			}
			s := secretOf(p.kind, pc)
			task.Privileged, task.PrivilegedUser, task.Sudo = &s, p.username, p.username != "root"
		default:
			task.Method = workitem.MethodSelf
		}
		return &Outgoing{Site: r.site, Task: task}, strings.Join(set, ","), nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+rotationColumns+` FROM rotations
		WHERE secret = ? AND state = 'failed' AND base_generation = ? AND length(candidate) > 0 AND id != ?
		ORDER BY created DESC LIMIT ?`, r.name, rot.base, rot.id, keptCandidates-1)
	if err != nil {
		task.Wipe()
		return nil, "", err
	}
	var earlier []*rotationRow
	for rows.Next() {
		row, err := scanRotation(rows)
		if err != nil {
			_ = rows.Close()
			task.Wipe()
			return nil, "", err
		}
		earlier = append(earlier, row)
	}
	if err := rows.Close(); err != nil {
		task.Wipe()
		return nil, "", err
	}
	for _, row := range earlier {
		if row.kind != r.kind {
			continue
		}
		if err := openCandidate(row); err != nil {
			continue // an unopenable candidate cannot be on the target through us
		}
		set = append(set, row.id)
	}
	return &Outgoing{Site: r.site, Task: task}, strings.Join(set, ","), nil
}

func (v *Vault) changeMethod(ctx context.Context, tx *sql.Tx, secret string) string {
	var m string
	_ = tx.QueryRowContext(ctx, `SELECT change_method FROM secret_schedule WHERE secret = ?`, secret).Scan(&m)
	return m
}

// TaskResult applies what an engine of site found.
func (v *Vault) TaskResult(ctx context.Context, site, engine string, res *workitem.TaskResult) error {
	switch res.Op {
	case workitem.TaskHeartbeat:
		return v.heartbeatResult(ctx, site, engine, res)
	default:
		return v.rotationResult(ctx, site, engine, res)
	}
}

// beginResult opens the transaction that applies a result from an engine
// of site, with the secret it is about, which must be of that site. The
// context it returns goes with the transaction (beginWrite).
func (v *Vault) beginResult(ctx context.Context, site string, res *workitem.TaskResult) (context.Context, *sql.Tx, *secretRow, error) {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return ctx, nil, nil, err
	}
	r, err := v.loadSecret(ctx, tx, res.Secret)
	if err == nil && r.site != site {
		err = fmt.Errorf("a %s result for secret %s from site %s", res.Op, res.Secret, site)
	}
	if err != nil {
		_ = tx.Rollback()
		return ctx, nil, nil, err
	}
	return ctx, tx, r, nil
}

func (v *Vault) heartbeatResult(ctx context.Context, site, engine string, res *workitem.TaskResult) error {
	ctx, tx, _, err := v.beginResult(ctx, site, res)
	if err != nil {
		return err
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	var item string
	var every int64
	if err := tx.QueryRowContext(ctx, `SELECT hb_item, heartbeat_every FROM secret_schedule WHERE secret = ?`, res.Secret).Scan(&item, &every); err != nil {
		return err
	}
	if item != res.Task {
		// Not the heartbeat in flight (a late or duplicate one): history only.
		if err := v.record(ctx, tx, res.Secret, "heartbeat_late", res.Current, engine, "", res.Detail); err != nil {
			return err
		}
		return tx.Commit()
	}
	ns := v.now().UnixNano()
	due := int64(0)
	if every > 0 {
		due = ns + every
	}
	if _, err := tx.ExecContext(ctx, `UPDATE secret_schedule SET hb_item = '', hb_resend = 0, hb_due = ?,
		hb_outcome = ?, hb_at = ?, hb_engine = ? WHERE secret = ?`, due, res.Current, ns, engine, res.Secret); err != nil {
		return err
	}
	if err := v.record(ctx, tx, res.Secret, "heartbeat", res.Current, engine, "", res.Detail); err != nil {
		return err
	}
	if res.Current == workitem.OutcomeRejected {
		// The stored credential is refused: if an unfinished rotation may
		// have left one of its candidates on the target, find out.
		if err := v.reopenForVerify(ctx, tx, res.Secret, ns); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// reopenForVerify reopens the newest failed rotation of secret on the
// current generation (its candidate may be on the target) as a verify.
func (v *Vault) reopenForVerify(ctx context.Context, tx *sql.Tx, secret string, ns int64) error {
	var id string
	err := tx.QueryRowContext(ctx, `SELECT r.id FROM rotations r JOIN secret_schedule s ON s.secret = r.secret
		WHERE r.secret = ? AND r.state = 'failed' AND r.base_generation = s.generation AND length(r.candidate) > 0
		  AND NOT EXISTS (SELECT 1 FROM rotations o WHERE o.secret = r.secret AND o.state = 'open')
		ORDER BY r.created DESC LIMIT 1`, secret).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE rotations SET state = 'open', phase = 'verify', item = '', resend = 0, updated = ?
		WHERE id = ?`, ns, id); err != nil {
		return err
	}
	return v.record(ctx, tx, secret, "rotation_reconcile", "ok", "", id, "the stored credential was rejected; verifying earlier candidates")
}

func (v *Vault) rotationResult(ctx context.Context, site, engine string, res *workitem.TaskResult) error {
	ctx, tx, r, err := v.beginResult(ctx, site, res)
	if err != nil {
		return err
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	rot, err := scanRotation(tx.QueryRowContext(ctx, `SELECT `+rotationColumns+` FROM rotations WHERE id = ? AND secret = ?`,
		res.Rotation, res.Secret))
	if errors.Is(err, sql.ErrNoRows) {
		return v.recordCommit(ctx, tx, res.Secret, "rotation_result_unknown", "ignored", engine, res.Rotation, "no such rotation")
	}
	if err != nil {
		return err
	}
	var generation int64
	if err := tx.QueryRowContext(ctx, `SELECT generation FROM secret_schedule WHERE secret = ?`, res.Secret).Scan(&generation); err != nil {
		return err
	}
	ids := strings.Split(rot.verifySet, ",")
	if rot.item != res.Task {
		// A result for an item that is no longer the one in flight (late,
		// duplicated, or from before a verify was sent). Act on it only
		// when it is proof about the credential stored now: it was tried
		// and refused, and a candidate logged in.
		if rot.base != generation || res.Current != workitem.OutcomeRejected || res.Op != workitem.TaskChange {
			return v.recordCommit(ctx, tx, res.Secret, "rotation_result_late", "ignored", engine, rot.id, res.Detail)
		}
		ids = []string{rot.id}
	}
	event := "rotation_" + string(res.Op) + "_result"
	if err := v.record(ctx, tx, res.Secret, event, summarize(res), engine, rot.id, res.Detail); err != nil {
		return err
	}
	ns := v.now().UnixNano()
	// Which credential logs in now?
	for i, o := range res.Candidates {
		if o != workitem.OutcomeOK || i >= len(ids) {
			continue
		}
		if rot.base != generation {
			break // the stored credential changed since: not about it
		}
		if err := v.promote(ctx, tx, r, ids[i], ns); err != nil {
			return err
		}
		// Every other rotation still open for the secret is settled by this.
		if _, err := tx.ExecContext(ctx, `UPDATE rotations SET state = 'failed', item = '', updated = ? WHERE secret = ? AND state = 'open' AND id != ?`,
			ns, r.name, ids[i]); err != nil {
			return err
		}
		return tx.Commit()
	}
	if rot.state != "open" {
		return tx.Commit()
	}
	switch {
	case res.Current == workitem.OutcomeOK:
		// Nothing changed on the target (or it was undone): keep the
		// stored credential; the candidate stays for reconciliation.
		if _, err := tx.ExecContext(ctx, `UPDATE rotations SET state = 'failed', item = '', outcome = 'kept current', updated = ?
			WHERE id = ?`, ns, rot.id); err != nil {
			return err
		}
		if err := v.record(ctx, tx, r.name, "rotation_failed", "kept_current", engine, rot.id, res.Detail); err != nil {
			return err
		}
	default:
		// Nothing is known to log in (unreachable, or everything refused):
		// keep everything and verify again after the grace.
		if _, err := tx.ExecContext(ctx, `UPDATE rotations SET phase = 'verify', item = '', resend = ?, updated = ? WHERE id = ?`,
			ns+int64(v.timings.ResendGrace), ns, rot.id); err != nil {
			return err
		}
		if err := v.record(ctx, tx, r.name, "rotation_unresolved", "retry", engine, rot.id,
			"no credential was seen to log in; verifying again later"); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// recordAlone records a history entry in a write transaction of its own.
func (v *Vault) recordAlone(ctx context.Context, secret, event, outcome, engine, rotation, detail string) error {
	ctx, tx, err := v.beginWrite(ctx)
	if err != nil {
		return fmt.Errorf("vault: history: %w", err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	if err := v.record(ctx, tx, secret, event, outcome, engine, rotation, detail); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("vault: history: %w", err)
	}
	return nil
}

func (v *Vault) recordCommit(ctx context.Context, tx *sql.Tx, secret, event, outcome, engine, rotation, detail string) error {
	if err := v.record(ctx, tx, secret, event, outcome, engine, rotation, detail); err != nil {
		return err
	}
	return tx.Commit()
}

// summarize is a result's outcomes for the history: "current=ok
// candidates=rejected".
func summarize(res *workitem.TaskResult) string {
	s := "current=" + res.Current
	if len(res.Candidates) > 0 {
		s += " candidates=" + strings.Join(res.Candidates, ",")
	}
	return s
}

// promote makes the candidate of rotation id the secret's credential.
func (v *Vault) promote(ctx context.Context, tx *sql.Tx, r *secretRow, id string, ns int64) error {
	rot, err := scanRotation(tx.QueryRowContext(ctx, `SELECT `+rotationColumns+` FROM rotations WHERE id = ?`, id))
	if err != nil {
		return err
	}
	dek, err := v.unseal(ctx, r.wrappedDEK, dekAAD(r.name), r.kek)
	if err != nil {
		return err
	}
	defer clear(dek)
	cand, err := openWithDEK(dek, rot.candidate, []byte(candidateAAD(r.name, id)))
	if err != nil {
		return err
	}
	defer clear(cand)
	sealed, err := sealWithDEK(dek, cand, credentialAAD(r))
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE secrets SET credential = ?, updated = ? WHERE name = ?`, sealed, ns, r.name); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE secret_schedule SET generation = generation + 1, rotated_at = ?,
		hb_outcome = 'ok', hb_at = ?, hb_engine = '' WHERE secret = ?`, ns, ns, r.name); err != nil {
		return err
	}
	// Its candidate is the credential now: no copy stays behind.
	if _, err := tx.ExecContext(ctx, `UPDATE rotations SET state = 'done', item = '', candidate = X'', outcome = 'promoted', updated = ?
		WHERE id = ?`, ns, id); err != nil {
		return err
	}
	// Candidates of rotations from older generations can never be needed
	// again once a newer credential is confirmed.
	if _, err := tx.ExecContext(ctx, `UPDATE rotations SET candidate = X'' WHERE secret = ? AND state != 'open' AND base_generation < ?`,
		r.name, rot.base); err != nil {
		return err
	}
	return v.record(ctx, tx, r.name, "rotation_promoted", "ok", "", id, "")
}

// Reveal returns a secret's stored credential and its kind, for a
// break-glass retrieval by whoever holds the vault's data directory and
// its key-encryption key (`sallyport keys reveal`, offline). It is
// recorded in the secret's history and audited. The caller wipes it.
func (v *Vault) Reveal(ctx context.Context, name, who string) ([]byte, string, error) {
	r, err := v.loadSecret(ctx, v.db, name)
	if err != nil {
		return nil, "", err
	}
	cred, err := v.openCredential(ctx, r)
	if err != nil {
		return nil, "", err
	}
	if err := v.recordAlone(ctx, name, "secret_revealed", "ok", "", "", who); err != nil {
		clear(cred)
		return nil, "", err
	}
	return cred, r.kind, nil
}
