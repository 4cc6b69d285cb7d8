// Package config reads Sallyport's YAML configuration file.
//
// The file holds settings, never secrets: a RADIUS shared secret or a TLS
// private key is named by the path of a file that must not be readable by
// group or others. Unknown keys, duplicate keys and values of the wrong type
// are errors that name the line, so a misspelt setting is never silently
// ignored. Relative paths are resolved against the directory of the
// configuration file.
//
// A minimal file for RADIUS with a break-glass local account:
//
//	auth: both
//	break_glass: [breakglass-admin]
//	radius:
//	  servers:
//	    - address: 10.0.0.5:1812
//	      secret_file: /etc/sallyport/radius.secret
//	  groups_from: [class]
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/goccy/go-yaml"

	"github.com/sallyport/sallyport/names"
)

// MaxFileSize bounds the configuration file.
const MaxFileSize = 1 << 20

// Authentication modes for the Auth key.
const (
	// AuthLocal checks gateway users against the vault's local users only.
	AuthLocal = "local"
	// AuthRADIUS checks every gateway user against the RADIUS servers.
	AuthRADIUS = "radius"
	// AuthBoth sends the accounts listed in BreakGlass to the local user
	// store and everyone else to RADIUS.
	AuthBoth = "both"
)

// Transports for RADIUS.Transport.
const (
	// TransportUDP is classic RADIUS over UDP (RFC 2865), port 1812.
	TransportUDP = "udp"
	// TransportTLS is RadSec, RADIUS over TLS (RFC 6614), port 2083.
	TransportTLS = "tls"
)

// Attributes that RADIUS.GroupsFrom may name.
const (
	GroupsFromClass    = "class"
	GroupsFromFilterID = "filter-id"
)

// File is the configuration file as written. Load fills defaults and checks
// it.
type File struct {
	// Auth is local (the default), radius or both.
	Auth string `yaml:"auth"`
	// BreakGlass lists the local accounts that log in without RADIUS when
	// Auth is both. It is required then, and refused otherwise.
	BreakGlass []string `yaml:"break_glass"`
	// RADIUS is required when Auth is radius or both, refused otherwise.
	RADIUS *RADIUS `yaml:"radius"`
	// Keys chooses where long-lived keys live. Default: the soft keystore.
	Keys *Keys `yaml:"keys"`
	// Gateway tunes the SSH gateway's deadlines, admission and failed-login
	// limits. Default: all defaults (see Gateway).
	Gateway *Gateway `yaml:"gateway"`
	// Maintenance tunes heartbeats and rotations. Default: all defaults
	// (see Maintenance).
	Maintenance *Maintenance `yaml:"maintenance"`

	dir string // of the file, for relative paths
}

// RADIUS configures the RADIUS client.
type RADIUS struct {
	// Transport is udp (the default) or tls (RadSec).
	Transport string `yaml:"transport"`
	// Servers are tried in order.
	Servers []RADIUSServer `yaml:"servers"`
	// Timeout is the wait for one reply, as a Go duration ("3s",
	// "500ms"). Default 3s; at most 60s.
	TimeoutText string        `yaml:"timeout"`
	Timeout     time.Duration `yaml:"-"`
	// Retries is how often a UDP request is sent again before the next
	// server is tried. Default 0.
	Retries int `yaml:"retries"`
	// HoldDown is how long a server that did not answer is skipped.
	// Default 30s.
	HoldDownText string        `yaml:"hold_down"`
	HoldDown     time.Duration `yaml:"-"`
	// NASIdentifier is sent in every request. Default "sallyport".
	NASIdentifier string `yaml:"nas_identifier"`
	// NASIPAddress, an IPv4 address, is sent in every request if set.
	NASIPAddress string `yaml:"nas_ip_address"`
	// MaxRounds bounds the Access-Request round trips of one login
	// (password plus challenges). Default 5; at most 20.
	MaxRounds int `yaml:"max_rounds"`
	// GroupsFrom names the Access-Accept attributes that hold the user's
	// groups: class, filter-id, or both. Default none.
	GroupsFrom []string `yaml:"groups_from"`
	// TLS is required for the tls transport and refused for udp.
	TLS *RADIUSTLS `yaml:"tls"`
}

// Key providers for Keys.Provider.
const (
	// KeysSoft keeps keys in DATA/keystore.json: for development only.
	KeysSoft = "soft"
	// KeysPKCS11 keeps keys in a PKCS#11 token (an HSM).
	KeysPKCS11 = "pkcs11"
)

// Keys chooses the key provider.
type Keys struct {
	// Provider is soft (the default) or pkcs11.
	Provider string `yaml:"provider"`
	// PKCS11 is required for the pkcs11 provider and refused otherwise.
	PKCS11 *PKCS11 `yaml:"pkcs11"`
}

// PKCS11 names a token. The PIN is never in this file: it is read from
// PINFile or from the environment variable PINEnv (exactly one).
type PKCS11 struct {
	// Module is the path of the PKCS#11 library
	// (/usr/lib/softhsm/libsofthsm2.so for SoftHSM2).
	Module string `yaml:"module"`
	// TokenLabel selects the token.
	TokenLabel string `yaml:"token_label"`
	// PINFile holds the user PIN (one line, mode 0600).
	PINFile string `yaml:"pin_file"`
	// PINEnv names an environment variable that holds the user PIN.
	PINEnv string `yaml:"pin_env"`
	// Sessions is the size of the session pool. Default 4; at most 64.
	Sessions int `yaml:"sessions"`
}

// RADIUSServer is one RADIUS server.
type RADIUSServer struct {
	// Address is host:port. Without a port, 1812 (udp) or 2083 (tls).
	Address string `yaml:"address"`
	// SecretFile holds the shared secret (one line). Required for udp;
	// for tls it defaults to the RFC 6614 secret "radsec".
	SecretFile string `yaml:"secret_file"`
}

// RADIUSTLS is the client side of RadSec's mutual TLS.
type RADIUSTLS struct {
	// CAFile holds the PEM certificates trusted to sign server
	// certificates. Required: the system roots are never used.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the gateway's client certificate and key
	// (PEM). Both are required.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the servers' certificates must carry.
	// Default: the host part of each server's address.
	ServerName string `yaml:"server_name"`
}

// Defaults and bounds applied by Load.
const (
	DefaultNASIdentifier = "sallyport"
	DefaultRADIUSTimeout = 3 * time.Second
	maxRADIUSTimeout     = time.Minute
	maxRADIUSRetries     = 10
	maxRADIUSRounds      = 20
	maxHoldDown          = time.Hour
	maxServers           = 16
	maxBreakGlass        = 64
)

// Load reads, checks and completes the configuration file at path.
func Load(path string) (*File, error) {
	b, err := readRegular(path, MaxFileSize, false)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b, filepath.Dir(abs))
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return c, nil
}

// Parse checks and completes a configuration held in memory. Relative paths
// in it are taken relative to dir.
func Parse(b []byte, dir string) (*File, error) {
	c := &File{dir: dir}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := yaml.UnmarshalWithOptions(b, c, yaml.DisallowUnknownField()); err != nil {
			return nil, errors.New(yaml.FormatError(err, false, true))
		}
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *File) check() error {
	switch c.Auth {
	case "":
		c.Auth = AuthLocal
	case AuthLocal, AuthRADIUS, AuthBoth:
	default:
		return fmt.Errorf("auth: %q is not one of local, radius, both", c.Auth)
	}
	switch {
	case c.Auth == AuthLocal && c.RADIUS != nil:
		return errors.New("a radius section is given but auth is local; set auth: radius or auth: both, or remove it")
	case c.Auth != AuthLocal && c.RADIUS == nil:
		return fmt.Errorf("auth: %s needs a radius section", c.Auth)
	case c.Auth == AuthBoth && len(c.BreakGlass) == 0:
		return errors.New("auth: both needs break_glass: the local accounts that may log in without RADIUS")
	case c.Auth != AuthBoth && len(c.BreakGlass) != 0:
		return errors.New("break_glass is only used with auth: both")
	case len(c.BreakGlass) > maxBreakGlass:
		return fmt.Errorf("break_glass: more than %d accounts", maxBreakGlass)
	}
	seen := map[string]bool{}
	for i, u := range c.BreakGlass {
		if !names.ValidUserName(u) {
			return fmt.Errorf("break_glass[%d]: %q is not a valid user name", i, u)
		}
		if seen[u] {
			return fmt.Errorf("break_glass[%d]: %q listed twice", i, u)
		}
		seen[u] = true
	}
	if c.RADIUS != nil {
		if err := c.RADIUS.check(); err != nil {
			return fmt.Errorf("radius: %w", err)
		}
	}
	if c.Keys == nil {
		c.Keys = &Keys{}
	}
	if err := c.Keys.check(); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	if c.Maintenance == nil {
		c.Maintenance = &Maintenance{}
	}
	if err := c.Maintenance.check(); err != nil {
		return fmt.Errorf("maintenance: %w", err)
	}
	if c.Gateway == nil {
		c.Gateway = &Gateway{}
	}
	if err := c.Gateway.check(); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	return nil
}

func (k *Keys) check() error {
	switch k.Provider {
	case "":
		k.Provider = KeysSoft
	case KeysSoft, KeysPKCS11:
	default:
		return fmt.Errorf("provider: %q is not soft or pkcs11", k.Provider)
	}
	if k.Provider == KeysSoft {
		if k.PKCS11 != nil {
			return errors.New("a pkcs11 section is given but provider is soft; set provider: pkcs11")
		}
		return nil
	}
	p := k.PKCS11
	switch {
	case p == nil:
		return errors.New("provider: pkcs11 needs a pkcs11 section (module, token_label, pin_file or pin_env)")
	case p.Module == "":
		return errors.New("pkcs11: module is required (the path of the PKCS#11 library)")
	case p.TokenLabel == "" || len(p.TokenLabel) > 32 || !printable(p.TokenLabel):
		return errors.New("pkcs11: token_label is required: printable, at most 32 bytes")
	case (p.PINFile == "") == (p.PINEnv == ""):
		return errors.New("pkcs11: set exactly one of pin_file and pin_env; the PIN itself never goes in this file")
	case p.Sessions < 0 || p.Sessions > 64:
		return fmt.Errorf("pkcs11: sessions: %d is not between 0 and 64", p.Sessions)
	}
	if p.PINEnv != "" && (strings.ContainsAny(p.PINEnv, "= \t") || !printable(p.PINEnv)) {
		return fmt.Errorf("pkcs11: pin_env: %q is not an environment variable name", p.PINEnv)
	}
	return nil
}

func (r *RADIUS) check() error {
	switch r.Transport {
	case "":
		r.Transport = TransportUDP
	case TransportUDP, TransportTLS:
	default:
		return fmt.Errorf("transport: %q is not udp or tls", r.Transport)
	}
	defaultPort := "1812"
	if r.Transport == TransportTLS {
		defaultPort = "2083"
		if r.TLS == nil {
			return errors.New("transport: tls needs a tls section (ca_file, cert_file, key_file)")
		}
		if r.TLS.CAFile == "" || r.TLS.CertFile == "" || r.TLS.KeyFile == "" {
			return errors.New("tls: ca_file, cert_file and key_file are all required")
		}
	} else if r.TLS != nil {
		return errors.New("a tls section is given but transport is udp; set transport: tls")
	}
	if len(r.Servers) == 0 {
		return errors.New("servers: at least one is required")
	}
	if len(r.Servers) > maxServers {
		return fmt.Errorf("servers: more than %d", maxServers)
	}
	seen := map[string]bool{}
	for i := range r.Servers {
		s := &r.Servers[i]
		addr, err := withPort(s.Address, defaultPort)
		if err != nil {
			return fmt.Errorf("servers[%d]: %w", i, err)
		}
		s.Address = addr
		if seen[addr] {
			return fmt.Errorf("servers[%d]: %s listed twice", i, addr)
		}
		seen[addr] = true
		if s.SecretFile == "" && r.Transport == TransportUDP {
			return fmt.Errorf("servers[%d] (%s): secret_file is required", i, addr)
		}
	}
	var err error
	if r.Timeout, err = duration("timeout", r.TimeoutText); err != nil {
		return err
	}
	if r.HoldDown, err = duration("hold_down", r.HoldDownText); err != nil {
		return err
	}
	switch {
	case r.Timeout == 0:
		r.Timeout = DefaultRADIUSTimeout
	case r.Timeout < 0 || r.Timeout > maxRADIUSTimeout:
		return fmt.Errorf("timeout: %v is not between 0 and %v", r.Timeout, maxRADIUSTimeout)
	}
	if r.Retries < 0 || r.Retries > maxRADIUSRetries {
		return fmt.Errorf("retries: %d is not between 0 and %d", r.Retries, maxRADIUSRetries)
	}
	if r.Retries > 0 && r.Transport == TransportTLS {
		return errors.New("retries: RadSec never retransmits (RFC 6614); leave retries at 0 with transport: tls")
	}
	if r.HoldDown < 0 || r.HoldDown > maxHoldDown {
		return fmt.Errorf("hold_down: %v is not between 0 and %v", r.HoldDown, maxHoldDown)
	}
	if r.MaxRounds < 0 || r.MaxRounds > maxRADIUSRounds {
		return fmt.Errorf("max_rounds: %d is not between 0 and %d", r.MaxRounds, maxRADIUSRounds)
	}
	if r.NASIdentifier == "" {
		r.NASIdentifier = DefaultNASIdentifier
	}
	if len(r.NASIdentifier) > 253 || !printable(r.NASIdentifier) {
		return errors.New("nas_identifier: must be printable and at most 253 bytes")
	}
	if r.NASIPAddress != "" {
		ip, err := netip.ParseAddr(r.NASIPAddress)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("nas_ip_address: %q is not an IPv4 address", r.NASIPAddress)
		}
	}
	seenG := map[string]bool{}
	for i, g := range r.GroupsFrom {
		switch g {
		case GroupsFromClass, GroupsFromFilterID:
		default:
			return fmt.Errorf("groups_from[%d]: %q is not class or filter-id", i, g)
		}
		if seenG[g] {
			return fmt.Errorf("groups_from[%d]: %q listed twice", i, g)
		}
		seenG[g] = true
	}
	return nil
}

// duration parses a Go duration; empty is zero.
func duration(key, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration such as 3s or 500ms", key, s)
	}
	return d, nil
}

// withPort checks a host[:port] address and adds port when it has none.
func withPort(addr, port string) (string, error) {
	if addr == "" {
		return "", errors.New("address is required")
	}
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		// No port: a name, an IPv4 address, or a bare or bracketed IPv6 one.
		host, p = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), port
	}
	if host == "" || strings.ContainsAny(host, " /\t[]") || !printable(host) {
		return "", fmt.Errorf("address %q is not host or host:port", addr)
	}
	// A host with a colon can only be an IPv6 address; anything else is a
	// mistyped address that would be dialled, and fail, at every login.
	if strings.Contains(host, ":") {
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() {
			return "", fmt.Errorf("address %q is not host or host:port", addr)
		}
	}
	if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("address %q has an invalid port", addr)
	}
	return net.JoinHostPort(host, p), nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || (r != ' ' && unicode.IsSpace(r)) {
			return false
		}
	}
	return true
}

// path resolves p against the configuration file's directory.
func (c *File) path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}
