//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/keyshift/keyshift/internal/injector/injectortest"
)

// chartDir is the Helm chart, relative to the repository root.
const chartDir = "charts/keyshift"

// helmBinary builds Helm with scripts/helm-build.sh (at once when it is
// cached at the pinned version) and returns its path: the test uses the
// pinned Helm, never an older one found on PATH.
func helmBinary(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot(t), "scripts", "helm-build.sh"))
	cmd.Env = append(os.Environ(), "KEYSHIFT_BIN="+binDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/helm-build.sh: %v\n%s\nHelm is built from the Go module proxy into %s; run scripts/helm-build.sh by hand to see why it fails", err, out, binDir())
	}
	return filepath.Join(binDir(), "helm")
}

// helmRun runs helm in the repository root and returns its stdout, or its
// error with stderr.
func helmRun(t *testing.T, helm string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(helm, args...)
	cmd.Dir = repoRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// helmTemplate renders the chart with values (YAML, may be empty).
func helmTemplate(t *testing.T, helm, values string) ([]byte, error) {
	t.Helper()
	args := []string{"template", "keyshift", chartDir}
	if values != "" {
		args = append(args, "--values", valuesFile(t, values))
	}
	return helmRun(t, helm, args...)
}

// valuesFile writes values to a file for --values, whose path has no
// comma (Helm splits --values at commas, and t.TempDir holds the test's
// name).
func valuesFile(t *testing.T, values string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "keyshift-helm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(f, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// objectID names an object the way kubectl does, with its API version.
func objectID(u *unstructured.Unstructured) string {
	id := u.GetAPIVersion() + " " + u.GetKind() + " "
	if u.GetNamespace() != "" {
		id += u.GetNamespace() + "/"
	}
	return id + u.GetName()
}

// byID indexes rendered objects by objectID, failing on a duplicate.
func byID(t *testing.T, objs []*unstructured.Unstructured) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, u := range objs {
		id := objectID(u)
		if _, dup := out[id]; dup {
			t.Fatalf("%s rendered twice", id)
		}
		out[id] = u.Object
	}
	return out
}

// helmLabels are the labels the chart adds to every object's metadata and
// nothing else: which chart rendered it and that Helm manages it.
var helmLabels = map[string]string{
	"helm.sh/chart":                "keyshift-0.1.0",
	"app.kubernetes.io/managed-by": "Helm",
}

// withoutHelmLabels checks that every object carries Helm's labels with
// their values and removes them (and a labels map they leave empty), so
// what remains compares whole with kustomize's objects.
func withoutHelmLabels(t *testing.T, objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		labels := u.GetLabels()
		for k, want := range helmLabels {
			if got, ok := labels[k]; !ok || got != want {
				t.Errorf("%s: label %s=%q, want %q", objectID(u), k, got, want)
			}
			delete(labels, k)
		}
		if len(labels) == 0 {
			unstructured.RemoveNestedField(u.Object, "metadata", "labels")
		} else {
			u.SetLabels(labels)
		}
	}
	return objs
}

// kustomizeWith renders manifests/ plus the given kustomize components, as
// a user's overlay does (manifests/kustomization.yaml: "In your own
// overlay, add the same line under components:").
func kustomizeWith(t *testing.T, components ...string) []byte {
	t.Helper()
	root := repoRoot(t)
	if len(components) == 0 {
		return kustomizeBuild(t, filepath.Join(root, "manifests"))
	}
	dir := filepath.Join(t.TempDir(), "overlay")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	rel := func(p string) string {
		r, err := filepath.Rel(dir, filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- " + rel("manifests") + "\ncomponents:\n"
	for _, c := range components {
		k += "- " + rel(c) + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o600); err != nil {
		t.Fatal(err)
	}
	return kustomizeBuild(t, dir)
}

// edit changes one field of the object id in a set of objects, failing if
// the object is not there (so a renamed object cannot pass unnoticed).
func edit(t *testing.T, objs map[string]map[string]any, id string, value any, path ...string) {
	t.Helper()
	o, ok := objs[id]
	if !ok {
		t.Fatalf("no %s to edit", id)
	}
	if value == nil {
		unstructured.RemoveNestedField(o, path...)
		return
	}
	// Through JSON, so the value has the types a parsed manifest has.
	data, err := json.Marshal(value)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(o, v, path...); err != nil {
		t.Fatalf("%s %v: %v", id, path, err)
	}
}

const (
	injectorDeploy   = "apps/v1 Deployment keyshift-system/keyshift-injector"
	controllerDeploy = "apps/v1 Deployment keyshift-system/keyshift-controller"
	webhookConfig    = "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration keyshift-injector"
)

var webhookResource = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"}

// editContainer is edit on a Deployment's only container (unstructured
// paths do not index into lists).
func editContainer(t *testing.T, objs map[string]map[string]any, id string, value any, field ...string) {
	t.Helper()
	o, ok := objs[id]
	if !ok {
		t.Fatalf("no %s to edit", id)
	}
	cs, _, _ := unstructured.NestedSlice(o, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("%s has %d containers, want 1", id, len(cs))
	}
	c := map[string]map[string]any{"c": cs[0].(map[string]any)}
	edit(t, c, "c", value, field...)
	cs[0] = c["c"]
	if err := unstructured.SetNestedSlice(o, cs, "spec", "template", "spec", "containers"); err != nil {
		t.Fatal(err)
	}
}

// envByName sorts every Deployment container's env by name. Env is a list
// keyed by name (a strategic merge key): kustomize's patches move the
// entries they change to the front, which means nothing here, since no
// value refers to another with $(NAME).
func envByName(objs map[string]map[string]any) map[string]map[string]any {
	for _, o := range objs {
		cs, _, _ := unstructured.NestedSlice(o, "spec", "template", "spec", "containers")
		for _, c := range cs {
			if env, ok := c.(map[string]any)["env"].([]any); ok {
				slices.SortStableFunc(env, func(a, b any) int {
					return strings.Compare(a.(map[string]any)["name"].(string), b.(map[string]any)["name"].(string))
				})
			}
		}
		if len(cs) > 0 {
			_ = unstructured.SetNestedSlice(o, cs, "spec", "template", "spec", "containers")
		}
	}
	return objs
}

// injectorEnv is the injector's env in self mode with this sidecar image.
func injectorEnv(sidecarImage string) []any {
	return []any{
		map[string]any{"name": "KEYSHIFT_SIDECAR_IMAGE", "value": sidecarImage},
		map[string]any{"name": "KEYSHIFT_CERT_MODE", "value": "self"},
		map[string]any{"name": "POD_NAMESPACE", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.namespace"}}},
	}
}

// containerArgs is a Deployment's only container's args.
func containerArgs(t *testing.T, objs map[string]map[string]any, id string) []string {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(objs[id], "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("%s has %d containers, want 1", id, len(cs))
	}
	args, _, err := unstructured.NestedStringSlice(cs[0].(map[string]any), "args")
	if err != nil {
		t.Fatal(err)
	}
	return args
}

// TestHelmChart checks charts/keyshift against manifests/: `helm lint` is
// clean, the default values render exactly the objects `kustomize build
// manifests` does (compared whole, less Helm's two labels), the
// cert-manager mode exactly those of the manifests' cert-manager component,
// and other values change what they say and nothing else.
func TestHelmChart(t *testing.T) {
	helm := helmBinary(t)
	for _, values := range []string{"", "certificate:\n  mode: cert-manager\n"} {
		out, err := helmRun(t, helm, "lint", "--strict", chartDir, "--values", valuesFile(t, values))
		if err != nil {
			t.Fatalf("helm lint with values %q: %v\n%s", values, err, out)
		}
		if s := string(out); !strings.Contains(s, "1 chart(s) linted, 0 chart(s) failed") || strings.Contains(s, "[WARNING]") || strings.Contains(s, "[ERROR]") {
			t.Errorf("helm lint with values %q is not clean:\n%s", values, s)
		}
	}

	render := func(t *testing.T, values string) map[string]map[string]any {
		t.Helper()
		out, err := helmTemplate(t, helm, values)
		if err != nil {
			t.Fatal(err)
		}
		return envByName(byID(t, withoutHelmLabels(t, decodeYAMLStream(t, out))))
	}
	kustomized := func(t *testing.T, components ...string) map[string]map[string]any {
		t.Helper()
		return envByName(byID(t, decodeYAMLStream(t, kustomizeWith(t, components...))))
	}
	for _, tc := range []struct {
		name   string
		values string
		// want is the kustomize rendering the chart must equal, edited by
		// hand for what the values change.
		want func(t *testing.T) map[string]map[string]any
	}{
		{"defaults are manifests/", "", func(t *testing.T) map[string]map[string]any { return kustomized(t) }},
		{"cert-manager is manifests/ with its cert-manager component", "certificate:\n  mode: cert-manager\n",
			func(t *testing.T) map[string]map[string]any { return kustomized(t, "manifests/injector/cert-manager") }},
		{"replicas, image, resources, webhook selector", `
image: {repository: registry.example/keyshift, tag: v9.9.9, pullPolicy: Always}
injector:
  replicas: 3
  resources: {requests: {cpu: 100m}}
controller:
  replicas: 1
  resources: {limits: {memory: null}}
webhook:
  namespaceSelector:
    matchLabels: {team: payments}
  excludeNamespaces: [kube-system]
  timeoutSeconds: 3
`, func(t *testing.T) map[string]map[string]any {
			w := kustomized(t)
			const image = "registry.example/keyshift:v9.9.9"
			edit(t, w, injectorDeploy, 3, "spec", "replicas")
			edit(t, w, controllerDeploy, 1, "spec", "replicas")
			editContainer(t, w, controllerDeploy, map[string]any{"requests": map[string]any{"cpu": "50m", "memory": "64Mi"},
				"limits": map[string]any{}}, "resources")
			// One controller replica: no budget, which would block every drain.
			delete(w, "policy/v1 PodDisruptionBudget keyshift-system/keyshift-controller")
			for _, d := range []string{injectorDeploy, controllerDeploy} {
				editContainer(t, w, d, image, "image")
				editContainer(t, w, d, "Always", "imagePullPolicy")
			}
			// Helm merges maps: the limit and the memory request stay.
			editContainer(t, w, injectorDeploy, map[string]any{"requests": map[string]any{"cpu": "100m", "memory": "64Mi"},
				"limits": map[string]any{"memory": "128Mi"}}, "resources")
			editContainer(t, w, injectorDeploy, injectorEnv(image), "env")
			hooks, _, _ := unstructured.NestedSlice(w[webhookConfig], "webhooks")
			hooks[0].(map[string]any)["namespaceSelector"] = map[string]any{
				"matchLabels": map[string]any{"team": "payments"},
				"matchExpressions": []any{map[string]any{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
					"values": []any{"kube-system", "keyshift-system"}}},
			}
			hooks[0].(map[string]any)["timeoutSeconds"] = float64(3)
			edit(t, w, webhookConfig, hooks, "webhooks")
			return w
		}},
		{"controller and sidecar options", `
controller:
  xds: {port: 18443}
  minPendingAge: 0s
  namespaceSelector: ""
  allowKMS: ["payments=aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/", "*=vault-transit://vault.example:8200/"]
  auditKMS: aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/audit
  logLevel: debug
sidecar:
  image: registry.example/keyshift-sidecar:v1
  pullPolicy: Always
  mode: regular
  uid: 1234
  logLevel: warn
  resources: {cpuLimit: 200m, memoryRequest: ""}
injector:
  extraArgs: [--max-request-bytes=1048576]
`, func(t *testing.T) map[string]map[string]any {
			w := kustomized(t)
			editContainer(t, w, controllerDeploy, []any{
				"controller", "--xds-addr=:18443", "--xds-auth=token", "--metrics-addr=:9496",
				"--audit-log=/var/lib/keyshift/audit.jsonl", "--audit-kms=aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/audit",
				"--interval=30s", "--min-pending-age=0s", "--log-format=json", "--log-level=debug", "--namespace-selector=",
				"--allow-kms=payments=aws-kms:///arn:aws:kms:eu-west-2:111122223333:key/", "--allow-kms=*=vault-transit://vault.example:8200/",
			}, "args")
			editContainer(t, w, controllerDeploy, []any{
				map[string]any{"name": "xds", "containerPort": 18443, "protocol": "TCP"},
				map[string]any{"name": "metrics", "containerPort": 9496, "protocol": "TCP"},
			}, "ports")
			edit(t, w, "v1 Service keyshift-system/keyshift-controller", []any{
				map[string]any{"name": "xds", "port": 18443, "targetPort": "xds", "protocol": "TCP", "appProtocol": "grpc"},
			}, "spec", "ports")
			editContainer(t, w, injectorDeploy, []any{
				"injector", "--listen=:8443", "--ops-addr=:9090", "--sidecar-mode=regular",
				"--controller-xds-addr=keyshift-controller.keyshift-system.svc:18443", "--shutdown-delay=5s", "--log-format=json",
				"--sidecar-pull-policy=Always", "--sidecar-uid=1234", "--sidecar-log-level=warn",
				"--sidecar-cpu-limit=200m", "--sidecar-memory-request=", "--max-request-bytes=1048576",
			}, "args")
			editContainer(t, w, injectorDeploy, injectorEnv("registry.example/keyshift-sidecar:v1"), "env")
			return w
		}},
		{"xDS off", "controller:\n  xds: {enabled: false}\n", func(t *testing.T) map[string]map[string]any {
			w := kustomized(t)
			delete(w, "v1 Service keyshift-system/keyshift-controller")
			args := containerArgs(t, w, controllerDeploy)
			args = slices.DeleteFunc(args, func(a string) bool { return a == "--xds-auth=token" })
			args[slices.Index(args, "--xds-addr=:18000")] = "--xds-addr="
			editContainer(t, w, controllerDeploy, args, "args")
			editContainer(t, w, controllerDeploy, []any{map[string]any{"name": "metrics", "containerPort": 9496, "protocol": "TCP"}}, "ports")
			args = containerArgs(t, w, injectorDeploy)
			args = slices.DeleteFunc(args, func(a string) bool { return strings.HasPrefix(a, "--controller-xds-addr=") })
			editContainer(t, w, injectorDeploy, args, "args")
			return w
		}},
		{"your own certificate Secret", "certificate:\n  mode: secret\n  secret: {name: my-injector-tls, caBundle: Q0E=}\n",
			func(t *testing.T) map[string]map[string]any {
				// cert-manager's files mode, without cert-manager's objects.
				w := kustomized(t, "manifests/injector/cert-manager")
				for id, o := range w {
					if strings.HasPrefix(o["apiVersion"].(string), "cert-manager.io/") {
						delete(w, id)
					}
				}
				edit(t, w, webhookConfig, nil, "metadata", "annotations")
				hooks, _, _ := unstructured.NestedSlice(w[webhookConfig], "webhooks")
				hooks[0].(map[string]any)["clientConfig"].(map[string]any)["caBundle"] = "Q0E="
				edit(t, w, webhookConfig, hooks, "webhooks")
				vols, _, _ := unstructured.NestedSlice(w[injectorDeploy], "spec", "template", "spec", "volumes")
				vols[0].(map[string]any)["secret"].(map[string]any)["secretName"] = "my-injector-tls"
				edit(t, w, injectorDeploy, vols, "spec", "template", "spec", "volumes")
				return w
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, got := envByName(tc.want(t)), render(t, tc.values)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("helm template (+) against what it should render (-):\n%s", diff)
			}
			t.Logf("%d objects", len(got))
		})
	}

	t.Run("bad values are refused with what to write", func(t *testing.T) {
		for _, tc := range []struct{ values, want string }{
			{"certificate: {mode: vault}\n", `certificate.mode "vault": write self, cert-manager or secret`},
			{"certificate: {mode: secret}\n", "certificate.secret.caBundle: write the base64 PEM of the CA that signed your Secret's certificate"},
			{"namespace: {name: \"\"}\n", "namespace.name: write the namespace keyshift runs in"},
		} {
			_, err := helmTemplate(t, helm, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("values %q: %v, want an error saying %q", tc.values, err, tc.want)
			}
		}
	})
}

// TestHelmChartAgainstRealAPIServer applies what the chart renders to a
// real kube-apiserver as a server-side dry run (server-side apply, strict
// field validation): the API server's own validation and admission accept
// every object, for the default certificate mode and a provided Secret.
// The chart's Namespace is applied for real first, since a dry run creates
// nothing for the objects in it to go into. cert-manager's mode needs its
// CRDs, which this API server does not have; its objects are compared with
// the manifests' cert-manager component in TestHelmChart.
func TestHelmChartAgainstRealAPIServer(t *testing.T) {
	helm := helmBinary(t)
	ctx := context.Background()
	c := startCluster(t)
	// The API server's warnings, e.g. a pod template that would violate
	// the namespace's restricted Pod Security level (a warning, not an
	// error, for a Deployment).
	warnings := &warningList{}
	cfg := rest.CopyConfig(c.rest)
	cfg.WarningHandler = warnings
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.rest)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	apply := func(t *testing.T, u *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
		t.Helper()
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return nil, err
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if u.GetNamespace() != "" {
			ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		data, err := json.Marshal(u.Object)
		if err != nil {
			return nil, err
		}
		opts := metav1.PatchOptions{FieldManager: "keyshift-e2e", Force: ptr(true), FieldValidation: "Strict"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		return ri.Patch(ctx, u.GetName(), types.ApplyPatchType, data, opts)
	}

	ca, err := injectortest.NewCA("helm e2e CA")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, values string }{
		{"defaults", ""},
		{"provided Secret", "certificate:\n  mode: secret\n  secret:\n    caBundle: " + base64.StdEncoding.EncodeToString(ca.PEM) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := helmTemplate(t, helm, tc.values)
			if err != nil {
				t.Fatal(err)
			}
			objs := decodeYAMLStream(t, out)
			for _, u := range objs {
				if u.GetKind() == "Namespace" {
					if _, err := apply(t, u, false); err != nil {
						t.Fatalf("apply %s: %v", objectID(u), err)
					}
				}
			}
			for _, u := range objs {
				got, err := apply(t, u, true)
				if err != nil {
					t.Errorf("server-side dry run of %s: %v", objectID(u), err)
					continue
				}
				if got.GetName() != u.GetName() || got.GetNamespace() != u.GetNamespace() || got.GetUID() == "" {
					t.Errorf("dry run of %s answered with %s (uid %q)", objectID(u), objectID(got), got.GetUID())
				}
			}
			for _, w := range warnings.take() {
				if strings.Contains(w, "PodSecurity") {
					t.Errorf("the API server warned: %s", w)
				} else {
					t.Logf("the API server warned: %s", w)
				}
			}
			// The dry run created nothing.
			if _, err := dyn.Resource(webhookResource).Get(ctx, "keyshift-injector", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("after the dry run, the webhook configuration: %v, want NotFound", err)
			}
			t.Logf("%d objects accepted by the API server (dry run)", len(objs))
		})
	}

	// Control: the same dry run refuses an invalid object, so its
	// acceptance above means something.
	out, err := helmTemplate(t, helm, "webhook: {failurePolicy: Sometimes}\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range decodeYAMLStream(t, out) {
		if u.GetKind() != "MutatingWebhookConfiguration" {
			continue
		}
		_, err := apply(t, u, true)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "failurePolicy") {
			t.Fatalf("dry run of a webhook with failurePolicy Sometimes: %v, want Invalid naming failurePolicy", err)
		}
	}
}

// warningList collects the API server's warning headers.
type warningList struct {
	mu   sync.Mutex
	list []string
}

func (w *warningList) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warningList) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.list
	w.list = nil
	return out
}
