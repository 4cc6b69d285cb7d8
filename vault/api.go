package vault

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/workitem"
)

// maxBody bounds every API request body.
const maxBody = 1 << 20

// The API's JSON bodies. Password and PrivateKey are JSON strings holding
// standard base64 (Go's []byte encoding), so the server decodes them
// straight into byte slices it can wipe.

// userRequest is the body of POST /v1/users. Its fields mirror UserSpec
// (keep them in step: the two convert into each other).
type userRequest struct {
	Name     string   `json:"name"`
	Password []byte   `json:"password"`
	TOTP     bool     `json:"totp"`
	Groups   []string `json:"groups"`
}

// String redacts the password. The JSON encoding is the API's wire form
// and carries the password on purpose; the rest redact.
func (r userRequest) String() string { return UserSpec(r).String() }

// GoString redacts the password under %#v.
func (r userRequest) GoString() string { return r.String() }

// LogValue redacts the password in slog records.
func (r userRequest) LogValue() slog.Value { return slog.StringValue(r.String()) }

// userCreated is the answer to POST /v1/users; the URI is "" without TOTP.
type userCreated struct {
	OTPAuthURI string `json:"otpauth_uri"`
}

// usersList is the answer to GET /v1/users.
type usersList struct {
	Users []UserInfo `json:"users"`
}

// secretRequest is the body of POST /v1/secrets. Its fields mirror
// SecretSpec (keep them in step: the two convert into each other).
type secretRequest struct {
	Name          string   `json:"name"`
	Host          string   `json:"host"`
	Port          int      `json:"port"`
	Username      string   `json:"username"`
	Password      []byte   `json:"password,omitempty"`
	PrivateKey    []byte   `json:"private_key,omitempty"`
	HostKey       string   `json:"host_key,omitempty"`
	PinOnFirstUse bool     `json:"pin_on_first_use"`
	Allow         []string `json:"allow"`
	Site          string   `json:"site,omitempty"`
	// Maintenance (see SecretSpec); durations in nanoseconds.
	Heartbeat      time.Duration `json:"heartbeat_ns,omitempty"`
	Rotate         time.Duration `json:"rotate_ns,omitempty"`
	RotateAfterUse bool          `json:"rotate_after_use,omitempty"`
	ChangeMethod   string        `json:"change_method,omitempty"`
	PasswordRule   string        `json:"password_rule,omitempty"`
	Protocol       string        `json:"protocol,omitempty"`
	CertSHA256     string        `json:"cert_sha256,omitempty"`
}

// String redacts the credential. The JSON encoding is the API's wire form
// and carries the credential on purpose; the rest redact.
func (r secretRequest) String() string { return SecretSpec(r).String() }

// GoString redacts the credential under %#v.
func (r secretRequest) GoString() string { return r.String() }

// LogValue redacts the credential in slog records.
func (r secretRequest) LogValue() slog.Value { return slog.StringValue(r.String()) }

// secretsList is the answer to GET /v1/secrets.
type secretsList struct {
	Secrets []SecretInfo `json:"secrets"`
}

// apiError is every error body.
type apiError struct {
	Error string `json:"error"`
}

type api struct {
	v     *Vault
	token [32]byte
	log   *slog.Logger
	opts  apiOptions

	nonces *workitem.ReplayCache // callback request nonces
}

// NewAPI returns the admin HTTP API. Every path, /metrics included, needs
// "Authorization: Bearer <token>" where SHA-256(token) == tokenSHA256; an
// all-zero tokenSHA256 locks everyone out. metrics (may be nil) serves
// GET /metrics. Routes:
//
//	POST   /v1/users          {name, password, totp, groups} → 201 {otpauth_uri}
//	GET    /v1/users          → {users: [...]}
//	DELETE /v1/users/{name}   → 204
//	POST   /v1/secrets        {name, host, port, username, password | private_key,
//	                           host_key | pin_on_first_use, allow} → 201
//	GET    /v1/secrets        → {secrets: [...]}   (never a credential)
//	GET    /v1/secrets/{name} → {...}              (never a credential)
//	DELETE /v1/secrets/{name} → 204
//	POST   /v1/users/{name}/disable, /v1/users/{name}/enable     → 204
//	POST   /v1/secrets/{name}/disable, /v1/secrets/{name}/enable → 204
//
// password and private_key are base64 strings; port is required (1..65535,
// there is no default). New names must not start with '-' (see
// ValidSecretName and ValidUserName); DELETE and GET still take such a
// legacy name. Request bodies are strict: unknown fields, trailing data,
// nesting deeper than 32 levels and duplicate keys are refused, keys being
// compared the way encoding/json matches fields (case-insensitively, after
// unescaping), so {"name":"a","NAME":"b"} is a duplicate. Errors are
// {"error": "..."} with 400 (the message names the field or key, never a
// value), 401, 404, 409, 413, 415 or 500.
// The caller serves it over TLS with read and write timeouts.
func NewAPI(v *Vault, tokenSHA256 [32]byte, metrics http.Handler, log *slog.Logger, opts ...APIOption) http.Handler {
	if log == nil {
		log = v.log
	}
	a := &api{v: v, token: tokenSHA256, log: log}
	for _, o := range opts {
		o(&a.opts)
	}
	mux := http.NewServeMux()
	a.siteRoutes(mux)
	mux.HandleFunc("POST /v1/users", a.addUser)
	mux.HandleFunc("GET /v1/users", a.listUsers)
	mux.HandleFunc("DELETE /v1/users/{name}", a.removeUser)
	mux.HandleFunc("POST /v1/secrets", a.addSecret)
	mux.HandleFunc("GET /v1/secrets", a.listSecrets)
	mux.HandleFunc("GET /v1/secrets/{name}", a.showSecret)
	mux.HandleFunc("DELETE /v1/secrets/{name}", a.removeSecret)
	mux.HandleFunc("POST /v1/users/{name}/disable", a.disableUser(true))
	mux.HandleFunc("POST /v1/users/{name}/enable", a.disableUser(false))
	mux.HandleFunc("POST /v1/secrets/{name}/disable", a.disableSecret(true))
	mux.HandleFunc("POST /v1/secrets/{name}/enable", a.disableSecret(false))
	mux.HandleFunc("POST /v1/secrets/{name}/heartbeat", a.secretNow("admin_secret_heartbeat", a.v.RequestHeartbeat))
	mux.HandleFunc("POST /v1/secrets/{name}/rotate", a.secretNow("admin_secret_rotate", a.v.RequestRotation))
	mux.HandleFunc("GET /v1/secrets/{name}/history", a.secretHistory)
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	// Engines authenticate by their signatures, not the admin token.
	top := http.NewServeMux()
	top.Handle("/v1/engine/", a.callbackRoutes())
	top.Handle("/", a.authenticate(mux))
	return top
}

// authenticate rejects any request without the admin bearer token.
func (a *api) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !a.authorized(r) {
			// Counted per source and logged as a tally by the listener,
			// not a line per request; and the connection is closed, so
			// each further try costs a new connection, which admission
			// rate-limits per source. Without admission (a caller that
			// serves the API on a plain listener) each refusal is audited.
			if admit.Counting(r.Context()) {
				admit.Refused(r.Context(), admit.ReasonAuth)
			} else {
				a.v.sink.Record(r.Context(), audit.Event{Kind: "admin_auth", Outcome: "denied", Source: r.RemoteAddr,
					Attrs: []slog.Attr{slog.String("method", r.Method), slog.String("path", logSafe(r.URL.Path))}})
			}
			w.Header().Set("Connection", "close")
			w.Header().Set("WWW-Authenticate", `Bearer realm="sallyport"`)
			writeJSON(w, http.StatusUnauthorized, apiError{Error: "unauthorized"})
			return
		}
		// The connection has shown the token: it no longer takes up one of
		// its source's pre-authentication slots (package admit).
		admit.Admitted(r.Context())
		next.ServeHTTP(w, r)
	})
}

func (a *api) authorized(r *http.Request) bool {
	values := r.Header.Values("Authorization")
	if len(values) != 1 {
		return false
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return false
	}
	if a.token == ([32]byte{}) {
		return false
	}
	sum := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(sum[:], a.token[:]) == 1
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body) // #nosec G104 -- the client went away; nothing to do
}

// fail maps an error to a status. Only validation errors carry detail, and
// those name a field, never a value; internal errors are logged, not shown.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrInvalid):
		writeJSON(w, http.StatusBadRequest, apiError{Error: strings.TrimPrefix(err.Error(), "vault: ")})
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, apiError{Error: "not found"})
	case errors.Is(err, ErrExists):
		writeJSON(w, http.StatusConflict, apiError{Error: "already exists"})
	case errors.Is(err, ErrRevoked):
		writeJSON(w, http.StatusConflict, apiError{Error: "revoked"})
	case errors.Is(err, ErrConflict):
		writeJSON(w, http.StatusConflict, apiError{Error: strings.TrimPrefix(err.Error(), "vault: ")})
	default:
		a.log.Error("admin API request failed", slog.String("method", r.Method),
			slog.String("path", logSafe(r.URL.Path)), slog.Any("error", err))
		writeJSON(w, http.StatusInternalServerError, apiError{Error: "internal error"})
	}
}

// bodyError is a request-body problem with its status.
type bodyError struct {
	status int
	msg    string
}

func (e *bodyError) Error() string { return e.msg }

// readBody strictly decodes a bounded JSON body into dst (see
// decodeStrict: no duplicate keys, unknown fields or trailing data). The
// raw bytes (which may hold a base64 credential) are wiped before it
// returns.
func readBody(w http.ResponseWriter, r *http.Request, dst any) *bodyError {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return &bodyError{http.StatusUnsupportedMediaType, "content type must be application/json"}
		}
	}
	// Size the buffer from Content-Length when it is plausible, so that the
	// body is usually read without regrowth (readAllWiping clears what it
	// outgrows in any case).
	hint := 512
	if r.ContentLength > 0 && r.ContentLength <= maxBody {
		hint = int(r.ContentLength) // #nosec G115 -- bounded by maxBody just above
	}
	raw, err := readAllWiping(http.MaxBytesReader(w, r.Body, maxBody), hint)
	defer clear(raw)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return &bodyError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body: larger than %d bytes", maxBody)}
		}
		return &bodyError{http.StatusBadRequest, "body: could not be read"}
	}
	if err := decodeStrictBytes(raw, dst); err != nil {
		return &bodyError{http.StatusBadRequest, describeJSONError(err)}
	}
	return nil
}

// describeJSONError explains a decoding failure without quoting the input.
func describeJSONError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var b64 base64.CorruptInputError
	var strict *strictJSONError
	switch {
	case errors.As(err, &strict):
		return "body: " + strict.msg // names at most a key, already sanitised
	case errors.As(err, &b64):
		return "body: password and private_key must be base64"
	case errors.As(err, &typ):
		return fmt.Sprintf("body: field %s has the wrong type", logSafe(typ.Field))
	case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "body: malformed JSON"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "body: " + logSafe(strings.TrimPrefix(err.Error(), "json: "))
	}
	return "body: invalid JSON"
}

// record writes an audit event for an admin change.
func (a *api) record(r *http.Request, kind string, err error, attrs ...slog.Attr) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	a.v.sink.Record(r.Context(), audit.Event{Kind: kind, Outcome: outcome, User: "admin", Source: r.RemoteAddr, Attrs: attrs})
}

func (a *api) addUser(w http.ResponseWriter, r *http.Request) {
	var req userRequest
	defer func() { clear(req.Password) }()
	if berr := readBody(w, r, &req); berr != nil {
		writeJSON(w, berr.status, apiError{Error: berr.msg})
		return
	}
	uri, err := a.v.AddUser(r.Context(), UserSpec(req))
	if errors.Is(err, ErrInvalid) {
		a.fail(w, r, err)
		return
	}
	a.record(r, "admin_user_add", err, slog.String("subject", logSafe(req.Name)), slog.Bool("totp", req.TOTP))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, userCreated{OTPAuthURI: uri})
}

func (a *api) listUsers(w http.ResponseWriter, r *http.Request) {
	users, err := a.v.ListUsers(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, usersList{Users: users})
}

func (a *api) removeUser(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	err := a.v.RemoveUser(r.Context(), name)
	a.record(r, "admin_user_remove", err, slog.String("subject", logSafe(name)))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) addSecret(w http.ResponseWriter, r *http.Request) {
	var req secretRequest
	defer func() { clear(req.Password); clear(req.PrivateKey) }()
	if berr := readBody(w, r, &req); berr != nil {
		writeJSON(w, berr.status, apiError{Error: berr.msg})
		return
	}
	err := a.v.AddSecret(r.Context(), SecretSpec(req))
	if errors.Is(err, ErrInvalid) {
		a.fail(w, r, err)
		return
	}
	a.record(r, "admin_secret_add", err, slog.String("subject", logSafe(req.Name)))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	info, err := a.v.ShowSecret(r.Context(), req.Name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (a *api) listSecrets(w http.ResponseWriter, r *http.Request) {
	list, err := a.v.ListSecrets(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, secretsList{Secrets: list})
}

func (a *api) showSecret(w http.ResponseWriter, r *http.Request) {
	info, err := a.v.ShowSecret(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (a *api) removeSecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	err := a.v.RemoveSecret(r.Context(), name)
	a.record(r, "admin_secret_remove", err, slog.String("subject", logSafe(name)))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// disableUser serves POST /v1/users/{name}/disable and .../enable.
func (a *api) disableUser(disabled bool) http.HandlerFunc {
	kind := "admin_user_enable"
	if disabled {
		kind = "admin_user_disable"
	}
	return a.setDisabled(kind, a.v.SetUserDisabled)
}

// disableSecret serves POST /v1/secrets/{name}/disable and .../enable.
func (a *api) disableSecret(disabled bool) http.HandlerFunc {
	kind := "admin_secret_enable"
	if disabled {
		kind = "admin_secret_disable"
	}
	return a.setDisabled(kind, a.v.SetSecretDisabled)
}

// secretNow serves POST /v1/secrets/{name}/heartbeat and /rotate: the
// work is made due now (202); the scheduler sends it.
func (a *api) secretNow(kind string, now func(ctx context.Context, name string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		err := now(r.Context(), name)
		a.record(r, kind, err, slog.String("subject", logSafe(name)))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

// historyList is the answer to GET /v1/secrets/{name}/history.
type historyList struct {
	History []HistoryEntry `json:"history"`
}

func (a *api) secretHistory(w http.ResponseWriter, r *http.Request) {
	h, err := a.v.History(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, historyList{History: h})
}

func (a *api) setDisabled(kind string, set func(ctx context.Context, name string, disabled bool) error) http.HandlerFunc {
	disabled := strings.HasSuffix(kind, "_disable")
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		err := set(r.Context(), name, disabled)
		a.record(r, kind, err, slog.String("subject", logSafe(name)))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}
