package vault

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// APIOption adjusts NewAPI.
type APIOption func(*apiOptions)

type apiOptions struct {
	onRevoke   func(engineID string)
	builtinURL func(r *http.Request) string
	ping       func(ctx context.Context, site string) (PingResult, error)
	sites      func()
}

// WithSitesChanged has the API call f after a site is added or moved to
// another connector (the daemon starts serving it at once).
func WithSitesChanged(f func()) APIOption {
	return func(o *apiOptions) { o.sites = f }
}

// WithPinger serves POST /v1/sites/{name}/ping with f.
func WithPinger(f func(ctx context.Context, site string) (PingResult, error)) APIOption {
	return func(o *apiOptions) { o.ping = f }
}

// WithRevokeHook has the API call f after an engine is revoked (the daemon
// closes its connector sessions).
func WithRevokeHook(f func(engineID string)) APIOption {
	return func(o *apiOptions) { o.onRevoke = f }
}

// WithBuiltinURL tells engines where the built-in connector is, given the
// request they made (its Host is how they reach the vault).
func WithBuiltinURL(f func(r *http.Request) string) APIOption {
	return func(o *apiOptions) { o.builtinURL = f }
}

// siteRequest is the body of POST /v1/sites and PUT /v1/sites/{name}/connector.
type siteRequest struct {
	Name            string `json:"name,omitempty"`
	Connector       string `json:"connector"`
	ConnectorURL    string `json:"connector_url,omitempty"`
	ConnectorSecret []byte `json:"connector_secret,omitempty"`
}

// String redacts the broker password. The JSON encoding is the API's wire
// form and carries it on purpose; the rest redact.
func (r siteRequest) String() string {
	return "site{" + r.Name + " " + ConnectorSpec{Kind: r.Connector, URL: r.ConnectorURL}.String() + "}"
}

// GoString redacts the broker password under %#v.
func (r siteRequest) GoString() string { return r.String() }

// LogValue redacts the broker password in slog records.
func (r siteRequest) LogValue() slog.Value { return slog.StringValue(r.String()) }

type sitesList struct {
	Sites []SiteInfo `json:"sites"`
}

type enginesList struct {
	Engines []EngineInfo `json:"engines"`
}

type keyRotated struct {
	KeyVersion int `json:"key_version"`
}

func (a *api) siteRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/sites", a.addSite)
	mux.HandleFunc("GET /v1/sites", a.listSites)
	mux.HandleFunc("GET /v1/sites/{name}", a.showSite)
	mux.HandleFunc("PUT /v1/sites/{name}/connector", a.setConnector)
	mux.HandleFunc("POST /v1/sites/{name}/rotate-key", a.rotateSiteKey)
	mux.HandleFunc("POST /v1/sites/{name}/ping", a.pingSite)
	mux.HandleFunc("GET /v1/engines", a.listEngines)
	mux.HandleFunc("POST /v1/engines/{id}/approve", a.approveEngine)
	mux.HandleFunc("POST /v1/engines/{id}/revoke", a.revokeEngine)
}

func (a *api) addSite(w http.ResponseWriter, r *http.Request) {
	var req siteRequest
	defer func() { clear(req.ConnectorSecret) }()
	if berr := readBody(w, r, &req); berr != nil {
		writeJSON(w, berr.status, apiError{Error: berr.msg})
		return
	}
	err := a.v.AddSite(r.Context(), SiteSpec{Name: req.Name, Connector: ConnectorSpec{Kind: req.Connector, URL: req.ConnectorURL, Secret: req.ConnectorSecret}})
	a.record(r, "admin_site_add", err, slog.String("subject", logSafe(req.Name)), slog.String("connector", logSafe(req.Connector)))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if a.opts.sites != nil {
		a.opts.sites()
	}
	info, err := a.v.ShowSite(r.Context(), req.Name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (a *api) listSites(w http.ResponseWriter, r *http.Request) {
	list, err := a.v.ListSites(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sitesList{Sites: list})
}

func (a *api) showSite(w http.ResponseWriter, r *http.Request) {
	info, err := a.v.ShowSite(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (a *api) setConnector(w http.ResponseWriter, r *http.Request) {
	var req siteRequest
	defer func() { clear(req.ConnectorSecret) }()
	if berr := readBody(w, r, &req); berr != nil {
		writeJSON(w, berr.status, apiError{Error: berr.msg})
		return
	}
	name := r.PathValue("name")
	if req.Name != "" && req.Name != name {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "name: does not match the path"})
		return
	}
	err := a.v.SetSiteConnector(r.Context(), name, ConnectorSpec{Kind: req.Connector, URL: req.ConnectorURL, Secret: req.ConnectorSecret})
	a.record(r, "admin_site_connector", err, slog.String("subject", logSafe(name)), slog.String("connector", logSafe(req.Connector)))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if a.opts.sites != nil {
		a.opts.sites()
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) rotateSiteKey(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	version, err := a.v.RotateSiteKey(r.Context(), name)
	a.record(r, "admin_site_rotate_key", err, slog.String("subject", logSafe(name)), slog.String("key_version", strconv.Itoa(version)))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, keyRotated{KeyVersion: version})
}

func (a *api) listEngines(w http.ResponseWriter, r *http.Request) {
	list, err := a.v.ListEngines(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, enginesList{Engines: list})
}

func (a *api) approveEngine(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	info, err := a.v.ApproveEngine(r.Context(), id)
	a.record(r, "admin_engine_approve", err, slog.String("subject", logSafe(id)), slog.String("site", info.Site))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (a *api) revokeEngine(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	info, err := a.v.RevokeEngine(r.Context(), id)
	a.record(r, "admin_engine_revoke", err, slog.String("subject", logSafe(id)), slog.String("site", info.Site))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if a.opts.onRevoke != nil {
		a.opts.onRevoke(id)
	}
	writeJSON(w, http.StatusOK, info)
}

// pingTimeout bounds a site ping through the API.
const pingTimeout = 10 * time.Second

func (a *api) pingSite(w http.ResponseWriter, r *http.Request) {
	if a.opts.ping == nil {
		writeJSON(w, http.StatusNotFound, apiError{Error: "not found"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pingTimeout)
	defer cancel()
	res, err := a.opts.ping(ctx, r.PathValue("name"))
	switch {
	case errors.Is(err, ErrNotFound):
		a.fail(w, r, err)
	case err != nil:
		writeJSON(w, http.StatusGatewayTimeout, apiError{Error: "no engine of the site answered in time"})
	default:
		writeJSON(w, http.StatusOK, res)
	}
}
