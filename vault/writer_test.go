package vault

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/workitem"
)

// withBusyTimeout shortens how long SQLite waits for another writer's
// lock, so that a writer of this process that would meet another's lock
// fails quickly instead of after the default ten seconds.
func withBusyTimeout(d time.Duration) Option {
	return func(o *options) { o.busyTimeout = d }
}

// writersVault is a vault with n secrets due a heartbeat, and SQLite's
// busy timeout cut to a few milliseconds.
func writersVault(t *testing.T, n int) (*testVault, []string) {
	t.Helper()
	tv := newTestVault(t, withBusyTimeout(20*time.Millisecond))
	var secrets []string
	for i := range n {
		name := fmt.Sprintf("web%02d", i)
		spec := passwordSecret(t, name, "pw-"+name, "alice")
		spec.Heartbeat = time.Hour
		if err := tv.AddSecret(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, name)
	}
	return tv, secrets
}

// TestWritersQueueWhileAWriteIsOpen: admin requests that write while the
// maintenance scheduler holds a write transaction wait for it and then
// all succeed, however short SQLite's busy timeout: writers of one vault
// never fail on each other.
func TestWritersQueueWhileAWriteIsOpen(t *testing.T) {
	const writers = 16
	tv, secrets := writersVault(t, writers)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	wctx, tx, err := tv.beginWrite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	if _, err := tx.ExecContext(wctx, `UPDATE secret_schedule SET hb_outcome = 'ok'`); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, writers)
	for _, name := range secrets {
		go func() { errs <- tv.RequestHeartbeat(ctx, name) }()
	}
	// Every request either queues behind the open transaction or gives
	// up on the lock; only then does the transaction end.
	var failed []error
	returned := 0
	for returned < writers && tv.wdb.Stats().WaitCount < writers {
		select {
		case err := <-errs:
			returned++
			if err != nil {
				failed = append(failed, err)
			}
		case <-time.After(time.Millisecond):
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	for ; returned < writers; returned++ {
		if err := <-errs; err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d writers failed while another write was open, e.g. %v", len(failed), writers, failed[0])
	}
}

// TestWritersWithMaintenance: many admin requests making heartbeats due,
// while the scheduler sends them and applies their results as fast as it
// can, all succeed.
func TestWritersWithMaintenance(t *testing.T) {
	const writers, rounds = 16, 10
	tv, secrets := writersVault(t, writers)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var mu sync.Mutex
	var failed []error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		failed = append(failed, err)
	}
	applied := 0
	maintain := func() bool {
		out, err := tv.NextTasks(ctx, maintainBatch)
		if err != nil {
			fail(fmt.Errorf("next tasks: %w", err))
			return false
		}
		if len(out) == 0 {
			time.Sleep(time.Millisecond) // nothing due: no need to spin
		}
		for _, o := range out {
			res := &workitem.TaskResult{Task: o.ID, Op: o.Task.Op, Secret: o.Task.Secret, Current: workitem.OutcomeOK}
			o.Task.Wipe()
			if err := tv.TaskResult(ctx, o.Site, "e1", res); err != nil {
				fail(fmt.Errorf("task result: %w", err))
				return false
			}
			applied++
		}
		return true
	}
	stop := make(chan struct{})
	loop := make(chan struct{})
	go func() {
		defer close(loop)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if !maintain() {
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			for r := range rounds {
				if err := tv.RequestHeartbeat(ctx, secrets[(i+r)%len(secrets)]); err != nil {
					fail(fmt.Errorf("request heartbeat: %w", err))
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-loop
	if len(failed) > 0 {
		t.Fatalf("%d writes failed, e.g. %v", len(failed), failed[0])
	}
	// What the requests made due is sent and answered.
	if !maintain() || applied == 0 {
		t.Fatalf("no heartbeat result applied (%v)", failed)
	}
	for _, name := range secrets {
		if m := tv.maintenance(t, name); m.LastHeartbeat != workitem.OutcomeOK {
			t.Fatalf("%s: last heartbeat %q", name, m.LastHeartbeat)
		}
	}
}

// TestNestedWriteRefused: a write begun inside a write transaction, which
// would wait for the connection the transaction holds, fails at once.
func TestNestedWriteRefused(t *testing.T) {
	tv, secrets := writersVault(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wctx, tx, err := tv.beginWrite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() // #nosec G104 -- no-op after Commit
	if _, _, err := tv.beginWrite(wctx); !errors.Is(err, errNestedWrite) {
		t.Fatalf("nested beginWrite: %v", err)
	}
	if err := tv.RequestHeartbeat(wctx, secrets[0]); !errors.Is(err, errNestedWrite) {
		t.Fatalf("nested exec: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// The context of a transaction is not the caller's: theirs writes.
	if err := tv.RequestHeartbeat(ctx, secrets[0]); err != nil {
		t.Fatal(err)
	}
}
