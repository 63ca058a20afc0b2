package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/xds"
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

func runController(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	dir := fs.String("keyset-dir", "", "manage the keyset files in this directory (outside a cluster); otherwise labelled Secrets")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	namespace := fs.String("namespace", "", "only manage keyset Secrets in this namespace (default: all)")
	xdsAddr := fs.String("xds-addr", ":18000", "serve keysets to sidecars over xDS here (empty disables)")
	auditPath := fs.String("audit-log", "/var/lib/keyshift/audit.jsonl", "append-only audit trail (JSON lines, hash-chained)")
	interval := fs.Duration("interval", 30*time.Second, "reconcile every keyset this often")
	minPending := fs.Duration("min-pending-age", 90*time.Second, "least time a pending version waits before promotion, for pods that only mount the Secret (0 when every sidecar uses xDS)")
	metrics := fs.String("metrics-addr", ":9496", "/healthz and /metrics")
	leaderElect := fs.Bool("leader-elect", true, "with Secrets: hold a Lease so only one replica acts")
	leaseNS := fs.String("lease-namespace", envOr("POD_NAMESPACE", "keyshift-system"), "namespace of the leader-election Lease")
	identity := fs.String("identity", envOr("POD_NAME", hostname()), "this replica's name in the Lease and the audit trail")
	logger := clikit.LogFlags(fs, "info", "debug, info, warn or error")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	log, err := logger(stderr)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	eng := &rotation.Engine{KMS: providers.Registry(log), Log: log, Actor: "controller/" + *identity, MinPendingAge: *minPending, Metrics: rotation.NewMetrics(reg)}
	var client kubernetes.Interface
	if *dir != "" {
		eng.Store = &rotation.FileStore{Dir: *dir}
	} else {
		if client, err = kubeClient(*kubeconfig); err != nil {
			return err
		}
		store := &kube.SecretStore{Client: client, Namespace: *namespace}
		ev, stop := store.Events(log)
		defer stop()
		eng.Store, eng.Event, eng.Status = store, ev, store.SetStatus
	}
	trail, err := audit.Open(*auditPath)
	if err != nil {
		return err
	}
	defer trail.Close()
	eng.Audit = trail

	var wake func() <-chan struct{}
	if *xdsAddr != "" {
		x := xds.NewServer(ctx, log)
		g := grpc.NewServer()
		x.Register(g)
		l, err := net.Listen("tcp", *xdsAddr)
		if err != nil {
			return fmt.Errorf("xds listener: %w", err)
		}
		go func() { _ = g.Serve(l) }()
		defer g.Stop()
		eng.Dist, wake = x, x.Changed
		log.Info("serving keysets over xDS", "addr", l.Addr().String())
	}
	if *metrics != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: *metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.ListenAndServe() }()
		defer srv.Close()
	}
	run := func(ctx context.Context) { eng.Run(ctx, *interval, wake) }
	if client == nil || !*leaderElect {
		run(ctx)
		return nil
	}
	err = kube.RunLeader(ctx, client, kube.LeaderConfig{Namespace: *leaseNS, Name: "keyshift-controller", Identity: *identity}, log, run)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func runAudit(_ context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprintln(stderr, "usage: keyshift audit verify --file PATH")
		return errUsage
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	file := fs.String("file", "/var/lib/keyshift/audit.jsonl", "audit trail to check")
	if err := parse(fs, args[1:], stderr); err != nil {
		return err
	}
	f, err := os.Open(*file)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := audit.Verify(f)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d records, chain intact\n", *file, n)
	return nil
}
