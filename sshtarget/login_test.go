package sshtarget

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/internal/sshdtest"
)

// TestCheck logs in to the real sshd every way a heartbeat can end.
func TestCheck(t *testing.T) {
	t.Parallel()
	s := server(t)
	a := s.AddAccount(t)
	kbd := s.AddAccount(t, sshdtest.KbdInteractiveOnly())
	priv, pub := newKey(t)
	s.Authorize(t, a, pub)
	otherPriv, _ := newKey(t)

	ecdsaPin := passwordLogin(s, a.Name, a.Password)
	ecdsaPin.HostKey = s.HostKeyECDSA
	sameType := passwordLogin(s, a.Name, a.Password)
	sameType.HostKey = ed25519HostKey(t)
	otherType := passwordLogin(s, a.Name, a.Password)
	otherType.HostKey = rsaHostKey(t)

	for _, tc := range []struct {
		name  string
		login Login
		want  Outcome
	}{
		{"password", passwordLogin(s, a.Name, a.Password), OK},
		{"keyboard-interactive", passwordLogin(s, kbd.Name, kbd.Password), OK},
		{"key", keyLogin(s, a.Name, priv), OK},
		{"pinned key of the server's second type", ecdsaPin, OK},
		{"wrong password", passwordLogin(s, a.Name, sshdtest.RandomPassword()), Rejected},
		{"wrong password, keyboard-interactive", passwordLogin(s, kbd.Name, sshdtest.RandomPassword()), Rejected},
		{"key not authorized", keyLogin(s, a.Name, otherPriv), Rejected},
		{"no such account", passwordLogin(s, "sptnosuchuser", sshdtest.RandomPassword()), Rejected},
		{"host key changed, same type", sameType, HostKeyChanged},
		{"host key changed, other type", otherType, HostKeyChanged},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Check(context.Background(), tc.login)
			if got != tc.want {
				t.Fatalf("Check = %s (%v), want %s\nsshd log:\n%s", got, err, tc.want, s.LogTail(10))
			}
			if (err == nil) != (tc.want == OK) {
				t.Fatalf("Check = %s with error %v", got, err)
			}
			if err != nil {
				checkNoSecret(t, err.Error(), tc.login)
			}
		})
	}
}

// TestHostKeyCheckedFirst: a target with another host key never hears
// who we log in as, let alone the password.
func TestHostKeyCheckedFirst(t *testing.T) {
	t.Parallel()
	s := server(t)
	a := s.AddAccount(t)
	l := passwordLogin(s, a.Name, a.Password)
	l.HostKey = ed25519HostKey(t)
	if got, err := Check(context.Background(), l); got != HostKeyChanged {
		t.Fatalf("Check = %s (%v), want %s", got, err, HostKeyChanged)
	}
	// sshd logs every authentication attempt with the user name (LogLevel
	// VERBOSE); give it a moment to write.
	time.Sleep(200 * time.Millisecond)
	if strings.Contains(s.Log(), a.Name) {
		t.Fatalf("sshd saw the user name despite the host key mismatch:\n%s", s.LogTail(10))
	}
}

// TestUnreachable: targets that refuse, drop or ignore the connection.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	hostKey := ed25519HostKey(t)
	login := func(port int) Login {
		return Login{Host: "127.0.0.1", Port: port, User: "nobody", Password: []byte("irrelevant-password"), HostKey: hostKey, Timeout: time.Second}
	}

	closed := listen(t)
	closedPort := port(closed)
	closed.Close()

	silent := listen(t)
	hold(t, silent, func(_ net.Conn, done <-chan struct{}) { <-done })

	dropping := listen(t)
	hold(t, dropping, func(net.Conn, <-chan struct{}) {})

	notSSH := listen(t)
	hold(t, notSSH, func(c net.Conn, _ <-chan struct{}) { _, _ = fmt.Fprintf(c, "HTTP/1.1 400 Bad Request\r\n\r\n") })

	for _, tc := range []struct {
		name string
		port int
	}{
		{"closed port", closedPort},
		{"accepts and never speaks", port(silent)},
		{"accepts and closes", port(dropping)},
		{"not SSH", port(notSSH)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			got, err := Check(context.Background(), login(tc.port))
			if got != Unreachable {
				t.Fatalf("Check = %s (%v), want %s", got, err, Unreachable)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("took %v with a 1 s timeout", d)
			}
		})
	}

	t.Run("caller's context", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		l := login(port(silent))
		l.Timeout = time.Minute
		start := time.Now()
		if got, err := Check(ctx, l); got != Unreachable {
			t.Fatalf("Check = %s (%v), want %s", got, err, Unreachable)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("took %v with the caller's 300 ms", d)
		}
	})
}

// TestInvalidLogin: a login that cannot be right fails before connecting.
func TestInvalidLogin(t *testing.T) {
	l := listen(t)
	var mu sync.Mutex
	accepts := 0
	hold(t, l, func(net.Conn, <-chan struct{}) { mu.Lock(); accepts++; mu.Unlock() })
	key, _ := newKey(t)
	good := Login{Host: "127.0.0.1", Port: port(l), User: "u", Password: []byte("pw-123456"), HostKey: ed25519HostKey(t), Timeout: time.Second}
	for _, tc := range []struct {
		name   string
		change func(*Login)
	}{
		{"no host", func(l *Login) { l.Host = "" }},
		{"bad port", func(l *Login) { l.Port = 70000 }},
		{"no user", func(l *Login) { l.User = "" }},
		{"no credential", func(l *Login) { l.Password = nil }},
		{"password and key", func(l *Login) { l.PrivateKey = key }},
		{"no pinned host key", func(l *Login) { l.HostKey = nil }},
		{"unparseable host key", func(l *Login) { l.HostKey = []byte("not a key") }},
		{"unparseable private key", func(l *Login) {
			l.Password, l.PrivateKey = nil, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := good
			tc.change(&bad)
			got, err := Check(context.Background(), bad)
			if got != Failed || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Check = %s (%v), want %s wrapping ErrInvalid", got, err, Failed)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if accepts != 0 {
		t.Fatalf("%d connections for invalid logins", accepts)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Outcome
	}{
		{nil, OK},
		{fmt.Errorf("x: %w", ErrRejected), Rejected},
		{fmt.Errorf("x: %w", ErrUnreachable), Unreachable},
		{fmt.Errorf("x: %w", ErrHostKeyChanged), HostKeyChanged},
		{fmt.Errorf("x: %w", ErrInvalid), Failed},
		{fmt.Errorf("%w: x: %w", ErrUnconfirmed, ErrUnreachable), Unconfirmed},
		{errors.New("something else"), Failed},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestTimeoutDefault(t *testing.T) {
	if got := (Login{}).timeout(); got != 20*time.Second {
		t.Fatalf("default timeout %v", got)
	}
	if got := (Login{Timeout: time.Second}).timeout(); got != time.Second {
		t.Fatalf("timeout %v", got)
	}
}

func TestHostKeyAlgorithms(t *testing.T) {
	rsaKey, err := ssh.ParsePublicKey(rsaHostKey(t))
	if err != nil {
		t.Fatal(err)
	}
	got := hostKeyAlgorithms(rsaKey)
	if got[0] != ssh.KeyAlgoRSASHA512 || got[1] != ssh.KeyAlgoRSASHA256 || len(got) != len(modernHostKeyAlgos) {
		t.Fatalf("RSA pin: %v", got)
	}
	edKey, err := ssh.ParsePublicKey(ed25519HostKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := hostKeyAlgorithms(edKey); got[0] != ssh.KeyAlgoED25519 || len(got) != len(modernHostKeyAlgos) {
		t.Fatalf("ed25519 pin: %v", got)
	}
}

// checkNoSecret fails t if text shows l's credential.
func checkNoSecret(t *testing.T, text string, l Login) {
	t.Helper()
	for _, s := range [][]byte{l.Password, l.PrivateKey} {
		if len(s) > 0 && strings.Contains(text, string(s)) {
			t.Fatalf("the credential shows in %q", text)
		}
	}
}

func ed25519HostKey(t *testing.T) []byte {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pk.Marshal()
}

func rsaHostKey(t *testing.T) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := ssh.NewPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pk.Marshal()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func port(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }

// hold accepts connections on l until the test ends and runs serve on
// each; serve returns by the time done closes, and hold closes the
// connection then.
func hold(t *testing.T, l net.Listener, serve func(c net.Conn, done <-chan struct{})) {
	t.Helper()
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c, done)
			}()
		}
	}()
	t.Cleanup(func() {
		close(done)
		l.Close()
		wg.Wait()
	})
}
