package injector

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

func readPod(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "pods", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &pod
}

// golden compares got with testdata/golden/name whole, or rewrites it
// with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./injector -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got):\n%s", path, diff)
	}
}

// patchFor is what the admission handler does: diff the pod before and
// after Inject.
func patchFor(t *testing.T, before, after *corev1.Pod) []byte {
	t.Helper()
	b, err := json.Marshal(before)
	if err != nil {
		t.Fatal(err)
	}
	a, err := json.Marshal(after)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := Diff(b, a)
	if err != nil {
		t.Fatal(err)
	}
	if ops == nil {
		ops = []Operation{}
	}
	out, err := json.MarshalIndent(ops, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func TestInjectGolden(t *testing.T) {
	regular := testConfig()
	regular.Mode = ModeRegular
	withXDS := testConfig()
	withXDS.XDSAddr = "keyshift-controller.keyshift-system.svc:18000"
	tests := []struct {
		name     string
		cfg      Config
		warnings []string
	}{
		{name: "minimal", cfg: testConfig(), warnings: []string{
			"container(s) app set no runAsUser, so any UID in the pod may call the keyshift socket; set runAsUser or keyshift.io/allowed-uids to restrict it",
		}},
		{name: "full", cfg: testConfig()},
		{name: "xds", cfg: withXDS, warnings: []string{
			"container(s) app set no runAsUser, so any UID in the pod may call the keyshift socket; set runAsUser or keyshift.io/allowed-uids to restrict it",
		}},
		{name: "regular", cfg: regular},
		{name: "explicit-uids", cfg: testConfig(), warnings: []string{
			"container envoy sets KEYSHIFT_SOCKET itself, not to /var/run/keyshift/keyshift.sock; it was left as written",
		}},
		{name: "long-keyset", cfg: testConfig()},
		{name: "kms-env", cfg: withXDS},
		{name: "not-annotated", cfg: testConfig()},
		{name: "inject-false", cfg: testConfig(), warnings: []string{
			`keyshift.io/keysets set but keyshift.io/inject is not "true": no keyshift sidecar injected`,
		}},
		{name: "already-injected", cfg: testConfig()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := readPod(t, tt.name)
			orig := pod.DeepCopy()
			got, err := Inject(pod, tt.cfg)
			if err != nil {
				t.Fatalf("Inject: %v", err)
			}
			if diff := cmp.Diff(orig, pod); diff != "" {
				t.Fatalf("Inject modified its input (-before +after):\n%s", diff)
			}
			patch := patchFor(t, pod, got)
			golden(t, tt.name+".patch.json", patch)
			podYAML, err := yaml.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name+".pod.yaml", podYAML)

			// The patch, applied by the library the API server uses, gives
			// exactly the injected pod.
			before, _ := json.Marshal(pod)
			after, _ := json.Marshal(got)
			applied, err := jsonpatch.DecodePatch(patch)
			if err != nil {
				t.Fatalf("decode patch: %v", err)
			}
			result, err := applied.Apply(before)
			if err != nil {
				t.Fatalf("apply patch: %v", err)
			}
			var gotDoc, wantDoc any
			_ = json.Unmarshal(result, &gotDoc)
			_ = json.Unmarshal(after, &wantDoc)
			if diff := cmp.Diff(wantDoc, gotDoc); diff != "" {
				t.Errorf("patched JSON differs from the injected pod (-want +got):\n%s", diff)
			}

			// Idempotent: a second pass changes nothing.
			again, err := Inject(got, tt.cfg)
			if err != nil {
				t.Fatalf("second Inject: %v", err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("second Inject changed the pod (-first +second):\n%s", diff)
			}

			if diff := cmp.Diff(tt.warnings, Warnings(pod, tt.cfg)); diff != "" {
				t.Errorf("Warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInjectConflicts(t *testing.T) {
	withPod := func(mod func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{}
		p.Name = "x"
		p.Annotations = map[string]string{"keyshift.io/inject": "true", "keyshift.io/keysets": "payments"}
		p.Spec.Containers = []corev1.Container{{Name: "app", Image: "app:1"}}
		mod(p)
		return p
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		err  string
	}{
		{
			name: "container named keyshift",
			pod:  withPod(func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "keyshift"}) }),
			err:  `the pod already has a container named "keyshift" but no keyshift.io/status annotation; rename that container, or remove keyshift.io/inject to run your own sidecar`,
		},
		{
			name: "init container named keyshift",
			pod:  withPod(func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{{Name: "keyshift"}} }),
			err:  `the pod already has a container named "keyshift" but no keyshift.io/status annotation; rename that container, or remove keyshift.io/inject to run your own sidecar`,
		},
		{
			name: "socket volume name taken",
			pod:  withPod(func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{{Name: "keyshift-socket"}} }),
			err:  `the pod already has a volume named "keyshift-socket"; rename that volume; names starting keyshift- are the injector's`,
		},
		{
			name: "keyset volume name taken",
			pod:  withPod(func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{{Name: "keyshift-keyset-payments"}} }),
			err:  `the pod already has a volume named "keyshift-keyset-payments"; rename that volume; names starting keyshift- are the injector's`,
		},
		{
			name: "mount at the socket dir",
			pod: withPod(func(p *corev1.Pod) {
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "run", MountPath: "/var/run/keyshift"}}
			}),
			err: `container app already mounts /var/run/keyshift, inside the keyshift socket directory /var/run/keyshift; set keyshift.io/socket-dir to a free directory such as /var/run/keyshift-socket`,
		},
		{
			name: "mount inside the socket dir",
			pod: withPod(func(p *corev1.Pod) {
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "run", MountPath: "/var/run/keyshift/cache"}}
			}),
			err: `container app already mounts /var/run/keyshift/cache, inside the keyshift socket directory /var/run/keyshift; set keyshift.io/socket-dir to a free directory such as /var/run/keyshift-socket`,
		},
		{
			name: "windows pod",
			pod:  withPod(func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} }),
			err:  `the pod runs on windows; the keyshift sidecar runs on Linux only; remove keyshift.io/inject from this pod`,
		},
		{
			name: "ops port taken",
			pod: withPod(func(p *corev1.Pod) {
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9495}, {ContainerPort: 9496}}
			}),
			err: `container app uses port 9495, the keyshift sidecar's health port; set keyshift.io/ops-port to a free port such as 9497`,
		},
		{
			name: "ext-authz port taken",
			pod: withPod(func(p *corev1.Pod) {
				p.Annotations["keyshift.io/ext-authz"] = "true"
				p.Annotations["keyshift.io/ext-authz-policy"] = "shop-authz"
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9191}}
			}),
			err: `container app uses port 9191, the keyshift ext_authz port; set keyshift.io/ext-authz to a free port such as 9192`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Inject(tt.pod, testConfig())
			if err == nil {
				t.Fatalf("Inject succeeded, want %q", tt.err)
			}
			if diff := cmp.Diff(tt.err, err.Error()); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			var ce *ConflictError
			if !errors.As(err, &ce) || !errors.Is(err, ErrDenied) {
				t.Errorf("error %T is not a *ConflictError wrapping ErrDenied", err)
			}
			if got != nil {
				t.Errorf("a pod came back with the error")
			}
		})
	}
}

func TestKeysetVolumeNames(t *testing.T) {
	seen := map[string]string{}
	for _, name := range []string{
		"a",
		"payments",
		"a-very-long-keyset-name-that-uses-all-sixty-three-allowed-chars",
		"a-very-long-keyset-name-that-uses-all-sixty-three-allowed-charz",
	} {
		v := keysetVolume(name)
		if len(v) > 63 {
			t.Errorf("keysetVolume(%q) = %q, %d characters", name, v, len(v))
		}
		if other, dup := seen[v]; dup {
			t.Errorf("keysets %q and %q share volume %q", name, other, v)
		}
		seen[v] = name
	}
	if got, want := keysetVolume("payments"), "keyshift-keyset-payments"; got != want {
		t.Errorf("keysetVolume(payments) = %q, want %q", got, want)
	}
	// The golden test pins the hashed form; this checks it stays a valid
	// DNS label.
	v := keysetVolume("a-very-long-keyset-name-that-uses-all-sixty-three-allowed-chars")
	if bytes.ContainsAny([]byte(v), "_.") || v[len(v)-1] == '-' {
		t.Errorf("hashed volume name %q is not a DNS label", v)
	}
}

func TestWarnings(t *testing.T) {
	pod := func(mod func(*corev1.Pod)) *corev1.Pod {
		p := readPod(t, "full")
		mod(p)
		return p
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"none", pod(func(*corev1.Pod) {}), nil},
		{"host network", pod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }), []string{
			"the pod uses hostNetwork, so the keyshift sidecar opens port 9495 and 9191 on the node; give each such pod on a node its own keyshift.io/ops-port",
		}},
		{"unknown uids", pod(func(p *corev1.Pod) { p.Spec.SecurityContext.RunAsUser = nil }), []string{
			"container(s) app set no runAsUser, so any UID in the pod may call the keyshift socket; set runAsUser or keyshift.io/allowed-uids to restrict it",
		}},
		{"bad annotations warn nothing (they deny)", pod(func(p *corev1.Pod) { p.Annotations["keyshift.io/log-level"] = "x" }), nil},
		{"status set", pod(func(p *corev1.Pod) { p.Annotations["keyshift.io/status"] = "{}"; p.Spec.HostNetwork = true }), nil},
		{"nil pod", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Warnings(tt.pod, testConfig())); diff != "" {
				t.Errorf("Warnings (-want +got):\n%s", diff)
			}
		})
	}
}

// TestKMSEnvFromSidecarOnly checks that keyshift.io/kms-env-from gives the
// Secret's variables to the sidecar and to no app container, in both
// sidecar modes.
func TestKMSEnvFromSidecarOnly(t *testing.T) {
	for _, mode := range []SidecarMode{ModeNative, ModeRegular} {
		t.Run(string(mode), func(t *testing.T) {
			cfg := testConfig()
			cfg.Mode = mode
			pod := readPod(t, "kms-env")
			pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "example.com/migrate:1"}}
			got, err := Inject(pod, cfg)
			if err != nil {
				t.Fatal(err)
			}
			want := []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "shop-kms-credentials"},
				Optional:             ptr(false),
			}}}
			var sidecars int
			for _, c := range append(append([]corev1.Container{}, got.Spec.InitContainers...), got.Spec.Containers...) {
				if c.Name == ContainerName {
					sidecars++
					if diff := cmp.Diff(want, c.EnvFrom); diff != "" {
						t.Errorf("sidecar envFrom (-want +got):\n%s", diff)
					}
					continue
				}
				if c.EnvFrom != nil {
					t.Errorf("container %s got envFrom %v", c.Name, c.EnvFrom)
				}
			}
			if sidecars != 1 {
				t.Fatalf("%d sidecars", sidecars)
			}
		})
	}
}
