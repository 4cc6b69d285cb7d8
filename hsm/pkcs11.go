//go:build cgo

package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"debug/elf"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// p256Params is CKA_EC_PARAMS for P-256: the DER-encoded curve OID
// 1.2.840.10045.3.1.7.
var p256Params = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// Sealed-data format of the PKCS#11 provider: version byte, IV, then the
// AES-GCM ciphertext with its tag.
const (
	sealVersion = 1
	gcmIVSize   = 12
	gcmTagSize  = 16
	// idSize is the size of the random CKA_ID given to new objects.
	idSize = 16
	// defaultReopenEvery is the least time between two attempts to reopen
	// a token after one failed.
	defaultReopenEvery = time.Second
)

// PKCS11 is the key provider for PKCS#11 tokens (hardware security
// modules, smart cards, SoftHSM2). Keys are generated on the token,
// marked sensitive and non-extractable, and every operation with them
// (ECDSA signing, AES-GCM, ECDH) runs inside the token.
//
// The provider keeps a small pool of sessions, logged in once. When the
// token fails (removed, reset, sessions closed, module error) the next
// operation reopens it (finding the token by label again, opening
// sessions and logging in) and is retried once; while the token stays
// unusable, operations fail with an error wrapping ErrUnavailable and a
// reopen is attempted at most once a second. A PIN the token rejects is
// never retried automatically, so a changed PIN cannot lock the token.
//
// A token can be open in at most one provider per process. PKCS11 is safe
// for concurrent use.
type PKCS11 struct {
	log *slog.Logger
	mod *module
	// modName is the module path as configured, for messages.
	modName string
	token   string
	nsess   int
	// reopenEvery is the least time between reopen attempts after a failed one.
	reopenEvery time.Duration

	// keyMu serializes creating and deleting keys, so that two callers in
	// this process cannot create the same label twice.
	keyMu sync.Mutex

	// mu is held shared by every operation for its whole duration and
	// exclusively to reopen or close the token; it guards the fields below.
	mu          sync.RWMutex
	closed      bool
	pin         []byte
	slot        uint
	pool        chan pkcs11.SessionHandle
	sessions    []pkcs11.SessionHandle
	modGen      uint64 // module generation the sessions belong to
	epoch       uint64 // bumped by every reopen attempt
	healthy     bool
	pinRejected bool
	lastErr     error
	lastTry     time.Time

	// hmu guards handles, a cache of object handles by label and class. It
	// is emptied when the token is reopened.
	hmu     sync.Mutex
	handles map[handleKey]pkcs11.ObjectHandle
}

// String names the token without its PIN (fmt prints a *PKCS11's fields,
// the PIN among them, at the top level).
func (p *PKCS11) String() string {
	return fmt.Sprintf("hsm.PKCS11{module %q, token %q [REDACTED]}", p.modName, p.token)
}

// GoString leaves out the PIN under %#v.
func (p *PKCS11) GoString() string { return p.String() }

// LogValue leaves out the PIN in slog records.
func (p *PKCS11) LogValue() slog.Value { return slog.StringValue(p.String()) }

type handleKey struct {
	label string
	class uint
}

// OpenPKCS11 loads cfg.Module, finds the token labelled cfg.TokenLabel,
// opens cfg.Sessions sessions and logs in with cfg.PIN. logger receives
// operational messages (never the PIN); nil discards them.
//
// Errors name what went wrong: a module path that does not exist or is not
// a PKCS#11 module, a token label that is not present (listing the labels
// that are), a wrong or locked PIN.
func OpenPKCS11(cfg PKCS11Config, logger *slog.Logger) (*PKCS11, error) {
	n, err := cfg.sessions()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	path, err := resolveModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	m, fresh, err := acquireModule(path, cfg.TokenLabel)
	if err != nil {
		return nil, err
	}
	p := &PKCS11{
		log:         logger,
		mod:         m,
		modName:     cfg.Module,
		token:       cfg.TokenLabel,
		nsess:       n,
		reopenEvery: defaultReopenEvery,
		pin:         bytes.Clone(cfg.PIN),
		pool:        make(chan pkcs11.SessionHandle, n),
		handles:     map[handleKey]pkcs11.ObjectHandle{},
	}
	p.mu.Lock()
	err = p.openSessionsLocked()
	var missing *tokenNotFoundError
	if err != nil && !fresh && errors.As(err, &missing) {
		// Some modules (SoftHSM2 among them) see tokens added since
		// C_Initialize only after initializing again.
		if err = m.reinit(logger); err == nil {
			err = p.openSessionsLocked()
		}
	}
	if err != nil {
		clear(p.pin)
		p.pin = nil
		p.closed = true
		p.mu.Unlock()
		releaseModule(m, cfg.TokenLabel)
		return nil, err
	}
	p.healthy = true
	p.mu.Unlock()
	logger.Info("PKCS#11 token open", "module", p.modName, "token", p.token, "slot", p.slot, "sessions", n)
	return p, nil
}

// module is one loaded PKCS#11 library. C_Initialize and C_Finalize act
// on the whole process, so every provider using the same library shares
// one module: it is initialized when the first provider opens and
// finalized when the last one closes. The library stays loaded.
type module struct {
	path string
	ctx  *pkcs11.Ctx

	// mu is held shared around every call into the library and exclusively
	// around C_Initialize and C_Finalize, so that no call runs while the
	// library tears its state down. It guards initialized and gen.
	mu          sync.RWMutex
	initialized bool
	gen         uint64 // bumped whenever the library is finalized

	// refs and tokens are guarded by modulesMu.
	refs   int
	tokens map[string]bool
}

var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

// resolveModule checks the module path and returns it with symbolic links
// resolved, so that one library always maps to one module.
func resolveModule(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("hsm: PKCS#11 module %s: %w", path, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("hsm: PKCS#11 module %s: file not found", path)
	}
	if err != nil {
		return "", fmt.Errorf("hsm: PKCS#11 module %s: %w", path, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("hsm: PKCS#11 module %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("hsm: PKCS#11 module %s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return "", fmt.Errorf("hsm: PKCS#11 module %s: writable by every user; refusing to load it", path)
	}
	return real, nil
}

// notAModule explains why the library at path could not be loaded.
func notAModule(path string) error {
	reason := "the dynamic loader refused it or it has no C_GetFunctionList"
	if runtime.GOOS != "darwin" && runtime.GOOS != "windows" {
		if f, err := elf.Open(path); err != nil {
			reason = "not an ELF shared library"
		} else {
			syms, _ := f.DynamicSymbols() // no symbols means no C_GetFunctionList
			_ = f.Close()
			exported := false
			for _, s := range syms {
				if s.Name == "C_GetFunctionList" && s.Section != elf.SHN_UNDEF {
					exported = true
				}
			}
			if !exported {
				reason = "it does not export C_GetFunctionList"
			} else {
				reason = "the dynamic loader refused it (wrong architecture or missing dependencies?)"
			}
		}
	}
	return fmt.Errorf("hsm: PKCS#11 module %s: not a PKCS#11 module: %s", path, reason)
}

// acquireModule loads and initializes the library at path (if this process
// has not yet) and reserves token on it. fresh reports whether the library
// was initialized by this call.
func acquireModule(path, token string) (m *module, fresh bool, err error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m = modules[path]
	if m == nil {
		ctx := pkcs11.New(path)
		if ctx == nil {
			return nil, false, notAModule(path)
		}
		m = &module{path: path, ctx: ctx, tokens: map[string]bool{}}
		modules[path] = m
	}
	if m.tokens[token] {
		return nil, false, fmt.Errorf("hsm: PKCS#11 token %q is already open in this process", token)
	}
	m.mu.Lock()
	if !m.initialized {
		if err := initialize(m.ctx); err != nil {
			m.mu.Unlock()
			return nil, false, fmt.Errorf("hsm: PKCS#11 module %s: C_Initialize: %w", path, err)
		}
		m.initialized = true
		fresh = true
	}
	m.mu.Unlock()
	m.refs++
	m.tokens[token] = true
	return m, fresh, nil
}

// releaseModule gives token back and finalizes the library when no
// provider uses it any more.
func releaseModule(m *module, token string) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	delete(m.tokens, token)
	m.refs--
	if m.refs > 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.initialized {
		_ = m.ctx.Finalize() // nothing to do if finalizing fails
		m.initialized = false
		m.gen++
	}
}

func initialize(c *pkcs11.Ctx) error {
	err := c.Initialize()
	if isCKR(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return nil
	}
	return err
}

// reinit finalizes and initializes the library again, which closes every
// session of every provider using it; they notice by the generation
// change and reopen.
func (m *module) reinit(log *slog.Logger) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	log.Warn("reinitializing PKCS#11 module", "module", m.path)
	if m.initialized {
		_ = m.ctx.Finalize() // the library may already be in a bad state; Initialize tells
		m.initialized = false
	}
	m.gen++
	if err := initialize(m.ctx); err != nil {
		return fmt.Errorf("hsm: PKCS#11 module %s: C_Initialize: %w", m.path, err)
	}
	m.initialized = true
	return nil
}

// tokenNotFoundError reports a token label that no slot holds.
type tokenNotFoundError struct {
	label, module string
	present       []string
}

func (e *tokenNotFoundError) Error() string {
	if len(e.present) == 0 {
		return fmt.Sprintf("hsm: PKCS#11 token %q not found in module %s: no initialized tokens present", e.label, e.module)
	}
	quoted := make([]string, len(e.present))
	for i, l := range e.present {
		quoted[i] = fmt.Sprintf("%q", l)
	}
	return fmt.Sprintf("hsm: PKCS#11 token %q not found in module %s; tokens present: %s",
		e.label, e.module, strings.Join(quoted, ", "))
}

// findToken returns the slot holding the token labelled label.
func findToken(c *pkcs11.Ctx, module, label string) (uint, pkcs11.TokenInfo, error) {
	slots, err := c.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("hsm: PKCS#11 module %s: list slots: %w", module, err)
	}
	var (
		present []string
		found   []uint
		info    pkcs11.TokenInfo
	)
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		l := strings.TrimRight(ti.Label, " \x00")
		present = append(present, l)
		if l == label {
			found = append(found, s)
			info = ti
		}
	}
	switch len(found) {
	case 0:
		return 0, info, &tokenNotFoundError{label: label, module: module, present: present}
	case 1:
		return found[0], info, nil
	}
	return 0, info, fmt.Errorf("hsm: PKCS#11 module %s: %d tokens are labelled %q; labels must be unique", module, len(found), label)
}

// login logs the session's application in as the normal user. The PIN is
// handed to the library without another Go copy of it.
func login(c *pkcs11.Ctx, sh pkcs11.SessionHandle, pin []byte) error {
	// #nosec G103 -- the string aliases pin only for this call, which copies it
	return c.Login(sh, pkcs11.CKU_USER, unsafe.String(unsafe.SliceData(pin), len(pin)))
}

// pinError is a login failure that must not be retried automatically:
// retrying a wrong PIN can lock the token.
type pinError struct{ msg string }

func (e *pinError) Error() string { return e.msg }

func isPINError(err error) bool {
	var pe *pinError
	return errors.As(err, &pe)
}

// loginError turns a C_Login failure into a clear error.
func loginError(token string, err error) error {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("hsm: PKCS#11 token %q: log in: %w", token, err)
	}
	switch uint(e) {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LEN_RANGE:
		return &pinError{fmt.Sprintf("hsm: wrong PIN for token %q", token)}
	case pkcs11.CKR_PIN_LOCKED:
		return pinLockedError(token)
	case pkcs11.CKR_PIN_EXPIRED:
		return &pinError{fmt.Sprintf("hsm: the PIN of token %q has expired; set a new one with the token's tools", token)}
	case pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		return &pinError{fmt.Sprintf("hsm: token %q has no user PIN; initialize it with the token's tools", token)}
	}
	return fmt.Errorf("hsm: PKCS#11 token %q: log in: %w", token, err)
}

func pinLockedError(token string) error {
	return &pinError{fmt.Sprintf("hsm: the user PIN of token %q is locked after too many wrong attempts; unlock it with the security officer PIN", token)}
}

// openSessionsLocked finds the token, opens the session pool and logs in.
// p.mu must be held exclusively.
func (p *PKCS11) openSessionsLocked() error {
	m := p.mod
	m.mu.RLock()
	defer m.mu.RUnlock()
	if !m.initialized {
		return fmt.Errorf("hsm: PKCS#11 module %s: %w", p.modName, pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED))
	}
	slot, info, err := findToken(m.ctx, p.modName, p.token)
	if err != nil {
		return err
	}
	if info.Flags&pkcs11.CKF_USER_PIN_LOCKED != 0 {
		return pinLockedError(p.token)
	}
	if info.Flags&pkcs11.CKF_USER_PIN_FINAL_TRY != 0 {
		p.log.Warn("PKCS#11 token allows one more wrong PIN before it locks", "token", p.token)
	}
	sessions := make([]pkcs11.SessionHandle, 0, p.nsess)
	fail := func(err error) error {
		for _, sh := range sessions {
			_ = m.ctx.CloseSession(sh) // cleaning up after the real error
		}
		return err
	}
	for i := 0; i < p.nsess; i++ {
		sh, err := m.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return fail(fmt.Errorf("hsm: PKCS#11 token %q: open session: %w", p.token, err))
		}
		sessions = append(sessions, sh)
		if i == 0 {
			// Login state belongs to the application, not the session:
			// one login serves the whole pool.
			if err := login(m.ctx, sh, p.pin); err != nil && !isCKR(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
				return fail(loginError(p.token, err))
			}
		}
	}
	p.slot = slot
	p.modGen = m.gen
	p.sessions = sessions
	for _, sh := range sessions {
		p.pool <- sh
	}
	return nil
}

// closeSessionsLocked closes the session pool. p.mu must be held
// exclusively, so every session is back in the pool.
func (p *PKCS11) closeSessionsLocked() {
	for len(p.pool) > 0 {
		<-p.pool
	}
	m := p.mod
	m.mu.RLock()
	if m.initialized && m.gen == p.modGen {
		for _, sh := range p.sessions {
			_ = m.ctx.CloseSession(sh) // the session may already be gone
		}
	}
	m.mu.RUnlock()
	p.sessions = nil
}

// fault classifies PKCS#11 errors.
type fault int

const (
	faultNone   fault = iota // success or an error that reopening cannot fix
	faultStale               // a cached object handle is no longer valid
	faultDevice              // the session, token or library failed
)

func faultOf(err error) fault {
	var e pkcs11.Error
	if err == nil || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrClosed) || !errors.As(err, &e) {
		return faultNone // including failures already handled by a reopen
	}
	switch uint(e) {
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return faultStale
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_SLOT_ID_INVALID,
		pkcs11.CKR_OPERATION_ACTIVE:
		return faultDevice
	}
	return faultNone
}

func isCKR(err error, code uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == code
}

func unavailable(err error) error {
	if errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// opFunc is one operation on a session; it may run twice (after a reopen),
// so it must not keep state between runs.
type opFunc func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error

// do runs fn on a pooled session. After a device failure it reopens the
// token and runs fn once more; after a stale-handle error it forgets the
// cached handles and runs fn once more.
func (p *PKCS11) do(ctx context.Context, fn opFunc) error {
	reopened, refreshed := false, false
	for {
		epoch, err := p.attempt(ctx, fn)
		switch faultOf(err) {
		case faultNone:
			return err
		case faultStale:
			if !refreshed && !reopened {
				refreshed = true
				p.forgetHandles()
				continue
			}
		case faultDevice:
			if !reopened {
				reopened = true
				if rerr := p.reopen(epoch, err); rerr != nil {
					return rerr
				}
				continue
			}
		}
		p.markBroken(epoch, err)
		return unavailable(err)
	}
}

// attempt runs fn once on a pooled session and returns the epoch it ran in.
func (p *PKCS11) attempt(ctx context.Context, fn opFunc) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	p.mu.RLock()
	if !p.closed && !p.healthy {
		epoch := p.epoch
		p.mu.RUnlock()
		if err := p.reopen(epoch, nil); err != nil {
			return 0, err
		}
		p.mu.RLock()
	}
	defer p.mu.RUnlock()
	if p.closed {
		return 0, ErrClosed
	}
	if !p.healthy {
		return 0, unavailable(p.lastErr)
	}
	epoch := p.epoch
	var sh pkcs11.SessionHandle
	select {
	case sh = <-p.pool:
	case <-ctx.Done():
		return epoch, ctx.Err()
	}
	defer func() { p.pool <- sh }()
	m := p.mod
	m.mu.RLock()
	defer m.mu.RUnlock()
	if !m.initialized || m.gen != p.modGen {
		// Another provider reinitialized the library: our sessions are gone.
		return epoch, pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED)
	}
	return epoch, fn(m.ctx, sh)
}

// reopen closes the sessions, finds the token again, opens new sessions
// and logs in. seen is the epoch the caller's failure happened in: if the
// token was reopened since, reopen only reports the outcome of that.
// After a failed reopen, new attempts are made at most every
// p.reopenEvery; after a rejected PIN, none are.
func (p *PKCS11) reopen(seen uint64, cause error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.epoch != seen {
		if p.healthy {
			return nil
		}
		return unavailable(p.lastErr)
	}
	if !p.healthy && (p.pinRejected || time.Since(p.lastTry) < p.reopenEvery) {
		return unavailable(p.lastErr)
	}
	if cause == nil {
		cause = p.lastErr
	}
	p.lastTry = time.Now()
	p.epoch++
	p.forgetHandles()
	p.log.Warn("PKCS#11 token failed; reopening it", "module", p.modName, "token", p.token, "cause", errString(cause))
	p.closeSessionsLocked()
	err := p.openSessionsLocked()
	if err != nil && !isPINError(err) {
		// The token may have been re-inserted or the library may be in a
		// bad state: some modules only recover through C_Initialize.
		p.closeSessionsLocked()
		if err = p.mod.reinit(p.log); err == nil {
			err = p.openSessionsLocked()
		}
	}
	if err != nil {
		p.healthy = false
		p.lastErr = err
		p.pinRejected = isPINError(err)
		p.log.Error("PKCS#11 token reopen failed", "module", p.modName, "token", p.token, "err", err.Error(),
			"retry", !p.pinRejected)
		return unavailable(err)
	}
	p.healthy = true
	p.lastErr = nil
	p.log.Info("PKCS#11 token reopened", "module", p.modName, "token", p.token, "slot", p.slot)
	return nil
}

// markBroken records that the token failed again right after a reopen, so
// that later calls reopen it (rate-limited) before using it.
func (p *PKCS11) markBroken(epoch uint64, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.epoch == epoch && p.healthy && !p.closed {
		p.healthy = false
		p.lastErr = err
		p.log.Error("PKCS#11 token still failing after reopening it", "module", p.modName, "token", p.token, "err", err.Error())
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (p *PKCS11) forgetHandles() {
	p.hmu.Lock()
	clear(p.handles)
	p.hmu.Unlock()
}

func (p *PKCS11) forgetLabel(label string) {
	p.hmu.Lock()
	for k := range p.handles {
		if k.label == label {
			delete(p.handles, k)
		}
	}
	p.hmu.Unlock()
}

// findObjects returns up to max handles of objects labelled label (and of
// class class unless it is anyClass).
func findObjects(c *pkcs11.Ctx, sh pkcs11.SessionHandle, label string, class uint, max int) ([]pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}
	if class != anyClass {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class))
	}
	if err := c.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	hs, _, err := c.FindObjects(sh, max)
	ferr := c.FindObjectsFinal(sh)
	if err != nil {
		return nil, err
	}
	if ferr != nil {
		return nil, ferr
	}
	return hs, nil
}

// anyClass matches objects of every class in findObjects.
const anyClass = ^uint(0)

func className(class uint) string {
	switch class {
	case pkcs11.CKO_SECRET_KEY:
		return "secret key"
	case pkcs11.CKO_PRIVATE_KEY:
		return "private key"
	case pkcs11.CKO_PUBLIC_KEY:
		return "public key"
	}
	return fmt.Sprintf("class %d", class)
}

// notFound returns ErrKeyNotFound for label, unless the token itself has
// gone (then the device error, so that the caller reopens the token
// instead of reporting a missing key).
func (p *PKCS11) notFound(c *pkcs11.Ctx, label, what string) error {
	if _, err := c.GetTokenInfo(p.slot); err != nil {
		return err
	}
	return fmt.Errorf("%w: no %s labelled %q on token %q", ErrKeyNotFound, what, label, p.token)
}

// handle returns the object labelled label of class class, from the cache
// when possible. It runs inside an opFunc.
func (p *PKCS11) handle(c *pkcs11.Ctx, sh pkcs11.SessionHandle, label string, class uint) (pkcs11.ObjectHandle, error) {
	k := handleKey{label: label, class: class}
	p.hmu.Lock()
	h, ok := p.handles[k]
	p.hmu.Unlock()
	if ok {
		return h, nil
	}
	hs, err := findObjects(c, sh, label, class, 2)
	if err != nil {
		return 0, err
	}
	switch len(hs) {
	case 0:
		return 0, p.notFound(c, label, className(class))
	case 1:
	default:
		return 0, fmt.Errorf("hsm: PKCS#11 token %q holds several %s objects labelled %q; expected one", p.token, className(class), label)
	}
	p.hmu.Lock()
	p.handles[k] = hs[0]
	p.hmu.Unlock()
	return hs[0], nil
}

// labelTaken reports whether any object is labelled label. It runs inside
// an opFunc.
func (p *PKCS11) labelTaken(c *pkcs11.Ctx, sh pkcs11.SessionHandle, label string) (bool, error) {
	hs, err := findObjects(c, sh, label, anyClass, 1)
	if err != nil {
		return false, err
	}
	if len(hs) > 0 {
		return true, nil
	}
	if _, err := c.GetTokenInfo(p.slot); err != nil {
		return false, err
	}
	return false, nil
}

func checkLabel(label string) error {
	if label == "" {
		return errors.New("hsm: empty key label")
	}
	return nil
}

func newID() ([]byte, error) {
	id := make([]byte, idSize)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("hsm: %w", err)
	}
	return id, nil
}

// wrap adds the operation and the key label to a PKCS#11 error, leaving
// the package's own errors as they are.
func (p *PKCS11) wrap(op, label string, err error) error {
	if err == nil || errors.Is(err, ErrKeyNotFound) || errors.Is(err, ErrKeyExists) ||
		errors.Is(err, ErrUnavailable) || errors.Is(err, ErrClosed) || errors.Is(err, ErrOpen) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if strings.HasPrefix(err.Error(), "hsm: ") {
		return err
	}
	return fmt.Errorf("hsm: PKCS#11 token %q: %s %q: %w", p.token, op, label, err)
}

// GenerateAESKey implements Provider: it generates an AES-256 key on the
// token (sensitive, non-extractable, for encrypt/decrypt and wrap/unwrap).
func (p *PKCS11) GenerateAESKey(ctx context.Context, label string) error {
	return p.create(ctx, label, "generate AES key", "generated AES-256 key on PKCS#11 token",
		func(c *pkcs11.Ctx, sh pkcs11.SessionHandle, id []byte) error {
			_, err := c.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
				pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
				pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
				pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			})
			return err
		})
}

// create makes a key under label with mk, given a fresh CKA_ID, unless
// the label is taken (ErrKeyExists). Creations are serialized so that two
// callers in this process cannot take one label twice.
func (p *PKCS11) create(ctx context.Context, label, op, done string, mk func(c *pkcs11.Ctx, sh pkcs11.SessionHandle, id []byte) error) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	id, err := newID()
	if err != nil {
		return err
	}
	p.keyMu.Lock()
	defer p.keyMu.Unlock()
	err = p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		taken, err := p.labelTaken(c, sh, label)
		if err != nil {
			return err
		}
		if taken {
			return fmt.Errorf("%w: %q on token %q", ErrKeyExists, label, p.token)
		}
		return mk(c, sh, id)
	})
	if err == nil {
		p.log.Info(done, "token", p.token, "label", label)
	}
	return p.wrap(op, label, err)
}

// ecPublicTemplate and ecPrivateTemplate are the attributes of the EC key
// objects this provider creates.
func ecPublicTemplate(label string, id []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256Params),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
}

func ecPrivateTemplate(label string, id []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
}

// GenerateSigner implements Provider: it generates an ECDSA P-256 key pair
// on the token. The private key is sensitive and non-extractable and can
// sign and derive (ECDH); the public key can verify.
func (p *PKCS11) GenerateSigner(ctx context.Context, label string) error {
	return p.create(ctx, label, "generate EC key pair", "generated ECDSA P-256 key pair on PKCS#11 token",
		func(c *pkcs11.Ctx, sh pkcs11.SessionHandle, id []byte) error {
			_, _, err := c.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
				ecPublicTemplate(label, id), ecPrivateTemplate(label, id)[1:]) // the mechanism sets the private key's class
			return err
		})
}

// ImportSigner stores key on the token under label: the private key as a
// sensitive, non-extractable object that can sign and derive, and its
// public key. It fails with ErrKeyExists if the label is taken. It exists
// for `sallyport keys migrate`, which moves the SSH host key from the soft
// keystore so that clients' known_hosts stay valid.
//
// The key's encoding passes through the PKCS#11 library's memory, which
// this process cannot wipe; the caller should wipe its own copy.
func (p *PKCS11) ImportSigner(ctx context.Context, label string, key *ecdsa.PrivateKey) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	if key == nil || key.Curve != elliptic.P256() {
		return errors.New("hsm: ImportSigner: not an ECDSA P-256 private key")
	}
	raw, err := key.Bytes()
	if err != nil {
		return fmt.Errorf("hsm: ImportSigner: %w", err)
	}
	defer clear(raw)
	check, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), raw)
	if err != nil || !check.PublicKey.Equal(&key.PublicKey) {
		return errors.New("hsm: ImportSigner: the private key does not match its public key")
	}
	point, err := key.PublicKey.Bytes()
	if err != nil {
		return fmt.Errorf("hsm: ImportSigner: %w", err)
	}
	ecPoint, err := asn1.Marshal(point) // CKA_EC_POINT is a DER OCTET STRING
	if err != nil {
		return fmt.Errorf("hsm: ImportSigner: %w", err)
	}
	return p.create(ctx, label, "import EC key pair", "imported ECDSA P-256 key pair into PKCS#11 token",
		func(c *pkcs11.Ctx, sh pkcs11.SessionHandle, id []byte) error {
			pub, err := c.CreateObject(sh, append(ecPublicTemplate(label, id), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, ecPoint)))
			if err != nil {
				return err
			}
			privTmpl := append(ecPrivateTemplate(label, id),
				pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256Params),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE, raw))
			if _, err := c.CreateObject(sh, privTmpl); err != nil {
				_ = c.DestroyObject(sh, pub) // undoing half an import; the real error follows
				return err
			}
			return nil
		})
}

// EnsureAESKey implements Provider.
func (p *PKCS11) EnsureAESKey(ctx context.Context, label string) error {
	if err := p.GenerateAESKey(ctx, label); err != nil && !errors.Is(err, ErrKeyExists) {
		return err
	}
	return nil
}

// EnsureSigner implements Provider.
func (p *PKCS11) EnsureSigner(ctx context.Context, label string) error {
	if err := p.GenerateSigner(ctx, label); err != nil && !errors.Is(err, ErrKeyExists) {
		return err
	}
	return nil
}

// HasKey implements Provider: it reports whether any object on the token
// is labelled label.
func (p *PKCS11) HasKey(ctx context.Context, label string) (bool, error) {
	if err := checkLabel(label); err != nil {
		return false, err
	}
	var taken bool
	err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		var err error
		taken, err = p.labelTaken(c, sh, label)
		return err
	})
	if err != nil {
		return false, p.wrap("look up", label, err)
	}
	return taken, nil
}

// DeleteKey implements Provider: it destroys every object labelled label
// (both halves of a key pair).
func (p *PKCS11) DeleteKey(ctx context.Context, label string) error {
	if err := checkLabel(label); err != nil {
		return err
	}
	p.keyMu.Lock()
	defer p.keyMu.Unlock()
	err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		for first := true; ; first = false {
			hs, err := findObjects(c, sh, label, anyClass, 16)
			if err != nil {
				return err
			}
			if len(hs) == 0 {
				if first {
					return p.notFound(c, label, "key")
				}
				return nil
			}
			p.forgetLabel(label)
			for _, h := range hs {
				if err := c.DestroyObject(sh, h); err != nil {
					return err
				}
			}
		}
	})
	if err == nil {
		p.log.Info("deleted key from PKCS#11 token", "token", p.token, "label", label)
	}
	return p.wrap("delete key", label, err)
}

// Ping implements Provider: it checks that a pooled session is logged in
// and that the token still answers, reopening the token if not.
func (p *PKCS11) Ping(ctx context.Context) error {
	err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		si, err := c.GetSessionInfo(sh)
		if err != nil {
			return err
		}
		if si.State != pkcs11.CKS_RW_USER_FUNCTIONS && si.State != pkcs11.CKS_RO_USER_FUNCTIONS {
			return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
		}
		_, err = c.GetTokenInfo(p.slot)
		return err
	})
	return p.wrap("ping", "", err)
}

// Seal implements Provider: AES-256-GCM inside the token with a random
// 12-byte IV and a 128-bit tag. The output is a version byte (1), the IV,
// then ciphertext and tag.
func (p *PKCS11) Seal(ctx context.Context, label string, plaintext, aad []byte) ([]byte, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	iv := make([]byte, gcmIVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("hsm: %w", err)
	}
	var out []byte
	err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := p.handle(c, sh, label, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(iv, aad, gcmTagSize*8)
		defer params.Free()
		if err := c.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return err
		}
		ct, err := c.Encrypt(sh, plaintext)
		if err != nil {
			return err
		}
		if len(ct) != len(plaintext)+gcmTagSize {
			return fmt.Errorf("hsm: PKCS#11 token %q returned %d bytes of AES-GCM output for %d bytes of input", p.token, len(ct), len(plaintext))
		}
		usedIV := iv
		if got := params.IV(); len(got) == gcmIVSize {
			usedIV = got // some tokens choose the IV themselves
		}
		out = make([]byte, 0, 1+gcmIVSize+len(ct))
		out = append(out, sealVersion)
		out = append(out, usedIV...)
		out = append(out, ct...)
		return nil
	})
	if err != nil {
		return nil, p.wrap("seal with key", label, err)
	}
	return out, nil
}

// Open implements Provider. Any alteration of the sealed data or aad, or
// data sealed under another key, fails with ErrOpen.
func (p *PKCS11) Open(ctx context.Context, label string, sealed, aad []byte) ([]byte, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	var pt []byte
	err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := p.handle(c, sh, label, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		// The key is looked up first: a missing key matters more than bad data.
		if len(sealed) < 1+gcmIVSize+gcmTagSize {
			return ErrOpen
		}
		if sealed[0] != sealVersion {
			return fmt.Errorf("%w: unknown sealed-data version %d", ErrOpen, sealed[0])
		}
		iv, ct := sealed[1:1+gcmIVSize], sealed[1+gcmIVSize:]
		params := pkcs11.NewGCMParams(iv, aad, gcmTagSize*8)
		defer params.Free()
		if err := c.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return err
		}
		pt, err = c.Decrypt(sh, ct)
		if err == nil {
			return nil
		}
		if isCKR(err, pkcs11.CKR_GENERAL_ERROR) || isCKR(err, pkcs11.CKR_ENCRYPTED_DATA_INVALID) ||
			isCKR(err, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE) {
			// Tokens report a bad tag this way, but a general error may
			// also be the token failing: ask it whether it is still there.
			if _, perr := c.GetSessionInfo(sh); perr != nil {
				return perr
			}
			if _, perr := c.GetTokenInfo(p.slot); perr != nil {
				return perr
			}
			return ErrOpen
		}
		return err
	})
	if err != nil {
		return nil, p.wrap("open with key", label, err)
	}
	return pt, nil
}

// ECDH implements Provider with CKM_ECDH1_DERIVE (no KDF). The token
// derives the shared secret into a session object (CKA_TOKEN false) that
// is a generic secret marked non-sensitive and extractable, so that its
// value (the x-coordinate) can be read; the object is destroyed right
// after and would vanish with its session anyway. The private key itself
// stays sensitive and non-extractable.
func (p *PKCS11) ECDH(ctx context.Context, label string, peer *ecdh.PublicKey) ([]byte, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	if err := checkPeer(peer); err != nil {
		return nil, err
	}
	peerPoint := peer.Bytes()
	var secret []byte
	err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := p.handle(c, sh, label, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		params := pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peerPoint)
		dh, err := c.DeriveKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, params)}, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		})
		if err != nil {
			return err
		}
		// A session object: it goes with the session if destroying it fails.
		defer func() { _ = c.DestroyObject(sh, dh) }()
		attrs, err := c.GetAttributeValue(sh, dh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return err
		}
		if len(attrs) != 1 || len(attrs[0].Value) != 32 {
			return fmt.Errorf("hsm: PKCS#11 token %q returned a malformed ECDH secret", p.token)
		}
		secret = attrs[0].Value
		return nil
	})
	if err != nil {
		return nil, p.wrap("ECDH with key", label, err)
	}
	return secret, nil
}

// Signer implements Provider. The signer reads its public key once; each
// Sign runs CKM_ECDSA on the token.
func (p *PKCS11) Signer(ctx context.Context, label string) (crypto.Signer, error) {
	if err := checkLabel(label); err != nil {
		return nil, err
	}
	var pub *ecdsa.PublicKey
	err := p.do(ctx, func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		if _, err := p.handle(c, sh, label, pkcs11.CKO_PRIVATE_KEY); err != nil {
			return err
		}
		ph, err := p.handle(c, sh, label, pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			return err
		}
		attrs, err := c.GetAttributeValue(sh, ph, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		})
		if err != nil {
			return err
		}
		if len(attrs) != 3 || !bytes.Equal(attrs[1].Value, p256Params) {
			return fmt.Errorf("hsm: PKCS#11 token %q: key %q is not an ECDSA P-256 key", p.token, label)
		}
		pub, err = parseECPoint(attrs[2].Value)
		if err != nil {
			return fmt.Errorf("hsm: PKCS#11 token %q: key %q: %w", p.token, label, err)
		}
		return nil
	})
	if err != nil {
		return nil, p.wrap("signer", label, err)
	}
	return &p11Signer{p: p, label: label, pub: pub}, nil
}

// parseECPoint decodes CKA_EC_POINT: a DER OCTET STRING holding the
// uncompressed point (some tokens return the bare point).
func parseECPoint(v []byte) (*ecdsa.PublicKey, error) {
	point := v
	if len(v) != 65 {
		var inner []byte
		rest, err := asn1.Unmarshal(v, &inner)
		if err != nil || len(rest) != 0 {
			return nil, errors.New("malformed CKA_EC_POINT")
		}
		point = inner
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT: %w", err)
	}
	return pub, nil
}

// p11Signer is a crypto.Signer whose private key stays on the token.
type p11Signer struct {
	p     *PKCS11
	label string
	pub   *ecdsa.PublicKey
}

// Public returns the *ecdsa.PublicKey.
func (s *p11Signer) Public() crypto.PublicKey { return s.pub }

// Sign signs digest (already hashed, as opts.HashFunc says) on the token
// and returns an ASN.1 DER signature. rand is not used: the token draws
// its own nonce.
func (s *p11Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if err := checkDigest(digest, opts); err != nil {
		return nil, err
	}
	var rs []byte
	err := s.p.do(context.Background(), func(c *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := s.p.handle(c, sh, s.label, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		if err := c.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, h); err != nil {
			return err
		}
		rs, err = c.Sign(sh, digest)
		return err
	})
	if err != nil {
		return nil, s.p.wrap("sign with key", s.label, err)
	}
	if len(rs) != 64 {
		return nil, fmt.Errorf("hsm: PKCS#11 token %q returned a %d-byte ECDSA P-256 signature", s.p.token, len(rs))
	}
	sig, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(rs[:32]), new(big.Int).SetBytes(rs[32:])})
	if err != nil {
		return nil, fmt.Errorf("hsm: %w", err)
	}
	return sig, nil
}

// Close implements Provider: it closes the sessions (which logs the
// process out of the token once no session is left), wipes the provider's
// copy of the PIN and releases the module. Later calls fail with
// ErrClosed.
func (p *PKCS11) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.closeSessionsLocked()
	clear(p.pin)
	p.pin = nil
	p.forgetHandles()
	p.mu.Unlock()
	releaseModule(p.mod, p.token)
	p.log.Info("PKCS#11 token closed", "module", p.modName, "token", p.token)
	return nil
}

var _ Provider = (*PKCS11)(nil)
