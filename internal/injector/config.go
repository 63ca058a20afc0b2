package injector

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/keyshift/keyshift/internal/podspec"
	"github.com/keyshift/keyshift/internal/xds/wire"
)

// SidecarMode says how the sidecar is added to a pod.
type SidecarMode string

const (
	// ModeNative adds the sidecar as the first init container with
	// restartPolicy Always (a Kubernetes native sidecar, 1.29+): it starts
	// before every other container, its startup probe holds them back until
	// the keys are loaded, and it stops after them.
	ModeNative SidecarMode = "native"
	// ModeRegular adds the sidecar as the first regular container, for
	// clusters without native sidecars. Apps may then start before the keys
	// are loaded and must retry while the socket answers Unavailable.
	ModeRegular SidecarMode = "regular"
)

// Fixed names and paths of what the injector adds to a pod.
const (
	// ContainerName is the sidecar container's name.
	ContainerName = "keyshift"
	// SocketVolume is the name of the shared in-memory socket volume.
	SocketVolume = "keyshift-socket"
	// SocketFile is the socket's file name inside the socket directory.
	SocketFile = podspec.SocketFile
	// DefaultSocketDir is where the socket directory is mounted by default.
	DefaultSocketDir = podspec.SocketDir
	// KeysetsDir is where the sidecar finds keyset NAME, at
	// KeysetsDir/NAME/keyset.json (the Secret's volume, mounted whole so
	// the kubelet's ..data symlink swap reaches the sidecar's watch).
	KeysetsDir = "/var/run/keyshift/keysets"
	// KeysetKey is the key in a keyset Secret that holds the document.
	KeysetKey = "keyset.json"
	// ExtAuthzPolicyVolume, ExtAuthzPolicyDir and ExtAuthzPolicyKey place the
	// ext_authz policy ConfigMap in the sidecar.
	ExtAuthzPolicyVolume = "keyshift-ext-authz-policy"
	ExtAuthzPolicyDir    = "/etc/keyshift/ext-authz"
	ExtAuthzPolicyKey    = "policy.yaml"
	// XDSVolume, mounted at XDSDir in the sidecar alone, holds what the
	// sidecar needs to reach the controller over authenticated xDS: the
	// pod's projected ServiceAccount token for audience XDSAudience
	// (file XDSTokenFile), which the controller checks with a TokenReview,
	// and the controller's CA bundle (file XDSCAFile) from the ConfigMap
	// XDSCAConfigMap the controller keeps in every namespace with keysets.
	XDSVolume      = "keyshift-xds"
	XDSDir         = "/var/run/secrets/keyshift.io/xds"
	XDSTokenFile   = "token"
	XDSCAFile      = "ca.crt"
	XDSAudience    = wire.TokenAudience
	XDSCAConfigMap = "keyshift-xds-ca"
	// XDSTokenSeconds is the token's lifetime; the kubelet renews it at
	// 80% of that, and the controller ends a stream when its token
	// expires, so the sidecar redials with the renewed one.
	XDSTokenSeconds = 3600
	// DefaultOpsPort is the sidecar's /livez, /readyz and /metrics port.
	DefaultOpsPort = podspec.OpsPort
	// DefaultExtAuthzPort is the ext_authz port when the annotation is
	// "true".
	DefaultExtAuthzPort = 9191
	// DefaultExtAuthzUID is the peer allowed to call ext_authz unless a pod
	// says otherwise: Istio's proxy.
	DefaultExtAuthzUID = 1337
	// DefaultSidecarUID is the sidecar's UID and GID: the image's nonroot
	// user.
	DefaultSidecarUID = 65532
	// DefaultLogLevel is the sidecar's log level unless annotated.
	DefaultLogLevel = "info"
)

// Config is the injector's cluster-wide setting, fixed at start-up from
// flags. What a single pod asks for comes from its annotations instead.
type Config struct {
	// Image is the keyshift image the sidecar runs. Required.
	Image string
	// ImagePullPolicy defaults to IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// Mode is ModeNative (the default when empty) or ModeRegular.
	Mode SidecarMode
	// SidecarUID is the UID and GID the sidecar runs as; 0 means
	// DefaultSidecarUID. Root is refused.
	SidecarUID int64
	// Resources are the sidecar's default requests and limits; the
	// cpu/memory annotations override them one by one. When both maps are
	// nil, DefaultResources applies.
	Resources corev1.ResourceRequirements
	// LogLevel is the sidecar's default log level ("info" when empty).
	LogLevel string
	// XDSAddr is the rotation controller's xDS address the sidecar
	// subscribes to (host:port); empty leaves the sidecar on its mounted
	// keyset files alone.
	XDSAddr string
}

// DefaultResources is what the sidecar asks for unless configured: a small
// CPU and memory request and a memory limit. There is no CPU limit by
// default, because throttling a crypto hot path shows up as app latency.
func DefaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("10m"),
			corev1.ResourceMemory: resource.MustParse("32Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		},
	}
}

// withDefaults returns c with every empty field set, or an error wrapping
// ErrConfig.
func (c Config) withDefaults() (Config, error) {
	if strings.TrimSpace(c.Image) == "" {
		return c, fmt.Errorf("%w: no sidecar image (set --sidecar-image or KEYSHIFT_SIDECAR_IMAGE)", ErrConfig)
	}
	switch c.ImagePullPolicy {
	case "":
		c.ImagePullPolicy = corev1.PullIfNotPresent
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return c, fmt.Errorf("%w: image pull policy %q: write Always, IfNotPresent or Never", ErrConfig, c.ImagePullPolicy)
	}
	switch c.Mode {
	case "":
		c.Mode = ModeNative
	case ModeNative, ModeRegular:
	default:
		return c, fmt.Errorf("%w: sidecar mode %q: write native or regular", ErrConfig, c.Mode)
	}
	switch {
	case c.SidecarUID == 0:
		c.SidecarUID = DefaultSidecarUID
	case c.SidecarUID < 0 || c.SidecarUID > maxUID:
		return c, fmt.Errorf("%w: sidecar UID %d: write a non-root UID from 1 to %d", ErrConfig, c.SidecarUID, maxUID)
	}
	if c.Resources.Requests == nil && c.Resources.Limits == nil {
		c.Resources = DefaultResources()
	} else {
		c.Resources = *c.Resources.DeepCopy()
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := c.Resources.Requests[name]
		lim, hasLim := c.Resources.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			return c, fmt.Errorf("%w: default %s request %s exceeds its limit %s", ErrConfig, name, req.String(), lim.String())
		}
	}
	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	if !validLogLevel(c.LogLevel) {
		return c, fmt.Errorf("%w: sidecar log level %q: write debug, info, warn or error", ErrConfig, c.LogLevel)
	}
	return c, nil
}

// Validate reports whether c can be used, so a bad flag stops the injector
// at start-up rather than failing every admission.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// maxUID is the largest UID Kubernetes accepts in runAsUser.
const maxUID = 1<<31 - 1

func validLogLevel(s string) bool {
	switch s {
	case "debug", "info", "warn", "error":
		return true
	}
	return false
}
