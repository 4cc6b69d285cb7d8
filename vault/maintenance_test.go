package vault

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sallyport/sallyport/passrule"
	"github.com/sallyport/sallyport/workitem"
)

// targets models the credentials the targets accept, by secret: what the
// engine's real logins would find. The vault's state machine is tested
// against it here; the real logins are tested end to end.
type targets map[string][]byte

func (tg targets) outcome(secret string, s workitem.Secret) string {
	b := s.Password
	if len(b) == 0 {
		b = s.PrivateKey
	}
	if bytes.Equal(tg[secret], b) {
		return workitem.OutcomeOK
	}
	return workitem.OutcomeRejected
}

// run does a task as an engine would; apply says whether a change is
// made on the target.
func (tg targets) run(o Outgoing, apply bool) *workitem.TaskResult {
	t := o.Task
	res := &workitem.TaskResult{Task: o.ID, Op: t.Op, Secret: t.Secret, Rotation: t.Rotation}
	if t.Op == workitem.TaskChange && apply && tg.outcome(t.Secret, t.Current) == workitem.OutcomeOK {
		c := t.Candidates[0]
		tg[t.Secret] = bytes.Clone(append(c.Password, c.PrivateKey...))
		res.Changed = true
	}
	res.Current = tg.outcome(t.Secret, t.Current)
	if t.Op != workitem.TaskHeartbeat {
		for _, c := range t.Candidates {
			res.Candidates = append(res.Candidates, tg.outcome(t.Secret, c))
		}
	}
	return res
}

func (tv *testVault) stored(t testing.TB, name string) []byte {
	t.Helper()
	r, err := tv.loadSecret(context.Background(), tv.db, name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tv.openCredential(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (tv *testVault) maintenance(t testing.TB, name string) Maintenance {
	t.Helper()
	si, err := tv.ShowSecret(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return si.Maintenance
}

func (tv *testVault) next(t testing.TB) []Outgoing {
	t.Helper()
	out, err := tv.NextTasks(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (tv *testVault) report(t testing.TB, res *workitem.TaskResult) {
	t.Helper()
	r, err := tv.loadSecret(context.Background(), tv.db, res.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := tv.TaskResult(context.Background(), r.site, "e1", res); err != nil {
		t.Fatal(err)
	}
}

func maintenanceVault(t testing.TB) (*testVault, *clock) {
	c := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	return newTestVault(t, WithClock(c.now)), c
}

func TestHeartbeatSchedule(t *testing.T) {
	tv, c := maintenanceVault(t)
	ctx := context.Background()
	spec := passwordSecret(t, "web01", "pw-1", "alice")
	spec.Heartbeat = time.Hour
	if err := tv.AddSecret(ctx, spec); err != nil {
		t.Fatal(err)
	}
	tg := targets{"web01": []byte("pw-1")}
	out := tv.next(t)
	if len(out) != 1 || out[0].Task.Op != workitem.TaskHeartbeat || string(out[0].Task.Current.Password) != "pw-1" ||
		out[0].TTL != DefaultHeartbeatTTL || len(out[0].Task.HostKey) == 0 {
		t.Fatalf("first heartbeat: %+v", out)
	}
	// Unanswered: not re-sent until its expiry and the grace have passed.
	c.set(c.now().Add(DefaultHeartbeatTTL + DefaultResendGrace - time.Second))
	if again := tv.next(t); len(again) != 0 {
		t.Fatalf("re-sent inside the window: %+v", again)
	}
	c.set(c.now().Add(2 * time.Second))
	again := tv.next(t)
	if len(again) != 1 || again[0].ID == out[0].ID {
		t.Fatalf("not re-sent after the window: %+v", again)
	}
	// The first one's late answer is history only.
	tv.report(t, tg.run(out[0], false))
	if m := tv.maintenance(t, "web01"); m.LastHeartbeat != "" {
		t.Fatalf("a late result counted: %+v", m)
	}
	tv.report(t, tg.run(again[0], false))
	m := tv.maintenance(t, "web01")
	if m.LastHeartbeat != workitem.OutcomeOK || m.LastHeartbeatEngine != "e1" || !m.NextHeartbeat.Equal(c.now().Add(time.Hour)) {
		t.Fatalf("after the heartbeat: %+v", m)
	}
	if len(tv.next(t)) != 0 {
		t.Fatal("a heartbeat before it is due")
	}
	c.set(c.now().Add(time.Hour))
	if out := tv.next(t); len(out) != 1 {
		t.Fatalf("no heartbeat when due: %+v", out)
	}
	h, err := tv.History(ctx, "web01")
	if err != nil || len(h) != 2 || h[0].Event != "heartbeat_late" || h[1].Event != "heartbeat" || h[1].Outcome != "ok" {
		t.Fatalf("history %+v %v", h, err)
	}
	if len(tv.audit.find("heartbeat")) != 1 {
		t.Fatal("the heartbeat was not audited")
	}
}

func TestRotationPromotes(t *testing.T) {
	tv, _ := maintenanceVault(t)
	ctx := context.Background()
	spec := passwordSecret(t, "web01", "pw-1", "alice")
	spec.PasswordRule = "len=30,classes=ld"
	if err := tv.AddSecret(ctx, spec); err != nil {
		t.Fatal(err)
	}
	tg := targets{"web01": []byte("pw-1")}
	if err := tv.RequestRotation(ctx, "web01"); err != nil {
		t.Fatal(err)
	}
	out := tv.next(t)
	if len(out) != 1 || out[0].Task.Op != workitem.TaskChange || out[0].Task.Method != workitem.MethodSelf || out[0].TTL != DefaultChangeTTL {
		t.Fatalf("change: %+v", out)
	}
	cand := bytes.Clone(out[0].Task.Candidates[0].Password)
	rule, _ := passrule.Parse("len=30,classes=ld")
	if !rule.Allows(cand) {
		t.Fatalf("candidate %q breaks the rule", cand)
	}
	if err := tv.RequestRotation(ctx, "web01"); !errors.Is(err, ErrConflict) {
		t.Fatalf("a second rotation while one is open: %v", err)
	}
	tv.report(t, tg.run(out[0], true))
	if got := tv.stored(t, "web01"); !bytes.Equal(got, cand) {
		t.Fatal("the candidate was not promoted")
	}
	m := tv.maintenance(t, "web01")
	if m.Generation != 1 || m.Rotation != "" || m.LastRotation.IsZero() {
		t.Fatalf("after: %+v", m)
	}
	var left int
	if err := tv.db.QueryRow(`SELECT COUNT(*) FROM rotations WHERE length(candidate) > 0`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("a promoted candidate stays stored: %d %v", left, err)
	}
}

// TestRotationUnknownOutcomes: every way the vault may not learn what
// happened ends with the credential that logs in stored.
func TestRotationUnknownOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		apply  bool // the change was made on the target
		report bool // its result reached the vault
	}{
		{"engine died before the change", false, false},
		{"result lost after the change", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tv, c := maintenanceVault(t)
			ctx := context.Background()
			if err := tv.AddSecret(ctx, passwordSecret(t, "web01", "pw-1", "alice")); err != nil {
				t.Fatal(err)
			}
			tg := targets{"web01": []byte("pw-1")}
			if err := tv.RequestRotation(ctx, "web01"); err != nil {
				t.Fatal(err)
			}
			change := tv.next(t)[0]
			res := tg.run(change, tc.apply)
			if tc.report {
				tv.report(t, res)
			}
			if m := tv.maintenance(t, "web01"); m.Rotation != "change" {
				t.Fatalf("rotation %+v", m)
			}
			c.set(c.now().Add(DefaultChangeTTL + DefaultResendGrace - time.Second))
			if out := tv.next(t); len(out) != 0 {
				t.Fatalf("something sent while the change may still run: %+v", out)
			}
			c.set(c.now().Add(2 * time.Second))
			verify := tv.next(t)
			if len(verify) != 1 || verify[0].Task.Op != workitem.TaskVerify || len(verify[0].Task.Candidates) != 1 {
				t.Fatalf("verify: %+v", verify)
			}
			tv.report(t, tg.run(verify[0], false))
			if got := tv.stored(t, "web01"); !bytes.Equal(got, tg["web01"]) {
				t.Fatalf("stored %q, target has %q", got, tg["web01"])
			}
			if m := tv.maintenance(t, "web01"); m.Rotation != "" {
				t.Fatalf("the rotation is still open: %+v", m)
			}
		})
	}
}

// TestRotationLateChange: a change the vault gave up on happens after
// all; the next heartbeat is refused, the kept candidate is tried and
// promoted.
func TestRotationLateChange(t *testing.T) {
	tv, c := maintenanceVault(t)
	ctx := context.Background()
	spec := passwordSecret(t, "web01", "pw-1", "alice")
	spec.Heartbeat = time.Hour
	if err := tv.AddSecret(ctx, spec); err != nil {
		t.Fatal(err)
	}
	tg := targets{"web01": []byte("pw-1")}
	hb := tv.next(t)
	tv.report(t, tg.run(hb[0], false))
	if err := tv.RequestRotation(ctx, "web01"); err != nil {
		t.Fatal(err)
	}
	change := tv.next(t)[0]
	c.set(c.now().Add(DefaultChangeTTL + DefaultResendGrace + time.Second))
	verify := tv.next(t)
	tv.report(t, tg.run(verify[0], false)) // nothing changed yet: kept current
	if m := tv.maintenance(t, "web01"); m.Rotation != "" || m.Generation != 0 {
		t.Fatalf("after the verify: %+v", m)
	}
	tg.run(change, true) // ... and now it runs, its result lost
	c.set(c.now().Add(time.Hour))
	hb = tv.next(t)
	if len(hb) != 1 || hb[0].Task.Op != workitem.TaskHeartbeat {
		t.Fatalf("heartbeat: %+v", hb)
	}
	tv.report(t, tg.run(hb[0], false))
	if m := tv.maintenance(t, "web01"); m.LastHeartbeat != workitem.OutcomeRejected || m.Rotation != "verify" {
		t.Fatalf("a refused heartbeat did not start a reconciliation: %+v", m)
	}
	verify = tv.next(t)
	tv.report(t, tg.run(verify[0], false))
	if got := tv.stored(t, "web01"); !bytes.Equal(got, tg["web01"]) {
		t.Fatal("the late change's candidate was not found")
	}
}

// TestRotationVaultRestart: the rotation state is in the store.
func TestRotationVaultRestart(t *testing.T) {
	tv, c := maintenanceVault(t)
	ctx := context.Background()
	if err := tv.AddSecret(ctx, passwordSecret(t, "web01", "pw-1", "alice")); err != nil {
		t.Fatal(err)
	}
	tg := targets{"web01": []byte("pw-1")}
	if err := tv.RequestRotation(ctx, "web01"); err != nil {
		t.Fatal(err)
	}
	change := tv.next(t)[0]
	tg.run(change, true)
	tv.Close()
	v, err := Open(ctx, tv.path, tv.keys, discardLogger(), tv.audit, WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	tv.Vault = v
	defer v.Close()
	if out := tv.next(t); len(out) != 0 {
		t.Fatalf("re-sent after a restart: %+v", out)
	}
	c.set(c.now().Add(DefaultChangeTTL + DefaultResendGrace + time.Second))
	verify := tv.next(t)
	if len(verify) != 1 {
		t.Fatalf("no verify after the restart: %+v", verify)
	}
	tv.report(t, tg.run(verify[0], false))
	if got := tv.stored(t, "web01"); !bytes.Equal(got, tg["web01"]) {
		t.Fatal("lost across the restart")
	}
}

func TestRotationPerHostLimit(t *testing.T) {
	tv, _ := maintenanceVault(t)
	ctx := context.Background()
	tg := targets{}
	for i := range 3 {
		name := fmt.Sprintf("web%02d", i)
		if err := tv.AddSecret(ctx, passwordSecret(t, name, "pw", "alice")); err != nil {
			t.Fatal(err)
		}
		tg[name] = []byte("pw")
		if err := tv.RequestRotation(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	out := tv.next(t)
	if len(out) != 1 {
		t.Fatalf("%d changes in flight on one host, want 1", len(out))
	}
	tv.report(t, tg.run(out[0], true))
	if out := tv.next(t); len(out) != 1 {
		t.Fatalf("after one change finished, %d went, want the next one", len(out))
	}
}

func TestMaintenanceValidation(t *testing.T) {
	tv, _ := maintenanceVault(t)
	ctx := context.Background()
	key := SecretSpec{Name: "k1", Host: "h", Port: 22, Username: "root", PrivateKey: newPrivateKeyPEM(t), PinOnFirstUse: true, Allow: []string{"alice"}}
	if err := tv.AddSecret(ctx, key); err != nil {
		t.Fatal(err)
	}
	if m := tv.maintenance(t, "k1"); m.ChangeMethod != ChangeKey {
		t.Fatalf("a key secret's default method: %q", m.ChangeMethod)
	}
	root := passwordSecret(t, "root-web", "pw", "alice")
	if err := tv.AddSecret(ctx, root); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*SecretSpec){
		"heartbeat too often":  func(s *SecretSpec) { s.Heartbeat = time.Second },
		"rotate negative":      func(s *SecretSpec) { s.Rotate = -time.Hour },
		"unknown method":       func(s *SecretSpec) { s.ChangeMethod = "magic" },
		"key for a password":   func(s *SecretSpec) { s.ChangeMethod = ChangeKey },
		"privileged self":      func(s *SecretSpec) { s.ChangeMethod = "privileged:x1" },
		"privileged missing":   func(s *SecretSpec) { s.ChangeMethod = "privileged:nobody" },
		"privileged elsewhere": func(s *SecretSpec) { s.ChangeMethod, s.Host = "privileged:root-web", "10.9.9.9" },
		"unmeetable rule":      func(s *SecretSpec) { s.PasswordRule = "classes=d,exclude=0123456789" },
		"bad rule":             func(s *SecretSpec) { s.PasswordRule = "length=5" },
	} {
		s := passwordSecret(t, "x1", "pw", "alice")
		mutate(&s)
		if err := tv.AddSecret(ctx, s); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	s := passwordSecret(t, "x1", "pw", "alice")
	s.ChangeMethod, s.PasswordRule = "privileged:root-web", "classes=dlu,len=20"
	if err := tv.AddSecret(ctx, s); err != nil {
		t.Fatal(err)
	}
	if m := tv.maintenance(t, "x1"); m.PasswordRule != "len=20,classes=uld" {
		t.Fatalf("rule not canonical: %q", m.PasswordRule)
	}
	if err := tv.RequestRotation(ctx, "k1"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rotation without a pinned host key: %v", err)
	}
}

// TestRotationFaultModel rotates 100 secrets many times with every fault
// the engine side can have (change not made, made with its result lost,
// results duplicated and delivered late, nothing answering for a while,
// the vault restarted) and then checks that every stored credential is
// the one its target accepts.
func TestRotationFaultModel(t *testing.T) {
	tv, c := maintenanceVault(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	tg := targets{}
	const secrets = 100
	for i := range secrets {
		s := passwordSecret(t, fmt.Sprintf("s%03d", i), "pw-start", "alice")
		s.Host = fmt.Sprintf("10.0.%d.%d", i/4, i%4) // a few share a host
		s.Heartbeat, s.Rotate = time.Hour, 2*time.Hour
		if err := tv.AddSecret(ctx, s); err != nil {
			t.Fatal(err)
		}
		tg[s.Name] = []byte("pw-start")
	}
	var late []*workitem.TaskResult
	var pending []Outgoing // taken by an engine that will run them later
	step := func(faults bool) {
		for _, o := range tv.next(t) {
			p := rng.IntN(10)
			switch {
			case faults && p == 0: // lost: the engine died before running it
				o.Task.Wipe()
			case faults && p == 1: // run, result lost
				tg.run(o, true)
			case faults && p == 2: // run later (an engine that stalled)
				pending = append(pending, o)
			case faults && p == 3: // run, result delivered twice, once late
				res := tg.run(o, true)
				tv.report(t, res)
				late = append(late, res)
			default:
				tv.report(t, tg.run(o, true))
			}
		}
		if faults && len(pending) > 0 && rng.IntN(3) == 0 {
			// A stalled engine runs what it held, if not expired.
			for _, o := range pending {
				if c.now().Before(o.Expiry) {
					tv.report(t, tg.run(o, true))
				}
			}
			pending = pending[:0]
		}
		if faults && len(late) > 0 && rng.IntN(4) == 0 {
			for _, r := range late {
				tv.report(t, r)
			}
			late = late[:0]
		}
	}
	for i := range 150 {
		step(true)
		if i%37 == 0 {
			tv.Close()
			v, err := Open(ctx, tv.path, tv.keys, discardLogger(), tv.audit, WithClock(c.now))
			if err != nil {
				t.Fatal(err)
			}
			tv.Vault = v
		}
		c.set(c.now().Add(time.Duration(1+rng.IntN(20)) * time.Minute))
	}
	// Settle: no more faults, time moves until nothing is open.
	for range 100 {
		step(false)
		c.set(c.now().Add(10 * time.Minute))
	}
	var open int
	if err := tv.db.QueryRow(`SELECT COUNT(*) FROM rotations WHERE state = 'open'`).Scan(&open); err != nil {
		t.Fatal(err)
	}
	failing := 0
	var rotated int
	for name, want := range tg {
		if !bytes.Equal(tv.stored(t, name), want) {
			failing++
		}
		rotated += int(tv.maintenance(t, name).Generation)
	}
	t.Logf("%d secrets checked, %d failing; %d promotions; %d rotations open", secrets, failing, rotated, open)
	if failing != 0 || open != 0 {
		t.Fatalf("%d secrets whose stored credential the target refuses, %d rotations open", failing, open)
	}
	if rotated < secrets {
		t.Fatalf("only %d promotions: the model did not rotate much", rotated)
	}
}

func TestMaintenanceMetrics(t *testing.T) {
	tv, _ := maintenanceVault(t)
	ctx := context.Background()
	spec := passwordSecret(t, "web01", "pw-1", "alice")
	spec.Heartbeat = time.Hour
	if err := tv.AddSecret(ctx, spec); err != nil {
		t.Fatal(err)
	}
	tg := targets{"web01": []byte("pw-2")}
	tv.report(t, tg.run(tv.next(t)[0], false))
	if err := tv.RequestRotation(ctx, "web01"); err != nil {
		t.Fatal(err)
	}
	tv.next(t)[0].Task.Wipe()
	reg := prometheus.NewRegistry()
	reg.MustRegister(newMaintenanceCollector(tv.Vault))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			got[mf.GetName()] = strings.Join(labels, ",")
		}
	}
	if got["sallyport_vault_secret_heartbeat_timestamp_seconds"] != "outcome=rejected,secret=web01,site=default" ||
		got["sallyport_vault_rotations_open"] != "phase=change,site=default" {
		t.Fatalf("metrics %v", got)
	}
}

// TestBusy: a write that meets another writer's lock is recognised as
// passing (the daemon puts the result back instead of dropping it);
// other errors are not.
func TestBusy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy.db")
	a, err := sql.Open("sqlite", path+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(0)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := a.Exec(`CREATE TABLE t (x INTEGER)`); err != nil {
		t.Fatal(err)
	}
	tx, err := a.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	_, err = b.Exec(`INSERT INTO t VALUES (1)`)
	if err == nil || !busy(fmt.Errorf("applying: %w", err)) {
		t.Fatalf("a locked database: %v, busy %v", err, busy(err))
	}
	if busy(errors.New("constraint failed")) || busy(ErrNotFound) {
		t.Fatal("other errors taken for busy")
	}
}
