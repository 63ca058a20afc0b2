package rotation

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/keyset"
)

// The series the alerting rules in ops/prometheus read: each keyset's
// rotation period beside its primary's age, and the audit chain failures,
// at 0 from the first pass (so increase() sees the first failure), then
// counted when the stored trail is altered and when its chain goes back.
func TestMetricsPeriodAndAuditFailures(t *testing.T) {
	r := newRig(t, &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour)})
	reg := prometheus.NewRegistry()
	r.eng.Metrics = NewMetrics(reg)
	ctx := context.Background()
	check := func(step string, broken, rolledBack float64) {
		t.Helper()
		want := map[string]float64{
			`keyshift_controller_rotation_period_seconds{keyset="payments"}`:                 3600,
			`keyshift_controller_audit_failures_total{keyset="payments",kind="broken"}`:      broken,
			`keyshift_controller_audit_failures_total{keyset="payments",kind="rolled_back"}`: rolledBack,
		}
		got := gathered(t, reg, "keyshift_controller_rotation_period_seconds", "keyshift_controller_audit_failures_total")
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("%s: series (-want +got):\n%s", step, diff)
		}
	}

	if _, err := r.eng.Reconcile(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	check("first pass, nothing due", 0, 0)

	r.dist.acked["pod-a"], r.dist.acked["pod-b"] = 99, 99
	r.now = r.now.Add(time.Hour)
	if out, err := r.eng.Reconcile(ctx, "payments"); err != nil || out.Action != "add-pending" {
		t.Fatalf("%+v %v", out, err)
	}
	check("add-pending", 0, 0)

	p := r.store.TrailPath("payments")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, bytes.Replace(b, []byte(`"result":"ok"`), []byte(`"result":"failed"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := r.eng.Reconcile(ctx, "payments"); err != nil || out.Action != "promote" {
		t.Fatalf("%+v %v", out, err)
	}
	check("trail altered", 1, 0)

	// The trail and head put back as they were after record 1: the chain
	// went back behind record 2, which this engine stored.
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	first, err := audit.ParseTrail(b, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.store.HeadPath("payments"), []byte("1:"+first.Records[0].MAC), 0o600); err != nil {
		t.Fatal(err)
	}
	r.now = r.now.Add(time.Hour)
	if _, err := r.eng.Reconcile(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	check("chain rolled back", 1, 1)
}

// gathered is every series of the named families in reg, written
// name{label="value",...} as on /metrics, with its value.
func gathered(t *testing.T, reg prometheus.Gatherer, names ...string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return out
}
