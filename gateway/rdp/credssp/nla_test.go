package credssp

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sallyport/sallyport/gateway/rdp/ntlm"
)

// exchange runs both sides over a pipe: the client proves clientPW and
// delegates creds; the server expects serverPW for alice.
func exchange(t *testing.T, clientPW, serverPW string, clientKey, serverKey []byte, offer int) (*Accepted, error, error) {
	t.Helper()
	return exchangeAuthorize(t, clientPW, serverPW, clientKey, serverKey, offer, nil)
}

// exchangeAuthorize is exchange with the server's Authorize hook.
func exchangeAuthorize(t *testing.T, clientPW, serverPW string, clientKey, serverKey []byte, offer int, authorize func(user, domain string) error) (*Accepted, error, error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	_ = a.SetDeadline(time.Now().Add(10 * time.Second))
	_ = b.SetDeadline(time.Now().Add(10 * time.Second))
	client, err := ntlm.NewClient("alice", "CORP", []byte(clientPW), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	creds := PasswordCreds{Domain: EncodeUTF16("CORP"), User: EncodeUTF16("alice"), Password: EncodeUTF16(clientPW)}
	cerr := make(chan error, 1)
	go func() {
		err := authenticate(a, clientKey, client, creds, offer)
		if err != nil {
			a.Close()
		}
		cerr <- err
	}()
	acc, serr := Serve(b, ServerConfig{PublicKey: serverKey, NTLM: ntlm.NewServer("GATEWAY", nil, nil),
		Lookup: func(user, domain string) ([]byte, bool) {
			if user != "alice" {
				return nil, false
			}
			return []byte(serverPW), true
		}, Authorize: authorize})
	if serr != nil {
		b.Close()
	}
	return acc, serr, <-cerr
}

func TestExchange(t *testing.T) {
	key := []byte("the TLS server's public key")
	for _, offer := range []int{Version, 3} {
		acc, serr, cerr := exchange(t, "token-1", "token-1", key, key, offer)
		if serr != nil || cerr != nil {
			t.Fatalf("version %d: server %v, client %v", offer, serr, cerr)
		}
		if acc.User != "alice" || acc.Domain != "CORP" || DecodeUTF16(acc.Creds.Password) != "token-1" || DecodeUTF16(acc.Creds.User) != "alice" {
			t.Fatalf("accepted %+v %s", acc, acc.Creds)
		}
	}
}

func TestExchangeRefused(t *testing.T) {
	key := []byte("the TLS server's public key")
	_, serr, cerr := exchange(t, "wrong", "token-1", key, key, Version)
	if !errors.Is(serr, ErrLogonFailure) || !errors.Is(cerr, ErrLogonFailure) {
		t.Fatalf("wrong token: server %v, client %v", serr, cerr)
	}
	// A man in the middle between TLS and CredSSP: the two sides see
	// different keys.
	for _, offer := range []int{Version, 3} {
		_, serr, cerr = exchange(t, "token-1", "token-1", key, bytes.ToUpper(key), offer)
		if !errors.Is(serr, ErrBinding) || cerr == nil {
			t.Fatalf("version %d, other key: server %v, client %v", offer, serr, cerr)
		}
	}
}

func TestAuthorize(t *testing.T) {
	key := []byte("the TLS server's public key")
	var saw []string
	allow := func(user, domain string) error { saw = append(saw, domain+`\`+user); return nil }
	if _, serr, cerr := exchangeAuthorize(t, "token-1", "token-1", key, key, Version, allow); serr != nil || cerr != nil {
		t.Fatalf("allowed: server %v, client %v", serr, cerr)
	}
	if len(saw) != 1 || saw[0] != `CORP\alice` {
		t.Fatalf("Authorize saw %q", saw)
	}
	// Not called for a wrong password.
	saw = nil
	if _, serr, _ := exchangeAuthorize(t, "wrong", "token-1", key, key, Version, allow); !errors.Is(serr, ErrLogonFailure) || saw != nil {
		t.Fatalf("wrong password: server %v, Authorize saw %q", serr, saw)
	}
	// A refusal reaches the client as an error code, the one chosen or
	// access denied.
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errors.New("target unreachable"), "0xc0000022"},
		{&StatusError{Status: StatusLogonFailure, Err: errors.New("stale")}, "0xc000006d"},
	} {
		_, serr, cerr := exchangeAuthorize(t, "token-1", "token-1", key, key, Version, func(string, string) error { return tc.err })
		if serr == nil || !errors.Is(serr, tc.err) || !errors.Is(cerr, ErrLogonFailure) || !strings.Contains(cerr.Error(), tc.want) {
			t.Fatalf("refused with %v: server %v, client %v", tc.err, serr, cerr)
		}
	}
}
