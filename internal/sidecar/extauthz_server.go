package sidecar

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
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
)

// ExtAuthzConfig enables the Envoy ext_authz service
// (envoy.service.auth.v3.Authorization). It is off unless Addr or Socket
// is set.
type ExtAuthzConfig struct {
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
	Policy *ExtAuthzPolicy
}

// Enabled reports whether the service should run.
func (c ExtAuthzConfig) Enabled() bool { return c.Addr != "" || c.Socket != "" }

// extAuthzMetrics are the ext_authz series, on the sidecar's registry.
// Labels are route prefixes from the policy and fixed reason words.
type extAuthzMetrics struct {
	checks   *prometheus.CounterVec // route, result (allowed|denied)
	denials  *prometheus.CounterVec // route, reason
	reseals  *prometheus.CounterVec // route, result (ok|error)
	duration prometheus.Histogram
}

func newExtAuthzMetrics(reg prometheus.Registerer) (*extAuthzMetrics, error) {
	m := &extAuthzMetrics{
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
	return c, fmt.Errorf("sidecar: register ext_authz metrics: %w", err)
}

func (m *extAuthzMetrics) observe(d *authzDecision, took time.Duration) {
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

// extAuthzServer adapts the policy core to Envoy's Authorization service:
// it converts the CheckRequest, calls decide and converts the decision.
type extAuthzServer struct {
	authv3.UnimplementedAuthorizationServer
	policy  *ExtAuthzPolicy
	svc     authzCrypto
	rt      *authzRuntime
	metrics *extAuthzMetrics
	log     *slog.Logger
}

// Check answers one Envoy authorization request. It returns a gRPC error
// only when the call itself is canceled; every policy outcome is a
// CheckResponse.
func (s *extAuthzServer) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
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

// extAuthzHealth answers gRPC health checks for Envoy's cluster health
// checker: SERVING once every keyset is loaded.
type extAuthzHealth struct {
	healthpb.UnimplementedHealthServer
	ready func() bool
}

func (h extAuthzHealth) Check(_ context.Context, r *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
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
		return fmt.Errorf("sidecar: ext_authz address %q: %w (write 127.0.0.1:9191)", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("sidecar: ext_authz address %q is not a loopback address; only the pod's own proxy may call it (write 127.0.0.1:PORT)", addr)
}

// startExtAuthz serves the ext_authz API on cfg.Addr and/or cfg.Socket
// until ctx is canceled or stop is called. addr is the TCP address bound
// ("" when TCP is off). With both disabled it does nothing.
func startExtAuthz(ctx context.Context, svc *Service, m *Metrics, log *slog.Logger, cfg ExtAuthzConfig) (addr string, stop func(), err error) {
	if !cfg.Enabled() {
		return "", func() {}, nil
	}
	if cfg.Policy == nil {
		return "", nil, fmt.Errorf("%w: ext_authz is enabled but no policy was given (set --ext-authz-policy FILE)", ErrExtAuthzPolicy)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// A policy built in Go rather than parsed gets the same checks (and its
	// route index).
	if err := cfg.Policy.validate(); err != nil {
		return "", nil, err
	}
	for _, ks := range cfg.Policy.Keysets() {
		if !slices.Contains(svc.keysets, ks) {
			return "", nil, fmt.Errorf("%w: the policy uses keyset %q, which this sidecar does not serve (it serves %v); add --keyset %s=PATH",
				ErrExtAuthzPolicy, ks, svc.keysets, ks)
		}
	}
	if cfg.Addr != "" {
		if err := checkLoopback(cfg.Addr); err != nil {
			return "", nil, err
		}
	}
	em, err := newExtAuthzMetrics(m.Registry)
	if err != nil {
		return "", nil, err
	}
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	if cfg.Addr != "" {
		l, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			return "", nil, fmt.Errorf("sidecar: ext_authz listener: %w", err)
		}
		listeners = append(listeners, l)
		addr = l.Addr().String()
	}
	if cfg.Socket != "" {
		mode := cfg.SocketMode
		if mode == 0 {
			mode = 0o660
		}
		ul, err := listenUnix(cfg.Socket, mode)
		if err != nil {
			closeAll()
			return "", nil, fmt.Errorf("sidecar: ext_authz socket: %w", err)
		}
		listeners = append(listeners, ul)
	}
	if cfg.AllowedUIDs != nil {
		allow := uidAllowlist{}
		for _, u := range cfg.AllowedUIDs {
			allow[u] = true
		}
		for i, l := range listeners {
			listeners[i] = &uidListener{Listener: l, allow: allow, metrics: m, log: log, procNet: "/proc/net"}
		}
	}

	gs := grpc.NewServer(grpc.NumStreamWorkers(uint32(4 * runtime.GOMAXPROCS(0))))
	authv3.RegisterAuthorizationServer(gs, &extAuthzServer{policy: cfg.Policy, svc: svc, rt: newAuthzRuntime(), metrics: em, log: log})
	healthpb.RegisterHealthServer(gs, extAuthzHealth{ready: svc.Ready})
	var wg sync.WaitGroup
	for _, l := range listeners {
		wg.Add(1)
		go func() { defer wg.Done(); _ = gs.Serve(l) }()
	}
	log.Info("ext_authz listening", "addr", addr, "socket", cfg.Socket, "default", cfg.Policy.Default,
		"routes", len(cfg.Policy.Routes), "keysets", cfg.Policy.Keysets(), "allowed_uids", allowedString(cfg.AllowedUIDs))

	var once sync.Once
	done := make(chan struct{})
	stop = func() {
		once.Do(func() {
			close(done)
			stopGRPC(gs, 5*time.Second)
			closeAll()
			wg.Wait()
			log.Info("ext_authz stopped")
		})
	}
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-done:
		}
	}()
	return addr, stop, nil
}

// uidListener drops connections from peers whose UID is not allowed,
// before any gRPC byte is read. On a Unix socket the kernel reports the
// peer (SO_PEERCRED); on loopback TCP the peer's socket is looked up in
// /proc/net/tcp{,6}, which lists its owner's UID. A peer that cannot be
// identified is refused.
type uidListener struct {
	net.Listener
	allow   uidAllowlist
	metrics *Metrics
	log     *slog.Logger
	procNet string // "/proc/net"; tests may point elsewhere
}

func (l *uidListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := l.peerUID(c)
		if err == nil && l.allow.allows(uid) {
			return c, nil
		}
		l.metrics.peerRejected("extauthz")
		l.log.Warn("ext_authz connection refused", "uid", uid, "known", err == nil, "err", err,
			"hint", "add the proxy's UID to --ext-authz-allowed-uids")
		c.Close()
	}
}

func (l *uidListener) peerUID(c net.Conn) (uint32, error) {
	if tc, ok := c.(*net.TCPConn); ok {
		return tcpPeerUID(l.procNet, tc.LocalAddr().(*net.TCPAddr), tc.RemoteAddr().(*net.TCPAddr))
	}
	cred, err := peerCred(c)
	return cred.UID, err
}

// tcpPeerUID finds the UID owning the other end of a loopback TCP
// connection: the socket whose local address is our remote and whose remote
// address is our local, as the kernel lists it in /proc/net/tcp or tcp6
// (addresses as native-endian 32-bit words in hex, ports in hex).
func tcpPeerUID(procNet string, local, remote *net.TCPAddr) (uint32, error) {
	file, width := "tcp", 4
	if local.IP.To4() == nil {
		file, width = "tcp6", 16
	}
	want := func(a *net.TCPAddr) string {
		ip := a.IP.To16()
		if width == 4 {
			ip = a.IP.To4()
		}
		var b strings.Builder
		for i := 0; i < len(ip); i += 4 {
			fmt.Fprintf(&b, "%08X", binary.NativeEndian.Uint32(ip[i:i+4]))
		}
		fmt.Fprintf(&b, ":%04X", a.Port)
		return b.String()
	}
	peerLocal, peerRemote := want(remote), want(local)
	data, err := os.ReadFile(filepath.Join(procNet, file))
	if err != nil {
		return 0, fmt.Errorf("sidecar: identify ext_authz TCP peer: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[1] != peerLocal || f[2] != peerRemote {
			continue
		}
		uid, err := strconv.ParseUint(f[7], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("sidecar: identify ext_authz TCP peer: bad uid %q in %s", f[7], file)
		}
		return uint32(uid), nil
	}
	return 0, fmt.Errorf("sidecar: identify ext_authz TCP peer: %s not in %s (not a local process?)", peerLocal, file)
}
