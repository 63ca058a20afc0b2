package injector

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/keyshift/keyshift/injector/annotation"
	"github.com/keyshift/keyshift/internal/podspec"
)

// defaultContainerAnnotation is kubectl's: which container `kubectl logs`
// and `exec` pick when none is named.
const defaultContainerAnnotation = "kubectl.kubernetes.io/default-container"

// Status is the value of the keyshift.io/status annotation: a record of
// what was injected, so people and tools can tell at a glance.
type Status struct {
	// Version of this record's shape.
	Version int `json:"version"`
	// Mode is native or regular.
	Mode SidecarMode `json:"mode"`
	// Image is the sidecar image injected.
	Image string `json:"image"`
	// Keysets are the keysets served.
	Keysets []string `json:"keysets"`
	// Socket is the socket path the apps were given.
	Socket string `json:"socket"`
}

// Inject returns a copy of pod with the keyshift sidecar added, or the
// copy unchanged when the pod does not ask for it (no keyshift.io/inject:
// "true") or was injected already (it carries keyshift.io/status). It never
// modifies pod and has no side effects: the admission handler diffs its
// input and output to make the JSON patch.
//
// A bad annotation or a clash with the pod's own containers returns an
// error wrapping ErrDenied with a message fit for the person applying the
// pod; a bad cfg returns an error wrapping ErrConfig. On error the pod is
// nil: nothing half-injected is ever returned.
func Inject(pod *corev1.Pod, cfg Config) (*corev1.Pod, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if pod == nil {
		return nil, fmt.Errorf("injector: nil pod")
	}
	out := pod.DeepCopy()
	if _, done := pod.Annotations[annotation.Status]; done {
		return out, nil
	}
	want, err := requested(pod.Annotations)
	if err != nil {
		return nil, err
	}
	if !want {
		return out, nil
	}
	pc, err := parseAnnotations(pod.Annotations, cfg)
	if err != nil {
		return nil, err
	}
	if err := checkConflicts(out, pc, cfg); err != nil {
		return nil, err
	}

	socket := path.Join(pc.SocketDir, SocketFile)
	native := cfg.Mode == ModeNative
	uids, _ := allowedUIDs(out, pc, cfg)

	// Apps get the socket directory read-only: connecting to a socket needs
	// write permission on the socket file, which a read-only bind mount
	// does not remove, while the app cannot delete or replace the socket.
	appMount := corev1.VolumeMount{Name: SocketVolume, MountPath: pc.SocketDir, ReadOnly: true}
	appEnv := corev1.EnvVar{Name: podspec.SocketEnv, Value: socket}
	for _, c := range targets(out, native) {
		c.VolumeMounts = append(c.VolumeMounts, appMount)
		if !hasEnv(c, podspec.SocketEnv) {
			c.Env = append(c.Env, appEnv)
		}
	}

	out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{
		Name: SocketVolume,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium:    corev1.StorageMediumMemory,
			SizeLimit: ptr(resource.MustParse("1Mi")),
		}},
	})
	if pc.ExtAuthzPolicy != "" {
		out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{
			Name: ExtAuthzPolicyVolume,
			VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: pc.ExtAuthzPolicy},
				Items:                []corev1.KeyToPath{{Key: ExtAuthzPolicyKey, Path: ExtAuthzPolicyKey}},
				DefaultMode:          ptr(int32(0o444)),
				Optional:             ptr(false),
			}},
		})
	}
	if cfg.XDSAddr != "" {
		out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{
			Name: XDSVolume,
			VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
						Audience: XDSAudience, ExpirationSeconds: ptr(int64(XDSTokenSeconds)), Path: XDSTokenFile,
					}},
					// Optional: the controller writes it once the
					// namespace holds a keyset; until then the sidecar
					// retries xDS and serves its mounted files.
					{ConfigMap: &corev1.ConfigMapProjection{
						LocalObjectReference: corev1.LocalObjectReference{Name: XDSCAConfigMap},
						Items:                []corev1.KeyToPath{{Key: XDSCAFile, Path: XDSCAFile}},
						Optional:             ptr(true),
					}},
				},
				// Only the sidecar mounts this volume; its UID differs
				// from the app's, so the token is made readable to it.
				DefaultMode: ptr(int32(0o444)),
			}},
		})
	}
	for _, ks := range pc.Keysets {
		out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{
			Name: keysetVolume(ks.Name),
			VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: ks.Secret,
				Items:      []corev1.KeyToPath{{Key: KeysetKey, Path: KeysetKey}},
				// The sidecar's UID does not own the files; the document
				// holds wrapped keys only, so world-readable is safe, and
				// only the sidecar mounts it.
				DefaultMode: ptr(int32(0o444)),
				Optional:    ptr(false),
			}},
		})
	}

	sc := sidecarContainer(pc, cfg, socket, uids, socketMode(out))
	if native {
		sc.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
		out.Spec.InitContainers = slices.Insert(out.Spec.InitContainers, 0, sc)
	} else {
		if _, set := out.Annotations[defaultContainerAnnotation]; !set && len(out.Spec.Containers) > 0 {
			out.Annotations[defaultContainerAnnotation] = out.Spec.Containers[0].Name
		}
		out.Spec.Containers = slices.Insert(out.Spec.Containers, 0, sc)
	}

	names := make([]string, len(pc.Keysets))
	for i, ks := range pc.Keysets {
		names[i] = ks.Name
	}
	status, err := json.Marshal(Status{Version: 1, Mode: cfg.Mode, Image: cfg.Image, Keysets: names, Socket: socket})
	if err != nil {
		return nil, fmt.Errorf("injector: status annotation: %w", err)
	}
	out.Annotations[annotation.Status] = string(status)
	return out, nil
}

// Warnings returns what the person applying pod should hear even though it
// is admitted: annotations that do nothing without keyshift.io/inject, and
// a socket left open to any UID because a container's UID is unknown. Like
// Inject it is pure; the admission handler returns these as admission
// warnings, which kubectl prints.
func Warnings(pod *corev1.Pod, cfg Config) []string {
	cfg, err := cfg.withDefaults()
	if err != nil || pod == nil {
		return nil
	}
	if _, done := pod.Annotations[annotation.Status]; done {
		return nil
	}
	want, err := requested(pod.Annotations)
	if err != nil {
		return nil
	}
	if !want {
		var set []string
		for k := range pod.Annotations {
			if strings.HasPrefix(k, annotation.Prefix) && k != annotation.Inject {
				set = append(set, k)
			}
		}
		if len(set) == 0 {
			return nil
		}
		sort.Strings(set)
		return []string{fmt.Sprintf("%s set but %s is not \"true\": no keyshift sidecar injected",
			strings.Join(set, ", "), annotation.Inject)}
	}
	pc, err := parseAnnotations(pod.Annotations, cfg)
	if err != nil {
		return nil
	}
	var out []string
	if _, unknown := allowedUIDs(pod, pc, cfg); len(unknown) > 0 {
		out = append(out, fmt.Sprintf("container(s) %s set no runAsUser, so any UID in the pod may call the keyshift socket; set runAsUser or %s to restrict it",
			strings.Join(unknown, ", "), annotation.AllowedUIDs))
	}
	if pod.Spec.HostNetwork {
		ports := fmt.Sprint(pc.OpsPort)
		if pc.ExtAuthzPort != 0 {
			ports += fmt.Sprintf(" and %d", pc.ExtAuthzPort)
		}
		out = append(out, fmt.Sprintf("the pod uses hostNetwork, so the keyshift sidecar opens port %s on the node; give each such pod on a node its own %s",
			ports, annotation.OpsPort))
	}
	socket := path.Join(pc.SocketDir, SocketFile)
	for _, c := range targets(pod.DeepCopy(), cfg.Mode == ModeNative) {
		for _, e := range c.Env {
			if e.Name == podspec.SocketEnv && (e.Value != socket || e.ValueFrom != nil) {
				out = append(out, fmt.Sprintf("container %s sets %s itself, not to %s; it was left as written", c.Name, podspec.SocketEnv, socket))
			}
		}
	}
	return out
}

// targets are the containers that get the socket: every app container, and
// in native mode every init container too, since they all start after the
// sidecar. In regular mode init containers run before the sidecar exists.
func targets(pod *corev1.Pod, native bool) []*corev1.Container {
	var out []*corev1.Container
	if native {
		for i := range pod.Spec.InitContainers {
			out = append(out, &pod.Spec.InitContainers[i])
		}
	}
	for i := range pod.Spec.Containers {
		out = append(out, &pod.Spec.Containers[i])
	}
	return out
}

func hasEnv(c *corev1.Container, name string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
}

// allowedUIDs resolves the socket's peer allowlist: the annotation when
// set, else the runAsUser of every container that gets the socket plus the
// sidecar's own UID (so `kubectl exec -c keyshift -- /keyshift status`
// works). When a container's UID is not in the spec, the image decides it,
// so the list would be a guess: it becomes "any", and unknown names those
// containers.
func allowedUIDs(pod *corev1.Pod, pc *PodConfig, cfg Config) (UIDList, []string) {
	if pc.AllowedUIDs != nil {
		return *pc.AllowedUIDs, nil
	}
	ids := []int64{cfg.SidecarUID}
	var unknown []string
	var podUID *int64
	if pod.Spec.SecurityContext != nil {
		podUID = pod.Spec.SecurityContext.RunAsUser
	}
	for _, c := range targets(pod.DeepCopy(), cfg.Mode == ModeNative) {
		uid := podUID
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
			uid = c.SecurityContext.RunAsUser
		}
		if uid == nil {
			unknown = append(unknown, c.Name)
			continue
		}
		ids = append(ids, *uid)
	}
	if len(unknown) > 0 {
		return UIDList{Any: true}, unknown
	}
	slices.Sort(ids)
	return UIDList{UIDs: slices.Compact(ids)}, nil
}

// socketMode is the socket file's mode. With a pod fsGroup the kubelet
// makes the socket volume group-owned by it (setgid), every container has
// it as a supplementary group, and 0660 lets exactly the pod's containers
// connect. Without one the sidecar and the apps share no group, so the
// socket must be 0666; the volume is private to the pod's containers and
// the sidecar's SO_PEERCRED allowlist (--allowed-uids) does the check.
func socketMode(pod *corev1.Pod) string {
	if pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.FSGroup != nil {
		return "0660"
	}
	return "0666"
}

// keysetVolume names the Secret volume of keyset name. Keyset names may be
// 63 characters, the limit for a whole volume name, so long ones are
// shortened with a hash that keeps them distinct.
func keysetVolume(name string) string {
	const prefix = "keyshift-keyset-"
	if v := prefix + name; len(v) <= 63 {
		return v
	}
	sum := sha256.Sum256([]byte(name))
	return prefix + name[:63-len(prefix)-9] + "-" + hex.EncodeToString(sum[:4])
}

func sidecarContainer(pc *PodConfig, cfg Config, socket string, uids UIDList, mode string) corev1.Container {
	args := []string{
		"--socket=" + socket,
		"--socket-mode=" + mode,
		"--allowed-uids=" + uids.Flag(),
		// All interfaces: the kubelet probes the pod IP, not localhost.
		fmt.Sprintf("--metrics-addr=:%d", pc.OpsPort),
		"--log-level=" + pc.LogLevel,
		"--log-format=json",
	}
	mounts := []corev1.VolumeMount{{Name: SocketVolume, MountPath: pc.SocketDir}}
	for _, ks := range pc.Keysets {
		dir := path.Join(KeysetsDir, ks.Name)
		args = append(args, fmt.Sprintf("--keyset=%s=%s", ks.Name, path.Join(dir, KeysetKey)))
		mounts = append(mounts, corev1.VolumeMount{Name: keysetVolume(ks.Name), MountPath: dir, ReadOnly: true})
	}
	if pc.ExtAuthzPort != 0 {
		args = append(args, fmt.Sprintf("--ext-authz-addr=127.0.0.1:%d", pc.ExtAuthzPort),
			"--ext-authz-policy="+path.Join(ExtAuthzPolicyDir, ExtAuthzPolicyKey),
			"--ext-authz-allowed-uids="+pc.ExtAuthzUIDs.Flag())
		mounts = append(mounts, corev1.VolumeMount{Name: ExtAuthzPolicyVolume, MountPath: ExtAuthzPolicyDir, ReadOnly: true})
	}
	env := []corev1.EnvVar{{Name: podspec.SocketEnv, Value: socket}}
	if cfg.XDSAddr != "" {
		// The controller pushes keyset versions over xDS and waits for this
		// sidecar's ACK, named namespace/pod, before promoting them.
		host, _, err := net.SplitHostPort(cfg.XDSAddr)
		if err != nil {
			host = cfg.XDSAddr
		}
		args = append(args, "--xds-addr="+cfg.XDSAddr,
			"--xds-server-name="+host,
			"--xds-ca-file="+path.Join(XDSDir, XDSCAFile),
			"--xds-token-file="+path.Join(XDSDir, XDSTokenFile))
		mounts = append(mounts, corev1.VolumeMount{Name: XDSVolume, MountPath: XDSDir, ReadOnly: true})
		env = append(env,
			corev1.EnvVar{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}},
			corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}})
	}
	var envFrom []corev1.EnvFromSource
	if pc.KMSEnvFrom != "" {
		// The sidecar's KMS settings and credentials: the sidecar alone
		// gets them, and Env above wins over a key of the same name.
		envFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: pc.KMSEnvFrom},
			Optional:             ptr(false),
		}}}
	}
	probe := func(p string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: p, Port: intstr.FromInt32(pc.OpsPort), Scheme: corev1.URISchemeHTTP,
			}},
			TimeoutSeconds: 1, PeriodSeconds: period, SuccessThreshold: 1, FailureThreshold: failures,
		}
	}
	uid := cfg.SidecarUID
	return corev1.Container{
		Name:            ContainerName,
		Image:           cfg.Image,
		ImagePullPolicy: cfg.ImagePullPolicy,
		// The lean sidecar binary of the image: `keyshift sidecar` alone.
		Command: []string{"/keyshift-sidecar"},
		Args:    args,
		Ports: []corev1.ContainerPort{{
			Name: "keyshift-ops", ContainerPort: pc.OpsPort, Protocol: corev1.ProtocolTCP,
		}},
		Env:          env,
		EnvFrom:      envFrom,
		Resources:    *pc.Resources.DeepCopy(),
		VolumeMounts: mounts,
		// Passes once every keyset is loaded; in native mode the kubelet
		// starts the next container only then. Two minutes leaves room for
		// a slow KMS; liveness does not run until it passes.
		StartupProbe:   probe("/readyz", 1, 120),
		ReadinessProbe: probe("/readyz", 10, 3),
		// Liveness is the process only: a KMS outage must not restart pods.
		LivenessProbe:            probe("/livez", 10, 3),
		TerminationMessagePath:   corev1.TerminationMessagePathDefault,
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			RunAsNonRoot:             ptr(true),
			Privileged:               ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// checkConflicts refuses a pod that already has what the sidecar needs,
// or that the sidecar cannot run in.
func checkConflicts(pod *corev1.Pod, pc *PodConfig, cfg Config) error {
	if pod.Spec.OS != nil && pod.Spec.OS.Name != corev1.Linux {
		return &ConflictError{
			What: fmt.Sprintf("the pod runs on %s; the keyshift sidecar runs on Linux only", pod.Spec.OS.Name),
			Fix:  fmt.Sprintf("remove %s from this pod", annotation.Inject),
		}
	}
	all := append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...)
	for _, c := range all {
		if c.Name == ContainerName {
			return &ConflictError{
				What: fmt.Sprintf("the pod already has a container named %q but no %s annotation", ContainerName, annotation.Status),
				Fix:  fmt.Sprintf("rename that container, or remove %s to run your own sidecar", annotation.Inject),
			}
		}
	}
	volumes := map[string]bool{SocketVolume: true}
	if pc.ExtAuthzPolicy != "" {
		volumes[ExtAuthzPolicyVolume] = true
	}
	if cfg.XDSAddr != "" {
		volumes[XDSVolume] = true
	}
	for _, ks := range pc.Keysets {
		volumes[keysetVolume(ks.Name)] = true
	}
	for _, v := range pod.Spec.Volumes {
		if volumes[v.Name] {
			return &ConflictError{
				What: fmt.Sprintf("the pod already has a volume named %q", v.Name),
				Fix:  "rename that volume; names starting keyshift- are the injector's",
			}
		}
	}
	for _, c := range targets(pod, cfg.Mode == ModeNative) {
		for _, m := range c.VolumeMounts {
			if m.MountPath == pc.SocketDir || strings.HasPrefix(m.MountPath, pc.SocketDir+"/") {
				return &ConflictError{
					What: fmt.Sprintf("container %s already mounts %s, inside the keyshift socket directory %s", c.Name, m.MountPath, pc.SocketDir),
					Fix:  fmt.Sprintf("set %s to a free directory such as /var/run/keyshift-socket", annotation.SocketDir),
				}
			}
		}
	}
	for _, c := range all {
		for _, p := range c.Ports {
			switch {
			case p.ContainerPort == pc.OpsPort:
				return &ConflictError{
					What: fmt.Sprintf("container %s uses port %d, the keyshift sidecar's health port", c.Name, p.ContainerPort),
					Fix:  fmt.Sprintf("set %s to a free port such as %s", annotation.OpsPort, strconv.Itoa(int(freePort(all, pc.OpsPort+1)))),
				}
			case pc.ExtAuthzPort != 0 && p.ContainerPort == pc.ExtAuthzPort:
				return &ConflictError{
					What: fmt.Sprintf("container %s uses port %d, the keyshift ext_authz port", c.Name, p.ContainerPort),
					Fix:  fmt.Sprintf("set %s to a free port such as %d", annotation.ExtAuthz, freePort(all, pc.ExtAuthzPort+1)),
				}
			}
		}
	}
	return nil
}

// freePort suggests the first port from start that no container declares.
func freePort(cs []corev1.Container, start int32) int32 {
	used := map[int32]bool{}
	for _, c := range cs {
		for _, p := range c.Ports {
			used[p.ContainerPort] = true
		}
	}
	for p := start; p < 65535; p++ {
		if !used[p] {
			return p
		}
	}
	return start
}

func ptr[T any](v T) *T { return &v }
