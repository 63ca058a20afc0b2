// Package ops holds what operators run beside keyshift: the Grafana
// dashboard (grafana/keyshift.json) and the Prometheus alerting rules
// (prometheus/keyshift-rules.yaml, with the PrometheusRule generated from
// them). It has no code of its own; its tests check the rules with
// promtool, keep the PrometheusRule in step with the rules file, and check
// that every metric the dashboard and the rules name is one that a real
// sidecar or controller exports.
package ops
