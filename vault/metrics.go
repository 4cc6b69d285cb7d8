package vault

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sallyport/sallyport/connector"
	"github.com/sallyport/sallyport/names"
)

// engineCollector reports engines per site and state, and each engine's
// last check-in, read from the store at scrape time.
type engineCollector struct {
	v        *Vault
	count    *prometheus.Desc
	lastSeen *prometheus.Desc
}

func newEngineCollector(v *Vault) prometheus.Collector {
	return &engineCollector{
		v: v,
		count: prometheus.NewDesc("sallyport_vault_engines", "Engines by site and state.",
			[]string{"site", "state"}, nil),
		lastSeen: prometheus.NewDesc("sallyport_vault_engine_last_seen_seconds", "When each approved engine last pulled its configuration (unix time).",
			[]string{"site", "engine"}, nil),
	}
}

func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.count
	ch <- c.lastSeen
}

func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	engines, err := c.v.ListEngines(ctx)
	if err != nil {
		return
	}
	counts := map[[2]string]int{}
	for _, e := range engines {
		counts[[2]string{e.Site, e.State}]++
		if e.State == EngineApproved && !e.LastSeen.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.lastSeen, prometheus.GaugeValue, float64(e.LastSeen.UnixNano())/1e9, e.Site, e.ID)
		}
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.count, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
}

// queueDepther is a connector that can tell how many messages wait on a
// queue (connector.MemorySession, connector/amqp.Conn).
type queueDepther interface {
	QueueDepth(ctx context.Context, queue string) (int, error)
}

// queueCollector reports the depth of each served site's shared queues,
// asked of the connector at scrape time.
type queueCollector struct {
	d     *Daemon
	depth *prometheus.Desc
}

func newQueueCollector(d *Daemon) prometheus.Collector {
	return &queueCollector{d: d, depth: prometheus.NewDesc("sallyport_vault_queue_depth",
		"Messages waiting on each site's queues (requests from engines, work for them, their results).",
		[]string{"site", "queue"}, nil)}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.depth }

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	// One bound for the whole scrape: a slow broker costs the scrape
	// some series, never a stuck scraper.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.d.sitesMu.Lock()
	conns := make(map[string]connector.Connector, len(c.d.sites))
	for site, s := range c.d.sites {
		conns[site] = s.conn
	}
	c.d.sitesMu.Unlock()
	for site, conn := range conns {
		qd, ok := conn.(queueDepther)
		if !ok {
			continue
		}
		for kind, queue := range map[string]string{
			"requests": names.RequestQueue(site), "work": names.WorkQueue(site), "results": names.ResultQueue(site),
		} {
			if ctx.Err() != nil {
				return
			}
			if n, err := qd.QueueDepth(ctx, queue); err == nil {
				ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(n), site, kind)
			}
		}
	}
}

// maintenanceCollector reports each secret's last heartbeat and its
// rotations, read from the store at scrape time.
type maintenanceCollector struct {
	v         *Vault
	heartbeat *prometheus.Desc
	rotation  *prometheus.Desc
	open      *prometheus.Desc
}

func newMaintenanceCollector(v *Vault) prometheus.Collector {
	return &maintenanceCollector{v: v,
		heartbeat: prometheus.NewDesc("sallyport_vault_secret_heartbeat_timestamp_seconds",
			"When each secret's last heartbeat came back (unix time), labelled with what it found: ok, rejected, unreachable, host_key_changed or error.",
			[]string{"site", "secret", "outcome"}, nil),
		rotation: prometheus.NewDesc("sallyport_vault_secret_rotated_timestamp_seconds",
			"When each secret's credential was last replaced by a rotation (unix time).",
			[]string{"site", "secret"}, nil),
		open: prometheus.NewDesc("sallyport_vault_rotations_open",
			"Rotations under way, by site and phase (change, or verify: the outcome of a change is being found out).",
			[]string{"site", "phase"}, nil),
	}
}

func (c *maintenanceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.heartbeat
	ch <- c.rotation
	ch <- c.open
}

func (c *maintenanceCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := c.v.db.QueryContext(ctx, `SELECT secrets.site, s.secret, s.hb_outcome, s.hb_at, s.rotated_at
		FROM secret_schedule s JOIN secrets ON secrets.name = s.secret`)
	if err != nil {
		return
	}
	for rows.Next() {
		var site, secret, outcome string
		var hbAt, rotAt int64
		if rows.Scan(&site, &secret, &outcome, &hbAt, &rotAt) != nil {
			break
		}
		if outcome != "" {
			ch <- prometheus.MustNewConstMetric(c.heartbeat, prometheus.GaugeValue, float64(hbAt)/1e9, site, secret, outcome)
		}
		if rotAt > 0 {
			ch <- prometheus.MustNewConstMetric(c.rotation, prometheus.GaugeValue, float64(rotAt)/1e9, site, secret)
		}
	}
	_ = rows.Close()
	open, err := c.v.db.QueryContext(ctx, `SELECT secrets.site, r.phase, COUNT(*) FROM rotations r JOIN secrets ON secrets.name = r.secret
		WHERE r.state = 'open' GROUP BY secrets.site, r.phase`)
	if err != nil {
		return
	}
	defer open.Close()
	for open.Next() {
		var site, phase string
		var n int
		if open.Scan(&site, &phase, &n) != nil {
			return
		}
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(n), site, phase)
	}
}
