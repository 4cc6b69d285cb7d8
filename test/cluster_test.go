package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// Lines the daemons print (see cmd/sallyport).
const (
	vaultReady     = "sallyport vault: ready"
	engineIDLine   = "sallyport engine: id "
	engineReady    = "sallyport engine: ready"
	engineRevoked  = "revoked by the vault"
	clusterTimeout = 2 * time.Minute
)

// cluster is `sallyport vault` and its engines, each a separate OS process
// on loopback ports, as a multi-site deployment runs them.
type cluster struct {
	t        testing.TB
	bin, dir string
	target   *sshdTarget

	vault     *proc
	vaultData string
	apiPort   int
	connPort  int
	vaultArgs []string
	vaultRuns int

	// admin runs ctl against the vault and keeps the users' passwords
	// and every output for the leak scan.
	admin *gateway
	Alice gatewayUser

	mu      sync.Mutex
	engines []*engineProc
	retired []*proc // earlier runs of restarted or killed daemons
}

// engineProc is one `sallyport engine`.
type engineProc struct {
	*proc
	Site, Data, Name string
	ID, Fingerprint  string
	SSHPort          int
	MetricsPort      int
	extra            []string // more flags, kept for restarts
	// gw runs ssh through this engine (and ctl against the vault).
	gw *gateway
}

// startCluster starts a vault under a fresh directory with user alice;
// extra are more `sallyport vault` flags. The cluster is stopped and
// checked for leaks, races and panics when the test ends.
func startCluster(t testing.TB, extra ...string) *cluster {
	t.Helper()
	if env.buildErr != nil {
		t.Fatalf("sallyport binary is missing: %v", env.buildErr)
	}
	c := &cluster{t: t, bin: env.bin, dir: t.TempDir(), target: env.Target(t)}
	c.vaultData = filepath.Join(c.dir, "vault")
	var err error
	if c.apiPort, err = sshdtest.FreePort(); err != nil {
		t.Fatal(err)
	}
	for c.connPort == 0 || c.connPort == c.apiPort {
		if c.connPort, err = sshdtest.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	c.vaultArgs = append([]string{"vault", "--data", c.vaultData,
		"--api-addr", "127.0.0.1:" + strconv.Itoa(c.apiPort),
		"--connector-addr", "127.0.0.1:" + strconv.Itoa(c.connPort)}, extra...)
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SPT_E2E_DUMP") != "" {
			c.dumpLogs(t)
		}
		for _, p := range c.finalChecks() {
			t.Error(p)
		}
	})
	c.startVault(t)
	c.admin = &gateway{bin: c.bin, dir: c.dir, dataDir: c.vaultData, target: c.target, proc: c.vault}
	if err := c.admin.addAlice(); err != nil {
		t.Fatal(err)
	}
	c.Alice = c.admin.Alice
	return c
}

// startVault starts (or restarts) the vault on its data and ports.
func (c *cluster) startVault(t testing.TB) {
	t.Helper()
	c.vaultRuns++
	log := filepath.Join(c.dir, fmt.Sprintf("vault-%d.log", c.vaultRuns))
	p, err := startProc("sallyport vault", c.bin, log, vaultReady, c.vaultArgs...)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	if c.vault != nil {
		c.retired = append(c.retired, c.vault)
	}
	c.vault = p
	if c.admin != nil {
		c.admin.proc = p
	}
	c.mu.Unlock()
	if err := p.waitReady(vaultReady, clusterTimeout); err != nil {
		t.Fatal(err)
	}
}

// Ctl runs ctl against the vault, failing the test unless it exits 0.
func (c *cluster) Ctl(t testing.TB, args ...string) result {
	t.Helper()
	r := c.admin.Ctl(t, "", args...)
	if r.Code != 0 {
		t.Fatalf("sallyport ctl failed:\n%s\nvault log tail:\n%s", r, c.vault.LogTail(20))
	}
	return r
}

// engineRow is one line of `ctl engine list --json`.
type engineRow struct {
	ID, Site, Name, Fingerprint, State string
	LastSeen                           time.Time `json:"last_seen"`
}

// Engines returns `ctl engine list --json`.
func (c *cluster) Engines(t testing.TB) map[string]engineRow {
	t.Helper()
	out := c.Ctl(t, "engine", "list", "--json").Stdout
	rows := map[string]engineRow{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var r engineRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("engine list --json: %v: %q", err, line)
		}
		rows[r.ID] = r
	}
	return rows
}

// StartEngine starts an engine of site, waits until it has registered
// (printed its id), and returns it pending. extra are more flags.
func (c *cluster) StartEngine(t testing.TB, site string, extra ...string) *engineProc {
	t.Helper()
	c.mu.Lock()
	n := len(c.engines) + 1
	c.mu.Unlock()
	e := &engineProc{Site: site, Name: fmt.Sprintf("%s-%d", site, n), Data: c.NextEngineData()}
	var err error
	if e.SSHPort, err = sshdtest.FreePort(); err != nil {
		t.Fatal(err)
	}
	for e.MetricsPort == 0 || e.MetricsPort == e.SSHPort {
		if e.MetricsPort, err = sshdtest.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	e.extra = extra
	c.runEngine(t, e)
	return e
}

// NextEngineData is the data directory the next StartEngine uses (for
// `sallyport keys init` before it).
func (c *cluster) NextEngineData() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return filepath.Join(c.dir, fmt.Sprintf("engine-%d", len(c.engines)+1))
}

// runEngine starts e's process (again, after a stop, on the same data).
func (c *cluster) runEngine(t testing.TB, e *engineProc) {
	t.Helper()
	args := append([]string{"engine", "--vault", "https://127.0.0.1:" + strconv.Itoa(c.apiPort),
		"--ca-file", filepath.Join(c.vaultData, "api.crt"), "--site", e.Site, "--name", e.Name,
		"--data", e.Data, "--ssh-addr", "127.0.0.1:" + strconv.Itoa(e.SSHPort), "--poll", "1s",
		"--metrics-addr", "127.0.0.1:" + strconv.Itoa(e.MetricsPort)}, e.extra...)
	p, err := startProc("sallyport engine "+e.Name, c.bin, e.Data+".log", engineReady, args...)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	if e.proc != nil {
		c.retired = append(c.retired, e.proc)
	} else {
		c.engines = append(c.engines, e)
	}
	e.proc = p
	c.mu.Unlock()
	line, ok := p.waitLine(func(l string) bool { return strings.Contains(l, engineIDLine) }, clusterTimeout)
	if !ok {
		t.Fatalf("engine %s printed no %q; log:\n%s", e.Name, engineIDLine, p.LogTail(30))
	}
	f := strings.Fields(line[strings.Index(line, engineIDLine)+len(engineIDLine):])
	if len(f) < 3 || f[1] != "fingerprint" {
		t.Fatalf("engine id line is %q", line)
	}
	if e.ID != "" && e.ID != f[0] {
		t.Fatalf("engine %s came back with id %s, was %s", e.Name, f[0], e.ID)
	}
	e.ID, e.Fingerprint = f[0], f[2]
}

// Approve approves e and waits until it serves SSH.
func (c *cluster) Approve(t testing.TB, e *engineProc) {
	t.Helper()
	c.Ctl(t, "engine", "approve", e.ID)
	c.WaitServing(t, e)
}

// WaitServing waits for e's ready line and pins its SSH host key.
func (c *cluster) WaitServing(t testing.TB, e *engineProc) {
	t.Helper()
	if err := e.waitReady(engineReady, clusterTimeout); err != nil {
		t.Fatal(err)
	}
	if e.gw == nil {
		e.gw = &gateway{bin: c.bin, dir: e.Data + ".client", dataDir: c.vaultData, target: c.target, proc: e.proc,
			SSHPort: e.SSHPort, Alice: c.Alice}
		if err := os.MkdirAll(e.gw.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		var err error
		if e.gw.KnownHosts, err = pinHostKey(filepath.Join(e.Data, "ssh_host_key.pub"), e.SSHPort, filepath.Join(e.gw.dir, "known_hosts")); err != nil {
			t.Fatal(err)
		}
	}
	e.gw.proc = e.proc
}

// Restart stops e (SIGTERM) and starts it again on the same data.
func (c *cluster) Restart(t testing.TB, e *engineProc) {
	t.Helper()
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}
	c.runEngine(t, e)
}

// RestartVault stops the vault (SIGTERM) and starts it again.
func (c *cluster) RestartVault(t testing.TB) {
	t.Helper()
	c.StopVault(t)
	c.startVault(t)
}

// StopVault stops the vault (SIGTERM) and waits for it.
func (c *cluster) StopVault(t testing.TB) {
	t.Helper()
	if err := c.vault.stop(); err != nil {
		t.Fatal(err)
	}
	if c.vault.waitErr != nil {
		t.Errorf("the vault did not exit cleanly on SIGTERM: %v\n%s", c.vault.waitErr, c.vault.LogTail(20))
	}
}

// Ping runs `ctl site ping site` and returns the engine id that answered.
func (c *cluster) Ping(t testing.TB, site string) (engineID string, r result) {
	t.Helper()
	id, r := c.ping(site)
	if r.Code == 0 && id == "" {
		t.Fatalf("site ping printed %q", r.Stdout)
	}
	return id, r
}

// ping is Ping for any goroutine: a failure to run is a result.
func (c *cluster) ping(site string) (engineID string, r result) {
	r, err := c.admin.ctl("", "site", "ping", site)
	if err != nil {
		r.Code = -1
		r.Stderr += "\n" + err.Error()
	}
	if r.Code != 0 {
		return "", r
	}
	if f := strings.Fields(r.Stdout); len(f) >= 2 && f[0] == "engine" {
		return f[1], r
	}
	return "", r
}

// dumpLogs shows the end of every daemon's output (the directory goes when
// the test ends).
func (c *cluster) dumpLogs(t testing.TB) {
	c.mu.Lock()
	procs := append([]*proc(nil), c.retired...)
	for _, e := range c.engines {
		procs = append(procs, e.proc)
	}
	c.mu.Unlock()
	if c.vault != nil {
		procs = append(procs, c.vault)
	}
	for _, p := range procs {
		n := 40
		if os.Getenv("SPT_E2E_DUMP") != "" {
			n = 400
		}
		t.Logf("--- %s (%s):\n%s", p.name, p.logPath, p.LogTail(n))
	}
}

// finalChecks stops every daemon and checks outputs, argv and data
// directories for leaked secrets, races and panics.
func (c *cluster) finalChecks() []string {
	if c.admin == nil {
		if c.vault != nil {
			_ = c.vault.stop()
		}
		return nil
	}
	needles, problems := c.admin.needles(c.target)
	c.mu.Lock()
	engines := append([]*engineProc(nil), c.engines...)
	retired := append([]*proc(nil), c.retired...)
	c.mu.Unlock()
	for _, e := range engines {
		if e.gw != nil {
			problems = append(problems, e.gw.rateLimitedSources(e.Log())...)
			problems = append(problems, e.gw.scanTranscripts(needles)...)
		}
		if e.exited() != nil {
			// Revoked and killed engines are gone by design; their
			// output still must hold no secret and no race.
			problems = append(problems, findNeedles(e.name+" stdout/stderr", e.Log(), needles)...)
			problems = append(problems, e.crashProblems()...)
		} else {
			problems = append(problems, e.proc.finalChecks(needles)...)
		}
		problems = append(problems, scanTree(e.Data, needles)...)
	}
	for _, p := range retired {
		_ = p.stop()
		problems = append(problems, findNeedles(p.name+" (earlier run) stdout/stderr", p.Log(), needles)...)
		problems = append(problems, p.crashProblems()...)
	}
	problems = append(problems, c.admin.scanTranscripts(needles)...)
	problems = append(problems, c.vault.finalChecks(needles)...)
	problems = append(problems, scanTree(c.vaultData, needles)...)
	return problems
}

// pinHostKey writes a known_hosts file for 127.0.0.1:port holding the
// host key in pubPath (authorized_keys format) and returns its path.
func pinHostKey(pubPath string, port int, knownHosts string) (string, error) {
	hostKey, err := os.ReadFile(pubPath)
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(hostKey))
	if len(f) < 2 {
		return "", fmt.Errorf("%s is not in authorized_keys format: %q", pubPath, hostKey)
	}
	if err := os.WriteFile(knownHosts, []byte(knownHostsLine(port, f[0]+" "+f[1])), 0o600); err != nil {
		return "", err
	}
	return knownHosts, nil
}

// Metric scrapes e's /metrics and sums the samples of name whose labels
// include every label="value" pair given.
func (e *engineProc) Metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return scrapeMetric(t, "http://127.0.0.1:"+strconv.Itoa(e.MetricsPort)+"/metrics", name, labels...)
}

func scrapeMetric(t testing.TB, url, name string, labels ...string) float64 {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: HTTP %d, %v", url, resp.StatusCode, err)
	}
	return sumSamples(t, string(body), name, labels...)
}

// VaultMetric scrapes the vault's /metrics (admin token) and sums the
// samples of name whose labels include every pair given.
func (c *cluster) VaultMetric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	text, err := c.admin.metricsTextClient()
	if err != nil {
		t.Fatal(err)
	}
	body, err := text()
	if err != nil {
		t.Fatal(err)
	}
	return sumSamples(t, body, name, labels...)
}

// sumSamples sums the samples of name in a Prometheus text page whose
// labels include every label="value" pair given.
func sumSamples(t testing.TB, page, name string, labels ...string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range strings.Split(page, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}
