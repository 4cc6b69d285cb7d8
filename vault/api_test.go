package vault

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const testToken = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

type apiEnv struct {
	*testVault
	srv *httptest.Server
}

func startAPI(t *testing.T) *apiEnv {
	t.Helper()
	v := newTestVault(t)
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "sallyport_up 1\n")
	})
	srv := httptest.NewServer(NewAPI(v.Vault, sha256.Sum256([]byte(testToken)), metrics, discardLogger()))
	t.Cleanup(srv.Close)
	return &apiEnv{testVault: v, srv: srv}
}

// call makes one request; auth "" sends no Authorization header.
func (e *apiEnv) call(t *testing.T, method, path, auth, body string) (int, http.Header, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(raw)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestAPIAuth(t *testing.T) {
	e := startAPI(t)
	paths := []struct{ method, path string }{
		{"GET", "/v1/users"}, {"POST", "/v1/users"}, {"DELETE", "/v1/users/alice"},
		{"GET", "/v1/secrets"}, {"GET", "/v1/secrets/web01"}, {"POST", "/v1/secrets"}, {"DELETE", "/v1/secrets/web01"},
		{"GET", "/metrics"}, {"GET", "/nothing-here"},
	}
	for _, auth := range []string{"", "Bearer wrong-token-wrong-token-wrong-token", "Basic " + b64("admin:"+testToken), "Bearer", "Bearer " + testToken + "x", testToken} {
		for _, p := range paths {
			code, hdr, body := e.call(t, p.method, p.path, auth, "")
			if code != http.StatusUnauthorized || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") ||
				strings.TrimSpace(body) != `{"error":"unauthorized"}` {
				t.Errorf("%s %s with %q: %d %q", p.method, p.path, auth, code, body)
			}
		}
	}
	if n := len(e.audit.find("admin_auth")); n == 0 {
		t.Error("failed admin logins are not audited")
	}
	code, _, body := e.call(t, "GET", "/metrics", "Bearer "+testToken, "")
	if code != http.StatusOK || body != "sallyport_up 1\n" {
		t.Errorf("metrics with the token: %d %q", code, body)
	}
	code, _, _ = e.call(t, "GET", "/v1/users", "bearer "+testToken, "")
	if code != http.StatusOK {
		t.Errorf("lower-case scheme: %d", code)
	}
}

func TestAPIZeroTokenLocksOut(t *testing.T) {
	v := newTestVault(t)
	srv := httptest.NewServer(NewAPI(v.Vault, [32]byte{}, nil, nil))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/v1/users", nil)
	req.Header.Set("Authorization", "Bearer ")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestAPIUsers(t *testing.T) {
	e := startAPI(t)
	auth := "Bearer " + testToken
	password := "Us3r-P4ssword-Marker"
	code, _, body := e.call(t, "POST", "/v1/users", auth,
		`{"name":"alice@corp.example","password":"`+b64(password)+`","totp":true,"groups":["ops"]}`)
	if code != http.StatusCreated || !strings.Contains(body, `"otpauth_uri":"otpauth://totp/Sallyport:alice@corp.example?secret=`) {
		t.Fatalf("add user: %d %s", code, body)
	}
	code, _, body = e.call(t, "POST", "/v1/users", auth, `{"name":"bob","password":"`+b64("bob-password")+`"}`)
	if code != http.StatusCreated || strings.TrimSpace(body) != `{"otpauth_uri":""}` {
		t.Fatalf("add user without totp: %d %s", code, body)
	}
	code, _, body = e.call(t, "GET", "/v1/users", auth, "")
	var list usersList
	if code != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil || len(list.Users) != 2 || list.Users[0].Name != "alice@corp.example" {
		t.Fatalf("list: %d %s", code, body)
	}
	if strings.Contains(body, "argon2") || strings.Contains(body, "seed") {
		t.Fatalf("user list leaks credentials: %s", body)
	}
	for _, c := range []struct {
		path string
		want int
	}{
		{"/v1/users/bob/disable", http.StatusNoContent},
		{"/v1/users/bob/enable", http.StatusNoContent},
		{"/v1/users/nosuch/disable", http.StatusNotFound},
		{"/v1/secrets/nosuch/enable", http.StatusNotFound},
	} {
		if code, _, body := e.call(t, "POST", c.path, auth, ""); code != c.want {
			t.Fatalf("POST %s: %d %s, want %d", c.path, code, body, c.want)
		}
	}
	if evs := e.audit.find("admin_user_disable"); len(evs) != 2 || evs[0].Outcome != "ok" || evs[1].Outcome != "error" {
		t.Fatalf("admin_user_disable events: %+v", evs)
	}
	code, _, _ = e.call(t, "DELETE", "/v1/users/alice@corp.example", auth, "")
	if code != http.StatusNoContent {
		t.Fatalf("delete: %d", code)
	}
	code, _, body = e.call(t, "DELETE", "/v1/users/alice@corp.example", auth, "")
	if code != http.StatusNotFound || !strings.Contains(body, `"error"`) {
		t.Fatalf("delete again: %d %s", code, body)
	}
	if !strings.Contains(e.logs.String(), "user added") || strings.Contains(e.logs.String(), password) ||
		strings.Contains(e.logs.String(), b64(password)) {
		t.Fatal("log is missing the change or holds the password")
	}
}

func TestAPIBadRequests(t *testing.T) {
	e := startAPI(t)
	auth := "Bearer " + testToken
	secretPW := "Sup3r-Secret-Value"
	tests := []struct {
		name, method, path, body string
		status                   int
		contains                 string
	}{
		{"malformed json", "POST", "/v1/users", `{"name":`, 400, "malformed JSON"},
		{"unknown field", "POST", "/v1/users", `{"name":"a","password":"` + b64("password1") + `","admin":true}`, 400, "unknown field"},
		{"trailing data", "POST", "/v1/users", `{"name":"abc","password":"` + b64("password1") + `"} {}`, 400, "body"},
		{"password not base64", "POST", "/v1/users", `{"name":"abc","password":"` + secretPW + `!"}`, 400, "base64"},
		{"wrong type", "POST", "/v1/users", `{"name":5,"password":"` + b64("password1") + `"}`, 400, "name"},
		{"short password", "POST", "/v1/users", `{"name":"abc","password":"` + b64("short") + `"}`, 400, "password"},
		{"bad user name", "POST", "/v1/users", `{"name":"a b","password":"` + b64("password1") + `"}`, 400, "name"},
		{"secret missing host", "POST", "/v1/secrets", `{"name":"web01","port":22,"username":"root","password":"` + b64(secretPW) + `","pin_on_first_use":true,"allow":["alice"]}`, 400, "host"},
		{"secret bad port", "POST", "/v1/secrets", `{"name":"web01","host":"h","port":99999,"username":"root","password":"` + b64(secretPW) + `","pin_on_first_use":true,"allow":["alice"]}`, 400, "port"},
		{"secret bad key", "POST", "/v1/secrets", `{"name":"web01","host":"h","port":22,"username":"root","private_key":"` + b64(secretPW) + `","pin_on_first_use":true,"allow":["alice"]}`, 400, "private_key"},
		{"secret bad host key", "POST", "/v1/secrets", `{"name":"web01","host":"h","port":22,"username":"root","password":"` + b64(secretPW) + `","host_key":"ssh-rsa nope","allow":["alice"]}`, 400, "host_key"},
		{"secret without allow", "POST", "/v1/secrets", `{"name":"web01","host":"h","port":22,"username":"root","password":"` + b64(secretPW) + `","pin_on_first_use":true}`, 400, "allow"},
		{"secret without port", "POST", "/v1/secrets", `{"name":"web01","host":"h","username":"root","password":"` + b64(secretPW) + `","pin_on_first_use":true,"allow":["alice"]}`, 400, "port: must be 1..65535"},
		{"secret port 0", "POST", "/v1/secrets", `{"name":"web01","host":"h","port":0,"username":"root","password":"` + b64(secretPW) + `","pin_on_first_use":true,"allow":["alice"]}`, 400, "port: must be 1..65535"},
		{"secret name like a flag", "POST", "/v1/secrets", `{"name":"-rf","host":"h","port":22,"username":"root","password":"` + b64(secretPW) + `","pin_on_first_use":true,"allow":["alice"]}`, 400, "name: must not start with '-'"},
		{"user name like a flag", "POST", "/v1/users", `{"name":"-alice","password":"` + b64("password1") + `"}`, 400, "name: must not start with '-'"},
		{"group name like a flag", "POST", "/v1/users", `{"name":"alice","password":"` + b64("password1") + `","groups":["ops","-dba"]}`, 400, "groups: a group name must not start with '-'"},
		{"duplicate key", "POST", "/v1/users", `{"name":"abc","password":"` + b64("password1") + `","name":"abd"}`, 400, `body: duplicate key \"name\"`},
		{"duplicate key in another case", "POST", "/v1/users", `{"name":"abc","password":"` + b64("password1") + `","NAME":"abd"}`, 400, `body: duplicate key \"NAME\"`},
		{"duplicate key escaped", "POST", "/v1/users", `{"name":"abc","password":"` + b64("password1") + `","na\u006De":"abd"}`, 400, `body: duplicate key \"name\"`},
		{"duplicate credential", "POST", "/v1/secrets", `{"name":"web01","host":"h","port":22,"username":"root","password":"` + b64(secretPW) + `","password":"` + b64(secretPW+"2") + `","pin_on_first_use":true,"allow":["alice"]}`, 400, `body: duplicate key \"password\"`},
		{"duplicate nested key", "POST", "/v1/users", `{"name":"abc","password":"` + b64("password1") + `","x":[{"a":1,"A":2}]}`, 400, `body: duplicate key \"A\"`},
		{"too deep", "POST", "/v1/users", `{"name":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, 400, "body: nested deeper than 32 levels"},
		{"too large", "POST", "/v1/users", `{"name":"` + strings.Repeat("a", maxBody) + `"}`, 413, "larger"},
		{"show unknown", "GET", "/v1/secrets/nope", "", 404, "not found"},
		{"delete unknown secret", "DELETE", "/v1/secrets/nope", "", 404, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, hdr, body := e.call(t, tt.method, tt.path, auth, tt.body)
			if code != tt.status || !strings.Contains(body, tt.contains) || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
				t.Fatalf("%d %s (want %d containing %q)", code, body, tt.status, tt.contains)
			}
			if strings.Contains(body, secretPW) || strings.Contains(body, b64(secretPW)) {
				t.Fatalf("error echoes the secret: %s", body)
			}
		})
	}
	// A wrong content type is refused before the body is read.
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/users", strings.NewReader(`{}`))
	req.Header.Set("Authorization", auth)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("text/plain body: %d", resp.StatusCode)
	}
}

func TestAPISecretsRedacted(t *testing.T) {
	e := startAPI(t)
	auth := "Bearer " + testToken
	secretPW := "Sup3r-Secret-Value-In-API"
	hk := authorizedLine(newHostKey(t))
	add := `{"name":"web01","host":"10.0.0.5","port":2222,"username":"root","password":"` + b64(secretPW) +
		`","host_key":"` + hk + `","allow":["alice","group:ops"]}`
	code, _, body := e.call(t, "POST", "/v1/secrets", auth, add)
	if code != http.StatusCreated {
		t.Fatalf("add: %d %s", code, body)
	}
	code, _, _ = e.call(t, "POST", "/v1/secrets", auth, add)
	if code != http.StatusConflict {
		t.Fatalf("duplicate add: %d", code)
	}
	key := newPrivateKeyPEM(t)
	code, _, body = e.call(t, "POST", "/v1/secrets", auth, `{"name":"db01","host":"db01.corp.example","port":22,"username":"postgres","private_key":"`+
		base64.StdEncoding.EncodeToString(key)+`","pin_on_first_use":true,"allow":["bob"]}`)
	if code != http.StatusCreated {
		t.Fatalf("add key secret: %d %s", code, body)
	}
	var shown []string
	for _, p := range []string{"/v1/secrets", "/v1/secrets/web01", "/v1/secrets/db01"} {
		code, _, body := e.call(t, "GET", p, auth, "")
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d", p, code)
		}
		shown = append(shown, body)
	}
	all := strings.Join(shown, "\n")
	for _, leak := range []string{secretPW, b64(secretPW), "PRIVATE KEY", base64.StdEncoding.EncodeToString(key)[:40], `"password":`, `"private_key":`} {
		if strings.Contains(all, leak) {
			t.Fatalf("a credential shows in the API output: %s", all)
		}
	}
	var info SecretInfo
	if err := json.Unmarshal([]byte(shown[1]), &info); err != nil {
		t.Fatal(err)
	}
	if info.Port != 2222 || info.Kind != KindPassword || info.HostKey != hk || !strings.HasPrefix(info.HostKeyFingerprint, "SHA256:") {
		t.Fatalf("show: %+v", info)
	}
	code, _, _ = e.call(t, "DELETE", "/v1/secrets/web01", auth, "")
	if code != http.StatusNoContent {
		t.Fatalf("delete: %d", code)
	}
	if n := len(e.audit.find("admin_secret_remove")); n != 1 {
		t.Fatalf("%d removal audit events", n)
	}
}

// TestAPIPathEscaping: names with characters that need escaping in a URL
// path reach the handler intact.
func TestAPIPathEscaping(t *testing.T) {
	e := startAPI(t)
	auth := "Bearer " + testToken
	for _, name := range []string{"CORP\\alice", "a/b", "50%off", "x?y", "ü@corp.example"} {
		body, _ := json.Marshal(userRequest{Name: name, Password: []byte("password1")})
		code, _, resp := e.call(t, "POST", "/v1/users", auth, string(body))
		if code != http.StatusCreated {
			t.Fatalf("add %q: %d %s", name, code, resp)
		}
		code, _, resp = e.call(t, "DELETE", "/v1/users/"+escapePath(name), auth, "")
		if code != http.StatusNoContent {
			t.Fatalf("delete %q: %d %s", name, code, resp)
		}
	}
}

// TestAPILegacyFlagLikeNames: POST refuses names that start with '-', but
// GET and DELETE still reach rows stored before that rule, so they can be
// cleaned up.
func TestAPILegacyFlagLikeNames(t *testing.T) {
	e := startAPI(t)
	auth := "Bearer " + testToken
	for _, q := range []string{
		`INSERT INTO users (name, password_hash, created) VALUES ('-old', 'x', 0)`,
		`INSERT INTO secrets (name, host, port, username, kind, wrapped_dek, credential, pin_on_first_use, created, updated)
			VALUES ('-rf', 'h', 22, 'root', 'password', x'00', x'00', 1, 0, 0)`,
	} {
		if _, err := e.db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if code, _, body := e.call(t, "GET", "/v1/secrets/-rf", auth, ""); code != http.StatusOK || !strings.Contains(body, `"name":"-rf"`) {
		t.Fatalf("show legacy secret: %d %s", code, body)
	}
	for _, p := range []string{"/v1/secrets/-rf", "/v1/users/-old"} {
		if code, _, body := e.call(t, "DELETE", p, auth, ""); code != http.StatusNoContent {
			t.Fatalf("DELETE %s: %d %s", p, code, body)
		}
	}
}

func escapePath(s string) string {
	var b bytes.Buffer
	for _, c := range []byte(s) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '@' {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strings.ToUpper(string("0123456789abcdef"[c>>4])) + strings.ToUpper(string("0123456789abcdef"[c&15])))
		}
	}
	return b.String()
}

// FuzzAPISecretBody posts arbitrary bodies to POST /v1/secrets (the JSON
// decoder, host-key and private-key parsers and validators behind it). The
// answer is always one of the documented statuses, always JSON, and never
// a 500.
func FuzzAPISecretBody(f *testing.F) {
	f.Add([]byte(`{"name":"web01","host":"10.0.0.5","port":22,"username":"root","password":"cHc=","pin_on_first_use":true,"allow":["alice"]}`))
	f.Add([]byte(`{"name":"web02","host":"h","port":2222,"username":"u","private_key":"LS0tLS1CRUdJTg==","host_key":"ssh-ed25519 AAAA","allow":["group:ops"]}`))
	f.Add([]byte(`{"name":"web03","host":"h","port":22,"Port":23,"username":"u","password":"cHc=","pin_on_first_use":true,"allow":["alice"]}`))
	f.Add([]byte(`{"name":"x","port":-1}`))
	f.Add([]byte(`[`))
	v := newTestVault(f)
	h := NewAPI(v.Vault, sha256.Sum256([]byte(testToken)), nil, discardLogger())
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/v1/secrets", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusCreated, http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body.String())
		}
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("non-JSON answer %q", rec.Body.String())
		}
		if _, ok := out["password"]; ok {
			t.Fatalf("answer carries a password field: %s", rec.Body.String())
		}
	})
}
