package injector

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// quantityEqual compares quantities by value and by how they print, which
// is what ends up in the pod.
var quantityEqual = cmp.Comparer(func(a, b resource.Quantity) bool {
	return a.Cmp(b) == 0 && a.String() == b.String()
})

func testConfig() Config {
	return Config{Image: "keyshift/keyshift:v0.1.0"}
}

func res(cpuReq, cpuLim, memReq, memLim string) corev1.ResourceRequirements {
	r := corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, q := range []struct {
		v    string
		list corev1.ResourceList
		name corev1.ResourceName
	}{
		{cpuReq, r.Requests, corev1.ResourceCPU}, {cpuLim, r.Limits, corev1.ResourceCPU},
		{memReq, r.Requests, corev1.ResourceMemory}, {memLim, r.Limits, corev1.ResourceMemory},
	} {
		if q.v != "" {
			q.list[q.name] = resource.MustParse(q.v)
		}
	}
	return r
}

func TestParseAnnotations(t *testing.T) {
	base := func(kv ...string) map[string]string {
		m := map[string]string{"keyshift.io/inject": "true", "keyshift.io/keysets": "payments"}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "<delete>" {
				delete(m, kv[i])
				continue
			}
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	defaults := func(mod func(*PodConfig)) *PodConfig {
		pc := &PodConfig{
			Keysets:   []KeysetRef{{Name: "payments", Secret: "payments"}},
			SocketDir: "/var/run/keyshift",
			Resources: res("10m", "", "32Mi", "64Mi"),
			LogLevel:  "info",
			OpsPort:   9495,
		}
		if mod != nil {
			mod(pc)
		}
		return pc
	}
	long := strings.Repeat("k", 64)
	var many []string
	for i := range MaxKeysets + 1 {
		many = append(many, fmt.Sprintf("k%d", i))
	}
	longDir := "/" + strings.Repeat("d", 93)

	tests := []struct {
		name string
		ann  map[string]string
		want *PodConfig
		err  string // the whole message, when the pod is denied
	}{
		// Good values.
		{name: "minimal", ann: base(), want: defaults(nil)},
		{
			name: "everything",
			ann: base(
				"keyshift.io/keysets", " payments , users=users-keyset",
				"keyshift.io/socket-dir", "/run/keyshift",
				"keyshift.io/ext-authz", "true",
				"keyshift.io/ext-authz-policy", "shop-authz",
				"keyshift.io/ext-authz-allowed-uids", "1337,101",
				"keyshift.io/allowed-uids", "1001, 1000,1000",
				"keyshift.io/cpu-request", "50m",
				"keyshift.io/cpu-limit", "200m",
				"keyshift.io/memory-request", "48Mi",
				"keyshift.io/memory-limit", "128Mi",
				"keyshift.io/log-level", "debug",
				"keyshift.io/ops-port", "9600",
				"keyshift.io/kms-env-from", "shop-kms.credentials",
			),
			want: &PodConfig{
				Keysets:        []KeysetRef{{Name: "payments", Secret: "payments"}, {Name: "users", Secret: "users-keyset"}},
				SocketDir:      "/run/keyshift",
				ExtAuthzPort:   9191,
				ExtAuthzPolicy: "shop-authz",
				ExtAuthzUIDs:   UIDList{UIDs: []int64{101, 1337}},
				AllowedUIDs:    &UIDList{UIDs: []int64{1000, 1001}},
				Resources:      res("50m", "200m", "48Mi", "128Mi"),
				LogLevel:       "debug",
				OpsPort:        9600,
				KMSEnvFrom:     "shop-kms.credentials",
			},
		},
		{name: "ext-authz port", ann: base("keyshift.io/ext-authz", "9300", "keyshift.io/ext-authz-policy", "p"), want: defaults(func(p *PodConfig) {
			p.ExtAuthzPort, p.ExtAuthzPolicy, p.ExtAuthzUIDs = 9300, "p", UIDList{UIDs: []int64{1337}}
		})},
		{name: "ext-authz without a policy", ann: base("keyshift.io/ext-authz", "true"),
			err: `annotation keyshift.io/ext-authz="true": needs a policy; write also keyshift.io/ext-authz-policy: the name of a ConfigMap whose key policy.yaml holds the ext_authz policy`},
		{name: "ext-authz policy not a name", ann: base("keyshift.io/ext-authz", "true", "keyshift.io/ext-authz-policy", "Bad_Name"),
			err: `annotation keyshift.io/ext-authz-policy="Bad_Name": is not a ConfigMap name; write the name of a ConfigMap in the pod's namespace (lowercase letters, digits, '-' and '.')`},
		{name: "ext-authz uids self", ann: base("keyshift.io/ext-authz", "true", "keyshift.io/ext-authz-policy", "p", "keyshift.io/ext-authz-allowed-uids", "self"),
			err: `annotation keyshift.io/ext-authz-allowed-uids="self": self would admit only the sidecar, never the proxy; write "any" or UIDs such as "1337" (Istio's proxy) or "101" (Envoy's image)`},
		{name: "ext-authz off", ann: base("keyshift.io/ext-authz", "false"), want: defaults(nil)},
		{name: "allowed-uids any", ann: base("keyshift.io/allowed-uids", "any"), want: defaults(func(p *PodConfig) { p.AllowedUIDs = &UIDList{Any: true} })},
		{name: "allowed-uids self", ann: base("keyshift.io/allowed-uids", "self"), want: defaults(func(p *PodConfig) { p.AllowedUIDs = &UIDList{UIDs: []int64{65532}} })},
		{name: "allowed-uids root", ann: base("keyshift.io/allowed-uids", "0"), want: defaults(func(p *PodConfig) { p.AllowedUIDs = &UIDList{UIDs: []int64{0}} })},
		{name: "memory request up to the default limit", ann: base("keyshift.io/memory-request", "64Mi"), want: defaults(func(p *PodConfig) { p.Resources = res("10m", "", "64Mi", "64Mi") })},
		{name: "keyset of 63 characters", ann: base("keyshift.io/keysets", long[:63]), want: defaults(func(p *PodConfig) { p.Keysets = []KeysetRef{{Name: long[:63], Secret: long[:63]}} })},
		{name: "kms-env-from", ann: base("keyshift.io/kms-env-from", "kms-credentials"), want: defaults(func(p *PodConfig) { p.KMSEnvFrom = "kms-credentials" })},
		{name: "status is a known key", ann: base("keyshift.io/status", "{}"), want: defaults(nil)},
		{name: "other prefixes are not ours", ann: base("sidecar.istio.io/inject", "true", "keyshift.iox/foo", "1"), want: defaults(nil)},

		// Bad values: every one is denied, naming the annotation and what to write.
		{name: "inject yes", ann: base("keyshift.io/inject", "yes"),
			err: `annotation keyshift.io/inject="yes": is neither true nor false; write "true" to inject the sidecar or "false" to leave the pod alone`},
		{name: "inject True", ann: base("keyshift.io/inject", "True"),
			err: `annotation keyshift.io/inject="True": is neither true nor false; write "true" to inject the sidecar or "false" to leave the pod alone`},
		{name: "keysets missing", ann: base("keyshift.io/keysets", "<delete>"),
			err: `annotation keyshift.io/keysets="": is required when keyshift.io/inject is "true"; write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keysets blank", ann: base("keyshift.io/keysets", "  "),
			err: `annotation keyshift.io/keysets="  ": is required when keyshift.io/inject is "true"; write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keysets empty entry", ann: base("keyshift.io/keysets", "a,,b"),
			err: `annotation keyshift.io/keysets="a,,b": has an empty entry; write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keysets trailing comma", ann: base("keyshift.io/keysets", "a,"),
			err: `annotation keyshift.io/keysets="a,": has an empty entry; write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keyset upper case", ann: base("keyshift.io/keysets", "Payments"),
			err: `annotation keyshift.io/keysets="Payments": keyset name "Payments" is not lowercase letters, digits and inner '-' (at most 63); write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keyset underscore", ann: base("keyshift.io/keysets", "pay_ments"),
			err: `annotation keyshift.io/keysets="pay_ments": keyset name "pay_ments" is not lowercase letters, digits and inner '-' (at most 63); write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keyset leading dash", ann: base("keyshift.io/keysets", "-pay"),
			err: `annotation keyshift.io/keysets="-pay": keyset name "-pay" is not lowercase letters, digits and inner '-' (at most 63); write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keyset too long", ann: base("keyshift.io/keysets", long),
			err: `annotation keyshift.io/keysets="` + long + `": keyset name "` + long + `" is not lowercase letters, digits and inner '-' (at most 63); write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keyset without name", ann: base("keyshift.io/keysets", "=payments"),
			err: `annotation keyshift.io/keysets="=payments": keyset name "" is not lowercase letters, digits and inner '-' (at most 63); write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keyset bad secret", ann: base("keyshift.io/keysets", "a=Bad_Secret"),
			err: `annotation keyshift.io/keysets="a=Bad_Secret": secret name "Bad_Secret" of keyset a is not a valid Secret name; write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keyset empty secret", ann: base("keyshift.io/keysets", "a="),
			err: `annotation keyshift.io/keysets="a=": secret name "" of keyset a is not a valid Secret name; write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "keyset twice", ann: base("keyshift.io/keysets", "a,b=x,a=y"),
			err: `annotation keyshift.io/keysets="a,b=x,a=y": keyset a is listed twice; write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "too many keysets", ann: base("keyshift.io/keysets", strings.Join(many, ",")),
			err: `annotation keyshift.io/keysets="` + strings.Join(many, ",") + `": lists 33 keysets, more than 32; write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`},
		{name: "socket-dir relative", ann: base("keyshift.io/socket-dir", "run/keyshift"),
			err: `annotation keyshift.io/socket-dir="run/keyshift": is not an absolute path; write an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`},
		{name: "socket-dir unclean", ann: base("keyshift.io/socket-dir", "/var/run/keyshift/"),
			err: `annotation keyshift.io/socket-dir="/var/run/keyshift/": is not clean (it means "/var/run/keyshift"); write an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`},
		{name: "socket-dir dot-dot", ann: base("keyshift.io/socket-dir", "/var/run/../etc"),
			err: `annotation keyshift.io/socket-dir="/var/run/../etc": is not clean (it means "/var/etc"); write an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`},
		{name: "socket-dir root", ann: base("keyshift.io/socket-dir", "/"),
			err: `annotation keyshift.io/socket-dir="/": is a system directory; the socket volume would hide the image's files there; write an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`},
		{name: "socket-dir etc", ann: base("keyshift.io/socket-dir", "/etc"),
			err: `annotation keyshift.io/socket-dir="/etc": is a system directory; the socket volume would hide the image's files there; write an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`},
		{name: "socket-dir too long", ann: base("keyshift.io/socket-dir", longDir),
			err: `annotation keyshift.io/socket-dir="` + longDir + `": is 94 bytes long; with /keyshift.sock that exceeds the 107 bytes a Unix socket path may have; write an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`},
		{name: "socket-dir in keysets", ann: base("keyshift.io/socket-dir", "/var/run/keyshift/keysets/x"),
			err: `annotation keyshift.io/socket-dir="/var/run/keyshift/keysets/x": is inside /var/run/keyshift/keysets, where the keyset Secrets are mounted; write an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`},
		{name: "socket-dir colon", ann: base("keyshift.io/socket-dir", "/a:b"),
			err: `annotation keyshift.io/socket-dir="/a:b": contains ':', ',' or '\'; write an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`},
		{name: "ext-authz yes", ann: base("keyshift.io/ext-authz", "yes"),
			err: `annotation keyshift.io/ext-authz="yes": is not a port number; write "true" (port 9191), "false", or a port number from 1024 to 65535`},
		{name: "ext-authz privileged port", ann: base("keyshift.io/ext-authz", "80"),
			err: `annotation keyshift.io/ext-authz="80": is outside 1024..65535 (the sidecar runs without privileges); write "true" (port 9191), "false", or a port number from 1024 to 65535`},
		{name: "ext-authz beyond 65535", ann: base("keyshift.io/ext-authz", "70000"),
			err: `annotation keyshift.io/ext-authz="70000": is outside 1024..65535 (the sidecar runs without privileges); write "true" (port 9191), "false", or a port number from 1024 to 65535`},
		{name: "ext-authz on the ops port", ann: base("keyshift.io/ext-authz", "9495", "keyshift.io/ext-authz-policy", "p"),
			err: `annotation keyshift.io/ext-authz="9495": port 9495 is the sidecar's health port (keyshift.io/ops-port); write another port, or move the health port with keyshift.io/ops-port`},
		{name: "allowed-uids empty", ann: base("keyshift.io/allowed-uids", ""),
			err: `annotation keyshift.io/allowed-uids="": entry "" is not a UID from 0 to 2147483647; write "any", "self", or comma-separated numeric UIDs such as "1000,1001"`},
		{name: "allowed-uids name", ann: base("keyshift.io/allowed-uids", "root"),
			err: `annotation keyshift.io/allowed-uids="root": entry "root" is not a UID from 0 to 2147483647; write "any", "self", or comma-separated numeric UIDs such as "1000,1001"`},
		{name: "allowed-uids trailing comma", ann: base("keyshift.io/allowed-uids", "1000,"),
			err: `annotation keyshift.io/allowed-uids="1000,": entry "" is not a UID from 0 to 2147483647; write "any", "self", or comma-separated numeric UIDs such as "1000,1001"`},
		{name: "allowed-uids negative", ann: base("keyshift.io/allowed-uids", "-1"),
			err: `annotation keyshift.io/allowed-uids="-1": entry "-1" is not a UID from 0 to 2147483647; write "any", "self", or comma-separated numeric UIDs such as "1000,1001"`},
		{name: "allowed-uids too big", ann: base("keyshift.io/allowed-uids", "2147483648"),
			err: `annotation keyshift.io/allowed-uids="2147483648": entry "2147483648" is not a UID from 0 to 2147483647; write "any", "self", or comma-separated numeric UIDs such as "1000,1001"`},
		{name: "cpu-request not a quantity", ann: base("keyshift.io/cpu-request", "lots"),
			err: `annotation keyshift.io/cpu-request="lots": is not a quantity; write a positive Kubernetes quantity such as "100m" for CPU or "64Mi" for memory`},
		{name: "cpu-limit zero", ann: base("keyshift.io/cpu-limit", "0"),
			err: `annotation keyshift.io/cpu-limit="0": must be greater than zero; write a positive Kubernetes quantity such as "100m" for CPU or "64Mi" for memory`},
		{name: "memory-request negative", ann: base("keyshift.io/memory-request", "-1Mi"),
			err: `annotation keyshift.io/memory-request="-1Mi": must be greater than zero; write a positive Kubernetes quantity such as "100m" for CPU or "64Mi" for memory`},
		{name: "memory-limit unit typo", ann: base("keyshift.io/memory-limit", "64MB"),
			err: `annotation keyshift.io/memory-limit="64MB": is not a quantity; write a positive Kubernetes quantity such as "100m" for CPU or "64Mi" for memory`},
		{name: "memory request above the default limit", ann: base("keyshift.io/memory-request", "128Mi"),
			err: `annotation keyshift.io/memory-request="128Mi": exceeds the sidecar's memory limit 64Mi; write a memory request no larger than its limit (set both keyshift.io/memory-request and keyshift.io/memory-limit)`},
		{name: "memory limit below the default request", ann: base("keyshift.io/memory-limit", "16Mi"),
			err: `annotation keyshift.io/memory-limit="16Mi": is below the sidecar's memory request 32Mi; write a memory request no larger than its limit (set both keyshift.io/memory-request and keyshift.io/memory-limit)`},
		{name: "cpu request above cpu limit", ann: base("keyshift.io/cpu-request", "2", "keyshift.io/cpu-limit", "1"),
			err: `annotation keyshift.io/cpu-limit="1": is below the sidecar's cpu request 2; write a cpu request no larger than its limit (set both keyshift.io/cpu-request and keyshift.io/cpu-limit)`},
		{name: "log-level unknown", ann: base("keyshift.io/log-level", "verbose"),
			err: `annotation keyshift.io/log-level="verbose": is not a log level; write debug, info, warn or error`},
		{name: "log-level upper case", ann: base("keyshift.io/log-level", "INFO"),
			err: `annotation keyshift.io/log-level="INFO": is not a log level; write debug, info, warn or error`},
		{name: "ops-port name", ann: base("keyshift.io/ops-port", "http"),
			err: `annotation keyshift.io/ops-port="http": is not a port number; write a port number from 1024 to 65535 that no container in the pod uses, such as "9495"`},
		{name: "ops-port privileged", ann: base("keyshift.io/ops-port", "80"),
			err: `annotation keyshift.io/ops-port="80": is outside 1024..65535 (the sidecar runs without privileges); write a port number from 1024 to 65535 that no container in the pod uses, such as "9495"`},
		{name: "kms-env-from not a name", ann: base("keyshift.io/kms-env-from", "KMS_Credentials"),
			err: `annotation keyshift.io/kms-env-from="KMS_Credentials": is not a Secret name; write the name of one Secret in the pod's namespace holding the sidecar's KMS settings, such as "kms-credentials" (lowercase letters, digits, '-' and '.')`},
		{name: "kms-env-from empty", ann: base("keyshift.io/kms-env-from", ""),
			err: `annotation keyshift.io/kms-env-from="": is not a Secret name; write the name of one Secret in the pod's namespace holding the sidecar's KMS settings, such as "kms-credentials" (lowercase letters, digits, '-' and '.')`},
		{name: "kms-env-from a list", ann: base("keyshift.io/kms-env-from", "aws,vault"),
			err: `annotation keyshift.io/kms-env-from="aws,vault": is not a Secret name; write the name of one Secret in the pod's namespace holding the sidecar's KMS settings, such as "kms-credentials" (lowercase letters, digits, '-' and '.')`},
		{name: "kms-env-from misspelt", ann: base("keyshift.io/kms-env-form", "kms-credentials"),
			err: `annotation keyshift.io/kms-env-form="kms-credentials": is not a keyshift annotation; write keyshift.io/kms-env-from (did you mean it?) or one of keyshift.io/inject, keyshift.io/keysets, keyshift.io/socket-dir, keyshift.io/ext-authz, keyshift.io/ext-authz-policy, keyshift.io/ext-authz-allowed-uids, keyshift.io/allowed-uids, keyshift.io/cpu-request, keyshift.io/cpu-limit, keyshift.io/memory-request, keyshift.io/memory-limit, keyshift.io/log-level, keyshift.io/ops-port, keyshift.io/kms-env-from`},
		{name: "unknown key near a known one", ann: base("keyshift.io/keyset", "payments"),
			err: `annotation keyshift.io/keyset="payments": is not a keyshift annotation; write keyshift.io/keysets (did you mean it?) or one of keyshift.io/inject, keyshift.io/keysets, keyshift.io/socket-dir, keyshift.io/ext-authz, keyshift.io/ext-authz-policy, keyshift.io/ext-authz-allowed-uids, keyshift.io/allowed-uids, keyshift.io/cpu-request, keyshift.io/cpu-limit, keyshift.io/memory-request, keyshift.io/memory-limit, keyshift.io/log-level, keyshift.io/ops-port, keyshift.io/kms-env-from`},
		{name: "unknown key", ann: base("keyshift.io/sidecar-image", "evil:latest"),
			err: `annotation keyshift.io/sidecar-image="evil:latest": is not a keyshift annotation; write one of keyshift.io/inject, keyshift.io/keysets, keyshift.io/socket-dir, keyshift.io/ext-authz, keyshift.io/ext-authz-policy, keyshift.io/ext-authz-allowed-uids, keyshift.io/allowed-uids, keyshift.io/cpu-request, keyshift.io/cpu-limit, keyshift.io/memory-request, keyshift.io/memory-limit, keyshift.io/log-level, keyshift.io/ops-port, keyshift.io/kms-env-from`},
		{name: "every problem at once", ann: base("keyshift.io/keysets", "A", "keyshift.io/log-level", "loud", "keyshift.io/ops-port", "1"),
			err: `annotation keyshift.io/keysets="A": keyset name "A" is not lowercase letters, digits and inner '-' (at most 63); write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"` + "\n" +
				`annotation keyshift.io/ops-port="1": is outside 1024..65535 (the sidecar runs without privileges); write a port number from 1024 to 65535 that no container in the pod uses, such as "9495"` + "\n" +
				`annotation keyshift.io/log-level="loud": is not a log level; write debug, info, warn or error`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAnnotations(tt.ann, testConfig())
			if tt.err != "" {
				if err == nil {
					t.Fatalf("ParseAnnotations = %+v, want error %q", got, tt.err)
				}
				if diff := cmp.Diff(tt.err, err.Error()); diff != "" {
					t.Errorf("error message (-want +got):\n%s", diff)
				}
				if !errors.Is(err, ErrDenied) {
					t.Errorf("errors.Is(err, ErrDenied) = false for %v", err)
				}
				var ae *AnnotationError
				if !errors.As(err, &ae) {
					t.Errorf("error is not an *AnnotationError: %T", err)
				}
				if got != nil {
					t.Errorf("got config %+v alongside the error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAnnotations: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, quantityEqual); diff != "" {
				t.Errorf("PodConfig (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInjectDeniesBadAnnotations(t *testing.T) {
	pod := &corev1.Pod{}
	pod.Annotations = map[string]string{"keyshift.io/inject": "maybe"}
	got, err := Inject(pod, testConfig())
	want := `annotation keyshift.io/inject="maybe": is neither true nor false; write "true" to inject the sidecar or "false" to leave the pod alone`
	if err == nil || err.Error() != want {
		t.Fatalf("Inject error = %v, want %q", err, want)
	}
	if got != nil {
		t.Fatalf("Inject returned a pod with its error")
	}
}

func TestConfigValidate(t *testing.T) {
	img := "keyshift/keyshift:v0.1.0"
	tests := []struct {
		name string
		cfg  Config
		err  string
	}{
		{"defaults", Config{Image: img}, ""},
		{"regular", Config{Image: img, Mode: ModeRegular, ImagePullPolicy: corev1.PullAlways, SidecarUID: 1000, LogLevel: "warn"}, ""},
		{"no image", Config{}, "injector: invalid config: no sidecar image (set --sidecar-image or KEYSHIFT_SIDECAR_IMAGE)"},
		{"blank image", Config{Image: " "}, "injector: invalid config: no sidecar image (set --sidecar-image or KEYSHIFT_SIDECAR_IMAGE)"},
		{"bad mode", Config{Image: img, Mode: "sidecar"}, `injector: invalid config: sidecar mode "sidecar": write native or regular`},
		{"bad pull policy", Config{Image: img, ImagePullPolicy: "Sometimes"}, `injector: invalid config: image pull policy "Sometimes": write Always, IfNotPresent or Never`},
		{"negative uid", Config{Image: img, SidecarUID: -5}, "injector: invalid config: sidecar UID -5: write a non-root UID from 1 to 2147483647"},
		{"bad log level", Config{Image: img, LogLevel: "trace"}, `injector: invalid config: sidecar log level "trace": write debug, info, warn or error`},
		{"request above limit", Config{Image: img, Resources: res("", "", "1Gi", "64Mi")}, "injector: invalid config: default memory request 1Gi exceeds its limit 64Mi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.err == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || err.Error() != tt.err {
				t.Fatalf("Validate = %v, want %q", err, tt.err)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("errors.Is(err, ErrConfig) = false")
			}
			if _, err := Inject(&corev1.Pod{}, tt.cfg); !errors.Is(err, ErrConfig) {
				t.Errorf("Inject with a bad config: %v, want ErrConfig", err)
			}
		})
	}
}
