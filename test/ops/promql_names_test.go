package ops_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// metricNames finds the selected metrics and nothing else: not functions,
// aggregations, keywords, label names of grouping clauses, label values,
// durations, numbers or Grafana variables.
func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`keyshift_ready == 0`, []string{"keyshift_ready"}},
		{`sum by (op, result) (rate(keyshift_requests_total{op=~"encrypt|decrypt", result!="ok"}[$__rate_interval]))`, []string{"keyshift_requests_total"}},
		{`histogram_quantile(0.99, sum by (le, op) (rate(keyshift_request_duration_seconds_bucket[5m])))`, []string{"keyshift_request_duration_seconds_bucket"}},
		{`keyshift_controller_primary_age_seconds > (keyshift_controller_rotation_period_seconds > 0) + 3600`,
			[]string{"keyshift_controller_primary_age_seconds", "keyshift_controller_rotation_period_seconds"}},
		{"sum by (keyset) (a_total unless a_total offset 30m) > 0\nor\nsum without (instance) (rate(b_total{x='}'}[1h:5m] @ end()))",
			[]string{"a_total", "b_total"}},
		{`sum(x) by (keyset) / on (keyset) group_left (kind) max(y) by (keyset, kind)`, []string{"x", "y"}},
		{`count(keyshift_ready == 0) or vector(0)`, []string{"keyshift_ready"}},
		{`time() - min by (keyset) (keyshift_keyring_loaded_timestamp_seconds{keyset=~"${keyset:regex}"})`, []string{"keyshift_keyring_loaded_timestamp_seconds"}},
		{`1e9 * 0x1f - .5 + Inf * NaN + absent(m{a="sum(b)"})`, []string{"m"}},
		{`topk(3, ns:rule:rate5m) and bool_metric`, []string{"bool_metric", "ns:rule:rate5m"}},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			got, err := metricNames(tc.expr)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
	if _, err := metricNames(`{__name__="keyshift_ready"}`); err == nil {
		t.Fatal("a selector by __name__ was accepted")
	}
}
