package controller

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/xds/wire"
)

// XDSAuth is how sidecars authenticate to the xDS server.
type XDSAuth string

const (
	// XDSAuthToken serves TLS under a certificate the controller manages
	// and checks each sidecar's projected ServiceAccount token by
	// TokenReview. It needs Kube.
	XDSAuthToken XDSAuth = "token"
	// XDSAuthNone serves every keyset to whoever connects: only with
	// KeysetDir on a loopback address.
	XDSAuthNone XDSAuth = "none"
)

// Defaults of the Config fields that have one.
const (
	DefaultXDSTLSSecret   = "keyshift-controller-tls"
	DefaultXDSService     = "keyshift-controller"
	DefaultNamespace      = "keyshift-system"
	DefaultInterval       = 30 * time.Second
	DefaultLeaseName      = "keyshift-controller"
	DefaultAuditKeySecret = "keyshift-audit-key"
	// AuditKeyFileName is where, outside a cluster, the audit key is kept
	// by default: beside the AuditLog file (not among the keysets, which
	// may live in git).
	AuditKeyFileName = "audit.key"
)

// Config is everything the controller needs; cmd/keyshift fills it from
// flags, the tests by hand.
type Config struct {
	// KeysetDir manages the keyset files in this directory (outside a
	// cluster). Exactly one of KeysetDir and Kube is set.
	KeysetDir string
	// Kube manages the keyset Secrets (labelled kube.Label) through this
	// client, and holds the Lease, the xDS certificate and the audit key.
	Kube kubernetes.Interface
	// Namespace, with Kube, manages keyset Secrets of this namespace only
	// and overrides NamespaceSelector.
	Namespace string
	// NamespaceSelector, with Kube and no Namespace, manages keysets only
	// in namespaces with these labels ("" manages every namespace).
	NamespaceSelector string
	// PodName and PodNamespace are this replica's pod (the downward API's
	// POD_NAME and POD_NAMESPACE); "" outside a cluster. The pod carries
	// kube.RoleLabel while it leads, so the xDS Service routes sidecars to
	// it. PodNamespace ("keyshift-system" when empty) also holds the
	// controller's own Secrets: the xDS certificate and the audit key.
	PodName, PodNamespace string

	// XDSAddr serves keysets to sidecars over xDS ("" disables).
	XDSAddr string
	// XDSAuth is how sidecars authenticate (XDSAuthToken when empty).
	XDSAuth XDSAuth
	// XDSAudience is the audience of the sidecars' projected tokens
	// (kube.DefaultXDSAudience when empty).
	XDSAudience string
	// XDSTLSSecret is the Secret, in PodNamespace, holding the CA and
	// serving certificate the controller manages for xDS.
	XDSTLSSecret string
	// XDSService is the xDS Service; the certificate names
	// SERVICE.NAMESPACE.svc.
	XDSService string
	// XDSCAConfigMap is the ConfigMap the CA bundle is written into in
	// every namespace with keysets (kube.DefaultCAConfigMap when empty).
	XDSCAConfigMap string

	// AuditLog keeps a local copy of every audit record stored ("": none).
	AuditLog string
	// AuditKMS is the KMS URI the audit key is kept wrapped under ("":
	// unwrapped).
	AuditKMS string
	// AuditKeySecret is the Secret in PodNamespace keeping the audit key
	// (DefaultAuditKeySecret when empty), with Kube.
	AuditKeySecret string
	// AuditKeyFile keeps the audit key with KeysetDir (default:
	// AuditKeyFileName beside AuditLog).
	AuditKeyFile string

	// Interval reconciles every keyset this often (DefaultInterval when
	// zero).
	Interval time.Duration
	// MinPendingAge is the least time a pending version waits before
	// promotion, for pods that only mount the Secret.
	MinPendingAge time.Duration
	// RevokeWait bounds a revocation's wait for every pod to load the new
	// primary (rotation.DefaultRevokeWait when zero).
	RevokeWait time.Duration
	// KMSPolicy says which KMS keys the keysets of each namespace may use.
	// With Kube, local:// is refused unless Allow names it.
	KMSPolicy rotation.KMSPolicy
	// KMS opens the backends keysets name (every built-in provider when
	// nil).
	KMS kms.Registry
	// DecryptFailureSpike raises a Warning Event on a keyset Secret when
	// its sidecars report this many failed decrypts within a minute (0:
	// never).
	DecryptFailureSpike uint64

	// MetricsAddr serves /healthz, /metrics and the read-only /v1/status
	// ("" disables).
	MetricsAddr string

	// LeaderElect, with Kube, holds a Lease so only one replica acts.
	LeaderElect bool
	// LeaseNamespace is the Lease's namespace (PodNamespace's default when
	// empty); LeaseDuration its duration (15 s when zero).
	LeaseNamespace string
	LeaseDuration  time.Duration
	// Identity is this replica's name in the Lease and the audit trail.
	Identity string

	// Manual leaves leadership to the caller: Start runs neither leader
	// election nor the reconcile loop, and the xDS server stays inactive
	// until Lead. Tests use it to step a rotation through Engine.
	Manual bool

	// Logger receives structured logs; it never gets key material.
	Logger *slog.Logger
}

// check fills the defaults and refuses a configuration that cannot work,
// saying what to set instead.
func (c *Config) check() error {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.KMS == nil {
		c.KMS = providers.Registry(c.Logger)
	}
	if c.XDSAuth == "" {
		c.XDSAuth = XDSAuthToken
	}
	if c.XDSAudience == "" {
		c.XDSAudience = kube.DefaultXDSAudience
	}
	if c.XDSTLSSecret == "" {
		c.XDSTLSSecret = DefaultXDSTLSSecret
	}
	if c.XDSService == "" {
		c.XDSService = DefaultXDSService
	}
	if c.XDSCAConfigMap == "" {
		c.XDSCAConfigMap = kube.DefaultCAConfigMap
	}
	if c.AuditKeySecret == "" {
		c.AuditKeySecret = DefaultAuditKeySecret
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.LeaseNamespace == "" {
		c.LeaseNamespace = c.systemNamespace()
	}
	switch {
	case c.KeysetDir == "" && c.Kube == nil:
		return errors.New("controller: no keyset store: set --keyset-dir, or run in a cluster (or with --kubeconfig) to manage keyset Secrets")
	case c.KeysetDir != "" && c.Kube != nil:
		return errors.New("controller: a keyset directory and a Kubernetes client exclude each other")
	}
	if c.XDSAddr != "" {
		switch c.XDSAuth {
		case XDSAuthNone:
			if c.Kube != nil || !wire.Loopback(c.XDSAddr) {
				return errors.New("--xds-auth=none serves every keyset to whoever connects: it is only for --keyset-dir with a loopback --xds-addr such as 127.0.0.1:18000")
			}
		case XDSAuthToken:
			if c.Kube == nil {
				return errors.New("--xds-auth=token checks sidecar tokens with the Kubernetes API; with --keyset-dir use --xds-auth=none on a loopback --xds-addr")
			}
		default:
			return fmt.Errorf("--xds-auth %q: write token or none", c.XDSAuth)
		}
	}
	if c.Kube != nil && c.LeaderElect && !c.Manual && c.Identity == "" {
		return errors.New("controller: leader election needs an identity (set --identity or POD_NAME)")
	}
	return nil
}

// systemNamespace holds the controller's own Secrets and, by default, its
// Lease.
func (c *Config) systemNamespace() string {
	if c.PodNamespace != "" {
		return c.PodNamespace
	}
	return DefaultNamespace
}
