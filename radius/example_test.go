package radius_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/sallyport/sallyport/radius"
)

// Example wires a Client and an Authenticator for two FreeRADIUS servers and
// relays challenges (one-time codes) to the user.
func Example() {
	client, err := radius.New(radius.Config{
		Servers: []radius.Server{
			{Addr: "radius1.example:1812", Secret: []byte("from-the-key-store")},
			{Addr: "radius2.example:1812", Secret: []byte("from-the-key-store")},
		},
		Timeout:       2 * time.Second,
		Retries:       1,
		NASIdentifier: "sallyport-gw1",
	}, slog.Default())
	if err != nil {
		fmt.Println(err)
		return
	}
	auth, err := radius.NewAuthenticator(client, radius.AuthConfig{GroupsFromClass: true}, slog.Default())
	if err != nil {
		fmt.Println(err)
		return
	}
	ask := func(ctx context.Context, instruction string, prompts []radius.Prompt) ([]string, error) {
		// The SSH gateway puts prompts to the client as a
		// keyboard-interactive round here.
		return []string{"123456"}, nil
	}
	login := radius.Login{User: "alice", Source: netip.MustParseAddrPort("198.51.100.9:40022"), Password: []byte("alicepass")}
	id, err := auth.Authenticate(context.Background(), login, ask)
	switch {
	case errors.Is(err, radius.ErrDenied):
		fmt.Println("denied")
	case errors.Is(err, radius.ErrUnavailable):
		fmt.Println("try again later")
	case err == nil:
		fmt.Println(id.User, id.Groups)
	}
}
