package injector

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/keyshift/keyshift/injector/annotation"
	"github.com/keyshift/keyshift/internal/envelope"
)

// PodConfig is what one pod asked for: its annotations parsed, checked and
// completed with the injector's defaults.
type PodConfig struct {
	// Keysets are the keysets the sidecar serves, in the order written.
	Keysets []KeysetRef
	// SocketDir is the directory holding the socket in every container.
	SocketDir string
	// ExtAuthzPort is the localhost ext_authz port, or 0 when off.
	ExtAuthzPort int32
	// ExtAuthzPolicy is the ConfigMap holding the ext_authz policy.
	ExtAuthzPolicy string
	// ExtAuthzUIDs are the peers allowed to call ext_authz.
	ExtAuthzUIDs UIDList
	// AllowedUIDs is the annotation's peer allowlist, or nil when the
	// injector should derive it from the containers' runAsUser.
	AllowedUIDs *UIDList
	// Resources are the sidecar's requests and limits.
	Resources corev1.ResourceRequirements
	// LogLevel is the sidecar's log level.
	LogLevel string
	// OpsPort serves the sidecar's /livez, /readyz and /metrics.
	OpsPort int32
	// KMSEnvFrom is the Secret whose keys become the sidecar's environment
	// (its KMS configuration and credentials), or "" for none.
	KMSEnvFrom string
}

// KeysetRef is one keyset and the Secret it is mounted from.
type KeysetRef struct {
	// Name is the keyset's name, as in its document.
	Name string
	// Secret is the Secret in the pod's namespace holding keyset.json.
	Secret string
}

// UIDList is the set of peer UIDs allowed to call the socket.
type UIDList struct {
	// Any lets every peer that can open the socket call it.
	Any bool
	// UIDs is sorted and free of duplicates; empty when Any.
	UIDs []int64
}

// Flag is the list as the sidecar's --allowed-uids flag reads it.
func (u UIDList) Flag() string {
	if u.Any {
		return "any"
	}
	parts := make([]string, len(u.UIDs))
	for i, id := range u.UIDs {
		parts[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(parts, ",")
}

// Limits on what a pod may ask for.
const (
	// MaxKeysets is the most keysets one sidecar serves (each is a volume).
	MaxKeysets = 32
	// maxSocketDir keeps DIR/keyshift.sock within the 107 bytes a Unix
	// socket path may have.
	maxSocketDir = 107 - 1 - len(SocketFile)
)

// isSystemDir reports directories that may not be the socket directory:
// an emptyDir mounted there would hide the image's own files in every app
// container.
func isSystemDir(dir string) bool {
	switch dir {
	case "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/run",
		"/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/log", "/var/run":
		return true
	}
	return false
}

// wantInject and friends are the "write ..." halves of denial messages,
// shared by the parser and its tests.
const (
	wantInject      = `"true" to inject the sidecar or "false" to leave the pod alone`
	wantKeysets     = `NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`
	wantSocketDir   = `an absolute, clean path of a dedicated directory, such as "/var/run/keyshift"`
	wantExtAuthz    = `"true" (port 9191), "false", or a port number from 1024 to 65535`
	wantAllowedUIDs = `"any", "self", or comma-separated numeric UIDs such as "1000,1001"`
	wantQuantity    = `a positive Kubernetes quantity such as "100m" for CPU or "64Mi" for memory`
	wantLogLevel    = `debug, info, warn or error`
	wantOpsPort     = `a port number from 1024 to 65535 that no container in the pod uses, such as "9495"`
	wantKMSEnvFrom  = `the name of one Secret in the pod's namespace holding the sidecar's KMS settings, such as "kms-credentials" (lowercase letters, digits, '-' and '.')`
)

// requested reports whether the pod asks for injection.
func requested(ann map[string]string) (bool, error) {
	v, ok := ann[annotation.Inject]
	if !ok {
		return false, nil
	}
	switch v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, &AnnotationError{Key: annotation.Inject, Value: v, Problem: "is neither true nor false", Want: wantInject}
}

// ParseAnnotations reads a pod's keyshift annotations into a PodConfig,
// with defaults from cfg. It reports every bad annotation at once (joined;
// each an *AnnotationError), so one round trip fixes them all.
func ParseAnnotations(ann map[string]string, cfg Config) (*PodConfig, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return parseAnnotations(ann, cfg)
}

// parseAnnotations is ParseAnnotations for a cfg already completed by
// withDefaults.
func parseAnnotations(ann map[string]string, cfg Config) (*PodConfig, error) {
	pc := &PodConfig{
		SocketDir: DefaultSocketDir,
		Resources: *cfg.Resources.DeepCopy(),
		LogLevel:  cfg.LogLevel,
		OpsPort:   DefaultOpsPort,
	}
	var errs []error
	bad := func(key, problem, want string) {
		errs = append(errs, &AnnotationError{Key: key, Value: ann[key], Problem: problem, Want: want})
	}

	if _, err := requested(ann); err != nil {
		errs = append(errs, err)
	}

	if v, ok := ann[annotation.Keysets]; !ok || strings.TrimSpace(v) == "" {
		bad(annotation.Keysets, `is required when keyshift.io/inject is "true"`, wantKeysets)
	} else {
		ks, err := parseKeysets(v)
		if err != nil {
			bad(annotation.Keysets, err.Error(), wantKeysets)
		}
		pc.Keysets = ks
	}

	if v, ok := ann[annotation.SocketDir]; ok {
		if problem := checkSocketDir(v); problem != "" {
			bad(annotation.SocketDir, problem, wantSocketDir)
		} else {
			pc.SocketDir = v
		}
	}

	if v, ok := ann[annotation.OpsPort]; ok {
		if p, problem := parsePort(v); problem != "" {
			bad(annotation.OpsPort, problem, wantOpsPort)
		} else {
			pc.OpsPort = p
		}
	}

	if v, ok := ann[annotation.ExtAuthz]; ok {
		switch v {
		case "false":
		case "true":
			pc.ExtAuthzPort = DefaultExtAuthzPort
		default:
			p, problem := parsePort(v)
			if problem != "" {
				bad(annotation.ExtAuthz, problem, wantExtAuthz)
			} else {
				pc.ExtAuthzPort = p
			}
		}
		if pc.ExtAuthzPort != 0 && pc.ExtAuthzPort == pc.OpsPort {
			bad(annotation.ExtAuthz, fmt.Sprintf("port %d is the sidecar's health port (keyshift.io/ops-port)", pc.OpsPort),
				"another port, or move the health port with keyshift.io/ops-port")
		}
	}
	policy, hasPolicy := ann[annotation.ExtAuthzPolicy]
	switch {
	case pc.ExtAuthzPort != 0 && !hasPolicy:
		bad(annotation.ExtAuthz, "needs a policy", "also "+annotation.ExtAuthzPolicy+": the name of a ConfigMap whose key policy.yaml holds the ext_authz policy")
	case hasPolicy && len(validation.IsDNS1123Subdomain(policy)) != 0:
		bad(annotation.ExtAuthzPolicy, "is not a ConfigMap name", "the name of a ConfigMap in the pod's namespace (lowercase letters, digits, '-' and '.')")
	case hasPolicy:
		pc.ExtAuthzPolicy = policy
	}
	if v, ok := ann[annotation.ExtAuthzAllowedUIDs]; ok {
		if u, problem := parseUIDs(v, cfg.SidecarUID); problem != "" || v == "self" {
			if problem == "" {
				problem = "self would admit only the sidecar, never the proxy"
			}
			bad(annotation.ExtAuthzAllowedUIDs, problem, `"any" or UIDs such as "1337" (Istio's proxy) or "101" (Envoy's image)`)
		} else if pc.ExtAuthzPort != 0 {
			pc.ExtAuthzUIDs = *u
		}
	} else if pc.ExtAuthzPort != 0 {
		pc.ExtAuthzUIDs = UIDList{UIDs: []int64{DefaultExtAuthzUID}}
	}

	if v, ok := ann[annotation.AllowedUIDs]; ok {
		u, problem := parseUIDs(v, cfg.SidecarUID)
		if problem != "" {
			bad(annotation.AllowedUIDs, problem, wantAllowedUIDs)
		} else {
			pc.AllowedUIDs = u
		}
	}

	for _, r := range []struct {
		key  string
		name corev1.ResourceName
		list *corev1.ResourceList
	}{
		{annotation.CPURequest, corev1.ResourceCPU, &pc.Resources.Requests},
		{annotation.CPULimit, corev1.ResourceCPU, &pc.Resources.Limits},
		{annotation.MemoryRequest, corev1.ResourceMemory, &pc.Resources.Requests},
		{annotation.MemoryLimit, corev1.ResourceMemory, &pc.Resources.Limits},
	} {
		v, ok := ann[r.key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		switch {
		case err != nil:
			bad(r.key, "is not a quantity", wantQuantity)
			continue
		case q.Sign() <= 0:
			bad(r.key, "must be greater than zero", wantQuantity)
			continue
		}
		if *r.list == nil {
			*r.list = corev1.ResourceList{}
		}
		(*r.list)[r.name] = q
	}
	for _, r := range []struct {
		name             corev1.ResourceName
		reqKey, limitKey string
	}{
		{corev1.ResourceCPU, annotation.CPURequest, annotation.CPULimit},
		{corev1.ResourceMemory, annotation.MemoryRequest, annotation.MemoryLimit},
	} {
		req, hasReq := pc.Resources.Requests[r.name]
		lim, hasLim := pc.Resources.Limits[r.name]
		if !hasReq || !hasLim || req.Cmp(lim) <= 0 {
			continue
		}
		key, problem := r.reqKey, fmt.Sprintf("exceeds the sidecar's %s limit %s", r.name, lim.String())
		if _, annotated := ann[r.limitKey]; annotated {
			key, problem = r.limitKey, fmt.Sprintf("is below the sidecar's %s request %s", r.name, req.String())
		}
		bad(key, problem, fmt.Sprintf("a %s request no larger than its limit (set both %s and %s)", r.name, r.reqKey, r.limitKey))
	}

	if v, ok := ann[annotation.LogLevel]; ok {
		if !validLogLevel(v) {
			bad(annotation.LogLevel, "is not a log level", wantLogLevel)
		} else {
			pc.LogLevel = v
		}
	}

	if v, ok := ann[annotation.KMSEnvFrom]; ok {
		if len(validation.IsDNS1123Subdomain(v)) != 0 {
			bad(annotation.KMSEnvFrom, "is not a Secret name", wantKMSEnvFrom)
		} else {
			pc.KMSEnvFrom = v
		}
	}

	known := annotation.Known()
	var unknown []string
	for k := range ann {
		if strings.HasPrefix(k, annotation.Prefix) && !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		want := "one of " + strings.Join(known[:len(known)-1], ", ")
		if near := closest(k, known); near != "" {
			want = near + " (did you mean it?) or " + want
		}
		bad(k, "is not a keyshift annotation", want)
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return pc, nil
}

func parseKeysets(v string) ([]KeysetRef, error) {
	var out []KeysetRef
	seen := map[string]bool{}
	for item := range strings.SplitSeq(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, errors.New("has an empty entry")
		}
		name, secret, hasSecret := strings.Cut(item, "=")
		name, secret = strings.TrimSpace(name), strings.TrimSpace(secret)
		if !hasSecret {
			secret = name
		}
		if err := envelope.ValidateName(name); err != nil {
			return nil, fmt.Errorf("keyset name %q is not lowercase letters, digits and inner '-' (at most %d)", name, envelope.MaxNameLen)
		}
		if errs := validation.IsDNS1123Subdomain(secret); len(errs) > 0 {
			return nil, fmt.Errorf("secret name %q of keyset %s is not a valid Secret name", secret, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("keyset %s is listed twice", name)
		}
		seen[name] = true
		out = append(out, KeysetRef{Name: name, Secret: secret})
	}
	if len(out) > MaxKeysets {
		return nil, fmt.Errorf("lists %d keysets, more than %d", len(out), MaxKeysets)
	}
	return out, nil
}

func checkSocketDir(v string) string {
	switch {
	case !path.IsAbs(v):
		return "is not an absolute path"
	case path.Clean(v) != v:
		return fmt.Sprintf("is not clean (it means %q)", path.Clean(v))
	case isSystemDir(v):
		return "is a system directory; the socket volume would hide the image's files there"
	case len(v) > maxSocketDir:
		return fmt.Sprintf("is %d bytes long; with /%s that exceeds the 107 bytes a Unix socket path may have", len(v), SocketFile)
	case v == KeysetsDir || strings.HasPrefix(v, KeysetsDir+"/"):
		return fmt.Sprintf("is inside %s, where the keyset Secrets are mounted", KeysetsDir)
	case strings.ContainsAny(v, ":,\\"):
		return `contains ':', ',' or '\'`
	}
	return ""
}

func parsePort(v string) (int32, string) {
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0, "is not a port number"
	}
	if n < 1024 || n > 65535 {
		return 0, "is outside 1024..65535 (the sidecar runs without privileges)"
	}
	return int32(n), ""
}

func parseUIDs(v string, sidecarUID int64) (*UIDList, string) {
	switch v {
	case "any":
		return &UIDList{Any: true}, ""
	case "self":
		return &UIDList{UIDs: []int64{sidecarUID}}, ""
	}
	var ids []int64
	for part := range strings.SplitSeq(v, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(part), 10, 64)
		if err != nil || n < 0 || n > maxUID {
			return nil, fmt.Sprintf("entry %q is not a UID from 0 to %d", strings.TrimSpace(part), maxUID)
		}
		ids = append(ids, n)
	}
	slices.Sort(ids)
	return &UIDList{UIDs: slices.Compact(ids)}, ""
}

// closest returns the known key nearest to k by edit distance, when it is
// near enough to be a typo.
func closest(k string, known []string) string {
	best, bestD := "", 4
	for _, c := range known {
		if d := editDistance(k, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
