// Package ops checks what operators run beside keyshift, kept in ops/ at
// the repository root: the Grafana dashboard (ops/grafana/keyshift.json)
// and the Prometheus alerting rules (ops/prometheus/keyshift-rules.yaml,
// with the PrometheusRule generated from them). Its tests check the rules
// with promtool, keep the PrometheusRule in step with the rules file, and
// check that every metric the dashboard and the rules name is one that a
// real sidecar or controller exports.
package ops
