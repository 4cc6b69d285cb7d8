package vault

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// ErrUnauthorized is wrapped by client errors for HTTP 401: the admin
// token was missing or wrong.
var ErrUnauthorized = errors.New("vault: unauthorized")

// maxResponse bounds an API response body read by the client.
const maxResponse = 8 << 20

// Client calls the admin HTTP API (see NewAPI). It trusts only the given
// CA, speaks TLS 1.3 only, ignores proxy settings, does not follow
// redirects, and times out every call.
//
// Secrets go to the API as base64 JSON strings (the encoding of []byte);
// the request buffers are wiped after each call.
type Client struct {
	base  string // scheme://host[:port] with no trailing slash
	token string
	hc    *http.Client
}

// String redacts the admin token.
func (c *Client) String() string { return "vault.Client{" + c.base + " [REDACTED]}" }

// GoString redacts the admin token under %#v.
func (c *Client) GoString() string { return c.String() }

// LogValue redacts the admin token in slog records.
func (c *Client) LogValue() slog.Value { return slog.StringValue(c.String()) }

// APIError is a non-success answer from the API. Its Unwrap maps the status
// to ErrInvalid (400), ErrUnauthorized (401), ErrNotFound (404) or
// ErrExists (409), so callers can use errors.Is.
type APIError struct {
	Status  int
	Message string // the server's "error" text, sanitised for printing
}

// Error implements error.
func (e *APIError) Error() string {
	return fmt.Sprintf("vault API: %s (HTTP %d)", e.Message, e.Status)
}

// Unwrap maps the status to a named error.
func (e *APIError) Unwrap() error {
	switch e.Status {
	case http.StatusBadRequest:
		return ErrInvalid
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrExists
	}
	return nil
}

// NewClient returns a client for the API at baseURL (https://host:port),
// authenticating with token and trusting only the certificates in caPEM.
func NewClient(baseURL string, token string, caPEM []byte) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(baseURL))
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" ||
		(u.Path != "" && u.Path != "/") {
		return nil, errors.New("vault client: the API address must look like https://host:port")
	}
	if len(token) < minToken || len(token) > maxToken || strings.IndexFunc(token, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
		return nil, errors.New("vault client: the admin token is malformed")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("vault client: no PEM certificate in the CA file")
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                  nil, // the admin token goes straight to the vault, never via an env proxy
		DialContext:            dialer.DialContext,
		TLSClientConfig:        &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13},
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  30 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		IdleConnTimeout:        30 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	return &Client{
		base:  "https://" + u.Host,
		token: token,
		hc: &http.Client{
			Transport: tr,
			Timeout:   60 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}, nil
}

// Close releases idle connections.
func (c *Client) Close() {
	c.hc.CloseIdleConnections()
}

// do sends one request. in (may be nil) is JSON-encoded and its buffer
// wiped afterwards; out (may be nil) receives the decoded answer.
func (c *Client) do(ctx context.Context, method, path string, in any, want int, out any) error {
	var body io.Reader
	var buf []byte
	if in != nil {
		var err error
		if buf, err = json.Marshal(in); err != nil {
			return fmt.Errorf("vault client: encode request: %w", err)
		}
		defer clear(buf)
		body = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("vault client: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("vault client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("vault client: %s %s: read answer: %w", method, path, err)
	}
	if len(raw) > maxResponse {
		return fmt.Errorf("vault client: %s %s: answer too large", method, path)
	}
	if resp.StatusCode != want {
		var e apiError
		msg := http.StatusText(resp.StatusCode)
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			msg = sanitize(e.Error)
		}
		return &APIError{Status: resp.StatusCode, Message: msg}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("vault client: %s %s: bad answer: %w", method, path, err)
	}
	return nil
}

// sanitize makes server text safe to print on a terminal: no control
// characters (escape sequences), at most 512 bytes.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > 512 {
		s = strings.ToValidUTF8(s[:512], "") + "…"
	}
	return s
}

// AddUser creates a local gateway user; see Vault.AddUser.
func (c *Client) AddUser(ctx context.Context, u UserSpec) (otpauthURI string, err error) {
	var out userCreated
	err = c.do(ctx, http.MethodPost, "/v1/users", userRequest(u),
		http.StatusCreated, &out)
	return out.OTPAuthURI, err
}

// ListUsers lists local gateway users.
func (c *Client) ListUsers(ctx context.Context) ([]UserInfo, error) {
	var out usersList
	if err := c.do(ctx, http.MethodGet, "/v1/users", nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return out.Users, nil
}

// RemoveUser deletes a local gateway user.
func (c *Client) RemoveUser(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/users/"+url.PathEscape(name), nil, http.StatusNoContent, nil)
}

// AddSecret stores a target credential and returns what the vault recorded
// (without the credential).
func (c *Client) AddSecret(ctx context.Context, s SecretSpec) (SecretInfo, error) {
	var out SecretInfo
	err := c.do(ctx, http.MethodPost, "/v1/secrets", secretRequest(s), http.StatusCreated, &out)
	return out, err
}

// ListSecrets lists secrets, never their credentials.
func (c *Client) ListSecrets(ctx context.Context) ([]SecretInfo, error) {
	var out secretsList
	if err := c.do(ctx, http.MethodGet, "/v1/secrets", nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return out.Secrets, nil
}

// ShowSecret describes one secret, never its credential.
func (c *Client) ShowSecret(ctx context.Context, name string) (SecretInfo, error) {
	var out SecretInfo
	err := c.do(ctx, http.MethodGet, "/v1/secrets/"+url.PathEscape(name), nil, http.StatusOK, &out)
	return out, err
}

// RemoveSecret deletes a secret.
func (c *Client) RemoveSecret(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/secrets/"+url.PathEscape(name), nil, http.StatusNoContent, nil)
}

// SetUserDisabled disables a local user, or enables them again.
func (c *Client) SetUserDisabled(ctx context.Context, name string, disabled bool) error {
	return c.do(ctx, http.MethodPost, "/v1/users/"+url.PathEscape(name)+"/"+disableVerb(disabled), nil, http.StatusNoContent, nil)
}

// SetSecretDisabled disables a secret, or enables it again.
func (c *Client) SetSecretDisabled(ctx context.Context, name string, disabled bool) error {
	return c.do(ctx, http.MethodPost, "/v1/secrets/"+url.PathEscape(name)+"/"+disableVerb(disabled), nil, http.StatusNoContent, nil)
}

// HeartbeatSecret makes a heartbeat of the secret due now.
func (c *Client) HeartbeatSecret(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/secrets/"+url.PathEscape(name)+"/heartbeat", nil, http.StatusAccepted, nil)
}

// RotateSecret makes a rotation of the secret due now.
func (c *Client) RotateSecret(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/secrets/"+url.PathEscape(name)+"/rotate", nil, http.StatusAccepted, nil)
}

// SecretHistory returns the secret's heartbeats and rotation steps.
func (c *Client) SecretHistory(ctx context.Context, name string) ([]HistoryEntry, error) {
	var out historyList
	err := c.do(ctx, http.MethodGet, "/v1/secrets/"+url.PathEscape(name)+"/history", nil, http.StatusOK, &out)
	return out.History, err
}

func disableVerb(disabled bool) string {
	if disabled {
		return "disable"
	}
	return "enable"
}

// AddSite creates a site; see Vault.AddSite.
func (c *Client) AddSite(ctx context.Context, s SiteSpec) (SiteInfo, error) {
	var out SiteInfo
	err := c.do(ctx, http.MethodPost, "/v1/sites", siteRequest{Name: s.Name, Connector: s.Connector.Kind,
		ConnectorURL: s.Connector.URL, ConnectorSecret: s.Connector.Secret}, http.StatusCreated, &out)
	return out, err
}

// ListSites lists sites.
func (c *Client) ListSites(ctx context.Context) ([]SiteInfo, error) {
	var out sitesList
	if err := c.do(ctx, http.MethodGet, "/v1/sites", nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return out.Sites, nil
}

// ShowSite describes one site.
func (c *Client) ShowSite(ctx context.Context, name string) (SiteInfo, error) {
	var out SiteInfo
	err := c.do(ctx, http.MethodGet, "/v1/sites/"+url.PathEscape(name), nil, http.StatusOK, &out)
	return out, err
}

// SetSiteConnector moves a site to another connector.
func (c *Client) SetSiteConnector(ctx context.Context, name string, spec ConnectorSpec) error {
	return c.do(ctx, http.MethodPut, "/v1/sites/"+url.PathEscape(name)+"/connector",
		siteRequest{Connector: spec.Kind, ConnectorURL: spec.URL, ConnectorSecret: spec.Secret}, http.StatusNoContent, nil)
}

// RotateSiteKey makes a new key version for a site and returns it.
func (c *Client) RotateSiteKey(ctx context.Context, name string) (int, error) {
	var out keyRotated
	err := c.do(ctx, http.MethodPost, "/v1/sites/"+url.PathEscape(name)+"/rotate-key", nil, http.StatusOK, &out)
	return out.KeyVersion, err
}

// ListEngines lists engines.
func (c *Client) ListEngines(ctx context.Context) ([]EngineInfo, error) {
	var out enginesList
	if err := c.do(ctx, http.MethodGet, "/v1/engines", nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return out.Engines, nil
}

// ApproveEngine approves a pending engine.
func (c *Client) ApproveEngine(ctx context.Context, id string) (EngineInfo, error) {
	var out EngineInfo
	err := c.do(ctx, http.MethodPost, "/v1/engines/"+url.PathEscape(id)+"/approve", nil, http.StatusOK, &out)
	return out, err
}

// RevokeEngine revokes an engine.
func (c *Client) RevokeEngine(ctx context.Context, id string) (EngineInfo, error) {
	var out EngineInfo
	err := c.do(ctx, http.MethodPost, "/v1/engines/"+url.PathEscape(id)+"/revoke", nil, http.StatusOK, &out)
	return out, err
}

// PingSite asks an engine of the site to answer through its connector.
func (c *Client) PingSite(ctx context.Context, name string) (PingResult, error) {
	var out PingResult
	err := c.do(ctx, http.MethodPost, "/v1/sites/"+url.PathEscape(name)+"/ping", nil, http.StatusOK, &out)
	return out, err
}
