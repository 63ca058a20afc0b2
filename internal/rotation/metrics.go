package rotation

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyshift/keyshift/internal/keyset"
)

// Metrics are the controller's series. A nil *Metrics records nothing.
type Metrics struct {
	keyAge   *prometheus.GaugeVec
	versions *prometheus.GaugeVec
	pendAcks *prometheus.GaugeVec
	readers  *prometheus.GaugeVec
	ready    *prometheus.GaugeVec
	failures *prometheus.CounterVec
	steps    *prometheus.CounterVec
}

// NewMetrics registers the controller's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		keyAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_controller_primary_age_seconds", Help: "Age of each keyset's primary version since promotion.",
		}, []string{"keyset"}),
		versions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_controller_versions", Help: "Versions per keyset and state.",
		}, []string{"keyset", "state"}),
		pendAcks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_controller_pending_acks", Help: "Sidecars that have not yet loaded the pending version.",
		}, []string{"keyset"}),
		readers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_controller_pending_readers", Help: "Readers of the pending version: the pods using the keyset (when the controller knows them) and every connected sidecar.",
		}, []string{"keyset"}),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_controller_pending_readers_ready", Help: "Readers that have the pending version: ACKed over xDS, or trusted to the mounted Secret.",
		}, []string{"keyset"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_controller_rotation_failures_total", Help: "Failed or blocked lifecycle steps by keyset, step and reason.",
		}, []string{"keyset", "step", "reason"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_controller_steps_total", Help: "Completed lifecycle steps by keyset and action.",
		}, []string{"keyset", "action"}),
	}
	reg.MustRegister(m.keyAge, m.versions, m.pendAcks, m.readers, m.ready, m.failures, m.steps)
	return m
}

func (m *Metrics) observe(label string, ks *keyset.Keyset, now time.Time) {
	if m == nil {
		return
	}
	p := ks.Primary()
	since := p.CreatedAt
	if p.PromotedAt != nil {
		since = *p.PromotedAt
	}
	m.keyAge.WithLabelValues(label).Set(now.Sub(since).Seconds())
	counts := map[keyset.State]float64{keyset.StatePending: 0, keyset.StatePrimary: 0, keyset.StateDecryptOnly: 0, keyset.StateRevoked: 0, keyset.StateDisabled: 0, keyset.StateDestroyed: 0}
	for _, v := range ks.Versions {
		counts[v.State]++
	}
	for s, n := range counts {
		m.versions.WithLabelValues(label, string(s)).Set(n)
	}
	if LatestPending(ks) == 0 {
		m.pendAcks.WithLabelValues(label).Set(0)
		m.readers.WithLabelValues(label).Set(0)
		m.ready.WithLabelValues(label).Set(0)
	}
}

// pending records "N of M readers have the pending version" and how many
// promotion still waits for.
func (m *Metrics) pending(name string, rc readerCount) {
	if m != nil {
		m.pendAcks.WithLabelValues(name).Set(float64(len(rc.waiting)))
		m.readers.WithLabelValues(name).Set(float64(rc.total))
		m.ready.WithLabelValues(name).Set(float64(rc.have))
	}
}

func (m *Metrics) failure(name, step, reason string) {
	if m != nil {
		if reason == "" {
			reason = "other"
		}
		m.failures.WithLabelValues(name, step, reason).Inc()
	}
}

func (m *Metrics) step(name, action string) {
	if m != nil {
		m.steps.WithLabelValues(name, action).Inc()
	}
}
