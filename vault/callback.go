package vault

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"github.com/sallyport/sallyport/admit"
	"github.com/sallyport/sallyport/enroll"
	"github.com/sallyport/sallyport/workitem"
)

// The engine callback API, under /v1/engine/. Engines authenticate every
// request with a signature by their key (package enroll), never a token:
//
//	POST /v1/engine/register  {site, public_key, name} → {id, fingerprint, state}
//	GET  /v1/engine/config    → EngineConfig (keys only once approved)
//
// A registration is signed by the key it registers (proof of possession).
// A signature's time must be within enroll.MaxSkew of the vault's clock and
// its nonce unseen, so no request can be replayed.

// maxCallbackBody bounds a callback request body.
const maxCallbackBody = 16 << 10

func (a *api) callbackRoutes() http.Handler {
	if a.nonces == nil {
		a.nonces = workitem.NewReplayCache(1<<18, a.v.now)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/engine/register", a.register)
	mux.HandleFunc("GET /v1/engine/config", a.engineConfig)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		mux.ServeHTTP(w, r)
	})
}

// callbackRefused answers a callback that failed authentication: the same
// answer whatever the cause, counted against the source by admission.
func (a *api) callbackRefused(w http.ResponseWriter, r *http.Request, why string) {
	if admit.Counting(r.Context()) {
		admit.Refused(r.Context(), admit.ReasonAuth)
	}
	a.log.Debug("engine callback refused", slog.String("reason", why), slog.String("path", logSafe(r.URL.Path)))
	w.Header().Set("Connection", "close")
	writeJSON(w, http.StatusUnauthorized, apiError{Error: "unauthorized"})
}

// readCallbackBody reads a bounded callback body (no secrets in it).
func readCallbackBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, maxCallbackBody))
}

// fresh records a verified request's nonce; false means a replay.
func (a *api) fresh(s enroll.Signed) bool {
	return a.nonces.Take(s.Engine+"/"+s.Nonce, s.Time.Add(2*enroll.MaxSkew))
}

func (a *api) register(w http.ResponseWriter, r *http.Request) {
	body, err := readCallbackBody(w, r)
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, apiError{Error: "body: too large"})
		return
	}
	var req enroll.RegisterRequest
	if err := decodeStrictBytes(body, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: describeJSONError(err)})
		return
	}
	pub, err := enroll.ParsePublicKey(req.PublicKey)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "public_key: must be a PKIX DER ECDSA P-256 key"})
		return
	}
	id, err := enroll.EngineID(pub)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	s, err := enroll.Verify(r, pub, body, a.v.now())
	if err != nil || s.Engine != id {
		a.callbackRefused(w, r, "registration not signed by its key")
		return
	}
	if !a.fresh(s) {
		a.callbackRefused(w, r, "replayed nonce")
		return
	}
	admit.Admitted(r.Context())
	info, err := a.v.RegisterEngine(r.Context(), req.Site, req.PublicKey, req.Name, r.RemoteAddr)
	switch {
	case errors.Is(err, ErrRevoked):
		writeJSON(w, http.StatusForbidden, apiError{Error: "revoked: register a new key"})
		return
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, apiError{Error: "site: not found"})
		return
	case err != nil:
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, enroll.Registered{ID: info.ID, Fingerprint: info.Fingerprint, State: info.State})
}

// verifyEngine checks a signed callback from a known engine and returns its
// record; on failure it has answered.
func (a *api) verifyEngine(w http.ResponseWriter, r *http.Request, body []byte) (EngineInfo, bool) {
	claimed, err := enroll.ParseHeaders(r)
	if err != nil {
		a.callbackRefused(w, r, "no or malformed signature")
		return EngineInfo{}, false
	}
	pub, info, err := a.v.EnginePublicKey(r.Context(), claimed.Engine)
	if errors.Is(err, ErrNotFound) {
		a.callbackRefused(w, r, "unknown engine")
		return EngineInfo{}, false
	}
	if err != nil {
		a.fail(w, r, err)
		return EngineInfo{}, false
	}
	s, err := enroll.Verify(r, pub, body, a.v.now())
	if err != nil {
		a.callbackRefused(w, r, "bad signature")
		return EngineInfo{}, false
	}
	if !a.fresh(s) {
		a.callbackRefused(w, r, "replayed nonce")
		return EngineInfo{}, false
	}
	if info.State == EngineRevoked {
		writeJSON(w, http.StatusForbidden, apiError{Error: "revoked"})
		return EngineInfo{}, false
	}
	admit.Admitted(r.Context())
	return info, true
}

func (a *api) engineConfig(w http.ResponseWriter, r *http.Request) {
	info, ok := a.verifyEngine(w, r, nil)
	if !ok {
		return
	}
	if err := a.v.TouchEngine(r.Context(), info.ID, r.RemoteAddr); err != nil {
		a.log.Warn("engine check-in not recorded", slog.String("engine", info.ID), slog.Any("error", err))
	}
	builtin := ""
	if a.opts.builtinURL != nil {
		builtin = a.opts.builtinURL(r)
	}
	cfg, err := a.v.EngineConfigFor(r.Context(), info.ID, builtin)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(cfg) // #nosec G104 -- the client went away; nothing to do
}
