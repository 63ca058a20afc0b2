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
			Help: "Serving certificate reloads from disk, by result (ok or error; on error the previous certificate stays).",
		}, []string{"result"}),
		certExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyshift_injector_tls_cert_not_after_seconds",
			Help: "Unix time the serving certificate in use expires.",
		}),
	}
	m.Registry.MustRegister(m.admissions, m.duration, m.tlsReloads, m.certExpiry,
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
