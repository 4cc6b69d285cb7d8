package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/vault"
)

// writeJSONRows prints rows as JSON, one object per line (for scripts).
func writeJSONRows[T any](w io.Writer, rows []T) error {
	enc := json.NewEncoder(w)
	for _, r := range rows {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// parseList parses `… list [--json]`.
func parseList(cmd string, args []string) (asJSON bool, err error) {
	fs := newFlagSet(cmd)
	j := fs.Bool("json", false, "print one JSON object per line")
	if err := parseNone(fs, args); err != nil {
		return false, err
	}
	return *j, nil
}

// connectorFlags are --connector and --connector-secret-file.
type connectorFlags struct {
	kind, secretFile string
}

func (c *connectorFlags) register(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&c.kind, "connector", "builtin", "builtin, or an amqp:// or amqps:// URL (user name, no password)")
	fs.StringVar(&c.secretFile, "connector-secret-file", "", "file (0600) holding the broker password")
}

// spec turns the flags into a ConnectorSpec, reading the secret file.
func (c *connectorFlags) spec(cmd string) (vault.ConnectorSpec, error) {
	if c.kind == vault.ConnectorBuiltin {
		if c.secretFile != "" {
			return vault.ConnectorSpec{}, usagef("%s: the built-in connector takes no --connector-secret-file", cmd)
		}
		return vault.ConnectorSpec{Kind: vault.ConnectorBuiltin}, nil
	}
	if !strings.HasPrefix(c.kind, "amqp://") && !strings.HasPrefix(c.kind, "amqps://") {
		return vault.ConnectorSpec{}, usagef("%s: --connector must be builtin or an amqp(s):// URL", cmd)
	}
	spec := vault.ConnectorSpec{Kind: vault.ConnectorAMQP, URL: c.kind}
	if c.secretFile != "" {
		secret, err := config.ReadSecretFile(c.secretFile)
		if err != nil {
			return vault.ConnectorSpec{}, fmt.Errorf("%s: connector secret file: %w", cmd, err)
		}
		spec.Secret = secret
	}
	return spec, nil
}

func ctlSiteAdd(ctx context.Context, env *ctlEnv, args []string) error {
	fs := newFlagSet("site add")
	var cf connectorFlags
	cf.register(fs)
	name, err := parseNamed(fs, args)
	if err != nil {
		return err
	}
	if err := refuseFlagLike("site add", "name", name); err != nil {
		return err
	}
	spec, err := cf.spec("site add")
	if err != nil {
		return err
	}
	defer spec.Wipe()
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.AddSite(ctx, vault.SiteSpec{Name: name, Connector: spec}); err != nil {
		return fmt.Errorf("site add %s: %w", name, err)
	}
	return nil
}

func ctlSiteSetConnector(ctx context.Context, env *ctlEnv, args []string) error {
	fs := newFlagSet("site set-connector")
	secretFile := fs.String("connector-secret-file", "", "file (0600) holding the broker password")
	rest, err := parsePositional(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 2 {
		return usagef("site set-connector: want SITE and CONNECTOR (builtin or an amqp(s):// URL)")
	}
	cf := connectorFlags{kind: rest[1], secretFile: *secretFile}
	spec, err := cf.spec("site set-connector")
	if err != nil {
		return err
	}
	defer spec.Wipe()
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetSiteConnector(ctx, rest[0], spec); err != nil {
		return fmt.Errorf("site set-connector %s: %w", rest[0], err)
	}
	return nil
}

func engineCounts(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", m[k], k)
	}
	return strings.Join(parts, ", ")
}

func siteConnector(s vault.SiteInfo) string {
	if s.ConnectorURL != "" {
		return s.ConnectorURL
	}
	return s.Connector
}

func ctlSiteList(ctx context.Context, env *ctlEnv, args []string) error {
	asJSON, err := parseList("site list", args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	sites, err := c.ListSites(ctx)
	if err != nil {
		return fmt.Errorf("site list: %w", err)
	}
	if asJSON {
		return writeJSONRows(env.stdout, sites)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCONNECTOR\tKEY\tENGINES\tSECRETS")
	for _, s := range sites {
		fmt.Fprintf(tw, "%s\t%s\tv%d\t%s\t%d\n", printable(s.Name), printable(siteConnector(s)), s.KeyVersion, engineCounts(s.Engines), s.Secrets)
	}
	return tw.Flush()
}

func ctlSiteShow(ctx context.Context, env *ctlEnv, args []string) error {
	name, err := parseNamed(newFlagSet("site show"), args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.ShowSite(ctx, name)
	if err != nil {
		return fmt.Errorf("site show %s: %w", name, err)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	for _, row := range [][2]string{
		{"name", s.Name},
		{"connector", siteConnector(s)},
		{"broker password", yesNo(s.ConnectorSecret)},
		{"key version", strconv.Itoa(s.KeyVersion)},
		{"engines", engineCounts(s.Engines)},
		{"secrets", strconv.Itoa(s.Secrets)},
		{"created", s.Created.Local().Format(time.RFC3339)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], printable(row[1]))
	}
	return tw.Flush()
}

func ctlSiteRotateKey(ctx context.Context, env *ctlEnv, args []string) error {
	name, err := parseNamed(newFlagSet("site rotate-key"), args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	v, err := c.RotateSiteKey(ctx, name)
	if err != nil {
		return fmt.Errorf("site rotate-key %s: %w", name, err)
	}
	fmt.Fprintf(env.stdout, "site %s: key version %d; the previous one still opens queued items for %v\n", name, v, vault.SiteKeyGrace)
	return nil
}

func ctlSitePing(ctx context.Context, env *ctlEnv, args []string) error {
	name, err := parseNamed(newFlagSet("site ping"), args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.PingSite(ctx, name)
	if err != nil {
		return fmt.Errorf("site ping %s: %w", name, err)
	}
	fmt.Fprintf(env.stdout, "engine %s of site %s answered in %v (version %s)\n", r.Engine, r.Site, r.RTT.Round(time.Microsecond), printable(r.Version))
	return nil
}

func ctlEngineList(ctx context.Context, env *ctlEnv, args []string) error {
	asJSON, err := parseList("engine list", args)
	if err != nil {
		return err
	}
	c, err := env.client()
	if err != nil {
		return err
	}
	defer c.Close()
	engines, err := c.ListEngines(ctx)
	if err != nil {
		return fmt.Errorf("engine list: %w", err)
	}
	if asJSON {
		return writeJSONRows(env.stdout, engines)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSITE\tSTATE\tNAME\tFINGERPRINT\tLAST SEEN")
	for _, e := range engines {
		seen := "never"
		if !e.LastSeen.IsZero() {
			seen = e.LastSeen.Local().Format(time.RFC3339)
		}
		name := e.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, printable(e.Site), e.State, printable(name), e.Fingerprint, seen)
	}
	return tw.Flush()
}

func ctlEngineSet(cmd string, set func(*vault.Client, context.Context, string) (vault.EngineInfo, error)) func(context.Context, *ctlEnv, []string) error {
	return func(ctx context.Context, env *ctlEnv, args []string) error {
		return ctlNamed(ctx, env, cmd, args, func(c *vault.Client, ctx context.Context, id string) error {
			info, err := set(c, ctx, id)
			if err == nil {
				fmt.Fprintf(env.stdout, "engine %s of site %s: %s\n", info.ID, printable(info.Site), info.State)
			}
			return err
		})
	}
}
