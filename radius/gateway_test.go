package radius

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	gw "github.com/sallyport/sallyport/gateway/ssh"
)

func TestGatewayAuthUnavailable(t *testing.T) {
	// A bound socket that never answers.
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := New(Config{
		Servers:       []Server{{Addr: pc.LocalAddr().String(), Secret: []byte("s3cret")}},
		Timeout:       100 * time.Millisecond,
		NASIdentifier: "test",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ra, err := NewAuthenticator(c, AuthConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := GatewayAuth{RADIUS: ra}
	_, err = a.Authenticate(context.Background(), gw.Login{User: "bob", Password: []byte("pw"), Source: netip.MustParseAddrPort("127.0.0.1:1")}, nil)
	if !errors.Is(err, gw.ErrUnavailable) || errors.Is(err, gw.ErrDenied) {
		t.Fatalf("silent server: %v, want ErrUnavailable", err)
	}
	_, err = a.Authenticate(context.Background(), gw.Login{User: "", Password: []byte("pw")}, nil)
	if !errors.Is(err, gw.ErrDenied) || errors.Is(err, gw.ErrUnavailable) {
		t.Fatalf("unusable user name: %v, want ErrDenied", err)
	}
}

func TestPromptText(t *testing.T) {
	for in, want := range map[string]string{
		"Enter your one-time code": "Enter your one-time code: ",
		"Code:":                    "Code: ",
		"Code: ":                   "Code: ",
		"Approve the push?  ":      "Approve the push? ",
		"Line one\nLine two\n":     "Line one\nLine two\n",
		"":                         "",
	} {
		if got := promptText(in); got != want {
			t.Errorf("promptText(%q) = %q, want %q", in, got, want)
		}
	}
}
