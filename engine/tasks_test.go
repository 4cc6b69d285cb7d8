package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/internal/sshdtest"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/sshtarget"
	"github.com/sallyport/sallyport/workitem"
)

// The task tests share one real sshd, started by the first test that
// needs it and stopped by TestMain.
var sshd sshdtest.Shared

func TestMain(m *testing.M) { os.Exit(sshdtest.Main(m, &sshd)) }

// taskServer returns the shared sshd.
func taskServer(t *testing.T) *sshdtest.Server { t.Helper(); return sshd.Get(t) }

const (
	taskSecretName = "web01"
	taskRotation   = "rotation-1"
	// taskTestTimeout bounds one task in the tests: far more than a task
	// needs, far less than the test binary's timeout.
	taskTestTimeout = 2 * time.Minute
)

func passwordSecret(pw []byte) workitem.Secret { return workitem.Secret{Password: bytes.Clone(pw)} }
func keySecret(key []byte) workitem.Secret     { return workitem.Secret{PrivateKey: bytes.Clone(key)} }

// targetTask is a task on user's account on s, as the vault sends it.
func targetTask(s *sshdtest.Server, op workitem.TaskOp, user string, current workitem.Secret) *workitem.Task {
	t := &workitem.Task{Op: op, Secret: taskSecretName, Host: "127.0.0.1", Port: s.Port, Username: user,
		HostKey: s.HostKey, Current: current}
	if op != workitem.TaskHeartbeat {
		t.Rotation = taskRotation
	}
	return t
}

// changeTask is a change of user's credential from current to next by
// method.
func changeTask(s *sshdtest.Server, method, user string, current, next workitem.Secret) *workitem.Task {
	t := targetTask(s, workitem.TaskChange, user, current)
	t.Method = method
	t.Candidates = []workitem.Secret{next}
	return t
}

// newTargetKey makes a key pair for a target account.
func newTargetKey(t *testing.T) (private []byte, public string) {
	t.Helper()
	private, public, err := sshtarget.NewKey("engine-test")
	if err != nil {
		t.Fatal(err)
	}
	return private, public
}

// runTask runs task on r with the real clock, the item expiring at expiry.
func runTask(t *testing.T, r *taskRunner, task *workitem.Task, expiry time.Time) *workitem.TaskResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), taskTestTimeout)
	defer cancel()
	return r.run(ctx, task, time.Now, expiry)
}

// wantResult checks what run reported for task: the outcomes, whether it
// changed the credential, and a detail that is empty (detailHas "") or
// holds detailHas.
func wantResult(t *testing.T, task *workitem.Task, res *workitem.TaskResult, current string, candidates []string, changed bool, detailHas string) {
	t.Helper()
	if res.Op != task.Op || res.Secret != task.Secret || res.Rotation != task.Rotation {
		t.Errorf("result names op %q secret %q rotation %q, want %q %q %q", res.Op, res.Secret, res.Rotation, task.Op, task.Secret, task.Rotation)
	}
	if res.Current != current || !slices.Equal(res.Candidates, candidates) || res.Changed != changed {
		t.Errorf("result: current %q, candidates %q, changed %v (detail %q); want %q, %q, %v",
			res.Current, res.Candidates, res.Changed, res.Detail, current, candidates, changed)
	}
	switch {
	case detailHas == "" && res.Detail != "":
		t.Errorf("detail %q, want none", res.Detail)
	case detailHas != "" && !strings.Contains(res.Detail, detailHas):
		t.Errorf("detail %q, want it to say %q", res.Detail, detailHas)
	}
	if len(res.Detail) > workitem.MaxDetail {
		t.Errorf("detail of %d bytes, more than %d", len(res.Detail), workitem.MaxDetail)
	}
	if res.Started == 0 || res.Finished < res.Started {
		t.Errorf("started %d, finished %d", res.Started, res.Finished)
	}
}

// wantOpenSSH checks with the real OpenSSH client that sec logs in as
// user (works) or is refused (!works).
func wantOpenSSH(t *testing.T, s *sshdtest.Server, user string, sec workitem.Secret, works bool, what string) {
	t.Helper()
	var err error
	if len(sec.PrivateKey) > 0 {
		err = s.SSHKey(t.Context(), user, sec.PrivateKey)
	} else {
		err = s.SSHPassword(t.Context(), user, sec.Password)
	}
	switch {
	case works && err != nil:
		t.Errorf("ssh with the %s: %v\nsshd log:\n%s", what, err, s.LogTail(10))
	case !works && err == nil:
		t.Errorf("ssh with the %s logged in; want it refused", what)
	case !works && !errors.Is(err, sshdtest.ErrDenied):
		t.Errorf("ssh with the %s: %v; want permission denied", what, err)
	}
}

// closedPort returns a loopback port nothing listens on (a moment ago).
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// otherHostKey is a host key the target does not have, in wire format.
func otherHostKey(t *testing.T) []byte {
	t.Helper()
	_, public := newTargetKey(t)
	pk, _, _, _, err := gossh.ParseAuthorizedKey([]byte(public))
	if err != nil {
		t.Fatal(err)
	}
	return pk.Marshal()
}

// TestTaskHeartbeat: a heartbeat reports how the stored credential fares
// against the real sshd.
func TestTaskHeartbeat(t *testing.T) {
	t.Parallel()
	s := taskServer(t)
	r := newTaskRunner(0, 0)
	expiry := time.Now().Add(time.Hour)

	t.Run("password", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		task := targetTask(s, workitem.TaskHeartbeat, a.Name, passwordSecret(a.Password))
		wantResult(t, task, runTask(t, r, task, expiry), workitem.OutcomeOK, nil, false, "")
	})
	t.Run("keyboard-interactive password", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t, sshdtest.KbdInteractiveOnly())
		task := targetTask(s, workitem.TaskHeartbeat, a.Name, passwordSecret(a.Password))
		wantResult(t, task, runTask(t, r, task, expiry), workitem.OutcomeOK, nil, false, "")
	})
	t.Run("key", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		key, pub := newTargetKey(t)
		s.Authorize(t, a, pub)
		task := targetTask(s, workitem.TaskHeartbeat, a.Name, keySecret(key))
		wantResult(t, task, runTask(t, r, task, expiry), workitem.OutcomeOK, nil, false, "")
	})
	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		task := targetTask(s, workitem.TaskHeartbeat, a.Name, passwordSecret(sshdtest.RandomPassword()))
		wantResult(t, task, runTask(t, r, task, expiry), workitem.OutcomeRejected, nil, false, "rejected")
	})
	t.Run("key not authorized", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		key, _ := newTargetKey(t)
		task := targetTask(s, workitem.TaskHeartbeat, a.Name, keySecret(key))
		wantResult(t, task, runTask(t, r, task, expiry), workitem.OutcomeRejected, nil, false, "rejected")
	})
	t.Run("closed port", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		task := targetTask(s, workitem.TaskHeartbeat, a.Name, passwordSecret(a.Password))
		task.Port = closedPort(t)
		wantResult(t, task, runTask(t, r, task, expiry), workitem.OutcomeUnreachable, nil, false, "unreachable")
	})
	t.Run("another pinned host key", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		task := targetTask(s, workitem.TaskHeartbeat, a.Name, passwordSecret(a.Password))
		task.HostKey = otherHostKey(t)
		wantResult(t, task, runTask(t, r, task, expiry), workitem.OutcomeHostKeyChanged, nil, false, "pinned")
	})
}

// TestTaskChange changes a credential by each method and checks with the
// OpenSSH client that the candidate logs in and the old one no longer
// does.
func TestTaskChange(t *testing.T) {
	t.Parallel()
	s := taskServer(t)
	// Each change has a runner of its own: all of them go to the same
	// host, and the limits are TestTaskLimits' business.

	t.Run("self", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		old, next := passwordSecret(a.Password), passwordSecret(sshdtest.RandomPassword())
		task := changeTask(s, workitem.MethodSelf, a.Name, old, next)
		res := runTask(t, newTaskRunner(0, 0), task, time.Now().Add(time.Hour))
		wantResult(t, task, res, "", []string{workitem.OutcomeOK}, true, "")
		wantOpenSSH(t, s, a.Name, next, true, "new password")
		wantOpenSSH(t, s, a.Name, old, false, "old password")
	})

	t.Run("privileged through sudo", func(t *testing.T) {
		t.Parallel()
		admin := s.AddAccount(t)
		s.AllowSudo(t, admin, "/usr/sbin/chpasswd", false)
		a := s.AddAccount(t)
		old, next := passwordSecret(a.Password), passwordSecret(sshdtest.RandomPassword())
		task := changeTask(s, workitem.MethodPrivileged, a.Name, old, next)
		task.Sudo = true
		task.PrivilegedUser = admin.Name
		priv := passwordSecret(admin.Password)
		task.Privileged = &priv
		res := runTask(t, newTaskRunner(0, 0), task, time.Now().Add(time.Hour))
		wantResult(t, task, res, "", []string{workitem.OutcomeOK}, true, "")
		wantOpenSSH(t, s, a.Name, next, true, "new password")
		wantOpenSSH(t, s, a.Name, old, false, "old password")
		wantOpenSSH(t, s, admin.Name, priv, true, "privileged account's own password")
	})

	t.Run("key", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		oldKey, oldPub := newTargetKey(t)
		s.Authorize(t, a, oldPub)
		newKey, _ := newTargetKey(t)
		old, next := keySecret(oldKey), keySecret(newKey)
		task := changeTask(s, workitem.MethodKey, a.Name, old, next)
		res := runTask(t, newTaskRunner(0, 0), task, time.Now().Add(time.Hour))
		wantResult(t, task, res, "", []string{workitem.OutcomeOK}, true, "")
		wantOpenSSH(t, s, a.Name, next, true, "new key")
		wantOpenSSH(t, s, a.Name, old, false, "old key")
		// The new line names the secret it belongs to; the old line is gone.
		ak, err := os.ReadFile(filepath.Join(a.Home, ".ssh", "authorized_keys")) // #nosec G304 -- a throwaway account's home
		if err != nil {
			t.Fatal(err)
		}
		oldFields := strings.Fields(oldPub)
		if lines := strings.Split(strings.TrimSpace(string(ak)), "\n"); len(lines) != 1 ||
			!strings.HasSuffix(lines[0], " sallyport "+taskSecretName) || strings.Contains(lines[0], oldFields[1]) {
			t.Errorf("authorized_keys after the rotation:\n%s", ak)
		}
	})

	// The current password is wrong: passwd is never reached, nothing
	// changes, and both credentials are reported refused.
	t.Run("wrong current password", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		wrong, next := passwordSecret(sshdtest.RandomPassword()), passwordSecret(sshdtest.RandomPassword())
		task := changeTask(s, workitem.MethodSelf, a.Name, wrong, next)
		res := runTask(t, newTaskRunner(0, 0), task, time.Now().Add(time.Hour))
		wantResult(t, task, res, workitem.OutcomeRejected, []string{workitem.OutcomeRejected}, false, "rejected")
		wantOpenSSH(t, s, a.Name, passwordSecret(a.Password), true, "unchanged password")
	})
}

// TestTaskExpiry: a change is never started once its item has expired,
// whether it expired before it reached the engine or while it waited for
// a slot. (An account has one password: that the old one still logs in
// shows that nothing changed, without paying PAM's fail delay for the
// candidate.)
func TestTaskExpiry(t *testing.T) {
	t.Parallel()
	s := taskServer(t)

	// worker.task refuses an expired change before running it: nothing
	// is changed and no result is sent.
	t.Run("expired item", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		old, next := passwordSecret(a.Password), passwordSecret(sshdtest.RandomPassword())
		body, err := workitem.EncodeTask(changeTask(s, workitem.MethodSelf, a.Name, old, next))
		if err != nil {
			t.Fatal(err)
		}
		mem := connector.NewMemory(64)
		creds := NewCredentials(mem, testSite, testEngine, testKey, slog.New(slog.DiscardHandler))
		expiry := time.Now()
		for _, now := range []time.Time{expiry, expiry.Add(time.Second)} {
			w := newWorker(mem, testSite, testEngine, creds, slog.New(slog.DiscardHandler), func() time.Time { return now })
			h := workitem.Header{Site: testSite, ID: workitem.NewID(), Kind: workitem.KindTask, KeyVersion: 1, Expiry: expiry}
			if err := w.task(t.Context(), h, bytes.Clone(body)); err == nil {
				t.Errorf("a change %v after its expiry was run", now.Sub(expiry))
			}
		}
		if d := mem.Depth(names.ResultQueue(testSite)); d != 0 {
			t.Errorf("%d results sent for refused changes", d)
		}
		wantOpenSSH(t, s, a.Name, old, true, "unchanged password")
	})

	// The target's only slot is taken (by the test) until after the item
	// expires: the change is given up when the item expires, and nothing
	// is changed.
	t.Run("expires waiting for a slot", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		r := newTaskRunner(2, 1)
		release, err := r.acquire(t.Context(), "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		old, next := passwordSecret(a.Password), passwordSecret(sshdtest.RandomPassword())
		task := changeTask(s, workitem.MethodSelf, a.Name, old, next)
		begin := time.Now()
		expiry := begin.Add(500 * time.Millisecond)
		res := runTask(t, r, task, expiry)
		took := time.Since(begin)
		release()
		wantResult(t, task, res, workitem.OutcomeError, nil, false, "not started before the item expired")
		if took < 400*time.Millisecond || took > 30*time.Second {
			t.Errorf("gave up after %v; the item expired after 500ms", took)
		}
		wantIdle(t, r)
		wantOpenSSH(t, s, a.Name, old, true, "unchanged password")
	})

	// A slot comes free, but by the engine's clock the item has expired
	// by then: the change is not started and the slot is given back.
	t.Run("slot free only at the expiry", func(t *testing.T) {
		t.Parallel()
		a := s.AddAccount(t)
		r := newTaskRunner(2, 1)
		old, next := passwordSecret(a.Password), passwordSecret(sshdtest.RandomPassword())
		task := changeTask(s, workitem.MethodSelf, a.Name, old, next)
		expiry := time.Now().Add(time.Hour)
		res := r.run(t.Context(), task, func() time.Time { return expiry }, expiry)
		wantResult(t, task, res, workitem.OutcomeError, nil, false, "not started before the item expired")
		wantIdle(t, r)
		wantOpenSSH(t, s, a.Name, old, true, "unchanged password")
	})
}

// wantIdle checks that r holds no slot and remembers no host.
func wantIdle(t *testing.T, r *taskRunner) {
	t.Helper()
	r.hostMu.Lock()
	hosts := len(r.hosts)
	r.hostMu.Unlock()
	if n := len(r.changes); n != 0 || hosts != 0 {
		t.Errorf("%d engine slots taken, %d hosts with slots; want none", n, hosts)
	}
}

// acquireWithin takes a slot that must be free at once.
func acquireWithin(t *testing.T, r *taskRunner, host string) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	release, err := r.acquire(ctx, host)
	if err != nil {
		t.Fatalf("acquire %s: %v", host, err)
	}
	return release
}

type acquired struct {
	release func()
	err     error
}

// acquireLater starts an acquire of a slot for host and returns where its
// outcome will arrive.
func acquireLater(ctx context.Context, r *taskRunner, host string) <-chan acquired {
	out := make(chan acquired, 1)
	go func() {
		release, err := r.acquire(ctx, host)
		out <- acquired{release, err}
	}()
	return out
}

// stillWaiting checks that an acquire has not returned after a while.
func stillWaiting(t *testing.T, c <-chan acquired, what string) {
	t.Helper()
	select {
	case a := <-c:
		if a.release != nil {
			a.release()
		}
		t.Fatalf("%s did not wait (err %v)", what, a.err)
	case <-time.After(200 * time.Millisecond):
	}
}

// returned waits for an acquire to return.
func returned(t *testing.T, c <-chan acquired, what string) acquired {
	t.Helper()
	select {
	case a := <-c:
		return a
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still waits", what)
	}
	return acquired{}
}

// TestTaskLimits: the task runner's per-engine and per-host limits on
// concurrent changes.
func TestTaskLimits(t *testing.T) {
	t.Parallel()

	t.Run("defaults", func(t *testing.T) {
		r := newTaskRunner(0, -1)
		if cap(r.changes) != DefaultMaxChanges || r.hostLimit != DefaultHostChanges {
			t.Errorf("limits %d per engine, %d per host; want %d, %d", cap(r.changes), r.hostLimit, DefaultMaxChanges, DefaultHostChanges)
		}
	})

	t.Run("same host waits for the release", func(t *testing.T) {
		r := newTaskRunner(2, 1)
		first := acquireWithin(t, r, "db1")
		second := acquireLater(t.Context(), r, "db1")
		stillWaiting(t, second, "a second change on the same host")
		first()
		a := returned(t, second, "a second change on the same host after the first ended")
		if a.err != nil {
			t.Fatal(a.err)
		}
		a.release()
		wantIdle(t, r)
	})

	t.Run("host limit above one", func(t *testing.T) {
		r := newTaskRunner(4, 2)
		first, second := acquireWithin(t, r, "db1"), acquireWithin(t, r, "db1")
		third := acquireLater(t.Context(), r, "db1")
		stillWaiting(t, third, "a third change on a host that takes two")
		second()
		a := returned(t, third, "a third change after the second ended")
		if a.err != nil {
			t.Fatal(a.err)
		}
		first()
		a.release()
		wantIdle(t, r)
	})

	t.Run("different hosts proceed up to the engine limit", func(t *testing.T) {
		r := newTaskRunner(2, 1)
		onA, onB := acquireWithin(t, r, "db1"), acquireWithin(t, r, "db2")
		third := acquireLater(t.Context(), r, "db3")
		stillWaiting(t, third, "a third change with two running on an engine that takes two")
		onA()
		a := returned(t, third, "a third change after one ended")
		if a.err != nil {
			t.Fatal(a.err)
		}
		onB()
		a.release()
		wantIdle(t, r)
	})

	t.Run("cancellation unblocks", func(t *testing.T) {
		r := newTaskRunner(2, 1)
		held := acquireWithin(t, r, "db1")

		// Waiting for the host's slot: the engine slot it took is given back.
		ctx, cancel := context.WithCancel(t.Context())
		c := acquireLater(ctx, r, "db1")
		stillWaiting(t, c, "a change on a busy host")
		cancel()
		if a := returned(t, c, "a cancelled change"); !errors.Is(a.err, context.Canceled) || a.release != nil {
			t.Fatalf("cancelled acquire = %v", a.err)
		}
		if n := len(r.changes); n != 1 {
			t.Fatalf("%d engine slots taken after a cancelled wait, want 1", n)
		}

		// Waiting for an engine slot.
		other := acquireWithin(t, r, "db2")
		ctx, cancel = context.WithCancel(t.Context())
		c = acquireLater(ctx, r, "db3")
		stillWaiting(t, c, "a change on a full engine")
		cancel()
		if a := returned(t, c, "a cancelled change"); !errors.Is(a.err, context.Canceled) || a.release != nil {
			t.Fatalf("cancelled acquire = %v", a.err)
		}

		// A deadline does the same.
		ctx, cancel = context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		if a := returned(t, acquireLater(ctx, r, "db1"), "a change past its deadline"); !errors.Is(a.err, context.DeadlineExceeded) {
			t.Fatalf("acquire past its deadline = %v", a.err)
		}
		held()
		other()
		wantIdle(t, r)
		// And the slots work again.
		acquireWithin(t, r, "db3")()
		wantIdle(t, r)
	})
}

// TestWorkerTasks runs tasks through the worker as the vault sends them:
// sealed under the site key on the site's work queue; the results come
// back sealed under the engine's key on the site's result queue.
func TestWorkerTasks(t *testing.T) {
	t.Parallel()
	s := taskServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	mem := connector.NewMemory(64)
	m, _ := newMetrics(nil, testSite)
	creds := NewCredentials(mem, testSite, testEngine, testKey, slog.New(slog.DiscardHandler))
	w := newWorker(mem, testSite, testEngine, creds, slog.New(slog.DiscardHandler), time.Now)
	w.count = m.count
	siteKey := bytes.Repeat([]byte{9}, 32)
	const siteKeyVersion = 4
	w.setSiteKeys(map[int][]byte{siteKeyVersion: siteKey})

	var secrets [][]byte // what no result may hold
	publish := func(task *workitem.Task) string {
		t.Helper()
		secrets = append(secrets, task.Current.Password, task.Current.PrivateKey)
		for _, c := range task.Candidates {
			secrets = append(secrets, c.Password, c.PrivateKey)
		}
		body, err := workitem.EncodeTask(task)
		if err != nil {
			t.Fatal(err)
		}
		defer clear(body)
		id := workitem.NewID()
		sealed, err := workitem.Seal(siteKey, workitem.Header{Site: testSite, ID: id, Kind: workitem.KindTask,
			KeyVersion: siteKeyVersion, Expiry: time.Now().Add(10 * time.Minute)}, body)
		if err != nil {
			t.Fatal(err)
		}
		if err := mem.Publish(ctx, names.WorkQueue(testSite), sealed, 10*time.Minute); err != nil {
			t.Fatal(err)
		}
		return id
	}

	// A heartbeat that works.
	hbAccount := s.AddAccount(t)
	heartbeat := targetTask(s, workitem.TaskHeartbeat, hbAccount.Name, passwordSecret(hbAccount.Password))
	heartbeatID := publish(heartbeat)
	// A verify after a change of unknown outcome: the stored password and
	// the first candidate are refused, the second candidate logs in.
	vAccount := s.AddAccount(t)
	verify := targetTask(s, workitem.TaskVerify, vAccount.Name, passwordSecret(sshdtest.RandomPassword()))
	verify.Candidates = []workitem.Secret{passwordSecret(sshdtest.RandomPassword()), passwordSecret(vAccount.Password)}
	verifyID := publish(verify)
	// A key rotation.
	kAccount := s.AddAccount(t)
	oldKey, oldPub := newTargetKey(t)
	s.Authorize(t, kAccount, oldPub)
	newKey, _ := newTargetKey(t)
	rotate := changeTask(s, workitem.MethodKey, kAccount.Name, keySecret(oldKey), keySecret(newKey))
	rotateID := publish(rotate)

	results := names.ResultQueue(testSite)
	if err := mem.Declare(ctx, results, connector.Shared); err != nil {
		t.Fatal(err)
	}
	type got struct {
		h   workitem.Header
		res *workitem.TaskResult
		raw []byte
	}
	out := make(chan got, 8)
	go func() {
		_ = mem.Consume(ctx, results, 8, func(_ context.Context, d connector.Delivery) {
			defer d.Ack()
			h, body, err := workitem.Open(testKey.Bytes, d.Body(), time.Now())
			if err != nil {
				t.Errorf("the vault cannot open a result: %v", err)
				return
			}
			res, err := workitem.DecodeTaskResult(body)
			if err != nil {
				t.Errorf("result %s: %v", body, err)
				return
			}
			out <- got{h, res, bytes.Clone(body)}
		})
	}()
	go func() { _ = w.Run(ctx) }()

	byTask := map[string]got{}
	deadline := time.After(2 * time.Minute)
	for len(byTask) < 3 {
		select {
		case g := <-out:
			if _, dup := byTask[g.res.Task]; dup {
				t.Errorf("two results for task %s", g.res.Task)
			}
			byTask[g.res.Task] = g
		case <-deadline:
			t.Fatalf("%d results after 2 minutes, want 3", len(byTask))
		}
	}
	for _, g := range byTask {
		if g.h.Kind != workitem.KindTaskResult || g.h.Site != testSite || g.h.Engine != testEngine || int(g.h.KeyVersion) != testKey.Version {
			t.Errorf("result header %+v", g.h)
		}
		if !g.h.Expiry.After(time.Now().Add(resultTTL / 2)) {
			t.Errorf("result expires at %v, want about %v from now", g.h.Expiry, resultTTL)
		}
		for _, sec := range secrets {
			if len(sec) > 0 && bytes.Contains(g.raw, sec) {
				t.Errorf("result of %s holds a secret", g.res.Task)
			}
		}
	}
	for _, c := range []struct {
		id         string
		task       *workitem.Task
		current    string
		candidates []string
		changed    bool
		detailHas  string
	}{
		{heartbeatID, heartbeat, workitem.OutcomeOK, nil, false, ""},
		{verifyID, verify, workitem.OutcomeRejected, []string{workitem.OutcomeRejected, workitem.OutcomeOK}, false, ""},
		{rotateID, rotate, "", []string{workitem.OutcomeOK}, true, ""},
	} {
		g, ok := byTask[c.id]
		if !ok {
			t.Errorf("no result for the %s task", c.task.Op)
			continue
		}
		wantResult(t, c.task, g.res, c.current, c.candidates, c.changed, c.detailHas)
	}
	wantOpenSSH(t, s, kAccount.Name, keySecret(newKey), true, "rotated key")

	if d := mem.Depth(names.WorkQueue(testSite)); d != 0 {
		t.Errorf("%d items left in the work queue", d)
	}
	for _, k := range [][2]string{{"task", "ok"}, {"heartbeat", "ok"}, {"verify", "found"}, {"change", "changed"}} {
		want := 1.0
		if k[0] == "task" {
			want = 3
		}
		if v := counterValue(m.items.WithLabelValues(k[0], k[1])); v != want {
			t.Errorf("%s/%s counted %v times, want %v", k[0], k[1], v, want)
		}
	}
}

// TestTaskResultJSON: a result as the worker marshals it decodes strictly
// on the vault's side, and a long detail is cut to fit.
func TestTaskResultJSON(t *testing.T) {
	t.Parallel()
	// The cut falls inside a two-byte character, which goes.
	long := errors.New("a" + strings.Repeat("é", workitem.MaxDetail))
	d := detail(long)
	if len(d) != workitem.MaxDetail-1 || !utf8.ValidString(d) || !strings.HasPrefix(long.Error(), d) {
		t.Fatalf("detail of %d bytes: %q", len(d), d)
	}
	res := &workitem.TaskResult{Task: "id", Op: workitem.TaskChange, Secret: taskSecretName, Rotation: taskRotation,
		Current: workitem.OutcomeError, Detail: d, Started: 1, Finished: 2}
	out, err := json.Marshal(res) // #nosec G117 -- Secret is the secret's name; a result never holds a credential
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workitem.DecodeTaskResult(out); err != nil {
		t.Fatalf("DecodeTaskResult: %v", err)
	}
	if detail(nil) != "" {
		t.Errorf("detail(nil) = %q", detail(nil))
	}
}

// TestAcquireNeverOverHostLimit hammers one host's slot: however the
// releases and the waits interleave, no more changes than the limit hold
// it at once, and nothing is left in the table afterwards.
func TestAcquireNeverOverHostLimit(t *testing.T) {
	r := newTaskRunner(8, 1)
	var inside, worst atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				release, err := r.acquire(context.Background(), "h")
				if err != nil {
					t.Error(err)
					return
				}
				n := inside.Add(1)
				for {
					w := worst.Load()
					if n <= w || worst.CompareAndSwap(w, n) {
						break
					}
				}
				runtime.Gosched()
				inside.Add(-1)
				release()
			}
		})
	}
	wg.Wait()
	if worst.Load() != 1 {
		t.Fatalf("%d changes held one host's single slot at once", worst.Load())
	}
	r.hostMu.Lock()
	defer r.hostMu.Unlock()
	if len(r.hosts) != 0 {
		t.Fatalf("%d hosts left in the table", len(r.hosts))
	}
}
