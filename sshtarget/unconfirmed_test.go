package sshtarget

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestUnconfirmed: a target that takes the new credential and then goes
// away without an exit status leaves the change unconfirmed, and the
// caller is told so (ErrUnconfirmed), never that it failed. A real sshd
// cannot be made to do that on cue; an in-process target can.
func TestUnconfirmed(t *testing.T) {
	t.Parallel()
	// readLines reads n lines from the session, answering nothing.
	readLines := func(r *bufio.Reader, n int) bool {
		for range n {
			if _, err := r.ReadString('\n'); err != nil {
				return false
			}
		}
		return true
	}
	for _, tc := range []struct {
		name    string
		serve   func(ch ssh.Channel, conn *ssh.ServerConn, done <-chan struct{})
		change  func(l Login) error
		timeout time.Duration
		want    Outcome
	}{
		{
			name: "passwd drops the connection after the retype",
			serve: func(ch ssh.Channel, conn *ssh.ServerConn, _ <-chan struct{}) {
				r := bufio.NewReader(ch)
				for _, p := range []string{"Current password: ", "New password: ", "Retype new password: "} {
					_, _ = io.WriteString(ch, p)
					if !readLines(r, 1) {
						return
					}
				}
				_ = conn.Close()
			},
			change:  func(l Login) error { return ChangeSelf(context.Background(), l, []byte("Next-pass-456")) },
			timeout: 5 * time.Second,
			want:    Unconfirmed,
		},
		{
			name: "passwd hangs after the retype",
			serve: func(ch ssh.Channel, _ *ssh.ServerConn, done <-chan struct{}) {
				r := bufio.NewReader(ch)
				for _, p := range []string{"New password: ", "Retype new password: "} {
					_, _ = io.WriteString(ch, p)
					if !readLines(r, 1) {
						return
					}
				}
				<-done
			},
			change:  func(l Login) error { return ChangeSelf(context.Background(), l, []byte("Next-pass-456")) },
			timeout: time.Second,
			want:    Unconfirmed,
		},
		{
			name: "passwd drops the connection before the new password",
			serve: func(ch ssh.Channel, conn *ssh.ServerConn, _ <-chan struct{}) {
				_, _ = io.WriteString(ch, "Current password: ")
				readLines(bufio.NewReader(ch), 1)
				_ = conn.Close()
			},
			change:  func(l Login) error { return ChangeSelf(context.Background(), l, []byte("Next-pass-456")) },
			timeout: 5 * time.Second,
			want:    Failed,
		},
		{
			name: "chpasswd drops the connection",
			serve: func(ch ssh.Channel, conn *ssh.ServerConn, _ <-chan struct{}) {
				_, _ = io.Copy(io.Discard, ch)
				_ = conn.Close()
			},
			change: func(l Login) error {
				return ChangePrivileged(context.Background(), l, "alice", []byte("Next-pass-456"), false)
			},
			timeout: 5 * time.Second,
			want:    Unconfirmed,
		},
		{
			name: "sudo drops the connection after the password",
			serve: func(ch ssh.Channel, conn *ssh.ServerConn, _ <-chan struct{}) {
				_, _ = io.WriteString(ch.Stderr(), sudoPrompt)
				_, _ = io.Copy(io.Discard, ch)
				_ = conn.Close()
			},
			change: func(l Login) error {
				return ChangePrivileged(context.Background(), l, "alice", []byte("Next-pass-456"), true)
			},
			timeout: 5 * time.Second,
			want:    Unconfirmed,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := startFake(t, tc.serve)
			l := Login{Host: "127.0.0.1", Port: f.port, User: "u", Password: []byte("Cur-pass-123"), HostKey: f.hostKey, Timeout: tc.timeout}
			err := tc.change(l)
			if got := Classify(err); got != tc.want {
				t.Fatalf("got %s (%v), want %s", got, err, tc.want)
			}
			t.Logf("error: %v", err)
			checkNoSecret(t, err.Error(), l)
			checkNoSecret(t, err.Error(), Login{Password: []byte("Next-pass-456")})
		})
	}
}

// fake is an in-process SSH target that lets any password in and hands
// each command's session to serve.
type fake struct {
	port    int
	hostKey []byte
}

func startFake(t *testing.T, serve func(ch ssh.Channel, conn *ssh.ServerConn, done <-chan struct{})) *fake {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) { return nil, nil }}
	cfg.AddHostKey(signer)
	l := listen(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	hold(t, l, func(nc net.Conn, _ <-chan struct{}) {
		mu.Lock()
		conns = append(conns, nc)
		mu.Unlock()
		conn, chans, reqs, err := ssh.NewServerConn(nc, cfg)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() { defer wg.Done(); ssh.DiscardRequests(reqs) }()
		for nch := range chans {
			if nch.ChannelType() != "session" {
				_ = nch.Reject(ssh.UnknownChannelType, "no")
				continue
			}
			ch, creqs, err := nch.Accept()
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer ch.Close()
				for req := range creqs {
					switch req.Type {
					case "pty-req":
						_ = req.Reply(true, nil)
					case "exec":
						_ = req.Reply(true, nil)
						if len(req.Payload) < 4 || int(binary.BigEndian.Uint32(req.Payload)) != len(req.Payload)-4 {
							return
						}
						wg.Add(1)
						go func() { defer wg.Done(); defer ch.Close(); serve(ch, conn, done) }()
					default:
						_ = req.Reply(false, nil)
					}
				}
			}()
		}
	})
	t.Cleanup(func() {
		close(done)
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return &fake{port: port(l), hostKey: signer.PublicKey().Marshal()}
}
