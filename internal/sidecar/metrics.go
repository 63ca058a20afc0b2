package sidecar

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/keyshift/keyshift/internal/sidecar/cryptoapi"
)

// Metrics are the sidecar's Prometheus series, on a registry of its own
// (never the global one). Labels carry operation names, error reasons,
// keyset names and version numbers: never request data.
type Metrics struct {
	Registry   *prometheus.Registry
	requests   *prometheus.CounterVec
	errors     *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	items      *prometheus.CounterVec
	versions   *prometheus.GaugeVec
	primary    *prometheus.GaugeVec
	reloads    *prometheus.CounterVec
	lastReload *prometheus.GaugeVec
	peers      *prometheus.CounterVec
	kmsPolls   *prometheus.CounterVec

	okCounters map[string]prometheus.Counter
	durations  map[string]prometheus.Observer
}

var ops = []string{"encrypt", "decrypt", "rewrap", "encrypt_batch", "decrypt_batch", "rewrap_batch", "sign", "verify"}

// NewMetrics registers the sidecar's series on a fresh registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_requests_total", Help: "Crypto API calls by operation and result (ok or error).",
		}, []string{"op", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_request_errors_total", Help: "Failed crypto API calls and batch items by operation and reason.",
		}, []string{"op", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyshift_request_duration_seconds", Help: "Time spent in the crypto service per call.",
			Buckets: []float64{1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 2.5e-2},
		}, []string{"op"}),
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_batch_items_total", Help: "Batch items processed by operation and result.",
		}, []string{"op", "result"}),
		versions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_key_versions_loaded", Help: "Key versions held in memory, by keyset and state.",
		}, []string{"keyset", "state"}),
		primary: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_primary_version", Help: "The version new ciphertexts are sealed under.",
		}, []string{"keyset"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_keyring_reloads_total", Help: "Keyset loads by source and result (ok, unchanged, or an error reason).",
		}, []string{"keyset", "source", "result"}),
		lastReload: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyshift_keyring_loaded_timestamp_seconds", Help: "When the keyset's current keyring was swapped in.",
		}, []string{"keyset"}),
		peers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_peer_rejections_total", Help: "Connections or calls refused because of the peer's UID.",
		}, []string{"api"}),
		kmsPolls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_kms_polls_total", Help: "KEK status polls by keyset and result (ok or an error reason).",
		}, []string{"keyset", "result"}),
		okCounters: map[string]prometheus.Counter{},
		durations:  map[string]prometheus.Observer{},
	}
	m.Registry.MustRegister(m.requests, m.errors, m.duration, m.items, m.versions, m.primary, m.reloads, m.lastReload, m.peers, m.kmsPolls,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, op := range ops {
		m.okCounters[op] = m.requests.WithLabelValues(op, "ok")
		m.durations[op] = m.duration.WithLabelValues(op)
	}
	return m
}

// readiness registers keyshift_ready, what /readyz says as a series: 1
// when every configured keyset is loaded, else 0. Alerts read it where
// the kubelet's probe result is not scraped.
func (m *Metrics) readiness(ready func() bool) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyshift_ready", Help: "1 when every configured keyset is loaded (what /readyz reports), else 0.",
	}, func() float64 {
		if ready() {
			return 1
		}
		return 0
	}))
}

func (m *Metrics) observe(op string, d time.Duration, err error) {
	m.durations[op].Observe(d.Seconds())
	if err == nil {
		m.okCounters[op].Inc()
		return
	}
	m.requests.WithLabelValues(op, "error").Inc()
	m.errors.WithLabelValues(op, cryptoapi.Reason(err)).Inc()
}

// batchItems counts a batch's items: the successes in one step, each
// failure by its reason.
func (m *Metrics) batchItems(op string, errs []error) {
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
			continue
		}
		m.items.WithLabelValues(op, "error").Inc()
		m.errors.WithLabelValues(op, cryptoapi.Reason(err)).Inc()
	}
	m.items.WithLabelValues(op, "ok").Add(float64(ok))
}

func (m *Metrics) loaded(name string, s *ringSet) {
	counts := map[string]float64{"pending": 0, "primary": 0, "decrypt-only": 0, "revoked": 0}
	for _, v := range s.doc.Versions {
		if _, ok := s.keys[v.Version]; ok {
			counts[string(v.State)]++
		}
	}
	for state, n := range counts {
		m.versions.WithLabelValues(name, state).Set(n)
	}
	m.primary.WithLabelValues(name).Set(float64(s.primary.Version()))
	m.lastReload.WithLabelValues(name).Set(float64(s.loadedAt.Unix()))
}

func (m *Metrics) reload(name, source, result string) {
	m.reloads.WithLabelValues(name, source, result).Inc()
}

// PeerRejected counts a connection or call refused because of its peer's
// UID, on api ("grpc", "http", "extauthz").
func (m *Metrics) PeerRejected(api string) {
	m.peers.WithLabelValues(api).Inc()
}

func (m *Metrics) kmsPoll(name, result string) {
	m.kmsPolls.WithLabelValues(name, result).Inc()
}
