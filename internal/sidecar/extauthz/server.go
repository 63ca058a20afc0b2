package extauthz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/socket"
)

// Config enables the Envoy ext_authz service
// (envoy.service.auth.v3.Authorization). It is off unless Addr or Socket
// is set.
type Config struct {
	// Addr is a loopback TCP address such as "127.0.0.1:9191" ("" disables
	// TCP). Only the pod's own proxy should reach it, so other hosts are
	// refused.
	Addr string
	// Socket is a Unix socket path ("" disables it), typically in the
	// volume the proxy container shares with the sidecar.
	Socket string
	// SocketMode is the socket file's mode (0660 by default).
	SocketMode os.FileMode
	// AllowedUIDs are the peer UIDs that may connect, on the socket
	// (SO_PEERCRED) and on the TCP port (owner of the peer socket in
	// /proc/net/tcp): Istio's proxy runs as 1337, Envoy's image as 101. Nil
	// allows any local process, which can then use the service to decrypt
	// the policy's cookies and headers: set it.
	AllowedUIDs []uint32
	// Policy says what to check per route; required when enabled.
	Policy *Policy
	// Logger receives structured logs; it never gets tokens nor plaintext.
	Logger *slog.Logger
	// Registry takes the ext_authz metrics (the sidecar's registry, so one
	// /metrics serves both); a private registry when nil.
	Registry prometheus.Registerer
	// PeerRefused, if set, is called for each connection AllowedUIDs
	// refuses (the sidecar counts it in keyshift_peer_rejections_total).
	PeerRefused func()
}

// Enabled reports whether the service should run.
func (c Config) Enabled() bool { return c.Addr != "" || c.Socket != "" }

// metrics are the ext_authz series, on the sidecar's registry.
// Labels are route prefixes from the policy and fixed reason words.
type metrics struct {
	checks   *prometheus.CounterVec // route, result (allowed|denied)
	denials  *prometheus.CounterVec // route, reason
	reseals  *prometheus.CounterVec // route, result (ok|error)
	duration prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_extauthz_checks_total", Help: "ext_authz Check calls by policy route and result (allowed or denied).",
		}, []string{"route", "result"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_extauthz_denials_total", Help: "ext_authz denials by policy route and reason (the x-keyshift-denied value).",
		}, []string{"route", "reason"}),
		reseals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyshift_extauthz_reseals_total", Help: "Values resealed under the primary version and sent back to clients, by route and result.",
		}, []string{"route", "result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keyshift_extauthz_check_duration_seconds", Help: "Time spent deciding one ext_authz Check.",
			Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2},
		}),
	}
	var err error
	if m.checks, err = registerOnce(reg, m.checks); err != nil {
		return nil, err
	}
	if m.denials, err = registerOnce(reg, m.denials); err != nil {
		return nil, err
	}
	if m.reseals, err = registerOnce(reg, m.reseals); err != nil {
		return nil, err
	}
	if m.duration, err = registerOnce(reg, m.duration); err != nil {
		return nil, err
	}
	return m, nil
}

// registerOnce registers c, or returns the identical collector already
// registered (a second ext_authz server on the same registry).
func registerOnce[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("extauthz: register metrics: %w", err)
}

func (m *metrics) observe(d *authzDecision, took time.Duration) {
	m.duration.Observe(took.Seconds())
	route := d.route
	if route == "" {
		route = "default"
	}
	if !d.allowed {
		m.checks.WithLabelValues(route, "denied").Inc()
		m.denials.WithLabelValues(route, d.reason).Inc()
		return
	}
	m.checks.WithLabelValues(route, "allowed").Inc()
	if d.resealed > 0 {
		m.reseals.WithLabelValues(route, "ok").Add(float64(d.resealed))
	}
	if d.resealErrs > 0 {
		m.reseals.WithLabelValues(route, "error").Add(float64(d.resealErrs))
	}
}

// server adapts the policy core to Envoy's Authorization service:
// it converts the CheckRequest, calls decide and converts the decision.
type server struct {
	authv3.UnimplementedAuthorizationServer
	policy  *Policy
	svc     Crypto
	rt      *authzRuntime
	metrics *metrics
	log     *slog.Logger
}

// Check answers one Envoy authorization request. It returns a gRPC error
// only when the call itself is canceled; every policy outcome is a
// CheckResponse.
func (s *server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	r := toAuthzRequest(req)
	d := s.policy.decide(ctx, s.svc, s.rt, r)
	s.metrics.observe(&d, time.Since(start))
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	switch {
	case d.reason == "internal" || d.reason == "not_ready" || d.reason == reasonBadPlaintext || d.reason == reasonNonceFull:
		s.log.Warn("ext_authz check failed on the sidecar side", "request_id", r.id, "decision", d)
	case d.resealErrs > 0:
		s.log.Warn("ext_authz reseal failed; request allowed with its old value", "request_id", r.id, "decision", d)
	case s.log.Enabled(ctx, slog.LevelDebug):
		s.log.Debug("ext_authz check", "request_id", r.id, "method", r.method, "decision", d)
	}
	return toCheckResponse(&d), nil
}

// toAuthzRequest reads the HTTP attributes Envoy sends: lowercase header
// names (in headers, or header_map when the filter sets encode_raw_headers),
// cookies joined into one "cookie" header, and the :path, :method and
// :authority pseudo-headers that also fill path, method and host.
func toAuthzRequest(req *authv3.CheckRequest) *authzRequest {
	h := req.GetAttributes().GetRequest().GetHttp()
	r := &authzRequest{method: h.GetMethod(), path: h.GetPath(), authority: h.GetHost(), id: h.GetId(), headers: h.GetHeaders()}
	if hm := h.GetHeaderMap().GetHeaders(); len(r.headers) == 0 && len(hm) > 0 {
		r.headers = make(map[string]string, len(hm))
		for _, hv := range hm {
			k, v := strings.ToLower(hv.GetKey()), string(hv.GetRawValue())
			if v == "" {
				v = hv.GetValue()
			}
			if prev, ok := r.headers[k]; ok {
				sep := ","
				if k == "cookie" {
					sep = "; "
				}
				v = prev + sep + v
			}
			r.headers[k] = v
		}
	}
	if r.headers == nil {
		r.headers = map[string]string{}
	}
	if r.method == "" {
		r.method = r.headers[":method"]
	}
	if r.path == "" {
		r.path = r.headers[":path"]
	}
	if r.authority == "" {
		r.authority = r.headers[":authority"]
	}
	return r
}

func toCheckResponse(d *authzDecision) *authv3.CheckResponse {
	if d.allowed {
		ok := &authv3.OkHttpResponse{HeadersToRemove: d.remove}
		for _, h := range d.upstream {
			ok.Headers = append(ok.Headers, headerOption(h, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD))
		}
		for _, h := range d.downstream {
			// Added as separate entries: several Set-Cookie must never be
			// folded into one comma-joined value.
			ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, headerOption(h, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD))
		}
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok}}
	}
	code := codes.PermissionDenied
	switch {
	case d.status == 503:
		code = codes.Unavailable
	case d.status >= 500:
		code = codes.Internal
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code), Message: d.reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(d.status)},
			Headers: []*corev3.HeaderValueOption{
				headerOption(headerKV{denyHeader, d.reason}, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
				headerOption(headerKV{"content-type", "text/plain; charset=utf-8"}, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
			},
			Body: "keyshift: request denied (" + d.reason + ")\n",
		}},
	}
}

func headerOption(h headerKV, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: h.name, Value: h.value}, AppendAction: action}
}

// healthServer answers gRPC health checks for Envoy's cluster health
// checker: SERVING once every keyset is loaded.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	ready func() bool
}

func (h healthServer) Check(_ context.Context, r *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	switch r.GetService() {
	case "", authv3.Authorization_ServiceDesc.ServiceName:
	default:
		return nil, status.Errorf(codes.NotFound, "unknown service %q", r.GetService())
	}
	if h.ready() {
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING}, nil
}

// checkLoopback refuses a TCP address that is not on the loopback
// interface: the ext_authz port decrypts for whoever calls it.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("extauthz: address %q: %w (write 127.0.0.1:9191)", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("extauthz: address %q is not a loopback address; only the pod's own proxy may call it (write 127.0.0.1:PORT)", addr)
}

// Server is a running ext_authz service.
type Server struct {
	addr string
	stop func()
	done chan struct{}
}

// Addr is the loopback TCP address bound, or "" when TCP is off.
func (s *Server) Addr() string { return s.addr }

// Stop stops serving, letting checks in flight finish for up to 5s. It is
// also called when Start's ctx is canceled.
func (s *Server) Stop() { s.stop() }

// Wait blocks until the service has stopped.
func (s *Server) Wait() { <-s.done }

// Start serves the ext_authz API on cfg.Addr and/or cfg.Socket over c
// until ctx is canceled or Stop is called. With both disabled it serves
// nothing and its Server is already stopped.
func Start(ctx context.Context, cfg Config, c Crypto) (*Server, error) {
	done := make(chan struct{})
	if !cfg.Enabled() {
		close(done)
		return &Server{stop: func() {}, done: done}, nil
	}
	if cfg.Policy == nil {
		return nil, fmt.Errorf("%w: ext_authz is enabled but no policy was given (set --ext-authz-policy FILE)", ErrPolicy)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// A policy built in Go rather than parsed gets the same checks (and its
	// route index).
	if err := cfg.Policy.validate(); err != nil {
		return nil, err
	}
	served := c.Keysets()
	for _, ks := range cfg.Policy.Keysets() {
		if !slices.Contains(served, ks) {
			return nil, fmt.Errorf("%w: the policy uses keyset %q, which this sidecar does not serve (it serves %v); add --keyset %s=PATH",
				ErrPolicy, ks, served, ks)
		}
	}
	if cfg.Addr != "" {
		if err := checkLoopback(cfg.Addr); err != nil {
			return nil, err
		}
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	em, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	addr := ""
	if cfg.Addr != "" {
		l, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("extauthz: listener: %w", err)
		}
		listeners = append(listeners, l)
		addr = l.Addr().String()
	}
	if cfg.Socket != "" {
		mode := cfg.SocketMode
		if mode == 0 {
			mode = 0o660
		}
		ul, err := socket.Listen(cfg.Socket, mode)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("extauthz: socket: %w", err)
		}
		listeners = append(listeners, ul)
	}
	if cfg.AllowedUIDs != nil {
		allow := socket.NewAllowlist(cfg.AllowedUIDs)
		refused := func(uid uint32, known bool, err error) {
			if cfg.PeerRefused != nil {
				cfg.PeerRefused()
			}
			log.Warn("ext_authz connection refused", "uid", uid, "known", known, "err", err,
				"hint", "add the proxy's UID to --ext-authz-allowed-uids")
		}
		for i, l := range listeners {
			listeners[i] = socket.Guard(l, allow, refused)
		}
	}

	gs := grpc.NewServer(grpc.NumStreamWorkers(uint32(4 * runtime.GOMAXPROCS(0))))
	authv3.RegisterAuthorizationServer(gs, &server{policy: cfg.Policy, svc: c, rt: newAuthzRuntime(), metrics: em, log: log})
	healthpb.RegisterHealthServer(gs, healthServer{ready: c.Ready})
	var wg sync.WaitGroup
	for _, l := range listeners {
		wg.Add(1)
		go func() { defer wg.Done(); _ = gs.Serve(l) }()
	}
	log.Info("ext_authz listening", "addr", addr, "socket", cfg.Socket, "default", cfg.Policy.Default,
		"routes", len(cfg.Policy.Routes), "keysets", cfg.Policy.Keysets(), "allowed_uids", socket.Describe(cfg.AllowedUIDs))

	var once sync.Once
	stopped := make(chan struct{})
	stop := func() {
		once.Do(func() {
			close(stopped)
			socket.StopGRPC(gs, 5*time.Second)
			closeAll()
			wg.Wait()
			log.Info("ext_authz stopped")
			close(done)
		})
	}
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-stopped:
		}
	}()
	return &Server{addr: addr, stop: stop, done: done}, nil
}
