package rdp

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the RDP proxy's Prometheus series. A nil *Metrics records
// nothing.
type Metrics struct {
	sessions     prometheus.Gauge
	loginsOK     prometheus.Counter
	loginsFailed prometheus.Counter
	bytesUp      prometheus.Counter // client → target
	bytesDown    prometheus.Counter // target → client
	refused      *prometheus.CounterVec
	unchecked    *prometheus.CounterVec
}

// NewMetrics creates the proxy's series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	logins := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sallyport_rdp_logins_total",
		Help: "RDP gateway logins (token proved, credential checked out) by result (ok or failed).",
	}, []string{"result"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sallyport_rdp_bytes_relayed_total",
		Help: "Bytes relayed between RDP clients and targets, by direction (up: client to target).",
	}, []string{"direction"})
	m := &Metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sallyport_rdp_sessions_active",
			Help: "RDP connections authenticated and put through to a target.",
		}),
		loginsOK:     logins.WithLabelValues("ok"),
		loginsFailed: logins.WithLabelValues("failed"),
		bytesUp:      bytes.WithLabelValues("up"),
		bytesDown:    bytes.WithLabelValues("down"),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sallyport_rdp_connections_refused_total",
			Help: "RDP connections refused before login, by reason (admission: rate, per_source_cap, early_drop, full, evicted, timeout; negotiation; malformed).",
		}, []string{"reason"}),
		unchecked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sallyport_rdp_logins_refused_unchecked_total",
			Help: "RDP login attempts refused before any token was checked, by reason (login_malformed, rate_limited).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.sessions, logins, bytes, m.refused, m.unchecked)
	return m
}

func (m *Metrics) refusedConn(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) refusedUnchecked(reason string) {
	if m != nil {
		m.unchecked.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) login(ok bool) {
	switch {
	case m == nil:
	case ok:
		m.loginsOK.Inc()
	default:
		m.loginsFailed.Inc()
	}
}

func (m *Metrics) active(delta float64) {
	if m != nil {
		m.sessions.Add(delta)
	}
}

func (m *Metrics) relayed(up bool, n int) {
	switch {
	case m == nil || n <= 0:
	case up:
		m.bytesUp.Add(float64(n))
	default:
		m.bytesDown.Add(float64(n))
	}
}
