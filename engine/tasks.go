package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/gateway/rdp"
	"github.com/sallyport/sallyport/names"
	"github.com/sallyport/sallyport/sshtarget"
	"github.com/sallyport/sallyport/workitem"
)

// Task limits.
const (
	// DefaultMaxChanges bounds the credential changes one engine makes at
	// once; DefaultHostChanges those on one target host.
	DefaultMaxChanges  = 4
	DefaultHostChanges = 1
	// taskLoginTimeout bounds each login of a task.
	taskLoginTimeout = 20 * time.Second
	// changeTimeout bounds a change as a whole. A change also never
	// starts after its item expired and is cut off at the expiry: the
	// vault verifies an unanswered change only after the expiry and its
	// resend grace, so no change is still running by then.
	changeTimeout = 90 * time.Second
	// resultTTL is how long a task result waits for the vault.
	resultTTL = 30 * time.Minute
	// publishTries bounds the attempts to publish one result.
	publishTries = 5
)

// taskRunner does maintenance tasks against targets, within the engine's
// limits on concurrent changes.
type taskRunner struct {
	changes chan struct{}

	hostMu    sync.Mutex
	hostLimit int
	hosts     map[string]*hostSlots
}

// hostSlots are one target host's change slots and how many callers
// hold or wait for one (the entry goes when none does).
type hostSlots struct {
	ch    chan struct{}
	users int
}

func newTaskRunner(maxChanges, hostChanges int) *taskRunner {
	if maxChanges <= 0 {
		maxChanges = DefaultMaxChanges
	}
	if hostChanges <= 0 {
		hostChanges = DefaultHostChanges
	}
	return &taskRunner{changes: make(chan struct{}, maxChanges), hostLimit: hostChanges, hosts: map[string]*hostSlots{}}
}

// acquire takes a change slot for host, then one of the engine's (so a
// change waiting for a busy host holds none of the engine's); release
// gives both back.
func (r *taskRunner) acquire(ctx context.Context, host string) (release func(), err error) {
	r.hostMu.Lock()
	h, ok := r.hosts[host]
	if !ok {
		h = &hostSlots{ch: make(chan struct{}, r.hostLimit)}
		r.hosts[host] = h
	}
	h.users++
	r.hostMu.Unlock()
	leave := func() {
		r.hostMu.Lock()
		h.users--
		if h.users == 0 && r.hosts[host] == h {
			delete(r.hosts, host)
		}
		r.hostMu.Unlock()
	}
	select {
	case h.ch <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
	select {
	case r.changes <- struct{}{}:
	case <-ctx.Done():
		<-h.ch
		leave()
		return nil, ctx.Err()
	}
	return func() {
		<-r.changes
		<-h.ch
		leave()
	}, nil
}

func login(t *workitem.Task, s workitem.Secret) sshtarget.Login {
	return sshtarget.Login{Host: t.Host, Port: t.Port, User: t.Username, Password: s.Password, PrivateKey: s.PrivateKey,
		HostKey: t.HostKey, Timeout: taskLoginTimeout}
}

// outcome maps a login's outcome to the wire's.
func outcome(o sshtarget.Outcome) string {
	switch o {
	case sshtarget.OK:
		return workitem.OutcomeOK
	case sshtarget.Rejected:
		return workitem.OutcomeRejected
	case sshtarget.Unreachable:
		return workitem.OutcomeUnreachable
	case sshtarget.HostKeyChanged:
		return workitem.OutcomeHostKeyChanged
	}
	return workitem.OutcomeError
}

// detail shortens an error for a result: never a secret (the package's
// errors hold none), at most workitem.MaxDetail bytes.
func detail(err error) string {
	if err == nil {
		return ""
	}
	s := strings.ToValidUTF8(err.Error(), "?")
	if len(s) > workitem.MaxDetail {
		s = s[:workitem.MaxDetail]
	}
	return strings.ToValidUTF8(s, "")
}

func check(ctx context.Context, t *workitem.Task, s workitem.Secret) (string, error) {
	if t.Protocol == workitem.ProtocolRDP {
		return checkRDP(ctx, t, s)
	}
	o, err := sshtarget.Check(ctx, login(t, s))
	return outcome(o), err
}

// checkRDP is an RDP target's heartbeat: the certificate checked against
// the pin and, for an NLA target, the password proved with CredSSP. A
// TLS-only target can check a password only in a whole session: its
// heartbeat is an error that says so.
func checkRDP(ctx context.Context, t *workitem.Task, s workitem.Secret) (string, error) {
	if len(s.Password) == 0 {
		return workitem.OutcomeError, errors.New("an RDP target needs a password")
	}
	ctx, cancel := context.WithTimeout(ctx, taskLoginTimeout)
	defer cancel()
	err := rdp.Check(ctx, &workitem.Credential{Secret: t.Secret, Protocol: t.Protocol, Host: t.Host, Port: t.Port,
		Username: t.Username, Password: s.Password, HostKey: t.HostKey})
	switch {
	case err == nil:
		return workitem.OutcomeOK, nil
	case errors.Is(err, rdp.ErrRejected):
		return workitem.OutcomeRejected, err
	case errors.Is(err, rdp.ErrCertificateMismatch):
		return workitem.OutcomeHostKeyChanged, err
	case errors.Is(err, rdp.ErrUnreachable):
		return workitem.OutcomeUnreachable, err
	}
	return workitem.OutcomeError, err
}

// run does t and returns its result (the caller fills Task).
func (r *taskRunner) run(ctx context.Context, t *workitem.Task, now func() time.Time, expiry time.Time) *workitem.TaskResult {
	res := &workitem.TaskResult{Op: t.Op, Secret: t.Secret, Rotation: t.Rotation, Started: now().UnixNano()}
	defer func() { res.Finished = now().UnixNano() }()
	switch t.Op {
	case workitem.TaskHeartbeat:
		var err error
		res.Current, err = check(ctx, t, t.Current)
		res.Detail = detail(err)
	case workitem.TaskChange:
		if t.Protocol == workitem.ProtocolRDP {
			// Never changed blind: the vault does not rotate RDP targets.
			res.Current, res.Detail = workitem.OutcomeError, "password changes of RDP targets are not supported"
			return res
		}
		// Waiting for a slot counts against the item's life.
		actx, acancel := context.WithDeadline(ctx, expiry)
		release, err := r.acquire(actx, t.Host)
		acancel()
		if err != nil || !now().Before(expiry) {
			if err == nil {
				release()
			}
			res.Current, res.Detail = workitem.OutcomeError, "not started before the item expired"
			if ctx.Err() != nil {
				res.Detail = "not started: the engine is stopping"
			}
			return res
		}
		cctx, cancel := context.WithTimeout(ctx, changeTimeout)
		cctx, cancel2 := context.WithDeadline(cctx, expiry)
		changeErr := change(cctx, t)
		cancel2()
		cancel()
		release()
		// Whatever the change said, what counts is what logs in now. A
		// key rotation that succeeded has just logged in with the new key
		// and seen the old one refused: that is the proof, no need for
		// another login.
		if t.Method == workitem.MethodKey && changeErr == nil {
			res.Candidates, res.Changed = []string{workitem.OutcomeOK}, true
			return res
		}
		cand, cerr := check(ctx, t, t.Candidates[0])
		res.Candidates = []string{cand}
		res.Changed = cand == workitem.OutcomeOK
		// The current credential is tried only when the candidate does
		// not log in: a password the change replaced cannot log in too,
		// and a key rotation has checked that the old key is refused.
		var curErr error
		if !res.Changed {
			res.Current, curErr = check(ctx, t, t.Current)
		}
		switch {
		case changeErr != nil:
			res.Detail = detail(changeErr)
		case cerr != nil:
			res.Detail = detail(cerr)
		case curErr != nil && res.Current != workitem.OutcomeRejected:
			res.Detail = detail(curErr)
		}
	case workitem.TaskVerify:
		var err error
		res.Current, err = check(ctx, t, t.Current)
		errs := []error{err}
		for _, c := range t.Candidates {
			o, err := check(ctx, t, c)
			res.Candidates = append(res.Candidates, o)
			errs = append(errs, err)
		}
		for _, err := range errs {
			if err != nil && !errors.Is(err, sshtarget.ErrRejected) {
				res.Detail = detail(err)
				break
			}
		}
	}
	return res
}

// taskOutcome labels a result for metrics: a heartbeat by what the
// credential did; a change by whether the candidate logs in now; a
// verify by whether any credential did.
func taskOutcome(res *workitem.TaskResult) string {
	switch res.Op {
	case workitem.TaskChange:
		if res.Changed {
			return "changed"
		}
		return "not_changed"
	case workitem.TaskVerify:
		found := res.Current == workitem.OutcomeOK
		for _, o := range res.Candidates {
			found = found || o == workitem.OutcomeOK
		}
		if found {
			return "found"
		}
		return "none_logs_in"
	}
	if res.Current == "" {
		return workitem.OutcomeError
	}
	return res.Current
}

// change makes the change t asks for on the target.
func change(ctx context.Context, t *workitem.Task) error {
	cand := t.Candidates[0]
	switch t.Method {
	case workitem.MethodSelf:
		return sshtarget.ChangeSelf(ctx, login(t, t.Current), cand.Password)
	case workitem.MethodPrivileged:
		priv := login(t, *t.Privileged)
		priv.User = t.PrivilegedUser
		return sshtarget.ChangePrivileged(ctx, priv, t.Username, cand.Password, t.Sudo)
	case workitem.MethodKey:
		signer, err := gossh.ParsePrivateKey(cand.PrivateKey)
		if err != nil {
			return errors.New("the new key does not parse")
		}
		line := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(signer.PublicKey()))) + " sallyport " + t.Secret
		return sshtarget.RotateKey(ctx, login(t, t.Current), cand.PrivateKey, line)
	}
	return fmt.Errorf("unknown change method %q", t.Method)
}

// task runs a KindTask and sends its result. The item is acknowledged
// once the result is published (or, after bounded tries, given up: the
// vault then verifies what the target holds).
func (w *worker) task(ctx context.Context, h workitem.Header, body []byte) error {
	t, err := workitem.DecodeTask(body)
	if err != nil {
		return err
	}
	defer t.Wipe()
	if t.Op == workitem.TaskChange && !w.now().Before(h.Expiry) {
		return errors.New("expired before it could start")
	}
	res := w.tasks.run(ctx, t, w.now, h.Expiry)
	res.Task = h.ID
	if w.count != nil {
		w.count(string(t.Op), taskOutcome(res))
	}
	w.log.Info("task done", "op", string(t.Op), "secret", t.Secret, "rotation", t.Rotation,
		"current", res.Current, "candidates", strings.Join(res.Candidates, ","), "detail", res.Detail)
	out, err := json.Marshal(res) // #nosec G117 -- Secret is the secret's name; a result never holds a credential
	if err != nil {
		return err
	}
	var last error
	for try := range publishTries {
		if last = w.publishResult(ctx, out); last == nil {
			return nil
		}
		if try == publishTries-1 {
			break
		}
		select {
		case <-time.After(time.Duration(1<<try) * time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.log.Warn("task result not sent; the vault will verify the target", "secret", t.Secret, "err", last)
	return nil
}

// publishResult seals a result under the engine's key and sends it to
// the site's result queue.
func (w *worker) publishResult(ctx context.Context, out []byte) error {
	k := w.creds.currentKey()
	defer clear(k.Bytes)
	sealed, err := workitem.Seal(k.Bytes, workitem.Header{
		Site: w.site, ID: workitem.NewID(), Kind: workitem.KindTaskResult, Engine: w.engine,
		KeyVersion: uint32(k.Version), Expiry: w.now().Add(resultTTL), // #nosec G115 -- versions are small counters
	}, out)
	if err != nil {
		return err
	}
	return w.conn.Publish(ctx, names.ResultQueue(w.site), sealed, resultTTL)
}
