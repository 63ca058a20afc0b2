// Package sidecar is keyshift's per-pod server: it holds the pod's keysets
// in memory as an immutable, atomically swapped keyring, serves
// Encrypt/Decrypt/Rewrap over a Unix socket (gRPC and HTTP/JSON), follows
// keyset files as they change, and reports health and metrics on a
// localhost port.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/sidecar/floor"
	"github.com/keyshift/keyshift/internal/socket"
	"github.com/keyshift/keyshift/internal/xds/usagev1"
	"github.com/keyshift/keyshift/internal/xds/xdsclient"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// Config is everything the sidecar needs; cmd/keyshift fills it from flags.
type Config struct {
	// Socket is the Unix socket path the API is served on.
	Socket string
	// SocketMode is the socket file's mode (0660 by default).
	SocketMode os.FileMode
	// AllowedUIDs are the peer UIDs that may call the API. Nil allows any
	// peer that can open the socket.
	AllowedUIDs []uint32
	// Keysets maps each keyset name to the file it is loaded from; an empty
	// path means the keyset comes over xDS only.
	Keysets map[string]string
	// XDSAddr is the controller's xDS address (host:port or unix:///path);
	// empty disables the xDS source.
	XDSAddr string
	// NodeID names this sidecar to the controller (namespace/pod).
	NodeID string
	// XDSCAFile and XDSServerName verify the controller; XDSTokenFile is
	// the pod's projected ServiceAccount token the controller verifies.
	XDSCAFile, XDSServerName, XDSTokenFile string
	// XDSInsecure drops TLS and the token: loopback and unix:// only.
	XDSInsecure bool
	// MetricsAddr serves /livez, /readyz and /metrics ("" disables). Keep it
	// on localhost.
	MetricsAddr string
	// KMS opens the backends keyset documents name.
	KMS kms.Registry
	// Logger receives structured logs; it never gets key material.
	Logger *slog.Logger
	// Resync rereads keyset files this often even without a file event.
	Resync time.Duration
	// KMSTimeout bounds each KMS call.
	KMSTimeout time.Duration
	// KMSPoll asks the KMS for the KEK's primary version this often and
	// rereads the keyset file when it changes (0 disables). Keysets
	// without a file are not polled: xDS pushes their new documents.
	KMSPoll time.Duration
	// UsageInterval is how often the aggregated key usage records are
	// written to the log (1m when zero).
	UsageInterval time.Duration
	// DroppedKeyGrace is how long the key of a version that left the
	// keyring (disabled, destroyed) is kept before it is wiped from
	// memory, for calls still running on the previous keyring (1m when
	// zero).
	DroppedKeyGrace time.Duration
}

func (c *Config) defaults() error {
	if c.Socket == "" {
		return errors.New("sidecar: no socket path (set --socket)")
	}
	if len(c.Keysets) == 0 {
		return errors.New("sidecar: no keysets (set --keyset NAME=PATH at least once)")
	}
	if c.SocketMode == 0 {
		c.SocketMode = 0o660
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Resync <= 0 {
		c.Resync = time.Minute
	}
	if c.KMSTimeout <= 0 {
		c.KMSTimeout = 10 * time.Second
	}
	if c.DroppedKeyGrace <= 0 {
		c.DroppedKeyGrace = time.Minute
	}
	if c.UsageInterval <= 0 {
		c.UsageInterval = time.Minute
	}
	if c.KMS == nil {
		return errors.New("sidecar: no KMS registry")
	}
	for name, path := range c.Keysets {
		if path == "" && c.XDSAddr == "" {
			return fmt.Errorf("sidecar: keyset %s has no file and no xDS address; set --keyset %s=PATH or --xds-addr", name, name)
		}
	}
	if c.XDSAddr != "" && c.NodeID == "" {
		host, _ := os.Hostname()
		c.NodeID = host
	}
	if c.XDSAddr != "" {
		xc := xdsclient.Client{Addr: c.XDSAddr, Insecure: c.XDSInsecure, CAFile: c.XDSCAFile, ServerName: c.XDSServerName, TokenFile: c.XDSTokenFile}
		if err := xc.CheckSecurity(); err != nil {
			return fmt.Errorf("sidecar: %w (flags --xds-ca-file, --xds-server-name, --xds-token-file, or --xds-insecure)", err)
		}
	}
	return nil
}

// Server is a running sidecar.
type Server struct {
	cfg     Config
	svc     *Service
	metrics *Metrics
	ring    *holder
	loader  *loader
	health  *health.Server
	log     *slog.Logger

	errMu   sync.Mutex
	lastErr map[string]string
	// applyMu serialises loads: the file and xDS sources may deliver the
	// same keyset at once.
	applyMu sync.Mutex

	ready   chan struct{}
	readyMu sync.Once
	done    chan struct{}
	errOnce sync.Once
	runErr  error
	opsL    net.Listener
}

// Start listens on the socket, starts loading keysets and serving, and
// returns at once. The server stops when ctx is canceled; Wait waits for
// that.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(cfg.Keysets))
	for n := range cfg.Keysets {
		names = append(names, n)
	}
	sort.Strings(names)
	s := &Server{
		cfg: cfg, metrics: NewMetrics(), ring: &holder{wipeAfter: cfg.DroppedKeyGrace}, loader: newLoader(cfg.KMS, cfg.KMSTimeout),
		health: health.NewServer(), log: cfg.Logger, lastErr: map[string]string{},
		ready: make(chan struct{}), done: make(chan struct{}),
	}
	s.svc = newService(s.ring, names, s.metrics, cfg.Logger)
	s.metrics.readiness(s.svc.Ready)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	s.health.SetServingStatus(v1.Crypto_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)

	l, err := socket.Listen(cfg.Socket, cfg.SocketMode)
	if err != nil {
		return nil, err
	}
	var metricsL net.Listener
	if cfg.MetricsAddr != "" {
		if metricsL, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			l.Close()
			return nil, fmt.Errorf("sidecar: metrics listener: %w", err)
		}
		s.opsL = metricsL
	}
	api := newAPISocket(l, &grpcAPI{svc: s.svc, lastErr: s.lastError}, socket.NewAllowlist(cfg.AllowedUIDs), s.metrics, s.log)
	healthpb.RegisterHealthServer(api.gs, s.health)

	// A part that stops on its own (not because ctx ended) stops the
	// whole server, and Wait returns its error.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	run := func(what string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				s.errOnce.Do(func() { s.runErr = fmt.Errorf("sidecar: %s: %w", what, err) })
				s.log.Error("sidecar part failed; stopping", "part", what, "err", err)
				cancel()
			}
		}()
	}
	api.serve(ctx, run)
	var ms *http.Server
	if metricsL != nil {
		ms = &http.Server{Handler: s.opsHandler(), ReadHeaderTimeout: 5 * time.Second}
		run("ops listener", func() error { return ms.Serve(metricsL) })
	}
	var xc *xdsclient.Client
	if cfg.XDSAddr != "" {
		xc = &xdsclient.Client{Addr: cfg.XDSAddr, NodeID: cfg.NodeID, Keysets: names, Apply: s.applyXDS, Log: s.log,
			CAFile: cfg.XDSCAFile, ServerName: cfg.XDSServerName, TokenFile: cfg.XDSTokenFile, Insecure: cfg.XDSInsecure}
		run("xDS client", func() error { return xc.Run(ctx) })
	}
	run("usage log", func() error { s.usageLoop(ctx, xc); return nil })
	for _, src := range s.sources(names) {
		run("keyset source", func() error { src.run(ctx); return nil })
	}
	s.log.Info("sidecar listening", "socket", cfg.Socket, "mode", fmt.Sprintf("%#o", cfg.SocketMode),
		"metrics", cfg.MetricsAddr, "keysets", names, "allowed_uids", socket.Describe(cfg.AllowedUIDs))
	go func() {
		<-ctx.Done()
		s.health.Shutdown()
		api.stop()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if ms != nil {
			_ = ms.Shutdown(sctx)
		}
		wg.Wait()
		cancel()
		s.log.Info("sidecar stopped")
		close(s.done)
	}()
	return s, nil
}

// apiSocket is what serves the API socket: gRPC with the sidecar's
// server options and peer check, and the same API as HTTP/JSON, behind one
// demultiplexing listener.
type apiSocket struct {
	dm *socket.Demux
	gs *grpc.Server
	hs *http.Server
}

func newAPISocket(l *net.UnixListener, api v1.CryptoServer, allow socket.Allowlist, m *Metrics, log *slog.Logger) *apiSocket {
	unary, stream := authorize(allow, m)
	gs := grpc.NewServer(grpc.Creds(socket.Creds{}), grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream),
		grpc.MaxRecvMsgSize(MaxHTTPBody), grpc.MaxSendMsgSize(MaxHTTPBody),
		// Reuse handler goroutines: a fresh goroutine per call pays for
		// stack growth through the crypto path (8% of CPU in profiles).
		grpc.NumStreamWorkers(uint32(4*runtime.GOMAXPROCS(0))))
	v1.RegisterCryptoServer(gs, api)
	hs := &http.Server{Handler: httpAPI(api, allow, m), ConnContext: socket.ConnContext, ReadHeaderTimeout: 10 * time.Second}
	return &apiSocket{dm: socket.NewDemux(l, log), gs: gs, hs: hs}
}

// serve starts the three parts with run, which reports a part that stops.
func (a *apiSocket) serve(ctx context.Context, run func(what string, f func() error)) {
	run("socket", func() error { a.dm.Serve(ctx); return nil })
	run("gRPC API", func() error { return a.gs.Serve(a.dm.GRPC()) })
	run("HTTP API", func() error { return a.hs.Serve(a.dm.HTTP()) })
}

// stop closes the listener and lets calls in flight finish (5 s at most).
func (a *apiSocket) stop() {
	a.dm.Close()
	socket.StopGRPC(a.gs, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.hs.Shutdown(ctx)
}

// ServeAPI serves api on a Unix socket at path exactly as the sidecar
// serves its own: the same listener and socket mode, the same peer check
// (allowedUIDs, as --allowed-uids), the same gRPC server options and
// interceptors, HTTP/JSON beside gRPC on one socket. The load tool serves
// its floor (the API without the crypto) through it, so the floor differs
// from the sidecar only by what the handlers do. It serves until ctx ends;
// the returned wait blocks until everything has stopped.
func ServeAPI(ctx context.Context, path string, allowedUIDs []uint32, api v1.CryptoServer, log *slog.Logger) (wait func(), err error) {
	l, err := socket.Listen(path, 0o660)
	if err != nil {
		return nil, err
	}
	a := newAPISocket(l, api, socket.NewAllowlist(allowedUIDs), NewMetrics(), log)
	var wg sync.WaitGroup
	a.serve(ctx, func(_ string, f func() error) { wg.Add(1); go func() { defer wg.Done(); _ = f() }() })
	stopped := make(chan struct{})
	go func() { <-ctx.Done(); a.stop(); wg.Wait(); close(stopped) }()
	return func() { <-stopped }, nil
}

// ServeFloor serves the load tool's like-for-like floor on a Unix socket
// at path until ctx ends: ServeAPI with the floor's handlers (the Crypto
// API without the crypto) and this process's UID as the peer check, the
// sidecar's default. It is the cost of the sidecar's transport with
// nothing behind it, so sidecar/floor is what the crypto and bookkeeping
// cost, per op mix and batch size. Both binaries serve it (`bench-floor`),
// so the load tool can run the floor from the sidecar's own binary.
func ServeFloor(ctx context.Context, path string) (wait func(), err error) {
	return ServeAPI(ctx, path, []uint32{uint32(os.Getuid())}, floor.New(), slog.New(slog.DiscardHandler))
}

// Run starts the sidecar and blocks until ctx is canceled.
func Run(ctx context.Context, cfg Config) error {
	s, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	return s.Wait()
}

// Wait blocks until the server has shut down.
func (s *Server) Wait() error {
	<-s.done
	return s.runErr
}

// Ready is closed once every keyset has loaded.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// OpsAddr is the address /livez, /readyz and /metrics are served on, or ""
// when disabled.
func (s *Server) OpsAddr() string {
	if s.opsL == nil {
		return ""
	}
	return s.opsL.Addr().String()
}

// Service is the crypto core, for in-process callers and tests.
func (s *Server) Service() *Service { return s.svc }

// Metrics is the server's metric set.
func (s *Server) Metrics() *Metrics { return s.metrics }

// apply builds a new ringSet from doc and swaps it in. The running keyring
// is untouched on any error.
func (s *Server) apply(ctx context.Context, doc *keyset.Keyset, source string) (bool, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	prev, _ := s.ring.load().set(doc.Name)
	next, err := s.loader.build(ctx, doc, prev, source)
	if errors.Is(err, errStale) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s.ring.replace(doc.Name, next)
	s.metrics.loaded(doc.Name, next)
	s.errMu.Lock()
	delete(s.lastErr, doc.Name)
	s.errMu.Unlock()
	readable := []uint32{}
	for v := range next.keys {
		readable = append(readable, v)
	}
	slices.Sort(readable)
	s.log.Info("keyring swapped", "keyset", doc.Name, "primary", next.primary.Version(), "readable_versions", readable, "source", source)
	if s.svc.Ready() {
		s.readyMu.Do(func() {
			s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
			s.health.SetServingStatus(v1.Crypto_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
			close(s.ready)
			s.log.Info("sidecar ready")
		})
	}
	return true, nil
}

// applyXDS loads a document pushed by the controller. Its error becomes the
// NACK the controller sees.
func (s *Server) applyXDS(ctx context.Context, name string, data []byte) error {
	const source = "xds"
	if _, ok := s.cfg.Keysets[name]; !ok {
		s.metrics.reload(name, source, "invalid")
		return fmt.Errorf("%w: keyset %q is not configured in this sidecar", ErrKeysetRejected, name)
	}
	doc, err := keyset.Parse(data)
	if err == nil && doc.Name != name {
		err = fmt.Errorf("%w: resource %q holds keyset %q", ErrKeysetRejected, name, doc.Name)
	}
	if err != nil {
		s.metrics.reload(name, source, "invalid")
		s.failed(name, err)
		return err
	}
	changed, err := s.apply(ctx, doc, source)
	switch {
	case err != nil:
		s.metrics.reload(name, source, reloadReason(err))
		s.failed(name, err)
		return err
	case changed:
		s.metrics.reload(name, source, "ok")
	default:
		s.metrics.reload(name, source, "stale")
	}
	return nil
}

func reloadReason(err error) string {
	if errors.Is(err, ErrKeysetRejected) {
		return "rejected"
	}
	return kms.Reason(err)
}

func (s *Server) failed(name string, err error) {
	s.errMu.Lock()
	s.lastErr[name] = err.Error()
	s.errMu.Unlock()
	_, loaded := s.ring.load().set(name)
	s.log.Warn("keyset load failed; keeping the current keyring", "keyset", name, "loaded", loaded, "reason", kms.Reason(err), "err", err)
}

func (s *Server) lastError(name string) string {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.lastErr[name]
}

// opsHandler serves /livez, /readyz and /metrics. Liveness only says the
// process serves: a KMS outage must not restart pods. Readiness says every
// keyset is loaded.
func (s *Server) opsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready, sets := s.svc.Status(s.lastError)
		if ready {
			_, _ = w.Write([]byte("ok\n"))
			return
		}
		// The ops port is on the pod network (the kubelet probes the pod
		// IP): the reason, which names KMS keys and paths, stays on the
		// socket (Status) and in the log.
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, ks := range sets {
			if ks.Primary == 0 {
				fmt.Fprintf(w, "keyset %s not loaded (the reason: keyshift status on the socket, or the sidecar's log)\n", ks.Name)
			}
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	return mux
}

// usageLoop writes the key usage records every UsageInterval, and the
// last partial interval when the sidecar stops. Each record is one
// structured log line (the pod's own trail, collected by the cluster's
// log pipeline) and, with xDS, is reported to the controller, which keeps
// who holds data under which version and watches for decrypt failure
// spikes across pods.
func (s *Server) usageLoop(ctx context.Context, xc *xdsclient.Client) {
	t := time.NewTicker(s.cfg.UsageInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.writeUsage(context.Background(), xc, time.Now(), 2*time.Second)
			return
		case now := <-t.C:
			s.writeUsage(ctx, xc, now, 10*time.Second)
		}
	}
}

func (s *Server) writeUsage(ctx context.Context, xc *xdsclient.Client, now time.Time, timeout time.Duration) {
	recs := s.svc.usage.flush(now)
	for _, r := range recs {
		attrs := []any{"pod", s.cfg.NodeID, "peer_uid", r.PeerUID, "keyset", r.Keyset, "version", r.Version, "op", r.Op,
			"ok", r.OK, "from", r.From.UTC().Format(time.RFC3339), "to", r.To.UTC().Format(time.RFC3339)}
		if len(r.Failed) > 0 {
			attrs = append(attrs, "failed", r.Failed)
		}
		s.log.Info("key usage", attrs...)
	}
	if xc == nil || len(recs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg := usageProto(recs)
	err := xc.Report(ctx, msg)
	if status.Code(err) == codes.Unavailable && ctx.Err() == nil {
		// A follower answered, or the leader is changing: a new
		// connection reaches the leader, as a new xDS stream does.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			err = xc.Report(ctx, msg)
		}
	}
	if err != nil {
		s.log.Warn("usage records not reported to the controller; they are in this log only", "records", len(recs), "err", err)
	}
}

// usageProto is the wire form of records.
func usageProto(recs []UsageRecord) []*usagev1.Record {
	out := make([]*usagev1.Record, len(recs))
	for i, r := range recs {
		out[i] = &usagev1.Record{FromUnixMs: r.From.UnixMilli(), ToUnixMs: r.To.UnixMilli(), PeerUid: r.PeerUID, Keyset: r.Keyset,
			Version: r.Version, Op: r.Op, Ok: r.OK, Failed: r.Failed}
	}
	return out
}
