package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/injector"
)

// runInjector is `keyshift injector`: the mutating admission webhook that
// adds the sidecar to annotated pods.
func runInjector(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("injector", flag.ContinueOnError)
	addr := fs.String("listen", ":8443", "HTTPS address the API server calls (/mutate, /healthz, /readyz, /metrics)")
	opsAddr := fs.String("ops-addr", ":9090", "plain-HTTP address for /healthz, /readyz and /metrics (empty disables)")
	certFile := fs.String("tls-cert-file", "/etc/keyshift/tls/tls.crt", "serving certificate (PEM chain), reloaded when it changes")
	keyFile := fs.String("tls-key-file", "/etc/keyshift/tls/tls.key", "serving key (PEM), reloaded when it changes")
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
	certPoll := fs.Duration("tls-poll", time.Minute, "reread the TLS files this often even without a file event")
	logger := clikit.LogFlags(fs, "info", "debug, info, warn or error (debug logs every admission)")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	log, err := logger(stderr)
	if err != nil {
		return err
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
	return injector.Run(ctx, injector.ServerConfig{
		Addr: *addr, OpsAddr: *opsAddr, CertFile: *certFile, KeyFile: *keyFile, CertPoll: *certPoll,
		Injector: cfg, MaxRequestBytes: *maxBytes, ShutdownDelay: *shutdownDelay, Logger: log,
	})
}
