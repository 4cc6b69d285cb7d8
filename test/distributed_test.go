package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// TestDistributedBuiltin runs the vault and an engine as separate
// processes over the built-in connector: registration, approval, SSH
// injection through the engine, site isolation and revocation.
func TestDistributedBuiltin(t *testing.T) {
	// Both daemons log JSON here (for a SIEM): the end-of-test leak scan
	// reads that form too.
	c := startCluster(t, "--log-format", "json")
	c.Ctl(t, "site", "add", "dc-east")
	e := c.StartEngine(t, "dc-east", "--log-format", "json")
	defer func() {
		for _, p := range []*proc{c.vault, e.proc} {
			checkJSONLog(t, p)
		}
	}()

	t.Run("pending engine gets no work and no keys", func(t *testing.T) {
		row, ok := c.Engines(t)[e.ID]
		if !ok || row.State != "pending" || row.Site != "dc-east" || row.Fingerprint != e.Fingerprint {
			t.Fatalf("engine list has %+v for %s (fingerprint %s), want it pending on dc-east", row, e.ID, e.Fingerprint)
		}
		if _, r := c.Ping(t, "dc-east"); r.Code == 0 {
			t.Fatalf("a ping of a site whose only engine is pending was answered:\n%s", r)
		}
		// The ping waits on the site's queue, where nobody takes it.
		if n := c.VaultMetric(t, "sallyport_vault_queue_depth", `site="dc-east"`, `queue="work"`); n != 1 {
			t.Fatalf("the vault's gauge of dc-east's work queue is %v, want 1", n)
		}
		if strings.Contains(string(e.Log()), engineReady) {
			t.Fatalf("a pending engine serves:\n%s", e.LogTail(20))
		}
		// The engine keeps only what the vault gave it; pending, that
		// is nothing that opens an item.
		if b, err := os.ReadFile(filepath.Join(e.Data, "engine-state.json")); err == nil {
			t.Fatalf("a pending engine saved a configuration: %s", b)
		}
	})

	c.Approve(t, e)
	secret := c.admin.Name("east")
	c.admin.AddSecret(t, secretSpec{Name: secret, Allow: []string{c.Alice.Name}, Site: "dc-east"})
	other := c.admin.Name("west")
	c.admin.AddSecret(t, secretSpec{Name: other, Allow: []string{c.Alice.Name}}) // the default site

	t.Run("ssh through the engine", func(t *testing.T) {
		echo, marker := markerCommand()
		before := c.target.LogCount("Accepted password for " + c.target.User)
		r := e.gw.SSH(t, sshRun{Login: c.Alice.Name + "@" + secret, Answers: c.Alice.Answers(), Flags: []string{"-T"}, Stdin: echo + "\n"})
		if !strings.Contains(r.Stdout, marker) || r.Code != 0 {
			t.Fatalf("want %s:\n%s\nengine log:\n%s\nvault log:\n%s", marker, r, e.LogTail(20), c.vault.LogTail(20))
		}
		if !c.target.WaitLogCount("Accepted password for "+c.target.User, before) {
			t.Errorf("the target logged no password login")
		}
	})

	t.Run("another site's secret is not served", func(t *testing.T) {
		r := e.gw.SSH(t, sshRun{Login: c.Alice.Name + "@" + other, Answers: c.Alice.Answers(), Command: "true"})
		if r.Code == 0 {
			t.Fatalf("an engine of dc-east reached a secret of the default site:\n%s", r)
		}
		e.gw.CheckNotRateLimited(t, r)
	})

	t.Run("ping", func(t *testing.T) {
		id, r := c.Ping(t, "dc-east")
		if r.Code != 0 || id != e.ID {
			t.Fatalf("want engine %s to answer:\n%s", e.ID, r)
		}
		row := c.Engines(t)[e.ID]
		if row.State != "approved" || row.LastSeen.IsZero() {
			t.Fatalf("engine list: %+v", row)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		c.Ctl(t, "engine", "revoke", e.ID)
		select {
		case <-e.done:
		case <-time.After(time.Minute):
			t.Fatalf("a revoked engine still runs a minute later:\n%s", e.LogTail(20))
		}
		if !strings.Contains(string(e.Log()), engineRevoked) {
			t.Fatalf("the engine did not say it was revoked:\n%s", e.LogTail(20))
		}
		if row := c.Engines(t)[e.ID]; row.State != "revoked" {
			t.Fatalf("engine list: %+v", row)
		}
		// Its data directory, copied, opens nothing: it restarts revoked.
		c.runEngine(t, e)
		select {
		case <-e.done:
		case <-time.After(time.Minute):
			t.Fatalf("a revoked engine restarted and still runs:\n%s", e.LogTail(20))
		}
	})
}

// TestDistributedTwoEngines runs two engines on one site: work items go to
// both, and an item held by an engine killed before it answers goes to the
// other.
func TestDistributedTwoEngines(t *testing.T) {
	c := startCluster(t)
	c.Ctl(t, "site", "add", "dc-pair")
	// A long poll: what these engines learn after approval, they learn
	// because something made them ask (a key rotation), not by schedule.
	a, b := c.StartEngine(t, "dc-pair", "--poll", "10m"), c.StartEngine(t, "dc-pair", "--poll", "10m")
	c.Approve(t, a)
	c.Approve(t, b)
	waitPing(t, c, "dc-pair")

	t.Run("load shared", func(t *testing.T) {
		answered := map[string]int{}
		for range 12 {
			id, r := c.Ping(t, "dc-pair")
			if r.Code != 0 {
				t.Fatalf("ping:\n%s", r)
			}
			answered[id]++
		}
		t.Logf("pings answered: %v", answered)
		if answered[a.ID] == 0 || answered[b.ID] == 0 || len(answered) != 2 {
			t.Fatalf("want both engines (%s, %s) to answer pings: %v", a.ID, b.ID, answered)
		}
	})

	t.Run("site key rotated", func(t *testing.T) {
		r := c.Ctl(t, "site", "rotate-key", "dc-pair")
		if !strings.Contains(r.Stdout, "key version 2") {
			t.Fatalf("rotate-key:\n%s", r)
		}
		// The next ping is sealed under version 2, which the engines
		// fetch when they meet it, not at their next scheduled pull.
		for range 4 {
			if _, r := c.Ping(t, "dc-pair"); r.Code != 0 {
				t.Fatalf("a ping right after the rotation:\n%s", r)
			}
		}
	})

	secret := c.admin.Name("pair")
	c.admin.AddSecret(t, secretSpec{Name: secret, Allow: []string{c.Alice.Name}, Site: "dc-pair"})
	t.Run("ssh through either engine", func(t *testing.T) {
		for _, e := range []*engineProc{a, b} {
			r := e.gw.SSH(t, sshRun{Login: c.Alice.Name + "@" + secret, Answers: c.Alice.Answers(), Command: "id -un"})
			if strings.TrimSpace(r.Stdout) != c.target.User || r.Code != 0 {
				t.Fatalf("through %s:\n%s", e.Name, r)
			}
		}
	})

	t.Run("engine killed holding an item", func(t *testing.T) {
		// a stops (SIGSTOP) without acknowledging what it holds; a ping
		// that a took is not answered until a is killed, then b takes
		// it from the connector.
		if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		type pinged struct {
			id string
			r  result
		}
		var held chan pinged
		for try := 0; try < 6 && held == nil; try++ {
			ch := make(chan pinged, 1)
			go func() { id, r := c.ping("dc-pair"); ch <- pinged{id, r} }()
			select {
			case p := <-ch:
				if p.r.Code != 0 || p.id != b.ID {
					t.Fatalf("with %s stopped, want %s to answer:\n%s", a.ID, b.ID, p.r)
				}
			case <-time.After(2 * time.Second):
				held = ch // a holds this one
			}
		}
		if held == nil {
			t.Fatalf("six pings in a row went to %s while %s was stopped: the connector does not share work", b.ID, a.ID)
		}
		a.kill()
		p := <-held
		if p.r.Code != 0 || p.id != b.ID {
			t.Fatalf("the ping %s held was not redelivered to %s:\n%s", a.ID, b.ID, p.r)
		}
		if row := c.Engines(t)[a.ID]; row.State != "approved" {
			t.Fatalf("a killed engine is still approved, it may come back: %+v", row)
		}
	})
}

// TestDistributedVaultRestart stops the vault under a live session: the
// session goes on, new logins are told the service is unavailable, and
// the engine recovers by itself once the vault is back.
func TestDistributedVaultRestart(t *testing.T) {
	c := startCluster(t)
	c.Ctl(t, "site", "add", "dc-outage")
	e := c.StartEngine(t, "dc-outage")
	c.Approve(t, e)
	secret := c.admin.Name("outage")
	c.admin.AddSecret(t, secretSpec{Name: secret, Allow: []string{c.Alice.Name}, Site: "dc-outage"})

	// A live session, held open by its stdin until the vault is down.
	echo, marker := markerCommand()
	release := make(chan struct{})
	live := make(chan result, 1)
	liveRun := e.gw.sshCommand(e.gw.nextSource(), sshRun{Login: c.Alice.Name + "@" + secret, Answers: c.Alice.Answers(),
		Command: "read line; " + echo, Stdin: "go\n", StdinAfter: release, Timeout: 2 * time.Minute})
	go func() {
		r, err := runCommand(liveRun)
		if err != nil {
			r.Stderr += "\n" + err.Error()
		}
		e.gw.record(r)
		live <- r
	}()
	if _, ok := e.waitLine(func(l string) bool { return strings.Contains(l, `msg="session started"`) }, time.Minute); !ok {
		t.Fatalf("the session did not start:\n%s", e.LogTail(20))
	}

	c.StopVault(t)
	r := e.gw.SSH(t, sshRun{LogLevel: "INFO", Login: c.Alice.Name + "@" + secret, Answers: c.Alice.Answers(), Command: "true"})
	if r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, "unavailable") {
		t.Fatalf("a login during the vault's outage: want the unavailable message:\n%s", r)
	}
	e.gw.CheckNotRateLimited(t, r)
	close(release)
	if r := <-live; !strings.Contains(r.Stdout, marker) || r.Code != 0 {
		t.Fatalf("the live session did not outlast the vault:\n%s", r)
	}

	c.startVault(t)
	waitPing(t, c, "dc-outage")
	r = e.gw.SSH(t, sshRun{Login: c.Alice.Name + "@" + secret, Answers: c.Alice.Answers(), Command: "id -un"})
	if strings.TrimSpace(r.Stdout) != c.target.User || r.Code != 0 {
		t.Fatalf("a login after the vault came back:\n%s", r)
	}
	if err := e.exited(); err != nil {
		t.Fatalf("the engine exited: %v", err)
	}
}

// waitPing waits (bounded) until an engine of site answers a ping.
func waitPing(t *testing.T, c *cluster, site string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		_, r := c.Ping(t, site)
		if r.Code == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no engine of %s answered a ping for a minute:\n%s", site, r)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkJSONLog checks that every line p wrote is a JSON object, but for
// the daemon's own plain lines ("sallyport …: ready …") and what the race
// detector or the runtime print, which the end-of-test checks look for.
func checkJSONLog(t *testing.T, p *proc) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(string(p.Log())), "\n") {
		if line == "" || strings.HasPrefix(line, "sallyport ") {
			continue
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Errorf("%s logged a line that is not JSON with --log-format json: %q", p.name, line)
			return
		}
	}
}

// TestDistributedEngineHSM runs an engine whose identity key is in a
// PKCS#11 token (SoftHSM2): it works and restarts from its saved
// configuration, and a copy of its data directory without the token opens
// nothing: the keys there are wrapped to the token's key.
func TestDistributedEngineHSM(t *testing.T) {
	h := newSoftHSM(t, "sallyport-engine")
	cfg := h.config(t, tokenPIN, softHSMModule, "")
	c := startCluster(t)
	c.Ctl(t, "site", "add", "dc-hsm")
	r := mustSallyport(t, "keys", "init", "--data", c.NextEngineData(), "--config", cfg)
	if !strings.Contains(r.Stdout, "sallyport-engine: created in token") {
		t.Fatalf("keys init did not create the engine's identity key:\n%s", r)
	}
	e := c.StartEngine(t, "dc-hsm", "--config", cfg)
	c.Approve(t, e)
	if _, err := os.Stat(filepath.Join(e.Data, "keystore.json")); err == nil {
		t.Fatal("an engine configured with a token keeps a soft keystore")
	}
	secret := c.admin.Name("hsm")
	c.admin.AddSecret(t, secretSpec{Name: secret, Allow: []string{c.Alice.Name}, Site: "dc-hsm"})
	login := func(e *engineProc) result {
		return e.gw.SSH(t, sshRun{Login: c.Alice.Name + "@" + secret, Answers: c.Alice.Answers(), Command: "id -un"})
	}
	if r := login(e); strings.TrimSpace(r.Stdout) != c.target.User {
		t.Fatalf("through the HSM engine:\n%s", r)
	}

	// Restarted, it picks up its saved configuration with the token's key.
	c.Restart(t, e)
	c.WaitServing(t, e)
	if r := login(e); strings.TrimSpace(r.Stdout) != c.target.User {
		t.Fatalf("through the restarted HSM engine:\n%s", r)
	}
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}

	// A copy of the data directory, started without the token.
	thief := &engineProc{Site: "dc-hsm", Name: "copy", Data: filepath.Join(t.TempDir(), "copy")}
	if out, err := exec.Command("cp", "-a", e.Data, thief.Data).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(thief.Data, "engine-state.json")); err != nil {
		t.Fatalf("the engine saved no configuration to copy: %v", err)
	}
	var err error
	if thief.SSHPort, err = sshdtest.FreePort(); err != nil {
		t.Fatal(err)
	}
	if thief.MetricsPort, err = sshdtest.FreePort(); err != nil {
		t.Fatal(err)
	}
	c.runEngine(t, thief)
	if thief.ID == e.ID {
		t.Fatalf("a copy without the token came up as engine %s", e.ID)
	}
	if _, ok := thief.waitLine(func(l string) bool { return strings.Contains(l, "the saved configuration does not apply") }, time.Minute); !ok {
		t.Fatalf("the copy did not refuse the saved configuration:\n%s", thief.LogTail(20))
	}
	if row := c.Engines(t)[thief.ID]; row.State != "pending" {
		t.Fatalf("the copy registered as %+v, want a new pending engine", row)
	}
	if _, r := c.Ping(t, "dc-hsm"); r.Code == 0 {
		t.Fatalf("with the real engine stopped, a ping was answered (by the copy?):\n%s", r)
	}
	if strings.Contains(string(thief.Log()), engineReady) {
		t.Fatalf("the copy serves:\n%s", thief.LogTail(20))
	}
	c.runEngine(t, e) // back, for the end-of-test checks
	c.WaitServing(t, e)
}
