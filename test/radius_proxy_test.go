package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5" // #nosec G501 -- RADIUS authenticators are MD5 by definition (RFC 2865, RFC 3579)
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	layeh "layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2869"
)

// The gateway with `auth: radius` (and `both`) in its configuration file,
// driven by the OpenSSH client, against the real FreeRADIUS of
// radius_test.go.

// unavailableText is what the gateway tells a user when no RADIUS server
// gave a valid answer.
const unavailableText = "Authentication service unavailable; please try again later."

// radiusNeedles are the RADIUS passwords and shared secrets that must never
// appear in the gateway's output, files or argv.
func radiusNeedles() []needle {
	var n []needle
	for _, s := range []string{frSecret, "alicepass", "bobpass", "carolpass", "davepass"} {
		n = append(n, secretNeedles("a RADIUS password or secret", []byte(s))...)
	}
	return n
}

// startConfiguredGateway starts a gateway of its own with configYAML as its
// --config, in front of the suite's sshd. The file's relative paths are
// relative to dir. At cleanup it runs the leak scan with extra needles and
// fails the test on any problem.
func startConfiguredGateway(t testing.TB, dir, configYAML string, extra ...needle) *gateway {
	t.Helper()
	if env.buildErr != nil {
		t.Fatalf("sallyport binary is missing: %v", env.buildErr)
	}
	target := env.Target(t)
	cfg := filepath.Join(dir, "sallyport.yaml")
	if err := os.WriteFile(cfg, []byte(configYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	g, err := startGateway(env.bin, filepath.Join(dir, "gw"), target, "--config", cfg)
	if err != nil {
		t.Fatalf("sallyport gateway with %s:\n%s\n%v", cfg, configYAML, err)
	}
	t.Cleanup(func() {
		for _, p := range g.finalChecks(target, append(radiusNeedles(), extra...)...) {
			t.Error(p)
		}
		if t.Failed() {
			t.Logf("gateway log tail:\n%s", g.LogTail(60))
		}
	})
	return g
}

// writeSecretFile writes a 0600 secret file under dir and returns its path.
func writeSecretFile(t testing.TB, dir, name, secret string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startTestFreeRADIUS starts FreeRADIUS for t and stops it at cleanup.
func startTestFreeRADIUS(t testing.TB) *freeRADIUS {
	t.Helper()
	fr, err := startFreeRADIUS(t.TempDir())
	if err != nil {
		t.Fatalf("FreeRADIUS: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FreeRADIUS log tail:\n%s", fr.LogTail(60))
		}
		if err := fr.Close(); err != nil {
			t.Errorf("stopping FreeRADIUS: %v", err)
		}
	})
	return fr
}

// checkRefused fails unless r is the gateway's one refusal: exit 255 and
// "Permission denied", with no trace of the target.
func checkRefused(t *testing.T, r result) {
	t.Helper()
	if r.Code != 255 || !strings.Contains(r.Stderr, "Permission denied") {
		t.Fatalf("want exit 255 with Permission denied:\n%s", r)
	}
	if strings.Contains(r.Stdout, "radius-ok") {
		t.Fatalf("the command ran on the target:\n%s", r)
	}
}

// checkIn fails unless r ran the test command on the target.
func checkIn(t *testing.T, g *gateway, r result) {
	t.Helper()
	if r.Code != 0 || strings.TrimSpace(r.Stdout) != "radius-ok "+g.target.User {
		t.Fatalf("want the command to run on the target as %s:\n%s\ngateway log tail:\n%s", g.target.User, r, g.LogTail(20))
	}
}

const probeCommand = "echo radius-ok $(id -un)"

// TestRADIUSGateway logs in through the gateway with OpenSSH, the gateway
// asking FreeRADIUS: a password-only user, an MFA user answering the
// challenge, every kind of refusal with the same message, and groups from
// Class and Filter-Id deciding which secret a user may use.
func TestRADIUSGateway(t *testing.T) {
	fr := startTestFreeRADIUS(t)
	dir := t.TempDir()
	writeSecretFile(t, dir, "radius.secret", frSecret)
	g := startConfiguredGateway(t, dir, fmt.Sprintf(`# RADIUS only; secrets in files, relative to this file
auth: radius
radius:
  servers:
    - address: %s
      secret_file: radius.secret
  timeout: 2s
  nas_identifier: sallyport-e2e
  groups_from: [class, filter-id]
`, fr.Addr))
	web, ops, db := g.Name("rweb"), g.Name("rops"), g.Name("rdb")
	g.AddSecret(t, secretSpec{Name: web, Allow: []string{"alice", "bob"}})
	g.AddSecret(t, secretSpec{Name: ops, Allow: []string{"group:ops"}})
	g.AddSecret(t, secretSpec{Name: db, Allow: []string{"group:dbadmins"}})
	totpKey, err := base32.StdEncoding.DecodeString(frTOTPSecret)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("PAPUser", func(t *testing.T) {
		r := g.SSH(t, sshRun{Login: "bob@" + web, Answers: answers{Password: "bobpass"}, Command: probeCommand})
		checkIn(t, g, r)
		if len(r.Prompts) != 1 || !strings.Contains(r.Prompts[0], "assword") {
			t.Fatalf("a password-only user must see one password prompt, saw %q", r.Prompts)
		}
		// FreeRADIUS saw the SSH client's address as Calling-Station-Id.
		want := "Login OK: [bob] (from client localhost port 0 cli " + r.Source + ")"
		if !strings.Contains(fr.LogTail(200), want) {
			t.Fatalf("FreeRADIUS did not log %q; its log:\n%s", want, fr.LogTail(20))
		}
	})

	t.Run("MFAUser", func(t *testing.T) {
		code, _ := freshTOTPCode(totpKey)
		r := g.SSH(t, sshRun{Login: "alice@" + web, Answers: answers{Password: "alicepass", Code: code}, Command: probeCommand})
		checkIn(t, g, r)
		if len(r.Prompts) != 2 || !strings.Contains(r.Prompts[1], "Enter your one-time code") {
			t.Fatalf("the challenge's Reply-Message must be the second prompt, saw %q", r.Prompts)
		}
	})

	// Every refusal reads the same; each is checked in the FreeRADIUS
	// side or the gateway's log to have been refused for its own reason.
	type refusal struct {
		login string
		r     result
	}
	var refusals []refusal
	anon := func(f refusal) string { return strings.ReplaceAll(f.r.Stderr, f.login+"@127.0.0.1", "<login>") }
	t.Run("WrongCode", func(t *testing.T) {
		login := "alice@" + web
		r := g.SSH(t, sshRun{Login: login, Answers: answers{Password: "alicepass", Code: wrongTOTPCode(totpKey)}, Command: probeCommand})
		checkRefused(t, r)
		if len(r.Prompts) < 2 || !strings.Contains(r.Prompts[1], "one-time code") {
			t.Fatalf("the wrong code must be asked for and refused after the challenge, prompts %q", r.Prompts)
		}
		g.CheckNotRateLimited(t, r)
		refusals = append(refusals, refusal{login, r})
	})
	t.Run("WrongPassword", func(t *testing.T) {
		login := "alice@" + web
		r := g.SSH(t, sshRun{Login: login, Answers: answers{Password: "alicepass-not", Code: "000000"}, Command: probeCommand})
		checkRefused(t, r)
		for _, p := range r.Prompts {
			if strings.Contains(p, "code") {
				t.Fatalf("a wrong password must be refused without a challenge, prompts %q", r.Prompts)
			}
		}
		g.CheckNotRateLimited(t, r)
		refusals = append(refusals, refusal{login, r})
	})
	t.Run("UnknownUser", func(t *testing.T) {
		login := "mallory@" + web
		r := g.SSH(t, sshRun{Login: login, Answers: answers{Password: "bobpass"}, Command: probeCommand})
		checkRefused(t, r)
		g.CheckNotRateLimited(t, r)
		refusals = append(refusals, refusal{login, r})
	})
	t.Run("SameMessage", func(t *testing.T) {
		if len(refusals) < 2 {
			t.Skip("earlier refusals failed")
		}
		for _, f := range refusals[1:] {
			if anon(f) != anon(refusals[0]) || f.r.Code != refusals[0].r.Code {
				t.Errorf("refusals differ:\n%s\n---\n%s", refusals[0].r, f.r)
			}
		}
	})

	t.Run("GroupFromClass", func(t *testing.T) {
		checkIn(t, g, g.SSH(t, sshRun{Login: "carol@" + ops, Answers: answers{Password: "carolpass"}, Command: probeCommand}))
		// The control: carol's only way in is her group.
		r := g.SSH(t, sshRun{Login: "carol@" + db, Answers: answers{Password: "carolpass"}, Command: probeCommand})
		checkRefused(t, r)
		g.CheckNotRateLimited(t, r)
	})
	t.Run("GroupFromFilterId", func(t *testing.T) {
		checkIn(t, g, g.SSH(t, sshRun{Login: "dave@" + db, Answers: answers{Password: "davepass"}, Command: probeCommand}))
		r := g.SSH(t, sshRun{Login: "bob@" + db, Answers: answers{Password: "bobpass"}, Command: probeCommand})
		checkRefused(t, r)
		g.CheckNotRateLimited(t, r)
	})
	t.Run("GroupsInAudit", func(t *testing.T) {
		// carol's binary Class (0x00ff) is not a group name and is dropped.
		g.WaitLog(t, "recording carol's checkout with group ops", func(l string) bool {
			return strings.Contains(l, "user=carol") && strings.Contains(l, "outcome=ok") &&
				strings.Contains(l, "secret="+ops) && strings.Contains(l, "groups=ops ")
		})
	})
}

// TestRADIUSGatewayFailover configures a silent first server: the login
// goes through on the second within the configured timeout, and with no
// server alive the user is told the service is unavailable.
func TestRADIUSGatewayFailover(t *testing.T) {
	fr := startTestFreeRADIUS(t)
	dir := t.TempDir()
	writeSecretFile(t, dir, "radius.secret", frSecret)
	silent := silentUDPAddr(t)
	g := startConfiguredGateway(t, dir, fmt.Sprintf(`auth: radius
radius:
  servers:
    - {address: %q, secret_file: radius.secret}
    - {address: %q, secret_file: radius.secret}
  timeout: 1s
  hold_down: 10m
`, silent, fr.Addr))
	web := g.Name("fweb")
	g.AddSecret(t, secretSpec{Name: web, Allow: []string{"alice", "bob"}})
	totpKey, err := base32.StdEncoding.DecodeString(frTOTPSecret)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("SecondServer", func(t *testing.T) {
		checkIn(t, g, g.SSH(t, sshRun{Login: "bob@" + web, Answers: answers{Password: "bobpass"}, Command: probeCommand}))
		g.WaitLog(t, "holding the silent server down", func(l string) bool {
			return strings.Contains(l, "did not answer") && strings.Contains(l, silent)
		})
	})
	t.Run("Metrics", func(t *testing.T) {
		text, err := g.metricsTextClient()
		if err != nil {
			t.Fatal(err)
		}
		body, err := text()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			`sallyport_radius_request_duration_seconds_count{result="no_answer",server="` + silent + `"} 1`,
			`sallyport_radius_request_duration_seconds_count{result="accept",server="` + fr.Addr + `"} 1`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
	t.Run("ChallengeOnSecondServer", func(t *testing.T) {
		code, _ := freshTOTPCode(totpKey)
		checkIn(t, g, g.SSH(t, sshRun{Login: "alice@" + web, Answers: answers{Password: "alicepass", Code: code}, Command: probeCommand}))
	})

	t.Run("AllDown", func(t *testing.T) {
		dir := t.TempDir()
		writeSecretFile(t, dir, "radius.secret", frSecret)
		down := startConfiguredGateway(t, dir, fmt.Sprintf(`auth: radius
radius:
  servers:
    - {address: %q, secret_file: radius.secret}
    - {address: %q, secret_file: radius.secret}
  timeout: 1s
`, closedUDPAddr(t), silentUDPAddr(t)))
		web := down.Name("dweb")
		down.AddSecret(t, secretSpec{Name: web, Allow: []string{"bob"}})
		r := down.SSH(t, sshRun{Login: "bob@" + web, Answers: answers{Password: "bobpass"}, Command: probeCommand, LogLevel: "INFO"})
		checkRefused(t, r)
		if !strings.Contains(r.Stderr, unavailableText) {
			t.Fatalf("the user must be told the service is unavailable:\n%s", r)
		}
		down.WaitLog(t, "the unavailable login in the audit log", func(l string) bool {
			return strings.Contains(l, "authentication service unavailable") && strings.Contains(l, "user=bob")
		})
	})
}

// TestRADIUSGatewayBreakGlass runs `auth: both` with RADIUS down: the
// break-glass local account still logs in, and a local account that is not
// break-glass is sent to RADIUS like everyone else.
func TestRADIUSGatewayBreakGlass(t *testing.T) {
	dir := t.TempDir()
	writeSecretFile(t, dir, "radius.secret", frSecret)
	g := startConfiguredGateway(t, dir, fmt.Sprintf(`auth: both
break_glass: [breakglass]
radius:
  servers:
    - {address: %q, secret_file: radius.secret}
  timeout: 1s
`, silentUDPAddr(t)))
	bg := g.AddUser(t, "breakglass", false)
	other := g.AddUser(t, g.Name("local"), false)
	web := g.Name("bweb")
	g.AddSecret(t, secretSpec{Name: web, Allow: []string{bg.Name, other.Name}})

	checkIn(t, g, g.SSH(t, sshRun{Login: bg.Name + "@" + web, Answers: bg.Answers(), Command: probeCommand}))
	g.WaitLog(t, "a warning for the break-glass login", func(l string) bool {
		return strings.Contains(l, "break-glass login") && strings.Contains(l, "user=breakglass")
	})
	r := g.SSH(t, sshRun{Login: other.Name + "@" + web, Answers: other.Answers(), Command: probeCommand, LogLevel: "INFO"})
	checkRefused(t, r)
	if !strings.Contains(r.Stderr, unavailableText) {
		t.Fatalf("a local account that is not break-glass must go to RADIUS (down here):\n%s", r)
	}
}

// TestRADIUSGatewayHostileReplies puts a relay between the gateway and
// FreeRADIUS that forges replies the way an attacker on the path would
// (BlastRADIUS): without a Message-Authenticator, with a wrong one, and
// with a wrong Response Authenticator. Each is dropped and logged, so the
// login fails as "unavailable"; a replayed State is refused by FreeRADIUS
// with the same message as any other refusal.
func TestRADIUSGatewayHostileReplies(t *testing.T) {
	fr := startTestFreeRADIUS(t)
	relay := startRADIUSRelay(t, fr.Addr, []byte(frSecret))
	dir := t.TempDir()
	writeSecretFile(t, dir, "radius.secret", frSecret)
	g := startConfiguredGateway(t, dir, fmt.Sprintf(`auth: radius
radius:
  servers:
    - {address: %q, secret_file: radius.secret}
  timeout: 1s
  hold_down: 1s
`, relay.Addr()))
	web := g.Name("hweb")
	g.AddSecret(t, secretSpec{Name: web, Allow: []string{"alice", "bob"}})
	totpKey, err := base32.StdEncoding.DecodeString(frTOTPSecret)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("Control", func(t *testing.T) {
		relay.set(nil, nil)
		checkIn(t, g, g.SSH(t, sshRun{Login: "bob@" + web, Answers: answers{Password: "bobpass"}, Command: probeCommand}))
	})
	for _, tc := range []struct {
		name, reason string
		forge        func(reply, reqAuth []byte) []byte
	}{
		{"NoMessageAuthenticator", "Message-Authenticator", forgeNoMessageAuthenticator},
		{"WrongMessageAuthenticator", "Message-Authenticator", forgeWrongMessageAuthenticator},
		{"WrongResponseAuthenticator", "Response Authenticator", forgeWrongResponseAuthenticator},
	} {
		t.Run(tc.name, func(t *testing.T) {
			relay.set(nil, tc.forge)
			before := len(g.Log())
			r := g.SSH(t, sshRun{Login: "bob@" + web, Answers: answers{Password: "bobpass"}, Command: probeCommand, LogLevel: "INFO"})
			checkRefused(t, r)
			if !strings.Contains(r.Stderr, unavailableText) {
				t.Fatalf("a forged Accept must be dropped (no valid reply: unavailable):\n%s", r)
			}
			if relay.forged() == 0 {
				t.Fatal("the relay forged nothing; the test proves nothing")
			}
			var logged bool
			for _, l := range strings.Split(string(g.Log()[before:]), "\n") {
				logged = logged || (strings.Contains(l, "radius reply dropped") && strings.Contains(l, tc.reason))
			}
			if !logged {
				t.Fatalf("no \"radius reply dropped\" line naming the %s for this login; log tail:\n%s", tc.reason, g.LogTail(20))
			}
		})
	}

	t.Run("ReplayedState", func(t *testing.T) {
		// First login: the relay records the State FreeRADIUS issues, and
		// the login consumes it.
		relay.set(nil, nil)
		code, _ := freshTOTPCode(totpKey)
		checkIn(t, g, g.SSH(t, sshRun{Login: "alice@" + web, Answers: answers{Password: "alicepass", Code: code}, Command: probeCommand}))
		used := relay.lastState()
		if used == nil {
			t.Fatal("the relay saw no State")
		}
		// Second login: its answer goes back with the used State instead
		// of the fresh one, as a replaying attacker would send it.
		relay.set(replaceState(used, []byte(frSecret)), nil)
		code, _ = freshTOTPCode(totpKey)
		r := g.SSH(t, sshRun{Login: "alice@" + web, Answers: answers{Password: "alicepass", Code: code}, Command: probeCommand})
		checkRefused(t, r)
		if relay.forged() == 0 {
			t.Fatal("the relay replayed no State; the test proves nothing")
		}
		g.CheckNotRateLimited(t, r)
		// Same refusal as a wrong password.
		relay.set(nil, nil)
		wrong := g.SSH(t, sshRun{Login: "alice@" + web, Answers: answers{Password: "alicepass-not"}, Command: probeCommand})
		checkRefused(t, wrong)
		if wrong.Stderr != r.Stderr {
			t.Fatalf("a replayed State and a wrong password must read the same:\n%s\n---\n%s", r, wrong)
		}
	})
}

// radiusRelay forwards datagrams between the gateway and a RADIUS server,
// letting a test rewrite requests and replies on the way.
type radiusRelay struct {
	conn     *net.UDPConn
	upstream string
	secret   []byte

	mu       sync.Mutex
	editReq  func(req []byte) []byte
	editResp func(reply, reqAuth []byte) []byte
	state    []byte // the last State seen in a challenge
	nForged  int
}

func startRADIUSRelay(t *testing.T, upstream string, secret []byte) *radiusRelay {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &radiusRelay{conn: c, upstream: upstream, secret: secret}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = c.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			req := append([]byte(nil), buf[:n]...)
			wg.Add(1)
			go func() { defer wg.Done(); r.forward(req, from) }()
		}
	}()
	return r
}

func (r *radiusRelay) Addr() string { return r.conn.LocalAddr().String() }

// set chooses the rewrites of the following exchanges; nil passes through.
func (r *radiusRelay) set(editReq func([]byte) []byte, editResp func(reply, reqAuth []byte) []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.editReq, r.editResp, r.nForged = editReq, editResp, 0
}

func (r *radiusRelay) forged() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nForged
}

func (r *radiusRelay) lastState() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

func (r *radiusRelay) forward(req []byte, from *net.UDPAddr) {
	if len(req) < 20 {
		return
	}
	r.mu.Lock()
	editReq, editResp := r.editReq, r.editResp
	r.mu.Unlock()
	if editReq != nil {
		if edited := editReq(req); edited != nil {
			req = edited
			r.mu.Lock()
			r.nForged++
			r.mu.Unlock()
		}
	}
	up, err := net.Dial("udp", r.upstream)
	if err != nil {
		return
	}
	defer up.Close()
	if _, err := up.Write(req); err != nil {
		return
	}
	_ = up.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := up.Read(buf)
	if err != nil || n < 20 {
		return
	}
	reply := buf[:n]
	if p, err := layeh.Parse(reply, r.secret); err == nil && p.Code == layeh.CodeAccessChallenge {
		if s, ok := p.Lookup(rfc2865.State_Type); ok {
			r.mu.Lock()
			r.state = append([]byte(nil), s...)
			r.mu.Unlock()
		}
	}
	if editResp != nil && reply[0] == byte(layeh.CodeAccessAccept) {
		reply = editResp(reply, req[4:20])
		r.mu.Lock()
		r.nForged++
		r.mu.Unlock()
	}
	_, _ = r.conn.WriteToUDP(reply, from)
}

// replaceState returns a request rewrite that swaps the State of a
// challenge answer for state and signs the request again with secret, as an
// attacker who knows the secret (or a compromised relay) would.
func replaceState(state, secret []byte) func([]byte) []byte {
	return func(req []byte) []byte {
		p, err := layeh.Parse(req, secret)
		if err != nil || p.Code != layeh.CodeAccessRequest {
			return nil
		}
		if _, ok := p.Lookup(rfc2865.State_Type); !ok {
			return nil // the first round: no State yet
		}
		if err := rfc2865.State_Set(p, state); err != nil {
			return nil
		}
		if err := rfc2869.MessageAuthenticator_Set(p, make([]byte, 16)); err != nil {
			return nil
		}
		b, err := p.MarshalBinary()
		if err != nil {
			return nil
		}
		i := attrOffset(b, rfc2869.MessageAuthenticator_Type)
		if i < 0 {
			return nil
		}
		mac := hmac.New(md5.New, secret)
		mac.Write(b)
		copy(b[i+2:], mac.Sum(nil))
		return b
	}
}

// attrOffset returns the offset of the first attribute of type typ in the
// packet b, or -1.
func attrOffset(b []byte, typ layeh.Type) int {
	for i := 20; i+2 <= len(b); {
		l := int(b[i+1])
		if l < 2 || i+l > len(b) {
			return -1
		}
		if layeh.Type(b[i]) == typ {
			return i
		}
		i += l
	}
	return -1
}

// signReply sets b's Message-Authenticator (if present) and then its
// Response Authenticator, for the request authenticator reqAuth.
func signReply(b, reqAuth, secret []byte) {
	copy(b[4:20], reqAuth)
	if i := attrOffset(b, rfc2869.MessageAuthenticator_Type); i >= 0 {
		clear(b[i+2 : i+18])
		mac := hmac.New(md5.New, secret)
		mac.Write(b)
		copy(b[i+2:], mac.Sum(nil))
	}
	h := md5.New() // #nosec G401 -- the RADIUS Response Authenticator
	h.Write(b)
	h.Write(secret)
	copy(b[4:20], h.Sum(nil))
}

// The forgeries: each takes FreeRADIUS's genuine Accept and breaks exactly
// one thing, keeping everything else valid for the test's known secret.

func forgeNoMessageAuthenticator(reply, reqAuth []byte) []byte {
	i := attrOffset(reply, rfc2869.MessageAuthenticator_Type)
	if i < 0 {
		panic("FreeRADIUS's Accept has no Message-Authenticator")
	}
	b := append(append([]byte(nil), reply[:i]...), reply[i+18:]...)
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)))
	signReply(b, reqAuth, []byte(frSecret))
	return b
}

func forgeWrongMessageAuthenticator(reply, reqAuth []byte) []byte {
	b := append([]byte(nil), reply...)
	signReply(b, reqAuth, []byte(frSecret))
	i := attrOffset(b, rfc2869.MessageAuthenticator_Type)
	b[i+2] ^= 0x01
	// The Response Authenticator covers the Message-Authenticator: sign
	// again so that only the latter is wrong.
	copy(b[4:20], reqAuth)
	h := md5.New() // #nosec G401 -- the RADIUS Response Authenticator
	h.Write(b)
	h.Write([]byte(frSecret))
	copy(b[4:20], h.Sum(nil))
	return b
}

func forgeWrongResponseAuthenticator(reply, reqAuth []byte) []byte {
	b := append([]byte(nil), reply...)
	signReply(b, reqAuth, []byte(frSecret))
	b[4] ^= 0x01
	return b
}

// TestRADIUSRelayForgeries checks the forgeries themselves: each breaks
// what it says and nothing else, so that the gateway's refusals above are
// for the intended reason.
func TestRADIUSRelayForgeries(t *testing.T) {
	secret := []byte(frSecret)
	reqAuth := bytes.Repeat([]byte{7}, 16)
	p := &layeh.Packet{Code: layeh.CodeAccessAccept, Identifier: 9, Secret: secret}
	p.Add(rfc2869.MessageAuthenticator_Type, make([]byte, 16))
	p.Add(rfc2865.ReplyMessage_Type, []byte("welcome"))
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	signReply(b, reqAuth, secret)
	respOK := func(b []byte) bool {
		c := append([]byte(nil), b...)
		copy(c[4:20], reqAuth)
		h := md5.New() // #nosec G401 -- the RADIUS Response Authenticator
		h.Write(c)
		h.Write(secret)
		return bytes.Equal(h.Sum(nil), b[4:20])
	}
	maOK := func(b []byte) (present, ok bool) {
		i := attrOffset(b, rfc2869.MessageAuthenticator_Type)
		if i < 0 {
			return false, false
		}
		c := append([]byte(nil), b...)
		copy(c[4:20], reqAuth)
		clear(c[i+2 : i+18])
		mac := hmac.New(md5.New, secret)
		mac.Write(c)
		return true, hmac.Equal(mac.Sum(nil), b[i+2:i+18])
	}
	if present, ok := maOK(b); !present || !ok || !respOK(b) {
		t.Fatal("the genuine reply does not verify")
	}
	for _, tc := range []struct {
		name                      string
		forge                     func(reply, reqAuth []byte) []byte
		wantMA, wantMAOK, wantRes bool
	}{
		{"none", forgeNoMessageAuthenticator, false, false, true},
		{"wrong MA", forgeWrongMessageAuthenticator, true, false, true},
		{"wrong RA", forgeWrongResponseAuthenticator, true, true, false},
	} {
		f := tc.forge(b, reqAuth)
		present, ok := maOK(f)
		if present != tc.wantMA || ok != tc.wantMAOK || respOK(f) != tc.wantRes {
			t.Errorf("%s: Message-Authenticator present %v valid %v, Response Authenticator valid %v", tc.name, present, ok, respOK(f))
		}
	}
}

// TestRadSecGateway logs in through the gateway with `transport: tls`
// against FreeRADIUS's RadSec listener (mutual TLS), and checks that a
// gateway which does not trust the server's certificate refuses it and
// says why in its log.
func TestRadSecGateway(t *testing.T) {
	fr, err := startFreeRADIUS(t.TempDir(), withRadSec())
	if err != nil {
		t.Fatalf("FreeRADIUS with RadSec: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FreeRADIUS log tail:\n%s", fr.LogTail(60))
		}
		if err := fr.Close(); err != nil {
			t.Errorf("stopping FreeRADIUS: %v", err)
		}
	})
	keyPEM, err := os.ReadFile(fr.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	keyNeedle := needle{"the RadSec client key", bytes.TrimSpace(keyPEM)}
	config := func(ca string) string {
		return fmt.Sprintf(`auth: radius
radius:
  transport: tls
  servers:
    - address: %q
  timeout: 2s
  tls:
    ca_file: %s
    cert_file: %s
    key_file: %s
`, fr.TLSAddr, ca, fr.ClientCertFile, fr.ClientKeyFile)
	}
	totpKey, err := base32.StdEncoding.DecodeString(frTOTPSecret)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("Trusted", func(t *testing.T) {
		g := startConfiguredGateway(t, t.TempDir(), config(fr.CAFile), keyNeedle)
		web := g.Name("tweb")
		g.AddSecret(t, secretSpec{Name: web, Allow: []string{"alice", "bob"}})
		checkIn(t, g, g.SSH(t, sshRun{Login: "bob@" + web, Answers: answers{Password: "bobpass"}, Command: probeCommand}))
		code, _ := freshTOTPCode(totpKey)
		checkIn(t, g, g.SSH(t, sshRun{Login: "alice@" + web, Answers: answers{Password: "alicepass", Code: code}, Command: probeCommand}))
		r := g.SSH(t, sshRun{Login: "bob@" + web, Answers: answers{Password: "bobpass-not"}, Command: probeCommand})
		checkRefused(t, r)
		if strings.Contains(r.Stderr, unavailableText) {
			t.Fatalf("a wrong password over RadSec must be a plain refusal:\n%s", r)
		}
	})

	t.Run("UntrustedServer", func(t *testing.T) {
		g := startConfiguredGateway(t, t.TempDir(), config(fr.OtherCAFile), keyNeedle)
		web := g.Name("uweb")
		g.AddSecret(t, secretSpec{Name: web, Allow: []string{"bob"}})
		r := g.SSH(t, sshRun{Login: "bob@" + web, Answers: answers{Password: "bobpass"}, Command: probeCommand, LogLevel: "INFO"})
		checkRefused(t, r)
		if !strings.Contains(r.Stderr, unavailableText) {
			t.Fatalf("an untrusted RadSec server must leave the user with the unavailable message:\n%s", r)
		}
		t.Log(g.WaitLog(t, "naming the certificate problem", func(l string) bool {
			return strings.Contains(l, fr.TLSAddr) && strings.Contains(strings.ToLower(l), "certificate")
		}))
	})
}
