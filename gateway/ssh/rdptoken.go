package ssh

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// RDPTokenIssuer hands out the one-time tokens of the RDP gateway. A user
// asks for one by logging in as USER@rdp:SECRET; the SSH session prints it
// and ends.
type RDPTokenIssuer interface {
	// IssueRDPToken returns a token good for one RDP login of id to
	// secret from source's address, and its expiry. The gateway has
	// checked that id may use secret.
	IssueRDPToken(id Identity, source netip.AddrPort, secret string) (token string, expires time.Time, err error)
}

// rdpPrefix marks a login that asks for an RDP token: alice@rdp:win01.
const rdpPrefix = "rdp:"

// splitRDP recognises a login asking for an RDP token and returns it
// with the prefix removed.
func splitRDP(login string) (string, bool) {
	i := strings.LastIndexByte(login, '@')
	if i < 0 || !strings.HasPrefix(login[i+1:], rdpPrefix) {
		return login, false
	}
	return login[:i+1] + login[i+1+len(rdpPrefix):], true
}

// issueRDPToken checks that id may use secret and issues the token the
// session will print.
func (c *conn) issueRDPToken(ctx context.Context, id Identity, secret string) error {
	cfg := &c.srv.cfg
	allowed, err := cfg.Credentials.List(ctx, id, c.src)
	if err != nil {
		return err
	}
	if !slices.Contains(allowed, secret) {
		return fmt.Errorf("%w: secret not allowed", ErrDenied)
	}
	token, expires, err := cfg.RDPTokens.IssueRDPToken(id, c.src, secret)
	if err != nil {
		return err
	}
	c.rdpToken, c.rdpExpires = []byte(token), expires
	return nil
}

// serveRDPToken answers the session of a token login: a shell prints the
// token and its expiry; `rdp-file` prints a ready .rdp file on standard
// output and the token on standard error. Then the connection ends.
func (c *conn) serveRDPToken(chans <-chan gossh.NewChannel, reqs <-chan *gossh.Request) {
	go replyNone(reqs)
	defer clear(c.rdpToken)
	_ = c.nc.SetDeadline(c.srv.cfg.Now().Add(30 * time.Second))
	served := false
	for nch := range chans {
		if nch.ChannelType() != "session" || served {
			_ = nch.Reject(gossh.Prohibited, "an RDP token login opens one session")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			return
		}
		served = true
		go func() {
			for r := range creqs {
				switch r.Type {
				case "shell", "exec":
					_ = r.Reply(true, nil)
					status := c.printRDPToken(ch, r)
					_, _ = ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, status))
					_ = ch.CloseWrite()
					_ = ch.Close()
				default:
					if r.WantReply {
						_ = r.Reply(r.Type == "pty-req" || r.Type == "env", nil)
					}
				}
			}
		}()
	}
}

// printRDPToken writes what a shell or exec request of a token login
// shows, and returns the exit status.
func (c *conn) printRDPToken(ch gossh.Channel, r *gossh.Request) uint32 {
	cfg := &c.srv.cfg
	login := c.id.User + "@" + c.secret
	line := func() string {
		return fmt.Sprintf("RDP token: %s\r\nExpires: %s (in %s); good for one login from %s.\r\n",
			c.rdpToken, c.rdpExpires.UTC().Format(time.RFC3339), c.rdpExpires.Sub(cfg.Now()).Round(time.Second), c.src.Addr())
	}
	if r.Type == "shell" {
		_, _ = fmt.Fprint(ch, line())
		if cfg.RDPAddr != "" {
			_, _ = fmt.Fprintf(ch, "Connect with: xfreerdp /v:%s /u:%s /sec:nla (the token is the password)\r\n", cfg.RDPAddr, login)
		}
		return 0
	}
	var cmd struct{ Command string }
	if err := gossh.Unmarshal(r.Payload, &cmd); err != nil {
		return 2
	}
	switch strings.TrimSpace(cmd.Command) {
	case "", "token":
		_, _ = fmt.Fprint(ch, line())
		return 0
	case "rdp-file":
		if cfg.RDPAddr == "" {
			_, _ = fmt.Fprint(ch.Stderr(), "sallyport: no RDP address is configured for .rdp files.\r\n")
			return 1
		}
		_, _ = fmt.Fprint(ch, rdpFile(cfg.RDPAddr, login))
		_, _ = fmt.Fprint(ch.Stderr(), line())
		return 0
	}
	_, _ = fmt.Fprint(ch.Stderr(), "sallyport: an RDP token login runs `token` (the default) or `rdp-file`.\r\n")
	return 2
}

// rdpFile is a .rdp file for mstsc and Remmina: the gateway's address,
// the login, NLA required. It holds no password: the client asks for it
// (the token).
func rdpFile(addr, login string) string {
	return strings.Join([]string{
		"full address:s:" + addr,
		"username:s:" + login,
		"enablecredsspsupport:i:1",
		"authentication level:i:2",
		"prompt for credentials:i:1",
		"autoreconnection enabled:i:0",
		"",
	}, "\r\n")
}

// errNoRDP refuses token logins on a gateway without an RDP gateway.
var errNoRDP = errors.New("no RDP gateway")
