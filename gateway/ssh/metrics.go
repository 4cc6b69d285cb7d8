package ssh

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus series. A nil *Metrics records nothing.
type Metrics struct {
	sessions     prometheus.Gauge
	loginsOK     prometheus.Counter
	loginsFailed prometheus.Counter
	bytesUp      prometheus.Counter // client → target
	bytesDown    prometheus.Counter // target → client
	refused      *prometheus.CounterVec
	unchecked    *prometheus.CounterVec
	revoked      prometheus.Counter
}

// NewMetrics creates the proxy's series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	logins := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sallyport_ssh_logins_total",
		Help: "Gateway logins by result (ok or failed).",
	}, []string{"result"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sallyport_ssh_bytes_relayed_total",
		Help: "Bytes relayed between clients and targets, by direction (up: client to target).",
	}, []string{"direction"})
	m := &Metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sallyport_ssh_sessions_active",
			Help: "Connections authenticated and put through to a target.",
		}),
		loginsOK:     logins.WithLabelValues("ok"),
		loginsFailed: logins.WithLabelValues("failed"),
		bytesUp:      bytes.WithLabelValues("up"),
		bytesDown:    bytes.WithLabelValues("down"),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sallyport_ssh_connections_refused_total",
			Help: "Connections refused or closed before login by admission, by reason (rate, per_source_cap, early_drop, full, evicted, timeout).",
		}, []string{"reason"}),
		unchecked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sallyport_ssh_logins_refused_unchecked_total",
			Help: "Login attempts refused before any credential was checked, by reason (login_too_long, login_malformed, rate_limited).",
		}, []string{"reason"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sallyport_ssh_sessions_revoked_total",
			Help: "Live sessions ended because their grant no longer held (user or secret removed).",
		}),
	}
	reg.MustRegister(m.sessions, logins, bytes, m.refused, m.unchecked, m.revoked)
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

func (m *Metrics) revokedSession() {
	if m != nil {
		m.revoked.Inc()
	}
}

func (m *Metrics) login(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.loginsOK.Inc()
	} else {
		m.loginsFailed.Inc()
	}
}

func (m *Metrics) active(delta float64) {
	if m != nil {
		m.sessions.Add(delta)
	}
}

func (m *Metrics) relayed(up bool, n int) {
	if m == nil || n <= 0 {
		return
	}
	if up {
		m.bytesUp.Add(float64(n))
	} else {
		m.bytesDown.Add(float64(n))
	}
}
