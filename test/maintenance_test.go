package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/internal/sshdtest"
	"github.com/sallyport/sallyport/sshtarget"
)

// SSHD returns the suite's PAM-backed sshd for heartbeat and rotation
// tests (real local accounts that passwd, chpasswd and sudo change),
// starting it on first use.
func (s *suite) SSHD(t testing.TB) *sshdtest.Server {
	t.Helper()
	s.sshdOnce.Do(func() { s.sshd, s.sshdErr = sshdtest.Start() })
	if s.sshdErr != nil {
		t.Fatalf("sshd for maintenance tests: %v", s.sshdErr)
	}
	return s.sshd
}

// maintenanceConfig is the daemons' configuration for maintenance tests:
// short item lifetimes and windows, so that lost items are found out in
// seconds.
const maintenanceConfig = `maintenance:
  heartbeat_ttl: 20s
  change_ttl: 30s
  resend_grace: 5s
  after_use_delay: 2s
`

// secretRow is a `ctl secret list --json` row, as far as these tests look.
type secretRow struct {
	Name        string `json:"name"`
	Maintenance struct {
		LastHeartbeat       string `json:"last_heartbeat"`
		LastHeartbeatEngine string `json:"last_heartbeat_engine"`
		Rotation            string `json:"rotation"`
		Generation          int64  `json:"generation"`
		ChangeMethod        string `json:"change_method"`
	} `json:"maintenance"`
}

func (c *cluster) Secrets(t testing.TB) map[string]secretRow {
	t.Helper()
	r := c.Ctl(t, "secret", "list", "--json")
	out := map[string]secretRow{}
	for _, line := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
		if line == "" {
			continue
		}
		var s secretRow
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("secret list --json: %v: %q", err, line)
		}
		out[s.Name] = s
	}
	return out
}

// waitSecret polls the secret list (bounded) until cond holds for name.
func (c *cluster) waitSecret(t testing.TB, name, what string, bound time.Duration, cond func(secretRow) bool) secretRow {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		s := c.Secrets(t)[name]
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			h := c.Ctl(t, "secret", "history", name)
			t.Fatalf("%s: %s not within %v; now %+v\nhistory:\n%s", name, what, bound, s, h.Stdout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// maintTarget is a secret on the maintenance sshd and what the test knows
// of its account.
type maintTarget struct {
	secret  string
	account *sshdtest.Account
	key     []byte // the account's private key, for a key secret
}

// addMaintSecret adds a secret on srv for account a (its password, or
// key when set) with the extra ctl flags.
func addMaintSecret(t testing.TB, c *cluster, srv *sshdtest.Server, name, site string, a *sshdtest.Account, key []byte, port int, hostKey []byte, extra ...string) {
	t.Helper()
	pub, err := gossh.ParsePublicKey(hostKey)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"secret", "add", name, "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--username", a.Name,
		"--host-key", strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub))), "--allow", c.Alice.Name, "--site", site}
	stdin := ""
	if key != nil {
		f := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(f, key, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--private-key-file", f)
	} else {
		args = append(args, "--password-stdin")
		stdin = string(a.Password) + "\n"
	}
	r, err := c.admin.ctl(stdin, append(args, extra...)...)
	if err != nil || r.Code != 0 {
		t.Fatalf("secret add %s: %v\n%s", name, err, r)
	}
}

// newAccountKey makes an ed25519 key pair for an account and authorizes
// its public half there.
func newAccountKey(t testing.TB, srv *sshdtest.Server, a *sshdtest.Account) []byte {
	t.Helper()
	priv, pub, err := sshtarget.NewKey("maintenance test")
	if err != nil {
		t.Fatal(err)
	}
	srv.Authorize(t, a, pub)
	return priv
}

// reveal reads a secret's credential with `sallyport keys reveal` while
// the vault is stopped.
func (c *cluster) reveal(t testing.TB, name string) []byte {
	t.Helper()
	r, err := runCommand(cliCommand(c.bin, "keys", "reveal", "--data", c.vaultData, name))
	if err != nil || r.Code != 0 {
		t.Fatalf("keys reveal %s: %v\n%s", name, err, r)
	}
	out := []byte(r.Stdout)
	if !bytes.HasPrefix(out, []byte("-----BEGIN")) {
		out = bytes.TrimSuffix(out, []byte("\n"))
	}
	c.admin.AddNeedle("the revealed credential of "+name, out)
	return out
}

// TestMaintenance runs heartbeats and rotations against a real sshd with
// real local accounts, through engines over the built-in connector and
// over RabbitMQ, and checks every new credential with the OpenSSH client.
func TestMaintenance(t *testing.T) {
	srv := env.SSHD(t)
	rb := env.Rabbit(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sallyport.yaml")
	if err := os.WriteFile(cfg, []byte(maintenanceConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	pass := filepath.Join(dir, "rabbit.pass")
	if err := os.WriteFile(pass, append(bytes.Clone(rb.Password), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, "--config", cfg)
	c.admin.AddNeedle("the RabbitMQ password", rb.Password)
	c.Ctl(t, "site", "add", "east")
	c.Ctl(t, "site", "add", "west", "--connector", rb.URL(), "--connector-secret-file", pass)
	east := c.StartEngine(t, "east", "--config", cfg)
	west := c.StartEngine(t, "west", "--config", cfg)
	c.Approve(t, east)
	c.Approve(t, west)

	type rotated struct {
		maintTarget
		site string
		old  []byte
	}
	var rotations []rotated
	for _, site := range []string{"east", "west"} {
		self := srv.AddAccount(t)
		viaRoot := srv.AddAccount(t)
		admin := srv.AddAccount(t)
		srv.AllowSudo(t, admin, "/usr/sbin/chpasswd", false)
		keyed := srv.AddAccount(t)
		key := newAccountKey(t, srv, keyed)
		for _, a := range []*sshdtest.Account{self, viaRoot, admin, keyed} {
			c.admin.AddNeedle("the password of "+a.Name, a.Password)
		}
		c.admin.AddNeedle("the key of "+keyed.Name, key)
		addMaintSecret(t, c, srv, site+"-self", site, self, nil, srv.Port, srv.HostKey, "--heartbeat", "1h")
		addMaintSecret(t, c, srv, site+"-admin", site, admin, nil, srv.Port, srv.HostKey)
		addMaintSecret(t, c, srv, site+"-priv", site, viaRoot, nil, srv.Port, srv.HostKey,
			"--change-method", "privileged:"+site+"-admin", "--password-rule", "len=20,classes=uld")
		addMaintSecret(t, c, srv, site+"-key", site, keyed, key, srv.Port, srv.HostKey)
		rotations = append(rotations,
			rotated{maintTarget{site + "-self", self, nil}, site, bytes.Clone(self.Password)},
			rotated{maintTarget{site + "-priv", viaRoot, nil}, site, bytes.Clone(viaRoot.Password)},
			rotated{maintTarget{site + "-key", keyed, key}, site, key})
	}

	t.Run("heartbeat outcomes", func(t *testing.T) {
		for _, site := range []string{"east", "west"} {
			wrong := srv.AddAccount(t)
			addMaintSecret(t, c, srv, site+"-wrong", site, wrong, nil, srv.Port, srv.HostKey)
			srv.SetPassword(t, wrong.Name, sshdtest.RandomPassword()) // changed behind the vault's back
			closed, err := sshdtest.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			addMaintSecret(t, c, srv, site+"-down", site, wrong, nil, closed, srv.HostKey)
			_, other, err := sshtarget.NewKey("another host")
			if err != nil {
				t.Fatal(err)
			}
			otherKey, _, _, _, err := gossh.ParseAuthorizedKey([]byte(other))
			if err != nil {
				t.Fatal(err)
			}
			addMaintSecret(t, c, srv, site+"-spoofed", site, wrong, nil, srv.Port, otherKey.Marshal())
			for name, want := range map[string]string{
				site + "-self": "ok", site + "-wrong": "rejected", site + "-down": "unreachable", site + "-spoofed": "host_key_changed",
			} {
				if name != site+"-self" {
					c.Ctl(t, "secret", "heartbeat", name)
				}
				s := c.waitSecret(t, name, "heartbeat "+want, time.Minute, func(s secretRow) bool { return s.Maintenance.LastHeartbeat != "" })
				if s.Maintenance.LastHeartbeat != want {
					t.Errorf("%s: heartbeat %q, want %q", name, s.Maintenance.LastHeartbeat, want)
				}
				if c.VaultMetric(t, "sallyport_vault_secret_heartbeat_timestamp_seconds", `secret="`+name+`"`, `outcome="`+want+`"`) <= 0 {
					t.Errorf("%s: the heartbeat metric does not say %s", name, want)
				}
			}
		}
	})

	t.Run("rotation by each method", func(t *testing.T) {
		for _, r := range rotations {
			c.Ctl(t, "secret", "rotate", r.secret)
		}
		for _, r := range rotations {
			s := c.waitSecret(t, r.secret, "a promoted rotation", 2*time.Minute, func(s secretRow) bool {
				return s.Maintenance.Generation == 1 && s.Maintenance.Rotation == ""
			})
			t.Logf("%s (%s): generation %d", r.secret, s.Maintenance.ChangeMethod, s.Maintenance.Generation)
		}
		c.StopVault(t)
		creds := map[string][]byte{}
		for _, r := range rotations {
			creds[r.secret] = c.reveal(t, r.secret)
		}
		c.startVault(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, r := range rotations {
			now := creds[r.secret]
			if bytes.Equal(now, r.old) {
				t.Fatalf("%s: the stored credential did not change", r.secret)
			}
			login, old := srv.SSHPassword, r.old
			if r.key != nil {
				login = srv.SSHKey
			}
			if err := login(ctx, r.account.Name, now); err != nil {
				t.Errorf("%s: the new credential does not log in with OpenSSH: %v", r.secret, err)
			}
			if err := login(ctx, r.account.Name, old); !errors.Is(err, sshdtest.ErrDenied) {
				t.Errorf("%s: the old credential still logs in (or failed otherwise): %v", r.secret, err)
			}
		}
		// The gateway injects the new credential.
		for _, e := range []*engineProc{east, west} {
			echo, marker := markerCommand()
			res := e.gw.SSH(t, sshRun{Login: c.Alice.Name + "@" + e.Site + "-self", Answers: c.Alice.Answers(), Flags: []string{"-T"}, Stdin: echo + "\n"})
			if !strings.Contains(res.Stdout, marker) || res.Code != 0 {
				t.Errorf("ssh through %s after the rotation:\n%s", e.Site, res)
			}
		}
		h := c.Ctl(t, "secret", "history", "east-priv", "--json")
		for _, want := range []string{`"rotation_started"`, `"rotation_change_sent"`, `"rotation_change_result"`, `"rotation_promoted"`, `"secret_revealed"`} {
			if !strings.Contains(h.Stdout, want) {
				t.Errorf("history lacks %s:\n%s", want, h.Stdout)
			}
		}
	})

	t.Run("a refused credential at login triggers a heartbeat", func(t *testing.T) {
		a := srv.AddAccount(t)
		c.admin.AddNeedle("the password of "+a.Name, a.Password)
		addMaintSecret(t, c, srv, "west-drifted", "west", a, nil, srv.Port, srv.HostKey)
		srv.SetPassword(t, a.Name, sshdtest.RandomPassword()) // changed behind the vault's back
		res := west.gw.SSH(t, sshRun{Login: c.Alice.Name + "@west-drifted", Answers: c.Alice.Answers(), Flags: []string{"-T"}, Stdin: "exit\n"})
		if res.Code == 0 || !strings.Contains(res.Stdout+res.Stderr, "could not log in") {
			t.Fatalf("the login with a drifted credential:\n%s", res)
		}
		s := c.waitSecret(t, "west-drifted", "a heartbeat after the refused login", time.Minute, func(s secretRow) bool {
			return s.Maintenance.LastHeartbeat != ""
		})
		if s.Maintenance.LastHeartbeat != "rejected" {
			t.Fatalf("heartbeat %q, want rejected", s.Maintenance.LastHeartbeat)
		}
	})

	t.Run("rotate after use", func(t *testing.T) {
		a := srv.AddAccount(t)
		c.admin.AddNeedle("the password of "+a.Name, a.Password)
		addMaintSecret(t, c, srv, "east-afteruse", "east", a, nil, srv.Port, srv.HostKey, "--rotate-after-use")
		for i := range 2 {
			echo, marker := markerCommand()
			res := east.gw.SSH(t, sshRun{Login: c.Alice.Name + "@east-afteruse", Answers: c.Alice.Answers(), Flags: []string{"-T"}, Stdin: echo + "\n"})
			if !strings.Contains(res.Stdout, marker) || res.Code != 0 {
				t.Fatalf("session %d:\n%s", i+1, res)
			}
			c.waitSecret(t, "east-afteruse", fmt.Sprintf("rotation %d after the session ended", i+1), 2*time.Minute, func(s secretRow) bool {
				return s.Maintenance.Generation == int64(i+1) && s.Maintenance.Rotation == ""
			})
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.SSHPassword(ctx, a.Name, a.Password); !errors.Is(err, sshdtest.ErrDenied) {
			t.Errorf("the first password still logs in after two rotations: %v", err)
		}
	})
}
