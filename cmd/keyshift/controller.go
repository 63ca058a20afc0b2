package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes config: %w (outside a cluster, pass --kubeconfig)", err)
	}
	return kubernetes.NewForConfig(cfg)
}

// runController is `keyshift controller`: it builds a controller.Config
// from flags and runs the controller (internal/controller).
func runController(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	dir := fs.String("keyset-dir", "", "manage the keyset files in this directory (outside a cluster); otherwise labelled Secrets")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	namespace := fs.String("namespace", "", "only manage keyset Secrets in this namespace (overrides --namespace-selector)")
	nsSelector := fs.String("namespace-selector", kube.DefaultOptInLabel, "manage keysets only in namespaces with these labels, which also bind the ClusterRole keyshift-controller-keysets to the controller (empty: every namespace, which takes that ClusterRole cluster-wide)")
	xdsAddr := fs.String("xds-addr", ":18000", "serve keysets to sidecars over xDS here (empty disables)")
	xdsAuth := fs.String("xds-auth", string(controller.XDSAuthToken), "how sidecars authenticate: token (TLS, and the pod's projected ServiceAccount token checked by TokenReview) or none (only with --keyset-dir on a loopback address)")
	xdsAudience := fs.String("xds-audience", kube.DefaultXDSAudience, "audience of the sidecars' projected tokens")
	xdsTLSSecret := fs.String("xds-tls-secret", controller.DefaultXDSTLSSecret, "Secret, in the controller's namespace, holding the xDS CA and serving certificate the controller manages")
	xdsService := fs.String("xds-service", controller.DefaultXDSService, "the xDS Service; the serving certificate names SERVICE.NAMESPACE.svc")
	xdsCAConfigMap := fs.String("xds-ca-configmap", kube.DefaultCAConfigMap, "ConfigMap the controller writes its CA bundle into, in every namespace with keysets (the injector mounts it into sidecars)")
	auditFlags := addAuditFlags(fs)
	interval := fs.Duration("interval", controller.DefaultInterval, "reconcile every keyset this often")
	minPending := fs.Duration("min-pending-age", 90*time.Second, "least time a pending version waits before promotion, for pods that only mount the Secret (0 when every sidecar uses xDS)")
	revokeWait := fs.Duration("revoke-wait", rotation.DefaultRevokeWait, "keyset revoke: longest wait for every pod to load the new primary before it is promoted anyway")
	metrics := fs.String("metrics-addr", ":9496", "/healthz and /metrics")
	leaderElect := fs.Bool("leader-elect", true, "with Secrets: hold a Lease so only one replica acts")
	leaseNS := fs.String("lease-namespace", envOr("POD_NAMESPACE", controller.DefaultNamespace), "namespace of the leader-election Lease")
	identity := fs.String("identity", envOr("POD_NAME", hostname()), "this replica's name in the Lease and the audit trail")
	spike := fs.Uint64("decrypt-failure-spike", 100, "raise a DecryptFailureSpike Warning Event on a keyset Secret when its sidecars report this many failed decrypts within a minute (0: never)")
	var kmsPolicy rotation.KMSPolicy
	fs.Func("allow-kms", "NAMESPACE=URI_PREFIX: keysets of NAMESPACE (* for all) may use KMS URIs starting so (repeatable; none: any KMS but local://)", kmsPolicy.ParseAllowKMS)
	logger := clikit.LogFlags(fs, "info", "debug, info, warn or error")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	log, err := logger(stderr)
	if err != nil {
		return err
	}
	cfg := controller.Config{
		KeysetDir: *dir, Namespace: *namespace, NamespaceSelector: *nsSelector,
		PodName: os.Getenv("POD_NAME"), PodNamespace: os.Getenv("POD_NAMESPACE"),
		XDSAddr: *xdsAddr, XDSAuth: controller.XDSAuth(*xdsAuth), XDSAudience: *xdsAudience,
		XDSTLSSecret: *xdsTLSSecret, XDSService: *xdsService, XDSCAConfigMap: *xdsCAConfigMap,
		AuditLog: auditFlags.log, AuditKMS: auditFlags.kms, AuditKeySecret: auditFlags.keySecret, AuditKeyFile: auditFlags.keyFile,
		Interval: *interval, MinPendingAge: *minPending, RevokeWait: *revokeWait, KMSPolicy: kmsPolicy,
		KMS: providers.Registry(log), DecryptFailureSpike: *spike, MetricsAddr: *metrics,
		LeaderElect: *leaderElect, LeaseNamespace: *leaseNS, Identity: *identity, Logger: log,
	}
	if *dir == "" {
		if cfg.Kube, err = kubeClient(*kubeconfig); err != nil {
			return err
		}
	}
	return controller.Run(ctx, cfg)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
