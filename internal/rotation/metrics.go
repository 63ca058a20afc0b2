package rotation

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyshift/keyshift/internal/keyset"
)

// Metrics are the controller's series. A nil *Metrics records nothing.
type Metrics struct {
	keyAge   *prometheus.GaugeVec
	period   *prometheus.GaugeVec
	versions *prometheus.GaugeVec
	pendAcks *prometheus.GaugeVec
	readers  *prometheus.GaugeVec
	ready    *prometheus.GaugeVec
	failures *prometheus.CounterVec
	steps    *prometheus.CounterVec
	audit    *prometheus.CounterVec
}

// Audit failure kinds, the "kind" label of
// keyshift_controller_audit_failures_total.
const (
	auditBroken     = "broken"      // the stored trail does not verify
	auditRolledBack = "rolled_back" // the chain's head went back behind a record this controller stored
)

// NewMetrics registers the controller's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		keyAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_controller_primary_age_seconds", Help: "Age of each keyset's primary version since promotion.",
		}, []string{"keyset"}),
		period: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_controller_rotation_period_seconds", Help: "Each keyset's rotation period (0: no scheduled rotation), to compare with keyshift_controller_primary_age_seconds.",
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
		audit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_controller_audit_failures_total", Help: "Audit chains found damaged, by keyset and kind (broken: the stored trail does not verify; rolled_back: the chain went back).",
		}, []string{"keyset", "kind"}),
	}
	reg.MustRegister(m.keyAge, m.period, m.versions, m.pendAcks, m.readers, m.ready, m.failures, m.steps, m.audit)
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
	var period time.Duration
	if ks.Policy != nil {
		period = time.Duration(ks.Policy.RotationPeriod)
	}
	m.period.WithLabelValues(label).Set(period.Seconds())
	// Both kinds start at 0, so an alert on increase() sees the first one.
	m.audit.WithLabelValues(label, auditBroken)
	m.audit.WithLabelValues(label, auditRolledBack)
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

func (m *Metrics) auditFailure(name, kind string) {
	if m != nil {
		m.audit.WithLabelValues(name, kind).Inc()
	}
}
