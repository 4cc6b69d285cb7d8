package engine

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's Prometheus series, labelled with its site.
type metrics struct {
	items    *prometheus.CounterVec   // kind, outcome
	rtt      *prometheus.HistogramVec // kind
	lastPull prometheus.Gauge
	up       prometheus.Gauge
}

// newMetrics registers the engine's series on reg; a nil reg keeps them
// unregistered (they still count, for tests).
func newMetrics(reg prometheus.Registerer, site string) (*metrics, error) {
	labels := prometheus.Labels{"site": site}
	m := &metrics{
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sallyport_engine_items_total", ConstLabels: labels,
			Help: "Work items and replies the engine handled, by kind and outcome (ok, or why it was dropped).",
		}, []string{"kind", "outcome"}),
		rtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sallyport_engine_request_seconds", ConstLabels: labels,
			Help:    "Round trip of the engine's requests to the vault through the site connector, by kind.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"kind"}),
		lastPull: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sallyport_engine_last_config_pull_timestamp_seconds", ConstLabels: labels,
			Help: "When the engine last pulled its configuration from the vault (Unix time).",
		}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sallyport_engine_connector_configured", ConstLabels: labels,
			Help: "1 while the engine has a site connector and keys from the vault.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.items, m.rtt, m.lastPull, m.up} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) count(kind, outcome string) { m.items.WithLabelValues(kind, outcome).Inc() }

func (m *metrics) observe(kind string, d time.Duration) {
	m.rtt.WithLabelValues(kind).Observe(d.Seconds())
}
