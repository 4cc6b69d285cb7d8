package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// faultConfig lets many changes run at once on the one test host, with
// lifetimes short enough that lost items are found out in seconds.
const faultConfig = `maintenance:
  heartbeat_ttl: 15s
  change_ttl: 20s
  resend_grace: 5s
  host_changes: 8
  engine_changes: 8
`

// TestMaintenanceFaults rotates 100 secrets (a third each by passwd, by
// chpasswd through sudo, and by key) concurrently across two engines of
// a RabbitMQ site while it kills engines with SIGKILL, drops results from
// the broker, restarts RabbitMQ and restarts the vault; then, with every
// fault over, rotates all of them again. After each round every stored
// credential is revealed and tried with the OpenSSH client: the count of
// secrets failing must be 0.
func TestMaintenanceFaults(t *testing.T) {
	const secrets = 100
	srv := env.SSHD(t)
	rb := env.Rabbit(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sallyport.yaml")
	if err := os.WriteFile(cfg, []byte(faultConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	pass := filepath.Join(dir, "rabbit.pass")
	if err := os.WriteFile(pass, append(bytes.Clone(rb.Password), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, "--config", cfg)
	c.admin.AddNeedle("the RabbitMQ password", rb.Password)
	c.Ctl(t, "site", "add", "faults", "--connector", rb.URL(), "--connector-secret-file", pass)
	a := c.StartEngine(t, "faults", "--config", cfg)
	b := c.StartEngine(t, "faults", "--config", cfg)
	c.Approve(t, a)
	c.Approve(t, b)

	admin := srv.AddAccount(t)
	srv.AllowSudo(t, admin, "/usr/sbin/chpasswd", false)
	c.admin.AddNeedle("the admin's password", admin.Password)
	addMaintSecret(t, c, srv, "faults-admin", "faults", admin, nil, srv.Port, srv.HostKey)
	targets := make([]maintTarget, secrets)
	var wg sync.WaitGroup
	var mu sync.Mutex
	sem := make(chan struct{}, 4) // useradd and friends lock /etc/passwd
	for i := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			acct := srv.AddAccount(t)
			name := fmt.Sprintf("faults-%03d", i)
			var key []byte
			var extra []string
			switch i % 3 {
			case 1:
				extra = []string{"--change-method", "privileged:faults-admin"}
			case 2:
				key = newAccountKey(t, srv, acct)
			}
			mu.Lock()
			c.admin.AddNeedle("the password of "+acct.Name, acct.Password)
			if key != nil {
				c.admin.AddNeedle("the key of "+acct.Name, key)
			}
			mu.Unlock()
			addMaintSecret(t, c, srv, name, "faults", acct, key, srv.Port, srv.HostKey, extra...)
			targets[i] = maintTarget{secret: name, account: acct, key: key}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	rotateAll := func() {
		for _, tg := range targets {
			c.Ctl(t, "secret", "rotate", tg.secret)
		}
	}
	// settled waits until no rotation is open and returns how many
	// secrets moved to a new credential since before.
	settled := func(before map[string]secretRow, bound time.Duration) int {
		deadline := time.Now().Add(bound)
		for {
			rows := c.Secrets(t)
			open, moved := 0, 0
			for _, tg := range targets {
				r := rows[tg.secret]
				if r.Maintenance.Rotation != "" {
					open++
				}
				if r.Maintenance.Generation > before[tg.secret].Maintenance.Generation {
					moved++
				}
			}
			if open == 0 {
				return moved
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d rotations still open after %v", open, bound)
			}
			time.Sleep(time.Second)
		}
	}
	// check reveals every credential (vault stopped) and tries it with
	// the OpenSSH client; it returns how many fail.
	check := func(round string) {
		c.StopVault(t)
		defer c.startVault(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		failing := 0
		var fmu sync.Mutex
		sem := make(chan struct{}, 4)
		var cwg sync.WaitGroup
		for _, tg := range targets {
			cred := c.reveal(t, tg.secret)
			cwg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				login := srv.SSHPassword
				if tg.key != nil {
					login = srv.SSHKey
				}
				if err := login(ctx, tg.account.Name, cred); err != nil {
					fmu.Lock()
					failing++
					fmu.Unlock()
					t.Errorf("%s: %s: the stored credential does not log in: %v", round, tg.secret, err)
				}
			})
		}
		cwg.Wait()
		t.Logf("%s: %d secrets checked with OpenSSH, %d failing", round, len(targets), failing)
		fmt.Printf("maintenance faults, %s: %d secrets checked, %d failing\n", round, len(targets), failing)
	}

	// Round 1: rotations under faults.
	before := c.Secrets(t)
	rotateAll()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	faults := []struct {
		name string
		do   func()
	}{
		{"engine a killed", func() { killEngine(t, c, a) }},
		{"results dropped from the broker", func() {
			// The vault stops; the results that reach the broker meanwhile
			// are lost before it is back.
			c.StopVault(t)
			time.Sleep(3 * time.Second)
			dropResults(t, rb.Dial, "sallyport.faults.results")
			c.startVault(t)
		}},
		{"engine b killed", func() { killEngine(t, c, b) }},
		{"RabbitMQ restarted", func() {
			if err := rb.Restart(); err != nil {
				t.Fatal(err)
			}
		}},
		{"vault restarted", func() { c.RestartVault(t) }},
		{"engine a killed again", func() { killEngine(t, c, a) }},
	}
	for _, f := range faults {
		time.Sleep(time.Duration(500+rng.IntN(2000)) * time.Millisecond)
		t.Logf("fault: %s", f.name)
		f.do()
	}
	moved := settled(before, 6*time.Minute)
	t.Logf("round 1 (faults): %d of %d secrets rotated, the rest kept a credential that logs in", moved, secrets)
	// What the faults did, from the secrets' histories.
	events := map[string]int{}
	for _, tg := range targets {
		for _, line := range strings.Split(strings.TrimSpace(c.Ctl(t, "secret", "history", tg.secret, "--json").Stdout), "\n") {
			var e struct {
				Event string `json:"event"`
			}
			if json.Unmarshal([]byte(line), &e) == nil {
				events[e.Event]++
			}
		}
	}
	t.Logf("round 1 history: %v", events)
	check("after the faults")

	// Round 2: every fault over, all rotate.
	before = c.Secrets(t)
	rotateAll()
	if moved := settled(before, 6*time.Minute); moved != secrets {
		t.Errorf("round 2 (no faults): %d of %d secrets rotated", moved, secrets)
	}
	check("after all settled")
}

// killEngine kills e with SIGKILL (mid-whatever it was doing) and starts
// it again.
func killEngine(t *testing.T, c *cluster, e *engineProc) {
	t.Helper()
	e.kill()
	c.runEngine(t, e)
}

// dropResults takes whatever results wait in queue and throws them away,
// as a broker that lost them would.
func dropResults(t *testing.T, dial func() (*amqp091.Connection, error), queue string) {
	t.Helper()
	conn, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	n, err := ch.QueuePurge(queue, false)
	if err != nil {
		t.Fatalf("purge %s: %v", queue, err)
	}
	t.Logf("dropped %d results", n)
}
