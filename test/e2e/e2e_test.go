//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/keyshift/keyshift/internal/injector"
	"github.com/keyshift/keyshift/internal/injector/injectortest"
)

const (
	webhookName = "inject.keyshift.io"
	sidecarImg  = "keyshift/keyshift:e2e"
	// pods is how many creations the latency measurement makes.
	pods = 200
)

// admissionLog records the injector's per-request durations from its own
// "admission" log lines (the logger is passed in, so the test reads what
// an operator would).
type admissionLog struct {
	mu        sync.Mutex
	durations map[string][]time.Duration // by result
	next      slog.Handler
}

func (h *admissionLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *admissionLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *admissionLog) WithGroup(string) slog.Handler            { return h }
func (h *admissionLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "admission" {
		var result string
		var d time.Duration
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "result":
				result = a.Value.String()
			case "duration":
				d = a.Value.Duration()
			}
			return true
		})
		h.mu.Lock()
		h.durations[result] = append(h.durations[result], d)
		h.mu.Unlock()
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *admissionLog) take(result string) []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.durations[result]
	h.durations[result] = nil
	return d
}

// runningInjector is an in-process injector on 127.0.0.1 with its own CA.
type runningInjector struct {
	url     string
	ca      *injectortest.CA
	dir     string
	log     *admissionLog
	cfg     injector.Config
	srvAddr string
}

func startInjector(t *testing.T, cfg injector.Config, logOut io.Writer) *runningInjector {
	t.Helper()
	ca, err := injectortest.NewCA("e2e webhook CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueServer("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, err := leaf.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec := &admissionLog{durations: map[string][]time.Duration{},
		next: slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: slog.LevelInfo})}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := injector.Start(ctx, injector.ServerConfig{
		Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, CertPoll: time.Second,
		Injector: cfg, Logger: slog.New(rec),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := srv.Wait(); err != nil {
			t.Errorf("injector: %v", err)
		}
	})
	return &runningInjector{url: "https://" + srv.Addr() + "/mutate", ca: ca, dir: dir, log: rec, cfg: cfg, srvAddr: srv.Addr()}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// kustomizeBuild renders dir with the kustomize binary, or with kubectl's
// built-in kustomize.
func kustomizeBuild(t *testing.T, dir string) []byte {
	t.Helper()
	var cmd *exec.Cmd
	if p := filepath.Join(binDir(), "kustomize"); fileExists(p) {
		cmd = exec.Command(p, "build", dir)
	} else if p, err := exec.LookPath("kustomize"); err == nil {
		cmd = exec.Command(p, "build", dir)
	} else if p, err := exec.LookPath("kubectl"); err == nil {
		cmd = exec.Command(p, "kustomize", dir)
	} else {
		t.Fatalf("kustomize not found in %s or PATH (nor kubectl): %s", binDir(), buildHint)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, stderr.String())
	}
	return out
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// decodeYAMLStream splits a rendered multi-document YAML into objects.
func decodeYAMLStream(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for doc := range strings.SplitSeq(string(data), "\n---\n") {
		if strings.TrimSpace(strings.TrimPrefix(doc, "---")) == "" {
			continue
		}
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("rendered manifest: %v\n%s", err, doc)
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out
}

// pointWebhookAt rewrites a webhook configuration from the manifests to call
// the in-process injector: a URL on 127.0.0.1 with its CA, instead of the
// Service and cert-manager's CA injection.
func pointWebhookAt(t *testing.T, u *unstructured.Unstructured, inj *runningInjector) {
	t.Helper()
	hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
	if len(hooks) != 1 {
		t.Fatalf("webhook configuration has %d webhooks, want 1", len(hooks))
	}
	h := hooks[0].(map[string]any)
	path, _, _ := unstructured.NestedString(h, "clientConfig", "service", "path")
	if path != "/mutate" {
		t.Fatalf("manifest webhook path %q, want /mutate", path)
	}
	h["clientConfig"] = map[string]any{
		"url":      inj.url,
		"caBundle": base64.StdEncoding.EncodeToString(inj.ca.PEM),
	}
	if err := unstructured.SetNestedSlice(u.Object, hooks, "webhooks"); err != nil {
		t.Fatal(err)
	}
	ann := u.GetAnnotations()
	delete(ann, "cert-manager.io/inject-ca-from")
	u.SetAnnotations(ann)
}

// restrictedApp is an app container that meets the restricted Pod Security
// Standard, so that admission of the whole pod proves the sidecar meets it.
func restrictedApp(name string, uid int64) corev1.Container {
	f, tr := false, true
	return corev1.Container{
		Name: name, Image: "example.com/" + name + ":1",
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: &uid, RunAsNonRoot: &tr, AllowPrivilegeEscalation: &f,
			Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

func annotatedPod(ns, generateName string, ann map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: generateName, Namespace: ns, Labels: map[string]string{"e2e": "keyshift"},
			Annotations: map[string]string{"keyshift.io/inject": "true", "keyshift.io/keysets": "payments,users=users-keyset"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{restrictedApp("app", 1000)}},
	}
	for k, v := range ann {
		p.Annotations[k] = v
	}
	return p
}

type env struct {
	t       *testing.T
	ctx     context.Context
	cluster *cluster
	kube    *kubernetes.Clientset
	dyn     dynamic.Interface
	mapper  *restmapper.DeferredDiscoveryRESTMapper
	inj     *runningInjector
}

func (e *env) namespace(name string, labels map[string]string) {
	e.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := e.kube.CoreV1().Namespaces().Create(e.ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatalf("namespace %s: %v", name, err)
	}
	// No controller-manager runs, so nothing creates the default
	// ServiceAccount the ServiceAccount admission plugin requires.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if _, err := e.kube.CoreV1().ServiceAccounts(name).Create(e.ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatalf("service account %s/default: %v", name, err)
	}
}

func (e *env) create(pod *corev1.Pod) (*corev1.Pod, error) {
	created, err := e.kube.CoreV1().Pods(pod.Namespace).Create(e.ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	// What is checked is what the API server stored, read back.
	return e.kube.CoreV1().Pods(pod.Namespace).Get(e.ctx, created.Name, metav1.GetOptions{})
}

func sidecarOf(p *corev1.Pod) *corev1.Container {
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == injector.ContainerName {
				return &cs[i]
			}
		}
	}
	return nil
}

// automount reports whether the pod gets its service account token.
func automount(p *corev1.Pod) bool {
	return p.Spec.AutomountServiceAccountToken == nil || *p.Spec.AutomountServiceAccountToken
}

func keyshiftVolumes(p *corev1.Pod) []corev1.Volume {
	var out []corev1.Volume
	for _, v := range p.Spec.Volumes {
		if strings.HasPrefix(v.Name, "keyshift-") {
			out = append(out, v)
		}
	}
	return out
}

// checkInjected compares what the API server stored with what Inject makes
// of the submitted pod: the sidecar container and the keyshift volumes
// whole, the app containers' socket env and mount, the status annotation.
func (e *env) checkInjected(t *testing.T, submitted, stored *corev1.Pod, cfg injector.Config) {
	t.Helper()
	want, err := injector.Inject(submitted, cfg)
	if err != nil {
		t.Fatalf("Inject(submitted): %v", err)
	}
	gotSC, wantSC := sidecarOf(stored), sidecarOf(want)
	if gotSC == nil {
		t.Fatalf("stored pod %s/%s has no keyshift container", stored.Namespace, stored.Name)
	}
	// The API server re-runs its built-in mutating plugins after a webhook
	// changed the pod, so the ServiceAccount plugin mounts the pod's token
	// into the sidecar as into every container (the sidecar uses it for
	// Vault's Kubernetes auth). It is the one thing added after Inject.
	gotSC = gotSC.DeepCopy()
	if automount(stored) {
		n := len(gotSC.VolumeMounts)
		gotSC.VolumeMounts = slices.DeleteFunc(gotSC.VolumeMounts, func(m corev1.VolumeMount) bool {
			return m.MountPath == "/var/run/secrets/kubernetes.io/serviceaccount" && strings.HasPrefix(m.Name, "kube-api-access-")
		})
		if len(gotSC.VolumeMounts) != n-1 {
			t.Errorf("sidecar has %d service account token mounts, want 1", n-len(gotSC.VolumeMounts))
		}
	}
	if diff := cmp.Diff(wantSC, gotSC); diff != "" {
		t.Errorf("stored sidecar container (-want +got):\n%s", diff)
	}
	if cfg.Mode != injector.ModeRegular {
		if len(stored.Spec.InitContainers) == 0 || stored.Spec.InitContainers[0].Name != injector.ContainerName {
			t.Errorf("sidecar is not the first init container")
		}
		if rp := stored.Spec.InitContainers[0].RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyAlways {
			t.Errorf("sidecar restartPolicy %v, want Always (native sidecar)", rp)
		}
	} else if stored.Spec.Containers[0].Name != injector.ContainerName {
		t.Errorf("regular sidecar is not the first container")
	}
	if diff := cmp.Diff(keyshiftVolumes(want), keyshiftVolumes(stored)); diff != "" {
		t.Errorf("stored keyshift volumes (-want +got):\n%s", diff)
	}
	for i, c := range want.Spec.Containers {
		if c.Name == injector.ContainerName {
			continue
		}
		got := stored.Spec.Containers[i]
		if !slices.ContainsFunc(got.Env, func(v corev1.EnvVar) bool { return v.Name == "KEYSHIFT_SOCKET" && v.Value == c.Env[len(c.Env)-1].Value }) {
			t.Errorf("app container %s env %v lacks KEYSHIFT_SOCKET", got.Name, got.Env)
		}
		if !slices.ContainsFunc(got.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == injector.SocketVolume && m.ReadOnly }) {
			t.Errorf("app container %s does not mount the socket volume read-only: %v", got.Name, got.VolumeMounts)
		}
	}
	if got, want := stored.Annotations["keyshift.io/status"], want.Annotations["keyshift.io/status"]; got != want {
		t.Errorf("status annotation %q, want %q", got, want)
	}
}

func TestInjectorAgainstRealAPIServer(t *testing.T) {
	if testing.Short() {
		t.Fatal("the e2e test does not run with -short; run it without")
	}
	ctx := context.Background()
	c := startCluster(t)
	kube := c.kube
	dyn, err := dynamic.NewForConfig(c.rest)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.rest)
	if err != nil {
		t.Fatal(err)
	}
	v, err := dc.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("API server %s (%s), etcd from %s", v.GitVersion, c.url, binDir())

	injLog, err := os.Create(filepath.Join(t.TempDir(), "injector.log"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := injector.Config{Image: sidecarImg}
	e := &env{t: t, ctx: ctx, cluster: c, kube: kube, dyn: dyn,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)),
		inj:    startInjector(t, cfg, injLog)}

	// 1. The manifests, rendered with kustomize, applied for real (what
	// the API server's validation accepts is what a cluster accepts).
	t.Run("manifests apply", func(t *testing.T) {
		root := repoRoot(t)
		objs := decodeYAMLStream(t, kustomizeBuild(t, filepath.Join(root, "manifests")))
		objs = append(objs, decodeYAMLStream(t, kustomizeBuild(t, filepath.Join(root, "manifests", "sample", "kms")))...)
		objs = append(objs, decodeYAMLStream(t, kustomizeBuild(t, filepath.Join(root, "manifests", "sample")))...)
		var applied, skipped []string
		for _, u := range objs {
			gvk := u.GroupVersionKind()
			id := gvk.Kind + " " + u.GetNamespace() + "/" + u.GetName()
			if gvk.Group == "cert-manager.io" {
				skipped = append(skipped, id) // no cert-manager CRDs here
				continue
			}
			if gvk.Kind == "MutatingWebhookConfiguration" {
				pointWebhookAt(t, u, e.inj)
			}
			m, err := e.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Fatalf("%s: %v", id, err)
			}
			var ri dynamic.ResourceInterface = e.dyn.Resource(m.Resource)
			if u.GetNamespace() != "" {
				ri = e.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
			}
			if _, err := ri.Create(ctx, u, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
				t.Fatalf("create %s: %v", id, err)
			}
			applied = append(applied, id)
		}
		t.Logf("applied %d objects: %s", len(applied), strings.Join(applied, ", "))
		t.Logf("skipped (cert-manager CRDs not installed): %s", strings.Join(skipped, ", "))

		// Least privilege, as the real RBAC authorizer says: the injector's
		// ServiceAccount may manage its own TLS Secret and its own webhook's
		// caBundle (the default self-managed certificate) and nothing else.
		canI := func(ra authorizationv1.ResourceAttributes) bool {
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User:               "system:serviceaccount:keyshift-system:keyshift-injector",
				Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:keyshift-system", "system:authenticated"},
				ResourceAttributes: &ra,
			}}
			got, err := kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return got.Status.Allowed
		}
		for _, ra := range []authorizationv1.ResourceAttributes{
			{Verb: "get", Resource: "secrets", Namespace: "keyshift-system", Name: "keyshift-injector-tls"},
			{Verb: "update", Resource: "secrets", Namespace: "keyshift-system", Name: "keyshift-injector-tls"},
			{Verb: "patch", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Name: "keyshift-injector"},
		} {
			if !canI(ra) {
				t.Errorf("the injector's ServiceAccount may not %s %s %s, which its self-managed certificate needs", ra.Verb, ra.Resource, ra.Name)
			}
		}
		for _, ra := range []authorizationv1.ResourceAttributes{
			{Verb: "get", Resource: "secrets", Namespace: "keyshift-demo"},
			{Verb: "get", Resource: "secrets", Namespace: "keyshift-system", Name: "keyshift-controller-kms"},
			{Verb: "list", Resource: "secrets", Namespace: "keyshift-system"},
			{Verb: "list", Resource: "pods", Namespace: "keyshift-system"},
			{Verb: "create", Resource: "events", Namespace: "keyshift-system"},
			{Verb: "patch", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Name: "another-webhook"},
			{Verb: "patch", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "keyshift-injector"},
		} {
			if canI(ra) {
				t.Errorf("the injector's ServiceAccount may %s %s %s/%s", ra.Verb, ra.Resource, ra.Namespace, ra.Name)
			}
		}
		// Control: the same question for a cluster admin is answered yes.
		ctl, err := kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: "someone", Groups: []string{"system:masters"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "keyshift-demo"}},
		}, metav1.CreateOptions{})
		if err != nil || !ctl.Status.Allowed {
			t.Fatalf("control SubjectAccessReview for system:masters: %v %+v", err, ctl)
		}

		mwc, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "keyshift-injector", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h := mwc.Webhooks[0]
		if h.SideEffects == nil || *h.SideEffects != "None" || h.FailurePolicy == nil || *h.FailurePolicy != "Fail" ||
			h.TimeoutSeconds == nil || *h.TimeoutSeconds != 5 || h.NamespaceSelector == nil {
			t.Errorf("stored webhook: sideEffects %v failurePolicy %v timeout %v selector %v", h.SideEffects, h.FailurePolicy, h.TimeoutSeconds, h.NamespaceSelector)
		}
	})

	e.namespace("e2e-inject", map[string]string{"keyshift.io/injection": "enabled", "pod-security.kubernetes.io/enforce": "restricted"})
	e.namespace("e2e-plain", nil)
	e.namespace("keyshift-demo", nil) // created by the sample manifests; add its default SA

	// The API server learns of a new webhook configuration asynchronously:
	// wait until a dry-run pod comes back injected.
	waitForWebhook(t, e, "e2e-inject")

	t.Run("annotated pod is stored with the native sidecar", func(t *testing.T) {
		pod := annotatedPod("e2e-inject", "shop-", map[string]string{"keyshift.io/ext-authz": "true", "keyshift.io/ext-authz-policy": "shop-authz"})
		pod.Spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: ptr(int64(1000))}
		pod.Spec.Containers = append(pod.Spec.Containers, restrictedApp("worker", 1001))
		stored, err := e.create(pod)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		e.checkInjected(t, pod, stored, cfg)
		if args := sidecarOf(stored).Args; !slices.Contains(args, "--allowed-uids=1000,1001,65532") || !slices.Contains(args, "--socket-mode=0660") {
			t.Errorf("sidecar args %v: want the derived UIDs and mode 0660", args)
		}
	})

	t.Run("sample deployment's pod template is injected and restricted-compliant", func(t *testing.T) {
		dep, err := kube.AppsV1().Deployments("keyshift-demo").Get(ctx, "shop", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{ObjectMeta: dep.Spec.Template.ObjectMeta, Spec: dep.Spec.Template.Spec}
		pod.Namespace, pod.GenerateName = "keyshift-demo", "shop-"
		stored, err := e.create(pod)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		e.checkInjected(t, pod, stored, cfg)
	})

	t.Run("Pod Security restricted is enforced (control)", func(t *testing.T) {
		// Without this, "the injected pod was admitted in a restricted
		// namespace" would prove nothing about the sidecar.
		pod := annotatedPod("e2e-inject", "lax-", nil)
		pod.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = nil
		_, err := e.create(pod)
		if err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted:latest"`) {
			t.Fatalf("a non-compliant app container was admitted: %v", err)
		}
		if strings.Contains(err.Error(), `"keyshift"`) {
			t.Errorf("the sidecar is named in the Pod Security violation: %v", err)
		}
	})

	t.Run("bad annotation is denied with its message", func(t *testing.T) {
		for _, ann := range []map[string]string{
			{"keyshift.io/keysets": "Payments"},
			{"keyshift.io/inject": "yes"},
			{"keyshift.io/memory-request": "1Gi"},
			{"keyshift.io/socket-dir": "/etc"},
			{"keyshift.io/keyset": "payments"},
		} {
			pod := annotatedPod("e2e-inject", "bad-", ann)
			_, injectErr := injector.Inject(pod, cfg)
			if injectErr == nil {
				t.Fatalf("Inject accepted %v", ann)
			}
			_, err := e.create(pod)
			var status *apierrors.StatusError
			if !errors.As(err, &status) {
				t.Fatalf("create with %v: %v, want a denial", ann, err)
			}
			want := fmt.Sprintf("admission webhook %q denied the request: keyshift: %s", webhookName, injectErr.Error())
			if diff := cmp.Diff(want, status.ErrStatus.Message); diff != "" {
				t.Errorf("denial message (-want +got):\n%s", diff)
			}
			if status.ErrStatus.Code != 422 || status.ErrStatus.Reason != metav1.StatusReasonInvalid {
				t.Errorf("denial code %d reason %s, want 422 Invalid", status.ErrStatus.Code, status.ErrStatus.Reason)
			}
			t.Logf("denied: %s", status.ErrStatus.Message)
		}
	})

	t.Run("pod without annotations passes untouched", func(t *testing.T) {
		pod := annotatedPod("e2e-inject", "plain-", nil)
		pod.Annotations = nil
		stored, err := e.create(pod)
		if err != nil {
			t.Fatal(err)
		}
		if sidecarOf(stored) != nil || len(keyshiftVolumes(stored)) != 0 || stored.Annotations["keyshift.io/status"] != "" {
			t.Errorf("un-annotated pod was changed: %+v", stored.Spec)
		}
	})

	t.Run("already injected pod is left alone", func(t *testing.T) {
		pod := annotatedPod("e2e-inject", "again-", nil)
		injected, err := injector.Inject(pod, cfg)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := e.create(injected)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(stored.Spec.InitContainers); n != 1 {
			t.Errorf("%d init containers, want the one sidecar", n)
		}
		e.checkInjected(t, pod, stored, cfg)
	})

	t.Run("namespaces not opted in are never sent", func(t *testing.T) {
		// The injector's own namespace stays excluded even when labelled.
		ns, err := kube.CoreV1().Namespaces().Get(ctx, "keyshift-system", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Labels["keyshift.io/injection"] = "enabled"
		if _, err := kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		e.namespace("keyshift-system", nil)
		for _, name := range []string{"e2e-plain", "keyshift-system"} {
			pod := annotatedPod(name, "skip-", map[string]string{"keyshift.io/keysets": "NOT VALID"})
			stored, err := e.create(pod)
			if err != nil {
				t.Fatalf("%s: %v (the webhook should not have been called)", name, err)
			}
			if sidecarOf(stored) != nil {
				t.Errorf("%s: pod was injected", name)
			}
		}
	})

	t.Run("regular sidecar mode", func(t *testing.T) {
		rcfg := injector.Config{Image: sidecarImg, Mode: injector.ModeRegular}
		inj := startInjector(t, rcfg, injLog)
		mwc, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "keyshift-injector", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		reg := mwc.DeepCopy()
		reg.ObjectMeta = metav1.ObjectMeta{Name: "keyshift-injector-regular"}
		reg.Webhooks[0].Name = "inject-regular.keyshift.io"
		url := inj.url
		reg.Webhooks[0].ClientConfig.URL = &url
		reg.Webhooks[0].ClientConfig.CABundle = inj.ca.PEM
		reg.Webhooks[0].NamespaceSelector.MatchExpressions[0].Values = []string{"regular-e2e"}
		if _, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, reg, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		e.namespace("e2e-regular", map[string]string{"keyshift.io/injection": "regular-e2e", "pod-security.kubernetes.io/enforce": "restricted"})
		waitForWebhook(t, e, "e2e-regular")
		pod := annotatedPod("e2e-regular", "legacy-", nil)
		stored, err := e.create(pod)
		if err != nil {
			t.Fatal(err)
		}
		e.checkInjected(t, pod, stored, rcfg)
		if got := stored.Annotations["kubectl.kubernetes.io/default-container"]; got != "app" {
			t.Errorf("default container %q, want app", got)
		}
	})

	t.Run("serving certificate rotates under the API server", func(t *testing.T) {
		leaf, err := e.inj.ca.IssueServer("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := leaf.WriteFiles(e.inj.dir); err != nil {
			t.Fatal(err)
		}
		waitForServedSerial(t, e.inj, leaf.Cert.SerialNumber.String())
		pod := annotatedPod("e2e-inject", "rotated-", nil)
		stored, err := e.create(pod)
		if err != nil {
			t.Fatalf("create after rotation: %v", err)
		}
		e.checkInjected(t, pod, stored, cfg)
	})

	t.Run(fmt.Sprintf("admission latency over %d pod creations", pods), func(t *testing.T) {
		measureLatency(t, e)
	})
}

// waitForWebhook creates dry-run pods in ns until one comes back injected.
func waitForWebhook(t *testing.T, e *env, ns string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		pod := annotatedPod(ns, "probe-", nil)
		got, err := e.kube.CoreV1().Pods(ns).Create(e.ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && sidecarOf(got) != nil {
			return
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("dry-run pods come back without the sidecar; is the webhook configuration applied?")
			}
			t.Fatalf("webhook for %s not active after 30s: %v", ns, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitForServedSerial(t *testing.T, inj *runningInjector, serial string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if got, err := servedSerial(inj); err == nil && got == serial {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("injector did not pick up the rotated certificate %s", serial)
}

// stats is the order statistics of a sample.
type stats struct {
	n                  int
	p50, p90, p99, max time.Duration
}

func summarize(d []time.Duration) stats {
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(i, 0)]
	}
	return stats{len(s), q(0.50), q(0.90), q(0.99), s[len(s)-1]}
}

func (s stats) String() string {
	return fmt.Sprintf("n=%d p50=%v p90=%v p99=%v max=%v", s.n, s.p50.Round(time.Microsecond), s.p90.Round(time.Microsecond),
		s.p99.Round(time.Microsecond), s.max.Round(time.Microsecond))
}

// measureLatency creates pods one after another in an opted-in namespace
// (the API server calls the webhook) and, as the baseline in the same
// run, in a namespace that is not (it does not), and reports both, the
// injector's own time per request, and the API server's histogram of its
// webhook calls.
func measureLatency(t *testing.T, e *env) {
	create := func(ns string) []time.Duration {
		out := make([]time.Duration, 0, pods)
		for range pods {
			pod := annotatedPod(ns, "load-", nil)
			start := time.Now()
			created, err := e.kube.CoreV1().Pods(ns).Create(e.ctx, pod, metav1.CreateOptions{})
			out = append(out, time.Since(start))
			if err != nil {
				t.Fatalf("create in %s: %v", ns, err)
			}
			if ns == "e2e-inject" && sidecarOf(created) == nil {
				t.Fatalf("pod %s was not injected", created.Name)
			}
		}
		return out
	}
	// Warm both paths (connections, caches) before measuring.
	for _, ns := range []string{"e2e-inject", "e2e-plain"} {
		for range 20 {
			if _, err := e.kube.CoreV1().Pods(ns).Create(e.ctx, annotatedPod(ns, "warm-", nil), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := webhookHistogram(t, e)
	e.inj.log.take(injector.ResultInjected)

	with := summarize(create("e2e-inject"))
	server := e.inj.log.take(injector.ResultInjected)
	without := summarize(create("e2e-plain"))
	after := webhookHistogram(t, e)
	if len(server) != pods {
		t.Errorf("injector logged %d injections, want %d", len(server), pods)
	}
	inj := summarize(server)

	list, err := e.kube.CoreV1().Pods("e2e-inject").List(e.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	injected := 0
	for i := range list.Items {
		if strings.HasPrefix(list.Items[i].Name, "load-") && sidecarOf(&list.Items[i]) != nil {
			injected++
		}
	}
	if injected != pods {
		t.Errorf("%d stored load pods carry the sidecar, want %d", injected, pods)
	}

	t.Logf("pod CREATE through the API server, webhook called (client-observed): %v", with)
	t.Logf("pod CREATE through the API server, no webhook (baseline, same run):   %v", without)
	t.Logf("webhook overhead at p50: %v; ratio p50 %.2fx, p99 %.2fx", (with.p50 - without.p50).Round(time.Microsecond),
		float64(with.p50)/float64(without.p50), float64(with.p99)/float64(without.p99))
	t.Logf("injector time per admission (request read to response written):        %v", inj)
	p50, p99 := after.quantiles(before)
	t.Logf("API server's webhook admission histogram (%s), %d calls: p50 <= %s, p99 <= %s (bucket upper bounds)",
		"apiserver_admission_webhook_admission_duration_seconds", after.count-before.count, p50, p99)
	fmt.Printf("\nE2E ADMISSION LATENCY (%d pods): with webhook p50=%v p99=%v | baseline p50=%v p99=%v | injector p50=%v p99=%v | apiserver webhook histogram p50<=%s p99<=%s\n\n",
		pods, with.p50.Round(time.Microsecond), with.p99.Round(time.Microsecond), without.p50.Round(time.Microsecond), without.p99.Round(time.Microsecond),
		inj.p50.Round(time.Microsecond), inj.p99.Round(time.Microsecond), p50, p99)

	// A loose bound, far below the webhook's 5s timeout: catches a
	// pathological regression, not noise on a shared machine.
	if with.p99 > 2*time.Second {
		t.Errorf("p99 pod creation with the webhook is %v", with.p99)
	}
}

// histogram is a cumulative bucket snapshot of the API server's webhook
// admission duration for our webhook.
type histogram struct {
	count   uint64
	buckets map[float64]uint64 // upper bound -> cumulative count
}

func webhookHistogram(t *testing.T, e *env) histogram {
	t.Helper()
	data, err := e.cluster.get(e.ctx, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("parse API server metrics: %v", err)
	}
	h := histogram{buckets: map[float64]uint64{}}
	fam := families["apiserver_admission_webhook_admission_duration_seconds"]
	if fam == nil {
		t.Fatal("API server exposes no apiserver_admission_webhook_admission_duration_seconds")
	}
	for _, m := range fam.GetMetric() {
		if label(m, "name") != webhookName || label(m, "operation") != "CREATE" {
			continue
		}
		h.count += m.GetHistogram().GetSampleCount()
		for _, b := range m.GetHistogram().GetBucket() {
			h.buckets[b.GetUpperBound()] += b.GetCumulativeCount()
		}
	}
	return h
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// quantiles returns the bucket upper bounds holding p50 and p99 of the
// calls made between before and h.
func (h histogram) quantiles(before histogram) (string, string) {
	n := h.count - before.count
	if n == 0 {
		return "n/a", "n/a"
	}
	var bounds []float64
	for b := range h.buckets {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	q := func(p float64) string {
		need := uint64(math.Ceil(p * float64(n)))
		for _, b := range bounds {
			if h.buckets[b]-before.buckets[b] >= need {
				return (time.Duration(b * float64(time.Second))).String()
			}
		}
		return "+Inf"
	}
	return q(0.50), q(0.99)
}

func ptr[T any](v T) *T { return &v }
