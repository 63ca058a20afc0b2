package injector

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics is the injector's metric set, on its own registry (never the
// global one), served at /metrics.
type Metrics struct {
	// Registry holds every injector metric plus the Go and process
	// collectors.
	Registry *prometheus.Registry

	admissions *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	tlsReloads *prometheus.CounterVec
	certExpiry prometheus.Gauge
	// Self-managed certificate (--cert-mode=self) only.
	secretWrites    *prometheus.CounterVec
	caBundlePatches *prometheus.CounterVec
}

// NewMetrics registers the injector's metrics on a fresh registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_injector_admissions_total",
			Help: "Admission requests by result: injected, skipped, denied, error, invalid_request.",
		}, []string{"result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyshift_injector_admission_duration_seconds",
			Help:    "Time to answer one admission request, from the first byte read to the response written.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"result"}),
		tlsReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_injector_tls_reloads_total",
			Help: "Serving certificate reloads, from the files or from the self-managed Secret, by result (ok or error; on error the previous certificate stays).",
		}, []string{"result"}),
		certExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyshift_injector_tls_cert_not_after_seconds",
			Help: "Unix time the serving certificate in use expires.",
		}),
		secretWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_injector_tls_secret_writes_total",
			Help: "Writes of the self-managed TLS Secret by result: created, renewed, conflict (another replica wrote first; reread), error.",
		}, []string{"result"}),
		caBundlePatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_injector_cabundle_patches_total",
			Help: "Patches of the webhook configuration's caBundle by the self-managed certificate, by result (ok or error).",
		}, []string{"result"}),
	}
	m.Registry.MustRegister(m.admissions, m.duration, m.tlsReloads, m.certExpiry, m.secretWrites, m.caBundlePatches,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{ResultInjected, ResultSkipped, ResultDenied, ResultError, ResultInvalid} {
		m.admissions.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) observe(result string, d time.Duration) {
	if m == nil {
		return
	}
	m.admissions.WithLabelValues(result).Inc()
	m.duration.WithLabelValues(result).Observe(d.Seconds())
}

func (m *Metrics) reloaded(ok bool, notAfter time.Time) {
	if m == nil {
		return
	}
	if !ok {
		m.tlsReloads.WithLabelValues("error").Inc()
		return
	}
	m.tlsReloads.WithLabelValues("ok").Inc()
	m.certExpiry.Set(float64(notAfter.Unix()))
}

func (m *Metrics) secretWrite(result string) {
	if m == nil {
		return
	}
	m.secretWrites.WithLabelValues(result).Inc()
}

func (m *Metrics) caBundlePatched(ok bool) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "error"
	}
	m.caBundlePatches.WithLabelValues(result).Inc()
}
