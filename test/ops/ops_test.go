package ops_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"

	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation/rotationtest"
	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/internal/testbin"
	"github.com/keyshift/keyshift/sidecar/client"
)

var update = flag.Bool("update", false, "rewrite ops/prometheus/keyshift-prometheusrule.yaml from ops/prometheus/keyshift-rules.yaml")

// The files checked, in ops/ at the repository root.
const (
	opsDir        = "../../ops"
	rulesFile     = opsDir + "/prometheus/keyshift-rules.yaml"
	rulesTestFile = opsDir + "/prometheus/keyshift-rules.test.yaml"
	ruleCRFile    = opsDir + "/prometheus/keyshift-prometheusrule.yaml"
	dashboardFile = opsDir + "/grafana/keyshift.json"
)

// promtool finds the promtool that scripts/promtool-build.sh builds; the
// test fails, saying so, when it is missing.
func promtool(t *testing.T) string {
	t.Helper()
	return testbin.Binary{Name: "promtool", What: "promtool (Prometheus rules checker)", BinEnv: "KEYSHIFT_PROMTOOL_BIN",
		Install: "scripts/promtool-build.sh"}.Find(t)
}

func runPromtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The rules file is valid for Prometheus: promtool's own check (syntax,
// PromQL, templates).
func TestRulesCheck(t *testing.T) {
	out := runPromtool(t, ".", "check", "rules", rulesFile)
	if !strings.Contains(out, "SUCCESS: 7 rules found") {
		t.Fatalf("promtool check rules: want 7 rules, got:\n%s", out)
	}
}

// Every alert fires on the series of its failure, and not on the healthy
// ones beside them (ops/prometheus/keyshift-rules.test.yaml).
func TestRulesUnitTests(t *testing.T) {
	out := runPromtool(t, filepath.Dir(rulesTestFile), "test", "rules", filepath.Base(rulesTestFile))
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
}

// ruleGroups is a rules file as Prometheus reads it.
type ruleGroups struct {
	Groups []map[string]any `json:"groups"`
}

func readRules(t *testing.T) ruleGroups {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rg ruleGroups
	if err := yaml.UnmarshalStrict(b, &rg); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if len(rg.Groups) == 0 {
		t.Fatalf("%s: no groups", rulesFile)
	}
	return rg
}

// prometheusRule is the Prometheus Operator's object for the same groups.
func prometheusRule(t *testing.T) []byte {
	t.Helper()
	obj := map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "PrometheusRule",
		"metadata": map[string]any{
			"name":   "keyshift",
			"labels": map[string]any{"app.kubernetes.io/name": "keyshift", "app.kubernetes.io/component": "alerts"},
		},
		"spec": map[string]any{"groups": readRules(t).Groups},
	}
	b, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	head := "# Generated from keyshift-rules.yaml by `go test ./test/ops -run TestPrometheusRule -update`; do not edit.\n" +
		"# A PrometheusRule for the Prometheus Operator: kubectl apply -n NAMESPACE -f this file, and\n" +
		"# give it the labels your Prometheus's ruleSelector picks.\n"
	return append([]byte(head), b...)
}

// The PrometheusRule is the rules file's groups, whole: it is generated,
// and this fails when someone edits one without the other.
func TestPrometheusRuleMatchesRules(t *testing.T) {
	want := prometheusRule(t)
	if *update {
		if err := os.WriteFile(ruleCRFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(ruleCRFile)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Fatalf("%s is not generated from %s (go test ./test/ops -run TestPrometheusRule -update) (-want +got):\n%s", ruleCRFile, rulesFile, diff)
	}
	// And the groups read back from it equal the rules file's.
	var cr struct {
		Spec ruleGroups `json:"spec"`
	}
	if err := yaml.Unmarshal(got, &cr); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(readRules(t), cr.Spec); diff != "" {
		t.Fatalf("groups (-rules file +PrometheusRule):\n%s", diff)
	}
}

// panelExprs is every PromQL expression of a Grafana dashboard: each
// panel's targets (inside rows too) and each query variable, by where it
// stands ("panel 3 \"Errors by reason\" target A").
func panelExprs(dashboard []byte) (map[string]string, error) {
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return nil, err
	}
	out := map[string]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if tg.Expr != "" {
					out[fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)] = tg.Expr
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		// label_values(metric, label) and query_result(expr)
		q = strings.TrimSpace(q)
		for _, fn := range []string{"label_values(", "query_result("} {
			if strings.HasPrefix(q, fn) && strings.HasSuffix(q, ")") {
				q = q[len(fn) : len(q)-1]
				if fn == "label_values(" {
					q, _, _ = strings.Cut(q, ",")
				}
			}
		}
		if q != "" {
			out["variable "+v.Name] = q
		}
	}
	return out, nil
}

type panel struct {
	ID      int    `json:"id"`
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// ruleExprs is every expression of the rules file, by alert name.
func ruleExprs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range readRules(t).Groups {
		rules, _ := g["rules"].([]any)
		for _, r := range rules {
			m := r.(map[string]any)
			name, _ := m["alert"].(string)
			if name == "" {
				name, _ = m["record"].(string)
			}
			out["rule "+name], _ = m["expr"].(string)
		}
	}
	return out
}

// unexported reports every metric that exprs name and exported lacks. A
// name ending _bucket, _count or _sum counts as its histogram's or
// summary's.
func unexported(exprs map[string]string, exported map[string]dto.MetricType) ([]string, error) {
	var missing []string
	for _, where := range slices.Sorted(maps.Keys(exprs)) {
		names, err := metricNames(exprs[where])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("%s: %q names no metric", where, exprs[where])
		}
		for _, n := range names {
			if _, ok := exported[n]; ok {
				continue
			}
			found := false
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if base, ok := strings.CutSuffix(n, suffix); ok {
					typ, ok := exported[base]
					found = ok && (typ == dto.MetricType_HISTOGRAM || typ == dto.MetricType_SUMMARY) && (suffix != "_bucket" || typ == dto.MetricType_HISTOGRAM)
				}
			}
			if !found {
				missing = append(missing, where+": "+n)
			}
		}
	}
	return missing, nil
}

// checkExprSyntax parses every expression with promtool's PromQL parser,
// as recording rules in a scratch rules file.
func checkExprSyntax(t *testing.T, exprs map[string]string) {
	t.Helper()
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, where := range slices.Sorted(maps.Keys(exprs)) {
		rules = append(rules, rule{Record: fmt.Sprintf("keyshift:dashboard_expr_%d", i), Expr: grafanaVars(exprs[where])})
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "dashboard-exprs.yaml")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out := runPromtool(t, ".", "check", "rules", f)
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(rules)); !strings.Contains(out, want) {
		t.Fatalf("promtool check rules on the dashboard's expressions: want %q, got:\n%s", want, out)
	}
}

// Every metric the dashboard and the alerting rules name is one that
// keyshift exports: a real controller rotates a keyset (and fails on a
// second one whose KEK is gone) while a real sidecar takes it over xDS
// and serves calls; both /metrics endpoints are scraped as Prometheus
// would, and the names in every expression are looked up in what they
// served. Every dashboard expression also parses (promtool). The check
// itself is shown to catch a metric nobody exports.
func TestDashboardAndRulesNameExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	dash, err := panelExprs(b)
	if err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if len(dash) < 15 {
		t.Fatalf("%s: only %d expressions found; is the JSON a dashboard?", dashboardFile, len(dash))
	}
	rules := ruleExprs(t)
	if len(rules) != 7 {
		t.Fatalf("%s: %d rules, want 7", rulesFile, len(rules))
	}

	exported := exportedMetrics(t)
	for what, exprs := range map[string]map[string]string{dashboardFile: dash, rulesFile: rules} {
		missing, err := unexported(exprs, exported)
		if err != nil {
			t.Fatal(err)
		}
		if len(missing) > 0 {
			var ours []string
			for _, n := range slices.Sorted(maps.Keys(exported)) {
				if strings.HasPrefix(n, "keyshift_") {
					ours = append(ours, n)
				}
			}
			t.Errorf("%s names metrics that neither the sidecar nor the controller exports:\n  %s\nkeyshift's exported metrics: %s",
				what, strings.Join(missing, "\n  "), strings.Join(ours, " "))
		}
	}

	checkExprSyntax(t, dash)

	t.Run("catches an unexported metric", func(t *testing.T) {
		var d map[string]any
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		d["panels"] = append(d["panels"].([]any), map[string]any{"id": 999, "title": "typo", "targets": []any{
			map[string]any{"refId": "A", "expr": `sum by (keyset) (rate(keyshift_request_erors_total{op="decrypt"}[$__rate_interval]))`},
			map[string]any{"refId": "B", "expr": `histogram_quantile(0.9, sum by (le) (rate(keyshift_primary_version_bucket[5m])))`},
		}})
		bad, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		exprs, err := panelExprs(bad)
		if err != nil {
			t.Fatal(err)
		}
		missing, err := unexported(exprs, exported)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{
			`panel 999 "typo" target A: keyshift_request_erors_total`,
			`panel 999 "typo" target B: keyshift_primary_version_bucket`, // a gauge has no buckets
		}
		if diff := cmp.Diff(want, missing); diff != "" {
			t.Fatalf("unexported metrics found (-want +got):\n%s", diff)
		}
	})
}

// exportedMetrics runs a real controller and a real sidecar through a
// rotation and a few calls and returns every metric family their
// /metrics endpoints serve, with its type.
func exportedMetrics(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	// A short directory: socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ksops")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ksDir, files := rotationtest.NewStoreDir(t, dir, "orders")
	ks := files.Read("orders")
	ks.Policy = &keyset.Policy{RotationPeriod: keyset.Duration(time.Second), Retention: keyset.Duration(time.Hour)}
	files.Write("orders", ks)
	// "broken" is under a KEK that is then deleted: every pass of the
	// controller fails on it.
	otherDir := filepath.Join(dir, "other")
	if err := os.Mkdir(otherDir, 0o700); err != nil {
		t.Fatal(err)
	}
	other := rotationtest.NewFiles(t, otherDir, "broken")
	broken := other.Read("broken")
	broken.Policy = &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour)}
	if err := keyset.WriteFile(filepath.Join(ksDir, "broken.json"), broken); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(other.KEKPath); err != nil {
		t.Fatal(err)
	}

	reg := kms.Registry{local.Scheme: local.Open}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	c, err := controller.Start(ctx, controller.Config{KeysetDir: ksDir, AuditLog: filepath.Join(dir, "audit.jsonl"),
		XDSAddr: "127.0.0.1:0", XDSAuth: controller.XDSAuthNone, MetricsAddr: "127.0.0.1:0",
		KMS: reg, Interval: 100 * time.Millisecond, Identity: "ops-test", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := c.Wait(); err != nil {
			t.Errorf("controller: %v", err)
		}
	}()
	sock := filepath.Join(dir, "s.sock")
	s, err := sidecar.Start(ctx, sidecar.Config{Socket: sock, Keysets: map[string]string{"orders": files.Paths["orders"]},
		XDSAddr: c.XDSAddr(), XDSInsecure: true, NodeID: "ns/pod", KMS: reg, KMSPoll: 50 * time.Millisecond,
		MetricsAddr: "127.0.0.1:0", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = s.Wait() }()

	deadline := time.Now().Add(30 * time.Second)
	for p, _ := s.Service().Primary("orders"); p < 2; p, _ = s.Service().Primary("orders") {
		if time.Now().After(deadline) {
			t.Fatal("the sidecar never got v2 as primary from the controller")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cl, err := client.Dial(sock, client.WithKeyset("orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Encrypt(ctx, []byte("hello"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Decrypt(ctx, []byte("not a ciphertext"), nil); err == nil {
		t.Fatal("decrypting garbage succeeded")
	}

	ctlURL, sideURL := "http://"+c.MetricsAddr()+"/metrics", "http://"+s.OpsAddr()+"/metrics"
	for !strings.Contains(scrapeText(t, ctlURL), `keyshift_controller_rotation_failures_total{keyset="broken"`) ||
		!strings.Contains(scrapeText(t, sideURL), `keyshift_kms_polls_total{keyset="orders",result="ok"}`) {
		if time.Now().After(deadline) {
			t.Fatalf("no rotation failure for keyset broken, or no KMS poll, within 30s:\n%s\n%s", scrapeText(t, ctlURL), scrapeText(t, sideURL))
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := map[string]dto.MetricType{}
	for _, u := range []string{ctlURL, sideURL} {
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(scrapeText(t, u)))
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		for name, f := range fams {
			out[name] = f.GetType()
		}
	}
	return out
}

func scrapeText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, resp.Body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s", url, resp.Status)
	}
	return buf.String()
}
