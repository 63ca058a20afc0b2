//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/keyshift/keyshift/internal/clusterstatus"
	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/sidecar"
)

// statusCLI runs the real keyshift and kubectl-keyshift binaries against
// the test's API server through a kubeconfig, as an operator does.
type statusCLI struct {
	t                  *testing.T
	keyshift, kubectlK string
	kubeconfig         string
}

// run runs bin with args and returns stdout and stderr; a non-zero exit
// is returned as the error.
func (s *statusCLI) run(bin string, args ...string) (string, string, error) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.kubeconfig)
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// report is `keyshift status --cluster -o json` with args, decoded.
func (s *statusCLI) report(args ...string) (*clusterstatus.Report, string) {
	s.t.Helper()
	out, stderr, err := s.run(s.keyshift, append([]string{"status", "--cluster", "-o", "json"}, args...)...)
	if err != nil {
		s.t.Fatalf("keyshift status --cluster %v: %v\n%s", args, err, stderr)
	}
	var rep clusterstatus.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		s.t.Fatalf("keyshift status --cluster -o json is not the report: %v\n%s", err, out)
	}
	return &rep, stderr
}

func rowOf(rep *clusterstatus.Report, ns, name string) *clusterstatus.Row {
	for i := range rep.Keysets {
		if r := &rep.Keysets[i]; r.Namespace == ns && r.Name == name {
			return r
		}
	}
	return nil
}

// writeKubeconfig writes a kubeconfig for the test's API server, its
// context's namespace set to ns, as kubectl would use.
func writeKubeconfig(t *testing.T, c *cluster, path, ns string) {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: c.url, CertificateAuthorityData: c.rest.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.rest.CertData, ClientKeyData: c.rest.KeyData}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "admin", Namespace: ns}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
}

// `keyshift status --cluster` (and `kubectl keyshift status`) against a
// real API server and the controller as `keyshift controller` assembles
// it: a rotation started with `keyshift keyset rotate --secret` waits for
// the ACK of one pod of two (the other has no sidecar yet), is blocked
// once the ACK timeout passes, and is promoted when the second pod's
// sidecar loads it. At each stage the status reports the primary, the
// pending version, ACKed/total pods, the blocked reason and the next
// step; without the controller's state it says so and falls back to the
// Secret's annotation.
func TestStatusClusterAgainstRealAPIServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := startCluster(t)
	kc := c.kube
	for _, ns := range []string{"shop", "web"} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kc.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek.json")
	store := &kube.SecretStore{Client: kc}
	const ackTimeout = 15 * time.Second
	for _, k := range []struct {
		key, name string
		policy    *keyset.Policy
	}{
		{"shop/payments-keys", "payments", &keyset.Policy{RotationPeriod: keyset.Duration(720 * time.Hour), Retention: keyset.Duration(time.Hour), AckTimeout: keyset.Duration(ackTimeout)}},
		{"web/orders", "orders", nil},
	} {
		ks, err := rotation.Create(ctx, local.New(kek), k.name, "local://"+kek, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ks.Policy = k.policy
		if err := store.Create(ctx, k.key, ks); err != nil {
			t.Fatal(err)
		}
	}

	// The real binaries, built from this tree.
	bin := t.TempDir()
	cli := &statusCLI{t: t, keyshift: filepath.Join(bin, "keyshift"), kubectlK: filepath.Join(bin, "kubectl-keyshift"), kubeconfig: filepath.Join(dir, "kubeconfig")}
	for out, pkg := range map[string]string{cli.keyshift: "./cmd/keyshift", cli.kubectlK: "./cmd/kubectl-keyshift"} {
		if b, err := exec.Command("go", "-C", repoRoot(t), "build", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	writeKubeconfig(t, c, cli.kubeconfig, "shop")

	// The controller, managing every namespace; every sidecar uses xDS.
	log := slog.New(slog.DiscardHandler)
	ctl := startController(t, ctx, controller.Config{Kube: kc, XDSAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		KMS: kms.Registry{local.Scheme: local.Open}, KMSPolicy: rotation.KMSPolicy{Allow: map[string][]string{"*": {"local://"}}},
		Interval: 200 * time.Millisecond, Identity: "e2e", Logger: log})
	controllerURL := "http://" + ctl.MetricsAddr()

	// Two injected pods read payments; web-1 runs a real sidecar on xDS,
	// web-2's starts later.
	pods := newXDSSidecars(t, ctx, kc, ctl, dir, "shop", "payments=payments-keys", "web-1", "web-2")
	startSidecar := func(name string) {
		pods.start(ctx, name, sidecar.Config{Keysets: map[string]string{"payments": ""}, KMS: kms.Registry{local.Scheme: local.Open}, Logger: log})
	}
	startSidecar("web-1")

	// Before any rotation: v1 primary, nothing pending, rotation in 720h.
	rep, _ := cli.report("--controller", controllerURL)
	got := rowOf(rep, "shop", "payments")
	if got == nil || got.Primary != 1 || got.Pending != nil || got.Next.Action != "rotate" || got.Blocked != "" {
		t.Fatalf("before rotating: %+v", got)
	}
	if rowOf(rep, "web", "orders") != nil {
		t.Fatal("the context's namespace is shop; web's keyset was listed")
	}

	// keyshift keyset rotate --secret: v2 pending; web-1 ACKs it, web-2
	// has no stream.
	if out, stderr, err := cli.run(cli.keyshift, "keyset", "rotate", "--secret", "shop/payments-keys"); err != nil {
		t.Fatalf("keyshift keyset rotate: %v\n%s%s", err, out, stderr)
	}
	rotated := time.Now()
	waitFor(t, ackTimeout/2, "status to count web-1's ACK of v2", func() bool {
		rep, _ = cli.report("--controller", controllerURL)
		got = rowOf(rep, "shop", "payments")
		return got != nil && got.Pending != nil && got.Pending.Acked != nil && *got.Pending.Acked == 1
	})
	if time.Since(rotated) >= ackTimeout {
		t.Fatalf("the waiting stage was seen only after the ACK timeout")
	}
	one, two := 1, 2
	want := clusterstatus.Row{Namespace: "shop", Name: "payments", Secret: "payments-keys", Primary: 1,
		Pending: &clusterstatus.Pending{Version: 2, Acked: &one, Readers: &two, Waiting: []string{"shop/web-2"}},
		Next:    clusterstatus.Step{Action: "promote", Version: 2, Text: "promote v2 when all ACK"}}
	ignoreOutcome := func(r clusterstatus.Row) clusterstatus.Row { r.LastOutcome, r.LastOutcomeAt = "", ""; return r }
	if diff := cmp.Diff(want, ignoreOutcome(*got)); diff != "" {
		t.Fatalf("waiting for ACKs (-want +got):\n%s", diff)
	}
	if rep.Controller.Error != "" || !rep.Controller.Leading || rep.Controller.Identity != "e2e" || rep.Controller.Source != controllerURL {
		t.Fatalf("controller %+v", rep.Controller)
	}

	// Past the ACK timeout: blocked, with the controller's reason.
	waitFor(t, ackTimeout+10*time.Second, "status to report the rotation blocked", func() bool {
		rep, _ = cli.report("--controller", controllerURL)
		got = rowOf(rep, "shop", "payments")
		return got != nil && got.Blocked != ""
	})
	if !strings.HasPrefix(got.Blocked, "not promoting v2: after ") || !strings.HasSuffix(got.Blocked, ", 1 of 2 pods have not loaded it (shop/web-2)") {
		t.Fatalf("blocked reason %q", got.Blocked)
	}
	want.Blocked = got.Blocked
	if diff := cmp.Diff(want, ignoreOutcome(*got)); diff != "" {
		t.Fatalf("blocked (-want +got):\n%s", diff)
	}
	// The table, as a person reads it.
	table, _, err := cli.run(cli.keyshift, "status", "--cluster", "--controller", controllerURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("keyshift status --cluster while blocked:\n%s", table)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME PRIMARY PENDING ACKED NEXT BLOCKED" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "payments v1 v2 1/2 promote v2 when all ACK not promoting v2: after ") {
		t.Fatalf("table:\n%s", table)
	}

	// Through the API server alone: no controller pod carries the leader
	// label here (the controller runs in the test), so the status says
	// the controller's state is missing, counts are unknown, and the
	// blocked reason comes from the Secret's annotation.
	rep, stderr := cli.report()
	got = rowOf(rep, "shop", "payments")
	if !strings.Contains(rep.Controller.Error, "no controller pod is labelled keyshift.io/controller-role=leader in namespace keyshift-system") ||
		!strings.Contains(stderr, "controller state not available") {
		t.Fatalf("without a leader pod: controller %+v, stderr %q", rep.Controller, stderr)
	}
	if got.Pending == nil || got.Pending.Version != 2 || got.Pending.Acked != nil || !strings.HasPrefix(got.Blocked, "not promoting v2: after ") {
		t.Fatalf("from the Secret alone: %+v", got)
	}

	// web-2's sidecar loads v2: promoted; next, retire v1 an hour after.
	startSidecar("web-2")
	waitFor(t, 20*time.Second, "status to report v2 primary", func() bool {
		rep, _ = cli.report("--controller", controllerURL)
		got = rowOf(rep, "shop", "payments")
		return got != nil && got.Primary == 2
	})
	doc, _, err := store.Get(ctx, "shop/payments-keys")
	if err != nil {
		t.Fatal(err)
	}
	v1, _ := doc.Get(1)
	retireAt := v1.StateChangedAt.Add(time.Hour)
	want = clusterstatus.Row{Namespace: "shop", Name: "payments", Secret: "payments-keys", Primary: 2,
		Next: clusterstatus.Step{Action: "retire", Version: 1, At: &retireAt, Text: "retire v1 at " + retireAt.UTC().Format(time.RFC3339)}}
	if diff := cmp.Diff(want, ignoreOutcome(*got)); diff != "" {
		t.Fatalf("after promotion (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(got.LastOutcome, "promote [2]: ") {
		t.Fatalf("last outcome on the Secret %q", got.LastOutcome)
	}

	// -A lists every namespace; -n one; the kubectl plugin says the same.
	all, _ := cli.report("-A", "--controller", controllerURL)
	var names []string
	for _, r := range all.Keysets {
		names = append(names, r.Namespace+"/"+r.Name+" "+r.Next.Text)
	}
	if diff := cmp.Diff([]string{"shop/payments " + want.Next.Text, "web/orders none (manual rotation only)"}, names); diff != "" {
		t.Fatalf("-A (-want +got):\n%s", diff)
	}
	if web, _ := cli.report("-n", "web", "--controller", controllerURL); len(web.Keysets) != 1 || web.Keysets[0].Name != "orders" {
		t.Fatalf("-n web: %+v", web.Keysets)
	}
	// JSON, which holds no relative times, so two runs a moment apart agree.
	viaKeyshift, _, err := cli.run(cli.keyshift, "status", "--cluster", "-A", "-o", "json", "--controller", controllerURL)
	if err != nil {
		t.Fatal(err)
	}
	viaPlugin, stderr, err := cli.run(cli.kubectlK, "status", "-A", "-o", "json", "--controller", controllerURL)
	if err != nil {
		t.Fatalf("kubectl-keyshift status: %v\n%s", err, stderr)
	}
	if diff := cmp.Diff(viaKeyshift, viaPlugin); diff != "" {
		t.Fatalf("kubectl keyshift status -A -o json differs from keyshift status --cluster (-keyshift +plugin):\n%s", diff)
	}
	table, _, err = cli.run(cli.kubectlK, "status", "-A", "--controller", controllerURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl keyshift status -A after promotion:\n%s", table)

	// Bad input is refused with what to write instead.
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"status", "--cluster", "-o", "yaml"}, 1, `-o "yaml": write table or json`},
		{[]string{"status", "--cluster", "-n", "shop", "-A"}, 1, "--namespace and --all-namespaces: give one"},
		{[]string{"status", "--cluster", "--controller", "127.0.0.1:9496"}, 1, "write the controller's metrics address as http://HOST:PORT"},
		{[]string{"status", "--cluster", "--context", "nope"}, 1, "nope"},
		{[]string{"status", "--cluster", "--bogus"}, 2, "flag provided but not defined: -bogus"},
	} {
		_, stderr, err := cli.run(cli.keyshift, c.args...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != c.code || !strings.Contains(stderr, c.msg) {
			t.Errorf("keyshift %v: %v, stderr %q; want exit %d with %q", c.args, err, stderr, c.code, c.msg)
		}
	}
}
