package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestDistributedRabbitMQ runs the vault and two sites' engines over a
// real RabbitMQ node (one site over TLS, one plain), with the same broker
// account for both sites, so that the broker would let either engine read
// the other's queues: only the cryptography keeps the sites apart.
func TestDistributedRabbitMQ(t *testing.T) {
	rb := env.Rabbit(t)
	pass := filepath.Join(t.TempDir(), "rabbit.pass")
	if err := os.WriteFile(pass, append(bytes.Clone(rb.Password), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, "--amqp-ca-file", rb.CAFile)
	c.admin.AddNeedle("the RabbitMQ password", rb.Password)
	c.Ctl(t, "site", "add", "east", "--connector", rb.TLSURL(), "--connector-secret-file", pass)
	c.Ctl(t, "site", "add", "west", "--connector", rb.URL(), "--connector-secret-file", pass)
	east := c.StartEngine(t, "east", "--amqp-ca-file", rb.CAFile)
	west := c.StartEngine(t, "west")
	c.Approve(t, east)
	c.Approve(t, west)
	secret := c.admin.Name("rabbit")
	c.admin.AddSecret(t, secretSpec{Name: secret, Allow: []string{c.Alice.Name}, Site: "east"})

	t.Run("ssh through an engine", func(t *testing.T) {
		echo, marker := markerCommand()
		r := east.gw.SSH(t, sshRun{Login: c.Alice.Name + "@" + secret, Answers: c.Alice.Answers(), Flags: []string{"-T"}, Stdin: echo + "\n"})
		if !strings.Contains(r.Stdout, marker) || r.Code != 0 {
			t.Fatalf("want %s:\n%s", marker, r)
		}
		for _, e := range []*engineProc{east, west} {
			if id, r := c.Ping(t, e.Site); id != e.ID {
				t.Fatalf("ping %s: want %s:\n%s", e.Site, e.ID, r)
			}
		}
	})

	t.Run("site isolation holds where the broker's does not", func(t *testing.T) {
		// west's engine stops; a ping of west waits in its queue; the
		// broker account (the same for both sites) takes it from there
		// and hands it to east's engine twice: as it is, and relabelled
		// as east's. east opens neither and answers nothing.
		if err := west.stop(); err != nil {
			t.Fatal(err)
		}
		unexpected := east.Metric(t, "sallyport_engine_items_total", `outcome="unexpected"`)
		forgedBefore := east.Metric(t, "sallyport_engine_items_total", `outcome="failed_authentication"`)
		answered := east.Metric(t, "sallyport_engine_items_total", `kind="ping"`, `outcome="ok"`)
		pinged := make(chan result, 1)
		go func() { _, r := c.ping("west"); pinged <- r }()
		waitFor(t, "the vault's gauge of west's work queue", func() bool {
			return c.VaultMetric(t, "sallyport_vault_queue_depth", `site="west"`, `queue="work"`) == 1
		})
		item := stealOne(t, rb.Dial, "sallyport.west.work")
		relabelled := bytes.Replace(item, []byte("\x04west"), []byte("\x04east"), 1)
		if bytes.Equal(relabelled, item) {
			t.Fatal("the item's header does not name its site where expected")
		}
		publishRaw(t, rb.Dial, "sallyport.east.work", item, relabelled)
		waitMetric(t, east, "sallyport_engine_items_total", unexpected+1, `outcome="unexpected"`)
		waitMetric(t, east, "sallyport_engine_items_total", forgedBefore+1, `outcome="failed_authentication"`)
		if r := <-pinged; r.Code == 0 {
			t.Fatalf("a ping of west whose engine is down was answered:\n%s", r)
		}
		if got := east.Metric(t, "sallyport_engine_items_total", `kind="ping"`, `outcome="ok"`); got != answered {
			t.Fatalf("east answered %v pings of another site", got-answered)
		}
		c.runEngine(t, west)
		c.WaitServing(t, west)
		waitPing(t, c, "west")
	})

	t.Run("a site moves between connectors with work queued", func(t *testing.T) {
		// west's engine is stopped while a ping waits in west's RabbitMQ
		// queue; west moves to the vault's built-in connector; the engine
		// starts again from the configuration it saved (RabbitMQ), follows
		// the move at its first pull, and answers the moved ping. Then
		// west moves back, and the running engine follows again.
		if err := west.stop(); err != nil {
			t.Fatal(err)
		}
		pinged := make(chan pingResult, 1)
		go func() { id, r := c.ping("west"); pinged <- pingResult{id, r} }()
		waitFor(t, "the ping in west's RabbitMQ queue", func() bool {
			return c.VaultMetric(t, "sallyport_vault_queue_depth", `site="west"`, `queue="work"`) == 1
		})
		c.Ctl(t, "site", "set-connector", "west", "builtin")
		c.runEngine(t, west)
		if p := <-pinged; p.id != west.ID {
			t.Fatalf("the ping queued before the move: want %s:\n%s\nengine log:\n%s", west.ID, p.r, west.LogTail(20))
		}
		waitPing(t, c, "west")
		c.Ctl(t, "site", "set-connector", "west", rb.URL(), "--connector-secret-file", pass)
		waitFor(t, "the engine following west back to RabbitMQ", func() bool {
			return strings.Count(string(west.Log()), `msg="connected to the site connector"`) >= 3
		})
		waitPing(t, c, "west")
		if got := c.VaultMetric(t, "sallyport_vault_queue_depth", `site="west"`, `queue="work"`); got != 0 {
			t.Errorf("west's work queue holds %v items after the moves", got)
		}
	})

	t.Run("broker restarted under logins", func(t *testing.T) {
		loginsAcrossRestart(t, c, east, secret, func() {
			if err := rb.Restart(); err != nil {
				t.Fatal(err)
			}
		})
		waitPing(t, c, "west")
		// The connection mended itself: the engine never dialled again,
		// though it pulled its configuration every second.
		if n := strings.Count(string(east.Log()), `msg="connected to the site connector"`); n != 1 {
			t.Errorf("the engine connected to its site connector %d times, want once:\n%s", n, east.LogTail(30))
		}
	})
}

// loginsAcrossRestart keeps logins going through e while restart runs,
// then checks that logins work again without restarting any daemon and
// that the vault acted on no request twice.
func loginsAcrossRestart(t *testing.T, c *cluster, e *engineProc, secret string, restart func()) {
	t.Helper()
	pids := map[string]int{"vault": c.vault.cmd.Process.Pid, "engine": e.cmd.Process.Pid}
	var mu sync.Mutex
	var ok, failed int
	var odd []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				run := e.gw.sshCommand(e.gw.nextSource(), sshRun{LogLevel: "INFO", Login: c.Alice.Name + "@" + secret,
					Answers: c.Alice.Answers(), Command: "id -un", Timeout: time.Minute})
				r, err := runCommand(run)
				e.gw.record(r)
				mu.Lock()
				switch {
				case err == nil && r.Code == 0 && strings.TrimSpace(r.Stdout) == c.target.User:
					ok++
				case err == nil && strings.Contains(r.Stdout+r.Stderr, "unavailable"):
					failed++
				default:
					odd = append(odd, fmt.Sprintf("%v\n%s", err, r))
				}
				mu.Unlock()
			}
		}()
	}
	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(2 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("%s: not within 2 minutes", what)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return ok }
	waitFor("logins before the restart", func() bool { return count() >= 3 })
	began := time.Now()
	restart()
	restarted := time.Since(began)
	after := count()
	waitFor("a login after the restart", func() bool { return count() > after })
	recovered := time.Since(began)
	waitFor("logins after the restart", func() bool { return count() >= after+6 })
	t.Logf("restart took %v; first login after it ok %v after it began", restarted.Round(time.Millisecond), recovered.Round(time.Millisecond))
	close(stop)
	wg.Wait()
	t.Logf("logins: %d ok, %d told the service is unavailable", ok, failed)
	if len(odd) > 0 {
		t.Errorf("%d logins failed otherwise than with the unavailable message; first:\n%s", len(odd), odd[0])
	}
	if c.vault.cmd.Process.Pid != pids["vault"] || e.cmd.Process.Pid != pids["engine"] || c.vault.exited() != nil || e.exited() != nil {
		t.Fatalf("a daemon was restarted or exited (vault %v, engine %v)", c.vault.exited(), e.exited())
	}
	// Each request the vault acted on, it acted on once: a redelivered
	// request is refused by id.
	seen := map[string]int{}
	for _, m := range auditItem.FindAllStringSubmatch(string(c.vault.Log()), -1) {
		seen[m[1]]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("the vault checked out item %s %d times", id, n)
		}
	}
	if len(seen) == 0 {
		t.Error("the vault's log has no checkout with an item id")
	}
}

// pingResult is what a site ping printed and the engine id it named.
type pingResult struct {
	id string
	r  result
}

var auditItem = regexp.MustCompile(`audit=checkout outcome=\S+ .*?item=([0-9a-f]+)`)

// stealOne takes one message from queue with a raw AMQP client, waiting
// (bounded) for one to arrive, and acknowledges it.
func stealOne(t *testing.T, dial func() (*amqp091.Connection, error), queue string) []byte {
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
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			t.Fatalf("basic.get %s: %v", queue, err)
		}
		if ok {
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
			return d.Body
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing arrived on %s", queue)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// publishRaw publishes bodies to queue with a raw AMQP client, confirmed.
func publishRaw(t *testing.T, dial func() (*amqp091.Connection, error), queue string, bodies ...[]byte) {
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
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, b := range bodies {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp091.Publishing{
			Body: b, DeliveryMode: amqp091.Persistent, Expiration: "60000"})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish to %s not confirmed: %v", queue, err)
		}
	}
}

// waitMetric waits (bounded) until e's metric reaches at least want.
func waitMetric(t *testing.T, e *engineProc, name string, want float64, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := e.Metric(t, name, labels...)
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v is %v, want %v; engine log:\n%s", name, labels, got, want, e.LogTail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor polls cond (bounded) and fails the test if it never holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
