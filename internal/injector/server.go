package injector

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

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServerConfig is everything the admission server needs; cmd/keyshift
// fills it from flags.
type ServerConfig struct {
	// Addr is the HTTPS address the API server calls, such as ":8443".
	Addr string
	// OpsAddr serves /healthz, /readyz and /metrics over plain HTTP for the
	// kubelet and Prometheus; "" disables it (they stay on Addr too).
	OpsAddr string
	// CertFile and KeyFile are the serving certificate (chain) and key,
	// reread whenever they change.
	CertFile, KeyFile string
	// CertPoll rereads the TLS files this often even without a file event,
	// or, with SelfSigned, rereads the Secret and checks the webhook's
	// caBundle this often (default one minute).
	CertPoll time.Duration
	// SelfSigned, when set, replaces CertFile and KeyFile: the injector
	// makes and renews its own CA and serving certificate in a Secret and
	// keeps the webhook's caBundle in step (for clusters without
	// cert-manager).
	SelfSigned *SelfSignedConfig
	// Injector is what gets injected.
	Injector Config
	// MaxRequestBytes bounds an AdmissionReview (default
	// DefaultMaxRequestBytes).
	MaxRequestBytes int64
	// ShutdownDelay is how long /readyz fails before the listeners close,
	// so endpoints drop this replica before it stops answering. Zero means
	// no delay.
	ShutdownDelay time.Duration
	// ShutdownTimeout bounds the wait for in-flight requests (default 10s).
	ShutdownTimeout time.Duration
	// Logger receives structured logs; it never gets a raw object.
	Logger *slog.Logger
	// Metrics is the metric set to record into (default NewMetrics()).
	Metrics *Metrics
}

// certSource is where the serving certificate comes from: files on disk
// (certReloader) or the self-managed Secret (selfCert).
type certSource interface {
	// GetCertificate is the tls.Config hook; it must not block.
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// run keeps the certificate current until ctx ends.
	run(ctx context.Context)
	// notReady says why the API server cannot use this replica yet, or "".
	notReady() string
}

// Server is a running admission server.
type Server struct {
	addr, opsAddr net.Addr
	ready         atomic.Bool
	done          chan struct{}
	err           error
}

// Start checks cfg, loads the certificate, listens, and serves until ctx is
// canceled. It returns once the listeners are open. With SelfSigned it
// first gets or creates the TLS Secret, retrying for its StartTimeout
// while the API server cannot be reached.
func Start(ctx context.Context, cfg ServerConfig) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	log := cfg.Logger
	h, err := NewHandler(cfg.Injector, log, cfg.Metrics, cfg.MaxRequestBytes)
	if err != nil {
		return nil, err
	}
	var certs certSource
	certMode := "files"
	if cfg.SelfSigned != nil {
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			return nil, fmt.Errorf("%w: TLS files and a self-managed certificate exclude each other; pick one (--cert-mode)", ErrConfig)
		}
		certMode = "self"
		certs, err = newSelfCert(ctx, *cfg.SelfSigned, cfg.CertPoll, log, cfg.Metrics)
	} else {
		certs, err = newCertReloader(cfg.CertFile, cfg.KeyFile, cfg.CertPoll, log, cfg.Metrics)
	}
	if err != nil {
		return nil, err
	}

	s := &Server{done: make(chan struct{})}
	ops := func(mux *http.ServeMux) {
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte("ok\n"))
		})
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			if !s.ready.Load() {
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
				return
			}
			if why := certs.notReady(); why != "" {
				http.Error(w, why, http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics.Registry, promhttp.HandlerOpts{}))
	}
	mux := http.NewServeMux()
	mux.Handle("/mutate", h)
	ops(mux)
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	srv := &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: certs.GetCertificate,
		},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          errLog,
	}
	l, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("injector: listen %s: %w", cfg.Addr, err)
	}
	s.addr = l.Addr()
	var opsSrv *http.Server
	var opsL net.Listener
	if cfg.OpsAddr != "" {
		if opsL, err = net.Listen("tcp", cfg.OpsAddr); err != nil {
			l.Close()
			return nil, fmt.Errorf("injector: listen %s: %w", cfg.OpsAddr, err)
		}
		s.opsAddr = opsL.Addr()
		opsMux := http.NewServeMux()
		ops(opsMux)
		opsSrv = &http.Server{Handler: opsMux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: errLog}
	}

	watchCtx, stopWatch := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var errMu sync.Mutex
	serveErr := func(err error) {
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			errMu.Lock()
			s.err = errors.Join(s.err, err)
			errMu.Unlock()
		}
	}
	wg.Go(func() { certs.run(watchCtx) })
	wg.Go(func() { serveErr(srv.ServeTLS(l, "", "")) })
	if opsSrv != nil {
		wg.Go(func() { serveErr(opsSrv.Serve(opsL)) })
	}
	s.ready.Store(true)
	log.Info("injector listening", "addr", s.addr.String(), "ops", cfg.OpsAddr, "cert_mode", certMode, "mode", string(h.cfg.Mode),
		"image", h.cfg.Image, "max_request_bytes", h.max)

	go func() {
		<-ctx.Done()
		s.ready.Store(false)
		log.Info("injector shutting down", "delay", cfg.ShutdownDelay)
		if cfg.ShutdownDelay > 0 {
			time.Sleep(cfg.ShutdownDelay)
		}
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		serveErr(srv.Shutdown(sctx))
		if opsSrv != nil {
			serveErr(opsSrv.Shutdown(sctx))
		}
		stopWatch()
		wg.Wait()
		log.Info("injector stopped")
		close(s.done)
	}()
	return s, nil
}

// Run starts the server and blocks until ctx is canceled and the server
// has drained.
func Run(ctx context.Context, cfg ServerConfig) error {
	s, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	return s.Wait()
}

// Addr is the HTTPS address being served (useful with port 0).
func (s *Server) Addr() string { return s.addr.String() }

// OpsAddr is the plain-HTTP ops address, or "" when disabled.
func (s *Server) OpsAddr() string {
	if s.opsAddr == nil {
		return ""
	}
	return s.opsAddr.String()
}

// Wait blocks until the server has shut down and returns any serve error.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}
