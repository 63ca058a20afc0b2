// Package controller is the assembly of `keyshift controller`: it picks
// the keyset store (a directory, or labelled Secrets), serves keysets and
// key-usage reports to sidecars over xDS (TLS and token auth, with a
// certificate it manages), keeps the key-usage ledger, serves /healthz and
// /metrics, holds the leader Lease, and runs the rotation engine while it
// leads. The binary and the tests start this same assembly.
package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/keyshift/keyshift/internal/clusterstatus"
	"github.com/keyshift/keyshift/internal/keyusage"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/socket"
	"github.com/keyshift/keyshift/internal/xds"
)

// shutdownGrace bounds the wait for in-flight gRPC calls (usage reports)
// and HTTP requests on the way out.
const shutdownGrace = 5 * time.Second

// Controller is a running controller replica.
type Controller struct {
	cfg  Config
	log  *slog.Logger
	eng  *rotation.Engine
	term leadTerm
	// acting: this replica runs the rotation engine (it leads, or Lead
	// was called on a Manual one).
	acting atomic.Bool
	xds    *xds.Server // nil without xDS
	reg    *prometheus.Registry

	xdsL, metricsL net.Listener

	done   chan struct{}
	errMu  sync.Mutex
	runErr error
	cancel context.CancelFunc
}

// Start checks cfg, opens the store, loads the audit key, listens on the
// xDS and metrics addresses, and returns once they are open; leading (or
// waiting to lead) goes on in the background until ctx ends or something
// fails for good, which Wait returns.
func Start(ctx context.Context, cfg Config) (_ *Controller, err error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	ctx, cancel := context.WithCancel(ctx)
	c := &Controller{cfg: cfg, log: log, reg: prometheus.NewRegistry(), done: make(chan struct{}), cancel: cancel}
	// closers undo what Start set up when it fails half way, and shut down
	// in reverse order when the controller stops.
	var closers []func()
	defer func() {
		if err != nil {
			cancel()
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	policy := cfg.KMSPolicy
	eng := &rotation.Engine{KMS: cfg.KMS, Log: log, Actor: "controller/" + cfg.Identity, MinPendingAge: cfg.MinPendingAge, RevokeWait: cfg.RevokeWait,
		Metrics: rotation.NewMetrics(c.reg), KMSPolicy: &policy}
	c.eng = eng
	var optIn *kube.OptIn
	var secrets *kube.SecretStore
	if cfg.KeysetDir != "" {
		eng.Store = &rotation.FileStore{Dir: cfg.KeysetDir}
	} else {
		policy.Cluster = true
		if len(policy.Allow) == 0 {
			log.Warn("no --allow-kms: keysets of every namespace may name any KMS key the controller's identity can use (local:// excepted)")
		}
		secrets = &kube.SecretStore{Client: cfg.Kube, Namespace: cfg.Namespace, Log: log}
		if cfg.Namespace == "" && cfg.NamespaceSelector != "" {
			if optIn, err = kube.NewOptIn(cfg.Kube, cfg.NamespaceSelector); err != nil {
				return nil, err
			}
			optIn.Start(ctx)
			secrets.Namespaces = optIn.List
			log.Info("managing keysets in the namespaces that opt in", "selector", cfg.NamespaceSelector)
		}
		ev, stop := secrets.Events(log)
		closers = append(closers, stop)
		poke := make(chan struct{}, 1)
		eng.Poke = poke
		go secrets.Watch(ctx, 30*time.Second, func() {
			select {
			case poke <- struct{}{}:
			default:
			}
		})
		eng.Store, eng.Event, eng.Status = secrets, ev, secrets.SetStatus
	}
	auditKey, trail, err := cfg.openAudit(ctx, &policy, log)
	if err != nil {
		return nil, err
	}
	if trail != nil {
		closers = append(closers, func() { _ = trail.Close() })
	}
	eng.AuditKey, eng.Audit = auditKey, trail

	c.term = leadTerm{eng: eng, interval: cfg.Interval, log: log, acting: &c.acting}
	var g *grpc.Server
	if cfg.XDSAddr != "" {
		var access *xds.Access
		var opts []grpc.ServerOption
		if cfg.Kube != nil {
			// Promotion waits for every pod that uses a keyset, not only
			// for the sidecars connected at that moment; the same cache
			// says which pods may read which keysets.
			var readers *kube.PodReaders
			if optIn != nil {
				readers = kube.NewPodReadersPerNamespace(cfg.Kube)
			} else {
				readers = kube.NewPodReaders(cfg.Kube, cfg.Namespace)
			}
			readers.Start(ctx)
			eng.Readers = readers.Readers
			c.term.pod = leaderPod(cfg, log)
			// check allows token auth only with Kube.
			access = (&kube.XDSAccess{Client: cfg.Kube, Audience: cfg.XDSAudience, Pods: readers, OptIn: optIn}).Access()
			pub := &kube.CAPublisher{Client: cfg.Kube, Name: cfg.XDSCAConfigMap}
			secrets.Listed = func(ctx context.Context, nss []string) {
				if err := pub.Ensure(ctx, nss); err != nil {
					log.Warn("publishing the xDS CA bundle failed; retrying", "err", err)
				}
			}
			cert, err := startXDSCert(ctx, cfg.Kube, cfg.systemNamespace(), cfg.XDSTLSSecret, cfg.XDSService, log, pub.SetBundle)
			if err != nil {
				return nil, err
			}
			opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{GetCertificate: cert, MinVersion: tls.VersionTLS13})))
		} else {
			log.Warn("xDS without authentication, on loopback only", "addr", cfg.XDSAddr)
		}
		// Inactive until this replica leads: only the leader publishes and
		// counts ACKs, so a follower refuses streams rather than hold
		// sidecars on a snapshot that never changes (see leadTerm).
		c.xds = xds.NewServer(ctx, log, access)
		c.xds.SetActive(false)
		c.term.xds = c.xds
		// Sidecars report key usage on the same port: kept in this log,
		// in metrics, and as each version's holders on its Secret.
		ledger := &keyusage.Ledger{Log: log, Event: eng.Event, SpikeThreshold: cfg.DecryptFailureSpike}
		if secrets != nil {
			ledger.Holders = secrets
		}
		ledger.Register(c.reg)
		c.xds.SetUsage(ledger)
		g = grpc.NewServer(opts...)
		c.xds.Register(g)
		if c.xdsL, err = net.Listen("tcp", cfg.XDSAddr); err != nil {
			return nil, fmt.Errorf("controller: xds listener: %w", err)
		}
		closers = append(closers, func() { c.xdsL.Close() })
		eng.Dist = c.xds
	}
	var ms *http.Server
	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		mux.Handle("GET /metrics", promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET "+clusterstatus.ControllerPath, c.serveStatus)
		ms = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		if c.metricsL, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return nil, fmt.Errorf("controller: metrics listener: %w", err)
		}
	}

	// From here nothing fails in Start: the servers run until ctx ends or
	// one of them fails, which ends the others too.
	var wg sync.WaitGroup
	if g != nil {
		wg.Go(func() {
			if err := g.Serve(c.xdsL); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				c.fail(fmt.Errorf("controller: xds server: %w", err))
			}
		})
		log.Info("serving keysets over xDS while leading", "addr", c.xdsL.Addr().String(), "auth", string(cfg.XDSAuth))
	}
	if ms != nil {
		wg.Go(func() {
			if err := ms.Serve(c.metricsL); !errors.Is(err, http.ErrServerClosed) {
				c.fail(fmt.Errorf("controller: metrics server: %w", err))
			}
		})
	}
	go func() {
		c.lead(ctx)
		// The term has ended (streams closed, leader label removed); now
		// the listeners, then what the engine wrote to.
		if c.xds != nil {
			c.xds.SetActive(false)
		}
		if g != nil {
			socket.StopGRPC(g, shutdownGrace)
		}
		if ms != nil {
			sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			_ = ms.Shutdown(sctx)
			cancel()
		}
		wg.Wait()
		cancel()
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		log.Info("controller stopped")
		close(c.done)
	}()
	return c, nil
}

// lead runs this replica's leadership, or waits for it, until ctx ends or
// leadership is lost.
func (c *Controller) lead(ctx context.Context) {
	switch {
	case c.cfg.Manual:
		<-ctx.Done()
	case c.cfg.Kube == nil || !c.cfg.LeaderElect:
		c.term.run(ctx)
	default:
		err := kube.RunLeader(ctx, c.cfg.Kube, kube.LeaderConfig{Namespace: c.cfg.LeaseNamespace, Name: DefaultLeaseName, Identity: c.cfg.Identity,
			LeaseDuration: c.cfg.LeaseDuration}, c.log, c.term.run)
		if err != nil && !errors.Is(err, context.Canceled) {
			c.fail(err)
		}
	}
}

// fail records a fatal error for Wait and stops the controller.
func (c *Controller) fail(err error) {
	c.errMu.Lock()
	c.runErr = errors.Join(c.runErr, err)
	c.errMu.Unlock()
	c.log.Error("controller failed; stopping", "err", err)
	c.cancel()
}

// Run starts the controller and blocks until it stops.
func Run(ctx context.Context, cfg Config) error {
	c, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	return c.Wait()
}

// Wait blocks until the controller has stopped and returns what stopped
// it: nil when its context ended, else the failure (a lost Lease, a
// server that stopped serving).
func (c *Controller) Wait() error {
	<-c.done
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.runErr
}

// Done is closed once the controller has stopped.
func (c *Controller) Done() <-chan struct{} { return c.done }

// Engine is the rotation engine, for tests that step a rotation (with
// Manual) or read its state.
func (c *Controller) Engine() *rotation.Engine { return c.eng }

// XDS is the xDS server, or nil without XDSAddr.
func (c *Controller) XDS() *xds.Server { return c.xds }

// XDSAddr is the address xDS is served on, or "" without XDSAddr.
func (c *Controller) XDSAddr() string {
	if c.xdsL == nil {
		return ""
	}
	return c.xdsL.Addr().String()
}

// MetricsAddr is the address /healthz and /metrics are served on, or ""
// when disabled.
func (c *Controller) MetricsAddr() string {
	if c.metricsL == nil {
		return ""
	}
	return c.metricsL.Addr().String()
}

// Leading reports whether this replica serves xDS: it leads and has
// published every keyset. Without xDS it is always false.
func (c *Controller) Leading() bool { return c.xds != nil && c.xds.Active() }

// Lead, with Manual, does what a replica does on winning the Lease before
// its loop starts: publish every keyset, then serve xDS.
func (c *Controller) Lead(ctx context.Context) error {
	if !c.cfg.Manual {
		return errors.New("controller: Lead is for a Manual controller; others lead by election")
	}
	if err := c.eng.PublishAll(ctx); err != nil {
		return err
	}
	if c.xds != nil {
		c.xds.SetActive(true)
	}
	c.acting.Store(true)
	return nil
}

// StepDown, with Manual, ends what Lead began: xDS streams are closed and
// refused, so sidecars reconnect to another replica.
func (c *Controller) StepDown() {
	if c.xds != nil {
		c.xds.SetActive(false)
	}
	c.acting.Store(false)
}
