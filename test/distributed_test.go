package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDistributedBuiltin runs the vault and an engine as separate
// processes over the built-in connector: registration, approval, SSH
// injection through the engine, site isolation and revocation.
func TestDistributedBuiltin(t *testing.T) {
	c := startCluster(t)
	c.Ctl(t, "site", "add", "dc-east")
	e := c.StartEngine(t, "dc-east")

	t.Run("pending engine gets no work and no keys", func(t *testing.T) {
		row, ok := c.Engines(t)[e.ID]
		if !ok || row.State != "pending" || row.Site != "dc-east" || row.Fingerprint != e.Fingerprint {
			t.Fatalf("engine list has %+v for %s (fingerprint %s), want it pending on dc-east", row, e.ID, e.Fingerprint)
		}
		if _, r := c.Ping(t, "dc-east"); r.Code == 0 {
			t.Fatalf("a ping of a site whose only engine is pending was answered:\n%s", r)
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
