package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sallyport/sallyport/internal/rdptest"
)

// issuedTokens are the RDP tokens the tests were given. They are shown to
// the user by design, so they are not needles of the transcript scan;
// TestRDP checks that none reached the gateway's log.
var issuedTokens tokenSet

type tokenSet struct {
	mu   sync.Mutex
	list []string
}

func (s *tokenSet) add(tok string) {
	s.mu.Lock()
	s.list = append(s.list, tok)
	s.mu.Unlock()
}

func (s *tokenSet) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.list)
}

// tokenLine is what a token login prints.
var tokenLine = regexp.MustCompile(`RDP token: ([a-z2-7]+)\r?\n`)

// rdpToken logs alice in through SSH as alice@rdp:SECRET from 127.0.0.1
// (the address the RDP client will come from) and returns the token.
func rdpToken(t testing.TB, g *gateway, secret string) string {
	t.Helper()
	r, err := runCommand(g.sshCommand("127.0.0.1", sshRun{Login: "alice@rdp:" + secret, Answers: g.Alice.Answers()}))
	r.Source = "127.0.0.1"
	g.record(r)
	m := tokenLine.FindStringSubmatch(r.Stdout)
	if err != nil || r.Code != 0 || m == nil || !strings.Contains(r.Stdout, "Expires: ") {
		t.Fatalf("no RDP token for %s:\n%s", secret, r)
	}
	issuedTokens.add(m[1])
	return m[1]
}

// addRDPSecret stores an RDP secret for alice, pinned to the certificate
// with SHA-256 sum (or pinned on first use when sum is nil).
func addRDPSecret(t testing.TB, g *gateway, name, addr, user string, password []byte, sum []byte) {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	args := []string{"secret", "add", name, "--protocol", "rdp", "--host", host, "--port", port, "--username", user, "--password-stdin", "--allow", "alice"}
	if sum == nil {
		args = append(args, "--pin-on-first-use")
	} else {
		args = append(args, "--cert-sha256", hex.EncodeToString(sum))
	}
	g.AddNeedle("the password of RDP secret "+name, bytes.Clone(password))
	g.MustCtl(t, string(password)+"\n", args...)
}

// rdpClient runs xfreerdp against the gateway as alice@secret with
// password, its flags after the connection's.
func rdpClient(t *testing.T, g *gateway, d *rdptest.Display, secret, password string, flags ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"/v:127.0.0.1:" + strconv.Itoa(g.RDPPort), "/u:alice@" + secret, "/cert:ignore"}, flags...)
	code, out, err := rdptest.RunClientPassword(ctx, d, []byte(password), args...)
	if err != nil {
		t.Fatalf("xfreerdp: %v\n%s", err, out)
	}
	g.record(result{Cmd: "xfreerdp " + strings.Join(args, " "), Stdout: out})
	return code, out
}

// secretHeartbeat is the last heartbeat of a secret from `ctl secret list --json`.
func secretHeartbeat(t *testing.T, g *gateway, name string) string {
	t.Helper()
	r := g.MustCtl(t, "", "secret", "list", "--json")
	for _, line := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
		var s secretRow
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("secret list --json: %v: %q", err, line)
		}
		if s.Name == name {
			return s.Maintenance.LastHeartbeat
		}
	}
	t.Fatalf("secret %s not listed", name)
	return ""
}

func TestRDP(t *testing.T) {
	g := env.RDPGateway(t)
	d := env.rdp.Display(t)
	sh := env.rdp.Shadow(t)
	sum := sh.CertSHA256()
	addRDPSecret(t, g, "win01", sh.Addr(), sh.User, sh.Password, sum[:])

	t.Cleanup(func() {
		log := string(g.Log())
		for _, tok := range issuedTokens.all() {
			if strings.Contains(log, tok) {
				t.Errorf("an RDP token is in the gateway's log")
			}
		}
	})

	t.Run("nla_to_nla_target", func(t *testing.T) {
		tok := rdpToken(t, g, "win01")
		if code, out := rdpClient(t, g, d, "win01", tok, "/sec:nla", "+auth-only"); code != rdptest.ExitSuccess {
			t.Fatalf("valid token: exit %d, want 0\n%s\ngateway log:\n%s", code, out, g.LogTail(20))
		}
		// Once only.
		if code, out := rdpClient(t, g, d, "win01", tok, "/sec:nla", "+auth-only"); code != rdptest.ExitLogonFailure {
			t.Fatalf("used token: exit %d, want %d\n%s", code, rdptest.ExitLogonFailure, out)
		}
		// A wrong token.
		rdpToken(t, g, "win01")
		if code, out := rdpClient(t, g, d, "win01", "abcdefghijklmnopqrstuvwxyz", "/sec:nla", "+auth-only"); code != rdptest.ExitLogonFailure {
			t.Fatalf("wrong token: exit %d, want %d\n%s", code, rdptest.ExitLogonFailure, out)
		}
		// A full session comes up on the target.
		before := sh.Sessions()
		c, err := rdptest.StartClient(d, []byte(rdpToken(t, g, "win01")),
			"/v:127.0.0.1:"+strconv.Itoa(g.RDPPort), "/u:alice@win01", "/cert:ignore", "/sec:nla")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		err = sh.WaitSessions(ctx, before+1)
		_, out, _ := c.Stop()
		if err != nil {
			t.Fatalf("no session on the shadow server: %v\nclient:\n%s\nshadow:\n%s", err, out, sh.LogTail(20))
		}
		g.WaitLog(t, "the session's end with its byte counts", func(line string) bool {
			return strings.Contains(line, "audit=session_end") && strings.Contains(line, "protocol=rdp") && strings.Contains(line, "bytes_down=")
		})
		for _, want := range []string{"audit=rdp_token outcome=ok", "audit=session_start outcome=ok"} {
			if !strings.Contains(string(g.Log()), want) {
				t.Errorf("gateway log lacks %q", want)
			}
		}
	})

	t.Run("nla_to_xrdp", func(t *testing.T) {
		xr := env.rdp.Xrdp(t)
		acct := xr.AddAccount(t)
		xsum := xr.CertSHA256()
		addRDPSecret(t, g, "xwin01", xr.Addr(), acct.Name, acct.Password, xsum[:])
		c, err := rdptest.StartClient(d, []byte(rdpToken(t, g, "xwin01")),
			"/v:127.0.0.1:"+strconv.Itoa(g.RDPPort), "/u:alice@xwin01", "/cert:ignore", "/sec:nla")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		err = xr.WaitLogin(ctx, acct.Name, 1)
		_, out, _ := c.Stop()
		if err != nil {
			t.Fatalf("xrdp did not log the injected account in: %v\nclient:\n%s\nxrdp:\n%s\ngateway:\n%s", err, out, xr.LogTail(30), g.LogTail(20))
		}
	})

	t.Run("refused_clients", func(t *testing.T) {
		// TLS without NLA: the token could not be checked first.
		if code, out := rdpClient(t, g, d, "win01", rdpToken(t, g, "win01"), "/sec:tls", "+auth-only"); code != rdptest.ExitNegotiation {
			t.Fatalf("TLS-only client: exit %d, want %d\n%s", code, rdptest.ExitNegotiation, out)
		}
		// The RDP secret through SSH: told to ask for a token.
		r := g.SSHFrom(t, "127.0.0.1", sshRun{Login: "alice@win01", Answers: g.Alice.Answers(), Command: "true"})
		if r.Code == 0 || !strings.Contains(r.Stderr, "is an RDP target") {
			t.Fatalf("ssh to an RDP secret:\n%s", r)
		}
	})

	t.Run("certificate_changed", func(t *testing.T) {
		// Pinned to another certificate: as if the target's changed.
		other := sha256.Sum256([]byte("another certificate"))
		addRDPSecret(t, g, "win-moved", sh.Addr(), sh.User, sh.Password, other[:])
		code, out := rdpClient(t, g, d, "win-moved", rdpToken(t, g, "win-moved"), "/sec:nla", "+auth-only")
		if code == rdptest.ExitSuccess || code == rdptest.ExitTransportFailure {
			t.Fatalf("changed certificate: exit %d, want a clean refusal\n%s", code, out)
		}
		g.WaitLog(t, "the certificate mismatch's audit event", func(line string) bool {
			return strings.Contains(line, "audit=hostkey_mismatch") && strings.Contains(line, "secret=win-moved")
		})
	})

	t.Run("rdp_file", func(t *testing.T) {
		r := g.SSHFrom(t, "127.0.0.1", sshRun{Login: "alice@rdp:win01", Answers: g.Alice.Answers(), Command: "rdp-file"})
		if r.Code != 0 || !strings.Contains(r.Stdout, "full address:s:127.0.0.1:"+strconv.Itoa(g.RDPPort)) ||
			!strings.Contains(r.Stdout, "username:s:alice@win01") || !tokenLine.MatchString(r.Stderr) {
			t.Fatalf("rdp-file:\n%s", r)
		}
		issuedTokens.add(tokenLine.FindStringSubmatch(r.Stderr)[1])
	})

	t.Run("pin_on_first_use", func(t *testing.T) {
		addRDPSecret(t, g, "win-pofu", sh.Addr(), sh.User, sh.Password, nil)
		for i := range 2 {
			if code, out := rdpClient(t, g, d, "win-pofu", rdpToken(t, g, "win-pofu"), "/sec:nla", "+auth-only"); code != rdptest.ExitSuccess {
				t.Fatalf("login %d: exit %d\n%s\n%s", i, code, out, g.LogTail(20))
			}
		}
		show := g.MustCtl(t, "", "secret", "show", "win-pofu")
		if !strings.Contains(show.Stdout, hex.EncodeToString(sum[:])) {
			t.Fatalf("the shadow server's certificate was not pinned:\n%s", show.Stdout)
		}
	})

	t.Run("stale_vault_password", func(t *testing.T) {
		own, err := rdptest.StartShadow(d)
		if err != nil {
			t.Fatal(err)
		}
		defer own.Close()
		osum := own.CertSHA256()
		addRDPSecret(t, g, "win-stale", own.Addr(), own.User, own.Password, osum[:])
		if code, out := rdpClient(t, g, d, "win-stale", rdpToken(t, g, "win-stale"), "/sec:nla", "+auth-only"); code != rdptest.ExitSuccess {
			t.Fatalf("before the change: exit %d\n%s", code, out)
		}
		// The password changes behind the vault's back.
		fresh := []byte("Changed-" + randString(alnum, 16))
		g.AddNeedle("the changed RDP password", bytes.Clone(fresh))
		if err := own.SetPassword(fresh); err != nil {
			t.Fatal(err)
		}
		code, out := rdpClient(t, g, d, "win-stale", rdpToken(t, g, "win-stale"), "/sec:nla", "+auth-only")
		if code == rdptest.ExitSuccess || code == rdptest.ExitTransportFailure || code == rdptest.ExitLogonFailure {
			t.Fatalf("stale vault password: exit %d, want a clean refusal (access denied)\n%s", code, out)
		}
		if !strings.Contains(out, "ACCESS_DENIED") {
			t.Errorf("the client does not report access denied:\n%s", out)
		}
		deadline := time.Now().Add(time.Minute)
		for secretHeartbeat(t, g, "win-stale") != "rejected" {
			if time.Now().After(deadline) {
				t.Fatalf("no heartbeat found the stale password; gateway log:\n%s", g.LogTail(30))
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}
