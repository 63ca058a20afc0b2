package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/internal/keyusage"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/xdsclient"
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
	namespace := fs.String("namespace", "", "only manage keyset Secrets in this namespace (overrides --namespace-selector)")
	nsSelector := fs.String("namespace-selector", kube.DefaultOptInLabel, "manage keysets only in namespaces with these labels, which also bind the ClusterRole keyshift-controller-keysets to the controller (empty: every namespace, which takes that ClusterRole cluster-wide)")
	xdsAddr := fs.String("xds-addr", ":18000", "serve keysets to sidecars over xDS here (empty disables)")
	xdsAuth := fs.String("xds-auth", "token", "how sidecars authenticate: token (TLS, and the pod's projected ServiceAccount token checked by TokenReview) or none (only with --keyset-dir on a loopback address)")
	xdsAudience := fs.String("xds-audience", kube.DefaultXDSAudience, "audience of the sidecars' projected tokens")
	xdsTLSSecret := fs.String("xds-tls-secret", "keyshift-controller-tls", "Secret, in the controller's namespace, holding the xDS CA and serving certificate the controller manages")
	xdsService := fs.String("xds-service", "keyshift-controller", "the xDS Service; the serving certificate names SERVICE.NAMESPACE.svc")
	xdsCAConfigMap := fs.String("xds-ca-configmap", kube.DefaultCAConfigMap, "ConfigMap the controller writes its CA bundle into, in every namespace with keysets (the injector mounts it into sidecars)")
	auditFlags := addAuditFlags(fs)
	interval := fs.Duration("interval", 30*time.Second, "reconcile every keyset this often")
	minPending := fs.Duration("min-pending-age", 90*time.Second, "least time a pending version waits before promotion, for pods that only mount the Secret (0 when every sidecar uses xDS)")
	revokeWait := fs.Duration("revoke-wait", rotation.DefaultRevokeWait, "keyset revoke: longest wait for every pod to load the new primary before it is promoted anyway")
	metrics := fs.String("metrics-addr", ":9496", "/healthz and /metrics")
	leaderElect := fs.Bool("leader-elect", true, "with Secrets: hold a Lease so only one replica acts")
	leaseNS := fs.String("lease-namespace", envOr("POD_NAMESPACE", "keyshift-system"), "namespace of the leader-election Lease")
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
	reg := prometheus.NewRegistry()
	eng := &rotation.Engine{KMS: providers.Registry(log), Log: log, Actor: "controller/" + *identity, MinPendingAge: *minPending, RevokeWait: *revokeWait, Metrics: rotation.NewMetrics(reg),
		KMSPolicy: &kmsPolicy}
	var client kubernetes.Interface
	var optIn *kube.OptIn
	if *dir != "" {
		eng.Store = &rotation.FileStore{Dir: *dir}
	} else {
		if client, err = kubeClient(*kubeconfig); err != nil {
			return err
		}
		kmsPolicy.Cluster = true
		if len(kmsPolicy.Allow) == 0 {
			log.Warn("no --allow-kms: keysets of every namespace may name any KMS key the controller's identity can use (local:// excepted)")
		}
		store := &kube.SecretStore{Client: client, Namespace: *namespace, Log: log}
		if *namespace == "" && *nsSelector != "" {
			if optIn, err = kube.NewOptIn(client, *nsSelector); err != nil {
				return err
			}
			optIn.Start(ctx)
			store.Namespaces = optIn.List
			log.Info("managing keysets in the namespaces that opt in", "selector", *nsSelector)
		}
		ev, stop := store.Events(log)
		defer stop()
		poke := make(chan struct{}, 1)
		eng.Poke = poke
		go store.Watch(ctx, 30*time.Second, func() {
			select {
			case poke <- struct{}{}:
			default:
			}
		})
		eng.Store, eng.Event, eng.Status = store, ev, store.SetStatus
	}
	auditKey, trail, err := auditFlags.setup(ctx, client, eng.KMS, &kmsPolicy, log)
	if err != nil {
		return err
	}
	if trail != nil {
		defer trail.Close()
	}
	eng.AuditKey, eng.Audit = auditKey, trail

	term := leadTerm{eng: eng, interval: *interval, log: log}
	if *xdsAddr != "" {
		var access *xds.Access
		var opts []grpc.ServerOption
		var readers *kube.PodReaders
		if client != nil {
			// Promotion waits for every pod that uses a keyset, not only
			// for the sidecars connected at that moment; the same cache
			// says which pods may read which keysets.
			if optIn != nil {
				readers = kube.NewPodReadersPerNamespace(client)
			} else {
				readers = kube.NewPodReaders(client, *namespace)
			}
			readers.Start(ctx)
			eng.Readers = readers.Readers
			term.pod = leaderPod(client, log)
		}
		switch *xdsAuth {
		case "none":
			if client != nil || !xdsclient.Loopback(*xdsAddr) {
				return errors.New("--xds-auth=none serves every keyset to whoever connects: it is only for --keyset-dir with a loopback --xds-addr such as 127.0.0.1:18000")
			}
			log.Warn("xDS without authentication, on loopback only", "addr", *xdsAddr)
		case "token":
			if client == nil {
				return errors.New("--xds-auth=token checks sidecar tokens with the Kubernetes API; with --keyset-dir use --xds-auth=none on a loopback --xds-addr")
			}
			access = (&kube.XDSAccess{Client: client, Audience: *xdsAudience, Pods: readers, OptIn: optIn}).Access()
			store := eng.Store.(*kube.SecretStore)
			pub := &kube.CAPublisher{Client: client, Name: *xdsCAConfigMap}
			store.Listed = func(ctx context.Context, nss []string) {
				if err := pub.Ensure(ctx, nss); err != nil {
					log.Warn("publishing the xDS CA bundle failed; retrying", "err", err)
				}
			}
			cert, err := startXDSCert(ctx, client, envOr("POD_NAMESPACE", "keyshift-system"), *xdsTLSSecret, *xdsService, log,
				pub.SetBundle)
			if err != nil {
				return err
			}
			opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{GetCertificate: cert, MinVersion: tls.VersionTLS13})))
		default:
			return fmt.Errorf("--xds-auth %q: write token or none", *xdsAuth)
		}
		// Inactive until this replica leads: only the leader publishes and
		// counts ACKs, so a follower refuses streams rather than hold
		// sidecars on a snapshot that never changes (see leadTerm).
		term.xds = xds.NewServer(ctx, log, access)
		term.xds.SetActive(false)
		// Sidecars report key usage on the same port: kept in this log,
		// in metrics, and as each version's holders on its Secret.
		ledger := &keyusage.Ledger{Log: log, Event: eng.Event, SpikeThreshold: *spike}
		if store, ok := eng.Store.(*kube.SecretStore); ok {
			ledger.Holders = store
		}
		ledger.Register(reg)
		term.xds.SetUsage(ledger)
		g := grpc.NewServer(opts...)
		term.xds.Register(g)
		l, err := net.Listen("tcp", *xdsAddr)
		if err != nil {
			return fmt.Errorf("xds listener: %w", err)
		}
		go func() { _ = g.Serve(l) }()
		defer g.Stop()
		eng.Dist = term.xds
		log.Info("serving keysets over xDS while leading", "addr", l.Addr().String(), "auth", *xdsAuth)
	}
	if *metrics != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: *metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.ListenAndServe() }()
		defer srv.Close()
	}
	if client == nil || !*leaderElect {
		term.run(ctx)
		return nil
	}
	err = kube.RunLeader(ctx, client, kube.LeaderConfig{Namespace: *leaseNS, Name: "keyshift-controller", Identity: *identity}, log, term.run)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// leaderPod is this replica's pod, to label while it leads, from the
// POD_NAME and POD_NAMESPACE the Deployment sets; nil when they are unset
// (a controller run outside the cluster).
func leaderPod(client kubernetes.Interface, log *slog.Logger) *kube.LeaderPod {
	name, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if name == "" || ns == "" {
		log.Warn("POD_NAME or POD_NAMESPACE unset: not labelling this pod " + kube.RoleLabel + "=" + kube.RoleLeader + ", so the xDS Service will not route sidecars here")
		return nil
	}
	return &kube.LeaderPod{Client: client, Namespace: ns, Name: name, Log: log}
}

// leadTerm is one replica's time as the acting controller. The order is
// the point: publish every keyset, then accept xDS streams (no subscriber
// is ever served a snapshot without its keyset), then take the leader
// label (the Service sends sidecars here only once it serves). On the way
// out the label goes first, then the streams are closed, so sidecars
// reconnect to the next leader.
type leadTerm struct {
	eng      *rotation.Engine
	xds      *xds.Server     // nil without xDS
	pod      *kube.LeaderPod // nil outside a cluster
	interval time.Duration
	log      *slog.Logger
}

// run leads until ctx ends.
func (t leadTerm) run(ctx context.Context) {
	var wake func() <-chan struct{}
	if t.xds != nil {
		if !t.publishAll(ctx) {
			return
		}
		t.xds.SetActive(true)
		defer t.xds.SetActive(false)
		wake = t.xds.Changed
	}
	var wg sync.WaitGroup
	if t.pod != nil {
		wg.Go(func() { t.pod.Hold(ctx) })
	}
	t.eng.Run(ctx, t.interval, wake)
	wg.Wait()
}

// publishAll retries Engine.PublishAll until it lists the store, and
// reports false if ctx ended first.
func (t leadTerm) publishAll(ctx context.Context) bool {
	for {
		err := t.eng.PublishAll(ctx)
		if err == nil {
			return true
		}
		t.log.Warn("loading keysets before serving xDS failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Second):
		}
	}
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
