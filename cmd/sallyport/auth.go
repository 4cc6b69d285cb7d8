package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sallyport/sallyport/config"
	gw "github.com/sallyport/sallyport/gateway/ssh"
	"github.com/sallyport/sallyport/radius"
)

// gatewayAuth builds the gateway's authenticator for the configured mode.
// The returned close function releases the RADIUS client's connections.
func gatewayAuth(c *config.File, local gw.LocalUsers, reg prometheus.Registerer, log *slog.Logger) (gw.Authenticator, func(), error) {
	localAuth := gw.LocalAuth{Users: local}
	if c.Auth == config.AuthLocal {
		log.Info("authentication: local users")
		return localAuth, func() {}, nil
	}
	rcfg, acfg, err := c.RADIUSClient()
	if err != nil {
		return nil, nil, err
	}
	rlog := log.With("component", "radius")
	rcfg.Observe = radius.Metrics(reg)
	client, err := radius.New(rcfg, rlog)
	config.WipeRADIUS(&rcfg) // the client keeps its own copy
	if err != nil {
		return nil, nil, fmt.Errorf("radius: %w", err)
	}
	closeFn := func() { _ = client.Close() }
	ra, err := radius.NewAuthenticator(client, acfg, rlog)
	if err != nil {
		closeFn()
		return nil, nil, fmt.Errorf("radius: %w", err)
	}
	network := radius.GatewayAuth{RADIUS: ra, Log: rlog}
	addrs := make([]string, len(c.RADIUS.Servers))
	for i, s := range c.RADIUS.Servers {
		addrs[i] = s.Address
	}
	log.Info("authentication: RADIUS", "transport", c.RADIUS.Transport, "servers", strings.Join(addrs, ","),
		"groups_from", strings.Join(c.RADIUS.GroupsFrom, ","), "break_glass", strings.Join(c.BreakGlass, ","))
	if c.Auth == config.AuthRADIUS {
		return network, closeFn, nil
	}
	accounts := make(map[string]bool, len(c.BreakGlass))
	for _, u := range c.BreakGlass {
		accounts[u] = true
	}
	return gw.BreakGlassAuth{Accounts: accounts, Local: localAuth, Network: network, Log: log}, closeFn, nil
}
