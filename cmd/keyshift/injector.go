package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/internal/injector"
)

// runInjector is `keyshift injector`: the mutating admission webhook that
// adds the sidecar to annotated pods.
func runInjector(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("injector", flag.ContinueOnError)
	addr := fs.String("listen", ":8443", "HTTPS address the API server calls (/mutate, /healthz, /readyz, /metrics)")
	opsAddr := fs.String("ops-addr", ":9090", "plain-HTTP address for /healthz, /readyz and /metrics (empty disables)")
	certMode := &onceFlag{value: envOr("KEYSHIFT_CERT_MODE", certModeFiles)}
	fs.Var(certMode, "cert-mode", "where the serving certificate comes from (default $KEYSHIFT_CERT_MODE or files): "+
		"files: --tls-cert-file and --tls-key-file, written by someone else (cert-manager), no API access needed; "+
		"self: the injector makes and renews its own CA and certificate in the Secret --tls-secret and sets the caBundle of --webhook-config (needs the RBAC in manifests/injector/rbac.yaml)")
	certFile := fs.String("tls-cert-file", "/etc/keyshift/tls/tls.crt", "files mode: serving certificate (PEM chain), reloaded when it changes")
	keyFile := fs.String("tls-key-file", "/etc/keyshift/tls/tls.key", "files mode: serving key (PEM), reloaded when it changes")
	namespace := fs.String("namespace", envOr("POD_NAMESPACE", ""), "self mode: the injector's namespace, of its Secret and Service (default $POD_NAMESPACE)")
	tlsSecret := fs.String("tls-secret", injector.DefaultTLSSecret, "self mode: the Secret (type kubernetes.io/tls, plus ca.crt and ca.key) holding the CA and serving certificate; created when missing")
	service := fs.String("service", injector.DefaultService, "self mode: the injector's Service; the certificate names SERVICE.NAMESPACE.svc and SERVICE.NAMESPACE.svc.cluster.local")
	webhookConfig := fs.String("webhook-config", injector.DefaultWebhookConfig, "self mode: the MutatingWebhookConfiguration whose webhooks' caBundle the injector keeps set to its CAs")
	caValidity := fs.Duration("ca-validity", injector.DefaultCAValidity, "self mode: lifetime of a CA; a new one is made at 2/3 of it and the old one stays trusted until it expires")
	certValidity := fs.Duration("cert-validity", injector.DefaultCertValidity, "self mode: lifetime of a serving certificate, renewed at 2/3 of it; at most half of --ca-validity and at least 3h")
	kubeconfig := fs.String("kubeconfig", "", "self mode: kubeconfig file (default: in-cluster config)")
	image := fs.String("sidecar-image", envOr("KEYSHIFT_SIDECAR_IMAGE", ""), "image the injected sidecar runs (default $KEYSHIFT_SIDECAR_IMAGE)")
	pull := fs.String("sidecar-pull-policy", "IfNotPresent", "sidecar imagePullPolicy: Always, IfNotPresent or Never")
	mode := fs.String("sidecar-mode", string(injector.ModeNative),
		"native: an init container with restartPolicy Always (Kubernetes 1.29+); regular: a plain container, for older clusters")
	uid := fs.Int64("sidecar-uid", injector.DefaultSidecarUID, "UID and GID the sidecar runs as (non-root)")
	cpuReq := fs.String("sidecar-cpu-request", "10m", "sidecar CPU request (empty: none)")
	cpuLim := fs.String("sidecar-cpu-limit", "", "sidecar CPU limit (empty: none)")
	memReq := fs.String("sidecar-memory-request", "32Mi", "sidecar memory request (empty: none)")
	memLim := fs.String("sidecar-memory-limit", "64Mi", "sidecar memory limit (empty: none)")
	xdsAddr := fs.String("controller-xds-addr", "", "the rotation controller's xDS address injected sidecars subscribe to, e.g. keyshift-controller.keyshift-system.svc:18000 (empty: mounted files only)")
	sidecarLevel := fs.String("sidecar-log-level", injector.DefaultLogLevel, "sidecar log level unless a pod annotates keyshift.io/log-level")
	maxBytes := fs.Int64("max-request-bytes", injector.DefaultMaxRequestBytes, "largest AdmissionReview accepted")
	shutdownDelay := fs.Duration("shutdown-delay", 5*time.Second, "time /readyz fails before the listeners close on SIGTERM")
	certPoll := fs.Duration("tls-poll", time.Minute, "files mode: reread the TLS files this often even without a file event; self mode: reread the Secret, renew what is due and check the caBundle this often")
	logger := clikit.LogFlags(fs, "info", "debug, info, warn or error (debug logs every admission)")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	log, err := logger(stderr)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	filesOnly := []string{"tls-cert-file", "tls-key-file"}
	selfOnly := []string{"namespace", "tls-secret", "service", "webhook-config", "ca-validity", "cert-validity", "kubeconfig"}
	switch certMode.value {
	case certModeFiles:
		if f := firstSet(set, selfOnly); f != "" {
			return fmt.Errorf("--%s is for --cert-mode=self; with --cert-mode=files the certificate comes from --tls-cert-file and --tls-key-file", f)
		}
	case certModeSelf:
		if f := firstSet(set, filesOnly); f != "" {
			return fmt.Errorf("--%s is for --cert-mode=files; with --cert-mode=self the certificate comes from the Secret --tls-secret", f)
		}
	default:
		return fmt.Errorf("--cert-mode %q: write files or self", certMode.value)
	}
	if *uid <= 0 {
		return fmt.Errorf("--sidecar-uid %d: write a non-root UID such as %d", *uid, injector.DefaultSidecarUID)
	}
	res := corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, q := range []struct {
		flag, value string
		list        corev1.ResourceList
		name        corev1.ResourceName
	}{
		{"--sidecar-cpu-request", *cpuReq, res.Requests, corev1.ResourceCPU},
		{"--sidecar-cpu-limit", *cpuLim, res.Limits, corev1.ResourceCPU},
		{"--sidecar-memory-request", *memReq, res.Requests, corev1.ResourceMemory},
		{"--sidecar-memory-limit", *memLim, res.Limits, corev1.ResourceMemory},
	} {
		if q.value == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.value)
		if err != nil || v.Sign() <= 0 {
			return fmt.Errorf("%s %q: write a positive quantity such as 100m (CPU) or 64Mi (memory), or empty for none", q.flag, q.value)
		}
		q.list[q.name] = v
	}
	cfg := injector.Config{
		Image: *image, ImagePullPolicy: corev1.PullPolicy(*pull), Mode: injector.SidecarMode(*mode),
		SidecarUID: *uid, Resources: res, LogLevel: *sidecarLevel, XDSAddr: *xdsAddr,
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	srv := injector.ServerConfig{
		Addr: *addr, OpsAddr: *opsAddr, CertPoll: *certPoll,
		Injector: cfg, MaxRequestBytes: *maxBytes, ShutdownDelay: *shutdownDelay, Logger: log,
	}
	if certMode.value == certModeFiles {
		srv.CertFile, srv.KeyFile = *certFile, *keyFile
	} else {
		if *namespace == "" {
			return errors.New("--cert-mode=self needs the injector's namespace: set POD_NAMESPACE (the manifests set it from the downward API) or --namespace")
		}
		self := injector.SelfSignedConfig{
			Namespace: *namespace, SecretName: *tlsSecret, Service: *service, WebhookConfig: *webhookConfig,
			CAValidity: *caValidity, CertValidity: *certValidity,
		}
		// Check the flags before reaching for a Kubernetes client.
		if err := self.Validate(); err != nil {
			return err
		}
		client, err := kubeClient(*kubeconfig)
		if err != nil {
			return err
		}
		self.Secrets = client.CoreV1().Secrets(*namespace)
		self.Webhooks = client.AdmissionregistrationV1().MutatingWebhookConfigurations()
		srv.SelfSigned = &self
	}
	return injector.Run(ctx, srv)
}

// The --cert-mode values.
const (
	certModeFiles = "files"
	certModeSelf  = "self"
)

// onceFlag is a string flag that refuses a second value, so two
// kustomize components that each set --cert-mode fail loudly instead of
// the last one silently winning.
type onceFlag struct {
	value string
	set   bool
}

func (f *onceFlag) String() string {
	if f == nil {
		return ""
	}
	return f.value
}

func (f *onceFlag) Set(v string) error {
	if f.set {
		return fmt.Errorf("given twice (%s, then %s); pick one", f.value, v)
	}
	f.value, f.set = v, true
	return nil
}

// firstSet is the first of names that was given on the command line, or "".
func firstSet(set map[string]bool, names []string) string {
	for _, n := range names {
		if set[n] {
			return n
		}
	}
	return ""
}
