package vault

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
