package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// The gateway under hostile traffic before login, end to end against the
// door gateway (suite.door) and real OpenSSH clients: floods of idle and
// stalled connections, over-long login names, guessed passwords, a target
// whose key changed type or that never answers, and revocation of live
// sessions.

// keyExchangeDeadline is the gateway's default for the banner and key
// exchange (gateway/ssh.DefaultKeyExchangeTimeout).
const keyExchangeDeadline = 10 * time.Second

// flood holds n connections from src to port open, reopening each one a
// second after the gateway closes it, until ctx ends. banner, if set, is
// sent on each connection before it stalls.
type flood struct {
	src, banner string
	opened      atomic.Int64 // connections that connected
	dialErrs    atomic.Int64
	longest     atomic.Int64 // ns: the longest any connection stayed open
	wg          sync.WaitGroup
}

func startFlood(ctx context.Context, src string, port, n int, banner string) *flood {
	f := &flood{src: src, banner: banner}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for range n {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
			for ctx.Err() == nil {
				f.once(ctx, d, addr)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	return f
}

func (f *flood) once(ctx context.Context, d net.Dialer, addr string) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		f.dialErrs.Add(1)
		return
	}
	defer c.Close()
	f.opened.Add(1)
	start := time.Now()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if f.banner != "" {
		io.WriteString(c, f.banner)
	}
	_, _ = io.Copy(io.Discard, c) // until the gateway closes it
	if ctx.Err() == nil {
		el := int64(time.Since(start))
		for {
			cur := f.longest.Load()
			if el <= cur || f.longest.CompareAndSwap(cur, el) {
				break
			}
		}
	}
}

func logLines(b []byte) int { return bytes.Count(b, []byte("\n")) }

// TestDoorFloodBeforeLogin: 1,000 idle connections held from 127.0.0.2 and
// 1,000 that send a banner and stall from 127.0.0.3 do not keep logins
// from 127.0.0.1 out; the connections the gateway took in are dropped at
// the key-exchange deadline; the log grows by a bounded number of lines.
func TestDoorFloodBeforeLogin(t *testing.T) {
	g := env.Door(t)
	secret := g.Name("flood")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{g.Alice.Name}})
	logBefore := len(g.Log())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	idle := startFlood(ctx, "127.0.0.2", g.SSHPort, 1000, "")
	stall := startFlood(ctx, "127.0.0.3", g.SSHPort, 1000, "SSH-2.0-OpenSSH_9.6\r\n")
	for idle.opened.Load() < 1000 || stall.opened.Load() < 1000 {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the floods opened only %d and %d connections in 30 s (dial errors %d, %d)",
				idle.opened.Load(), stall.opened.Load(), idle.dialErrs.Load(), stall.dialErrs.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	logins := 0
	for time.Since(start) < keyExchangeDeadline+5*time.Second || logins < 3 {
		r := g.SSHFrom(t, "127.0.0.1", sshRun{Login: g.Alice.Name + "@" + secret, Answers: g.Alice.Answers(), Command: "id -un"})
		if r.Code != 0 || strings.TrimSpace(r.Stdout) != g.target.User {
			t.Fatalf("login %d from 127.0.0.1 during the flood failed:\n%s\ngateway log tail:\n%s", logins+1, r, g.LogTail(20))
		}
		logins++
	}
	cancel()
	idle.wg.Wait()
	stall.wg.Wait()
	elapsed := time.Since(start)
	added := g.Log()[logBefore:]
	t.Logf("%v of flood: %d logins from 127.0.0.1 succeeded; idle flood opened %d connections (longest held %v), stalling flood %d (longest %v); the log grew by %d lines (%d bytes)",
		elapsed.Round(time.Second), logins, idle.opened.Load(), time.Duration(idle.longest.Load()).Round(time.Millisecond),
		stall.opened.Load(), time.Duration(stall.longest.Load()).Round(time.Millisecond), logLines(added), len(added))
	for _, f := range []*flood{idle, stall} {
		if held := time.Duration(f.longest.Load()); held > keyExchangeDeadline+3*time.Second {
			t.Errorf("a connection from %s stayed open %v, past the key-exchange deadline", f.src, held)
		}
	}
	// Per 10 s: at most 9 tally lines per listener tally, plus each
	// login's own lines. Thousands of refusals must not mean thousands of
	// lines.
	if bound := 10*logins + 30*int(elapsed/(10*time.Second)+1); logLines(added) > bound {
		t.Errorf("the log grew by %d lines during the flood, bound %d:\n%s", logLines(added), bound, lastLines(added, 30))
	}
	if !bytes.Contains(added, []byte("connections refused before login")) || !bytes.Contains(added, []byte("source=127.0.0.2")) {
		t.Errorf("the refusals were not tallied in the log:\n%s", lastLines(added, 30))
	}
}

// TestDoorLongLoginNames: a few hundred logins with 100 KB login names
// leave the heap and the log as they were, give or take a bounded amount.
func TestDoorLongLoginNames(t *testing.T) {
	g := env.Door(t)
	metrics, err := g.metricsClient()
	if err != nil {
		t.Fatal(err)
	}
	before, err := metrics()
	if err != nil {
		t.Fatal(err)
	}
	logBefore := len(g.Log())
	long := strings.Repeat("n", 100<<10) + "@web01"
	const attempts, sources = 300, 6
	var wg sync.WaitGroup
	var accepted, tried atomic.Int64
	for s := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := fmt.Sprintf("127.0.0.%d", 10+s)
			for range attempts / sources {
				tried.Add(1)
				if err := longNameLogin(g.SSHPort, src, long); err == nil {
					accepted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if accepted.Load() != 0 {
		t.Fatalf("%d logins with a 100 KB name were accepted", accepted.Load())
	}
	// The live heap is measured after a garbage collection that followed
	// the flood; ordinary logins meanwhile nudge the collector.
	cycles := before["go_gc_cycles_total_gc_cycles_total"]
	floodCycles := 0.0
	var after map[string]float64
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if after, err = metrics(); err != nil {
			t.Fatal(err)
		}
		if floodCycles == 0 {
			floodCycles = after["go_gc_cycles_total_gc_cycles_total"]
		}
		if after["go_gc_cycles_total_gc_cycles_total"] > floodCycles || time.Now().After(deadline) {
			break
		}
		g.SSH(t, sshRun{Login: g.Alice.Name + "@none", Answers: answers{Password: "wrong"}, Command: "true"})
	}
	added := g.Log()[logBefore:]
	heap := after["go_gc_heap_live_bytes"] - before["go_gc_heap_live_bytes"]
	t.Logf("%d logins with 100 KB names: live heap %+.1f MiB (%.1f → %.1f MiB, %v GC cycles), resident %+.1f MiB, log %+d lines / %d bytes",
		tried.Load(), heap/(1<<20), before["go_gc_heap_live_bytes"]/(1<<20), after["go_gc_heap_live_bytes"]/(1<<20),
		after["go_gc_cycles_total_gc_cycles_total"]-cycles,
		(after["process_resident_memory_bytes"]-before["process_resident_memory_bytes"])/(1<<20), logLines(added), len(added))
	if after["go_gc_heap_live_bytes"] == 0 {
		t.Fatal("the gateway exports no go_gc_heap_live_bytes")
	}
	if heap > 16<<20 {
		t.Errorf("the live heap grew by %.1f MiB after %d logins with 100 KB names", heap/(1<<20), tried.Load())
	}
	if bytes.Contains(added, []byte(strings.Repeat("n", 64))) {
		t.Error("a 100 KB login name reached the log")
	}
	if len(added) > 64<<10 {
		t.Errorf("the log grew by %d bytes", len(added))
	}
}

// longNameLogin tries one keyboard-interactive login with name from src.
func longNameLogin(port int, src, name string) error {
	cfg := &gossh.ClientConfig{
		User:            name,
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), // #nosec G106 -- attack traffic; the gateway's key does not matter here
		Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
			return make([]string, len(qs)), nil
		})},
		Timeout: 30 * time.Second,
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	for {
		nc, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			return err
		}
		_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
		c, _, _, err := gossh.NewClientConn(nc, nc.RemoteAddr().String(), cfg)
		nc.Close()
		if err == nil {
			c.Close()
			return nil
		}
		// Reset before the handshake: the source's connection rate; try again.
		if !strings.Contains(err.Error(), "unable to authenticate") && !strings.Contains(err.Error(), "no auth passed") {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return err
	}
}

// TestDoorLockoutsSpareOthers: ten wrong passwords for alice from 127.0.0.2
// stop neither alice from 127.0.0.1 nor bob from 127.0.0.2; they do stop
// alice from 127.0.0.2.
func TestDoorLockoutsSpareOthers(t *testing.T) {
	g := env.Door(t)
	bob := g.AddUser(t, "bob", false)
	secret := g.Name("lock")
	g.AddSecret(t, secretSpec{Name: secret, Allow: []string{g.Alice.Name, bob.Name}})
	wrong := answers{Password: "not-" + g.Alice.Password}
	for i := range 10 {
		r := g.SSHFrom(t, "127.0.0.2", sshRun{Login: g.Alice.Name + "@" + secret, Answers: wrong, Command: "true"})
		if r.Code != 255 || !strings.Contains(r.Stderr, "Permission denied") {
			t.Fatalf("wrong password %d was not refused:\n%s", i+1, r)
		}
	}
	for _, c := range []struct {
		src  string
		user gatewayUser
		want bool
	}{
		{"127.0.0.1", g.Alice, true},
		{"127.0.0.2", bob, true},
		{"127.0.0.2", g.Alice, false},
	} {
		r := g.SSHFrom(t, c.src, sshRun{Login: c.user.Name + "@" + secret, Answers: c.user.Answers(), Command: "id -un"})
		if ok := r.Code == 0 && strings.TrimSpace(r.Stdout) == g.target.User; ok != c.want {
			t.Errorf("%s from %s after ten wrong passwords for alice from 127.0.0.2: logged in %v, want %v\n%s", c.user.Name, c.src, ok, c.want, r)
		}
	}
}

// TestDoorExactRefusals: a target whose host key changed to another type is
// a mismatch (message and audit event); a target that never answers, or
// answers its banner and then nothing, is "did not answer in time", every
// time.
func TestDoorExactRefusals(t *testing.T) {
	g := env.Door(t)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := gossh.NewPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	typed := g.Name("typechange")
	// The target has only an ed25519 key; the pin is an ECDSA one.
	g.AddSecret(t, secretSpec{Name: typed, HostKey: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub))), Allow: []string{g.Alice.Name}})
	r := g.SSH(t, sshRun{Login: g.Alice.Name + "@" + typed, Answers: g.Alice.Answers(), Command: "id -un"})
	if r.Code != 1 || !strings.Contains(r.Stderr, "does not match the pinned key") {
		t.Fatalf("target with a host key of another type: want the mismatch message and exit code 1:\n%s", r)
	}
	g.WaitLog(t, "auditing the mismatch", func(line string) bool {
		return strings.Contains(line, "audit=hostkey_mismatch") && strings.Contains(line, "secret="+typed)
	})

	var silent []string
	for i, banner := range []string{"", "", "", "SSH-2.0-OpenSSH_9.6\r\n", "SSH-2.0-OpenSSH_9.6\r\n"} {
		port := silentTarget(t, banner)
		name := g.Name("silent")
		silent = append(silent, name)
		args := []string{"secret", "add", name, "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--username", "root",
			"--password-stdin", "--host-key", g.target.HostKeyPub, "--allow", g.Alice.Name}
		g.MustCtl(t, "dummy-password-"+strconv.Itoa(i)+"\n", args...)
	}
	// In parallel: each waits for the gateway's dial timeout.
	results := make([]result, len(silent))
	var wg sync.WaitGroup
	for i, name := range silent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := g.sshCommand(g.nextSource(), sshRun{Login: g.Alice.Name + "@" + name, Answers: g.Alice.Answers(), Command: "id -un"})
			c.Timeout = time.Minute
			results[i], _ = runCommand(c)
		}()
	}
	wg.Wait()
	for i, r := range results {
		g.record(r)
		if r.Code != 1 || !strings.Contains(r.Stderr, "did not answer in time") {
			t.Errorf("silent target %d: want %q and exit code 1:\n%s", i, "did not answer in time", r)
		}
	}
}

// silentTarget listens on a loopback port and accepts connections that
// get banner, if any, and then nothing, until the test ends.
func silentTarget(t *testing.T, banner string) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, banner)
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().(*net.TCPAddr).Port
}

// background is an ssh client run that the test does not wait for at once.
type background struct {
	cmd            *exec.Cmd
	stdout, stderr lockedBuffer
	done           chan struct{}
	err            error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startSSH starts s through g and returns while it runs.
func (g *gateway) startSSH(t *testing.T, s sshRun) *background {
	t.Helper()
	c := g.sshCommand(g.nextSource(), s)
	dir, err := writeAnswers(*c.Answers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b := &background{cmd: exec.Command(c.Path, c.Args...), done: make(chan struct{})}
	b.cmd.Env = append(cleanEnv(), "SSH_ASKPASS="+env.askpass(), "SSH_ASKPASS_REQUIRE=force", "SPT_ASKPASS_DIR="+dir)
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.stderr
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.err = b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			b.cmd.Process.Kill()
			<-b.done
		}
	})
	return b
}

// waitOutput waits (bounded) until the run's stdout contains s.
func (b *background) waitOutput(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(b.stdout.String(), s) {
		select {
		case <-b.done:
			t.Fatalf("ssh exited before printing %q: %v\nstdout:\n%s\nstderr:\n%s", s, b.err, b.stdout.String(), b.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh printed no %q in 30 s", s)
		}
	}
}

// TestDoorRevocationEndsSessions: `ctl user rm` and `ctl secret rm` (and
// `disable`) end the matching live sessions within 5 s, with a message to
// the user and an audit event, and leave the others running.
func TestDoorRevocationEndsSessions(t *testing.T) {
	g := env.Door(t)
	leaver, paused := g.AddUser(t, g.Name("leaver"), false), g.AddUser(t, g.Name("paused"), false)
	kept, dropped, off := g.Name("kept"), g.Name("dropped"), g.Name("off")
	g.AddSecret(t, secretSpec{Name: kept, Allow: []string{g.Alice.Name, leaver.Name, paused.Name}})
	g.AddSecret(t, secretSpec{Name: dropped, Allow: []string{g.Alice.Name}})
	g.AddSecret(t, secretSpec{Name: off, Allow: []string{g.Alice.Name}})
	long := sshRun{Command: "echo started; sleep 120", Timeout: 3 * time.Minute}

	for _, c := range []struct {
		what    string
		victim  sshRun
		ctl     []string
		auditOn string // the audit line's distinguishing attribute
	}{
		{"user rm", sshRun{Login: leaver.Name + "@" + kept, Answers: leaver.Answers()}, []string{"user", "rm", leaver.Name}, "user=" + leaver.Name},
		{"secret rm", sshRun{Login: g.Alice.Name + "@" + dropped, Answers: g.Alice.Answers()}, []string{"secret", "rm", dropped}, "secret=" + dropped},
		{"user disable", sshRun{Login: paused.Name + "@" + kept, Answers: paused.Answers()}, []string{"user", "disable", paused.Name}, "user=" + paused.Name},
		{"secret disable", sshRun{Login: g.Alice.Name + "@" + off, Answers: g.Alice.Answers()}, []string{"secret", "disable", off}, "secret=" + off},
	} {
		t.Run(c.what, func(t *testing.T) {
			survivor := long
			survivor.Login, survivor.Answers = g.Alice.Name+"@"+kept, g.Alice.Answers()
			other := g.startSSH(t, survivor)
			victim := long
			victim.Login, victim.Answers = c.victim.Login, c.victim.Answers
			v := g.startSSH(t, victim)
			v.waitOutput(t, "started")
			other.waitOutput(t, "started")

			g.MustCtl(t, "", c.ctl...)
			removed := time.Now()
			select {
			case <-v.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("the session still runs 30 s after %s", c.what)
			}
			took := time.Since(removed)
			t.Logf("%s ended the live session after %v", c.what, took.Round(time.Millisecond))
			if took > 5*time.Second {
				t.Errorf("%s ended the live session after %v, want within 5 s", c.what, took)
			}
			if !strings.Contains(v.stderr.String(), "has been revoked") {
				t.Errorf("the user was not told why the session ended:\n%s", v.stderr.String())
			}
			g.WaitLog(t, "auditing the revocation", func(line string) bool {
				return strings.Contains(line, "audit=session_revoked") && strings.Contains(line, c.auditOn)
			})
			select {
			case <-other.done:
				t.Fatalf("a session whose grant holds ended too: %v\n%s", other.err, other.stderr.String())
			default:
			}
			other.cmd.Process.Signal(syscall.SIGTERM)
		})
	}
}
