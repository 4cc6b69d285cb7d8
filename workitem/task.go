package workitem

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// TaskOp is what a KindTask asks an engine to do to a secret's target.
type TaskOp string

// Task operations.
const (
	// TaskHeartbeat: does the stored credential still log in?
	TaskHeartbeat TaskOp = "heartbeat"
	// TaskChange: change the credential on the target to the candidate,
	// then report which of the two logs in.
	TaskChange TaskOp = "change"
	// TaskVerify: change nothing; report which of the current credential
	// and the candidates logs in (reconciliation after an unknown outcome).
	TaskVerify TaskOp = "verify"
)

// Change methods (Task.Method).
const (
	// MethodSelf: the account changes its own password (passwd).
	MethodSelf = "self"
	// MethodPrivileged: another account on the same host sets it
	// (chpasswd, optionally through sudo); Task.Privileged logs in.
	MethodPrivileged = "privileged"
	// MethodKey: SSH key rotation in the account's authorized_keys.
	MethodKey = "key"
)

// Outcomes of one login, in TaskResult.
const (
	OutcomeOK             = "ok"
	OutcomeRejected       = "rejected"         // the credential was refused
	OutcomeUnreachable    = "unreachable"      // no answer, refused, or timed out
	OutcomeHostKeyChanged = "host_key_changed" // the target's key is not the pinned one
	OutcomeError          = "error"            // anything else; see Detail
)

// Bounds on a task.
const (
	// MaxCandidates bounds the candidates of one task.
	MaxCandidates = 8
	// MaxDetail bounds TaskResult.Detail.
	MaxDetail = 256
	maxBlob   = 64 << 10
)

// Secret is one credential in a task: exactly one of Password and
// PrivateKey. It redacts itself when printed or logged.
type Secret struct {
	Password   []byte
	PrivateKey []byte
}

// Wipe overwrites the secret.
func (s *Secret) Wipe() {
	if s == nil {
		return
	}
	clear(s.Password)
	clear(s.PrivateKey)
	s.Password, s.PrivateKey = nil, nil
}

// String redacts the secret.
func (s Secret) String() string { return "secret{[REDACTED]}" }

// GoString redacts the secret under %#v.
func (s Secret) GoString() string { return s.String() }

// LogValue redacts the secret in slog records.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON redacts the secret: it never travels as JSON.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"[REDACTED]"`), nil }

func (s *Secret) kind() (string, []byte, error) {
	switch {
	case len(s.Password) > 0 && len(s.PrivateKey) == 0:
		return SecretPassword, s.Password, nil
	case len(s.PrivateKey) > 0 && len(s.Password) == 0:
		return SecretPrivateKey, s.PrivateKey, nil
	}
	return "", nil, errors.New("workitem: a task secret needs exactly one of password and private key")
}

// Task is the body of a KindTask (see EncodeTask): work on one secret's
// target that any engine of the secret's site may take. Its secrets never
// pass through encoding/json.
type Task struct {
	Op     TaskOp `json:"op"`
	Secret string `json:"secret"`
	// Rotation names the rotation a change or a verify belongs to.
	Rotation string `json:"rotation,omitempty"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Username string `json:"username"`
	// Protocol is the target's (ProtocolSSH, also when empty, or
	// ProtocolRDP: heartbeats only).
	Protocol string `json:"protocol,omitempty"`
	// HostKey is the pinned target host key (SSH wire format), or the
	// SHA-256 of an RDP target's certificate; a task is never sent for a
	// target without one.
	HostKey []byte `json:"host_key"`
	// Method is how a change is made (MethodSelf, MethodPrivileged,
	// MethodKey); empty for heartbeats and verifies.
	Method string `json:"method,omitempty"`
	// Sudo: MethodPrivileged runs chpasswd through `sudo -S`.
	Sudo bool `json:"sudo,omitempty"`
	// PrivilegedUser is the account Privileged logs in as.
	PrivilegedUser string `json:"privileged_user,omitempty"`

	// Current is the stored credential.
	Current Secret `json:"-"`
	// Candidates: for a change, the one new credential; for a verify,
	// the credentials that may be on the target instead of Current,
	// newest first.
	Candidates []Secret `json:"-"`
	// Privileged logs in as PrivilegedUser for MethodPrivileged.
	Privileged *Secret `json:"-"`

	// Layout says what the bytes after the JSON hold, in order; EncodeTask
	// sets it.
	Layout []string `json:"layout"`
}

// String redacts the secrets.
func (t Task) String() string {
	return fmt.Sprintf("task{%s %s %s@%s:%d [REDACTED]}", t.Op, t.Secret, t.Username, t.Host, t.Port)
}

// GoString redacts the secrets under %#v.
func (t Task) GoString() string { return t.String() }

// LogValue redacts the secrets in slog records.
func (t Task) LogValue() slog.Value { return slog.StringValue(t.String()) }

// Wipe overwrites every secret of the task.
func (t *Task) Wipe() {
	if t == nil {
		return
	}
	t.Current.Wipe()
	for i := range t.Candidates {
		t.Candidates[i].Wipe()
	}
	t.Privileged.Wipe()
}

// Layout roles: role ":" secret kind.
const (
	roleCurrent    = "current"
	roleCandidate  = "candidate"
	rolePrivileged = "privileged"
)

// EncodeTask lays out a KindTask body: the task as JSON, a zero byte,
// then each secret as a 4-byte big-endian length and its bytes, in the
// order Layout names. The caller wipes the result.
func EncodeTask(t *Task) ([]byte, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	type part struct {
		role string
		s    *Secret
	}
	parts := []part{{roleCurrent, &t.Current}}
	for i := range t.Candidates {
		parts = append(parts, part{roleCandidate, &t.Candidates[i]})
	}
	if t.Privileged != nil {
		parts = append(parts, part{rolePrivileged, t.Privileged})
	}
	t.Layout = t.Layout[:0]
	var secrets []byte
	for _, p := range parts {
		kind, b, err := p.s.kind()
		if err != nil {
			clear(secrets)
			return nil, fmt.Errorf("%s: %w", p.role, err)
		}
		if len(b) > maxBlob {
			clear(secrets)
			return nil, fmt.Errorf("workitem: %s secret too long", p.role)
		}
		t.Layout = append(t.Layout, p.role+":"+kind)
		secrets = binary.BigEndian.AppendUint32(secrets, uint32(len(b))) // #nosec G115 -- bounded by maxBlob
		secrets = append(secrets, b...)
	}
	out, err := encodeWithSecret(t, secrets, true)
	clear(secrets)
	return out, err
}

// check validates what a task must hold whatever its direction.
func (t *Task) check() error {
	switch t.Op {
	case TaskHeartbeat:
		if len(t.Candidates) != 0 || t.Method != "" {
			return fmt.Errorf("%w: task: a heartbeat has no candidate or method", ErrMalformed)
		}
	case TaskChange:
		if len(t.Candidates) != 1 {
			return fmt.Errorf("%w: task: a change has exactly one candidate", ErrMalformed)
		}
		switch t.Method {
		case MethodSelf, MethodKey:
			if t.Privileged != nil {
				return fmt.Errorf("%w: task: a privileged secret for method %s", ErrMalformed, t.Method)
			}
		case MethodPrivileged:
			if t.Privileged == nil || t.PrivilegedUser == "" {
				return fmt.Errorf("%w: task: method privileged needs the privileged login", ErrMalformed)
			}
		default:
			return fmt.Errorf("%w: task: unknown method", ErrMalformed)
		}
	case TaskVerify:
		if len(t.Candidates) == 0 || t.Method != "" {
			return fmt.Errorf("%w: task: a verify has candidates and no method", ErrMalformed)
		}
	default:
		return fmt.Errorf("%w: task: unknown op", ErrMalformed)
	}
	if len(t.Candidates) > MaxCandidates {
		return fmt.Errorf("%w: task: too many candidates", ErrMalformed)
	}
	if t.Op != TaskHeartbeat && t.Rotation == "" {
		return fmt.Errorf("%w: task: %s without its rotation", ErrMalformed, t.Op)
	}
	if t.Secret == "" || t.Host == "" || t.Username == "" || t.Port < 1 || t.Port > 65535 || len(t.HostKey) == 0 {
		return fmt.Errorf("%w: task: secret, target and pinned host key are required", ErrMalformed)
	}
	return nil
}

// DecodeTask reverses EncodeTask, strictly. The secrets are fresh slices
// the caller wipes (Task.Wipe); body is not kept.
func DecodeTask(body []byte) (*Task, error) {
	var t Task
	blobs, err := decodeWithSecret(body, &t)
	if err != nil {
		return nil, fmt.Errorf("task: %w", err)
	}
	defer clear(blobs)
	if blobs == nil {
		return nil, fmt.Errorf("%w: task without its secrets", ErrMalformed)
	}
	if len(t.Layout) > MaxCandidates+2 {
		return nil, fmt.Errorf("%w: task: layout too long", ErrMalformed)
	}
	fail := func(why string) (*Task, error) {
		t.Wipe()
		return nil, fmt.Errorf("%w: task: %s", ErrMalformed, why)
	}
	rest := blobs
	for i, entry := range t.Layout {
		role, kind, ok := strings.Cut(entry, ":")
		if !ok || len(rest) < 4 {
			return fail("bad layout")
		}
		n := binary.BigEndian.Uint32(rest)
		if n == 0 || n > maxBlob || len(rest)-4 < int(n) {
			return fail("bad secret length")
		}
		b := bytes.Clone(rest[4 : 4+n])
		rest = rest[4+n:]
		var s Secret
		switch kind {
		case SecretPassword:
			s.Password = b
		case SecretPrivateKey:
			s.PrivateKey = b
		default:
			clear(b)
			return fail("unknown secret kind")
		}
		switch {
		case role == roleCurrent && i == 0:
			t.Current = s
		case role == roleCandidate && i > 0 && t.Privileged == nil:
			t.Candidates = append(t.Candidates, s)
		case role == rolePrivileged && i > 0 && t.Privileged == nil:
			t.Privileged = &s
		default:
			s.Wipe()
			return fail("bad layout")
		}
	}
	if len(rest) != 0 || len(t.Layout) == 0 {
		return fail("secrets do not match the layout")
	}
	if err := t.check(); err != nil {
		t.Wipe()
		return nil, err
	}
	return &t, nil
}

// TaskResult is the body of a KindTaskResult: what an engine found. Its
// header names the engine; it never holds a secret.
type TaskResult struct {
	// Task is the id of the KindTask item this answers.
	Task     string `json:"task"`
	Op       TaskOp `json:"op"`
	Secret   string `json:"secret"`
	Rotation string `json:"rotation,omitempty"`
	// Current is how the current credential fared (an Outcome), after a
	// change was attempted if the task was one; "" if it was not tried.
	Current string `json:"current"`
	// Candidates are the candidates' outcomes, in the task's order; for a
	// change, after the change.
	Candidates []string `json:"candidates,omitempty"`
	// Changed: a change was made on the target (the candidate logged in
	// after it).
	Changed bool `json:"changed,omitempty"`
	// Detail is a short reason for a failure, never a secret.
	Detail string `json:"detail,omitempty"`
	// Started and Finished are the engine's clock, unix nanoseconds.
	Started  int64 `json:"started"`
	Finished int64 `json:"finished"`
}

// ValidOutcome reports whether o is one of the Outcome constants.
func ValidOutcome(o string) bool {
	switch o {
	case OutcomeOK, OutcomeRejected, OutcomeUnreachable, OutcomeHostKeyChanged, OutcomeError:
		return true
	}
	return false
}

// DecodeTaskResult decodes a KindTaskResult body strictly and checks it.
func DecodeTaskResult(body []byte) (*TaskResult, error) {
	var r TaskResult
	if err := DecodeJSON(body, &r); err != nil {
		return nil, fmt.Errorf("task result: %w", err)
	}
	switch {
	case r.Task == "" || r.Secret == "":
		return nil, fmt.Errorf("%w: task result: task and secret are required", ErrMalformed)
	case r.Op != TaskHeartbeat && r.Op != TaskChange && r.Op != TaskVerify:
		return nil, fmt.Errorf("%w: task result: unknown op", ErrMalformed)
	case r.Current != "" && !ValidOutcome(r.Current):
		return nil, fmt.Errorf("%w: task result: unknown outcome", ErrMalformed)
	case len(r.Candidates) > MaxCandidates:
		return nil, fmt.Errorf("%w: task result: too many candidates", ErrMalformed)
	case len(r.Detail) > MaxDetail:
		return nil, fmt.Errorf("%w: task result: detail too long", ErrMalformed)
	}
	for _, o := range r.Candidates {
		if !ValidOutcome(o) {
			return nil, fmt.Errorf("%w: task result: unknown outcome", ErrMalformed)
		}
	}
	return &r, nil
}
