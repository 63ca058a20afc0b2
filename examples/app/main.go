// Command notes is a sample app that encrypts without holding a key: it
// stores notes sealed by its pod's keyshift sidecar, bound to the tenant
// that wrote them, and opens them again on read, whatever key version
// sealed them.
//
//	POST /notes?tenant=acme   (body: the note)  -> 201, {"id": "..."}
//	GET  /notes/ID?tenant=acme                  -> the note, or 404/403
//	GET  /stats                                 -> the traffic loop's counters (JSON)
//	GET  /keyring                               -> the sidecar's Status: keysets, versions, states (JSON)
//	GET  /healthz                               -> 200 while the process serves
//
// With --traffic-interval (or $TRAFFIC_INTERVAL) set, it also exercises the
// sidecar on its own: every interval it seals a random note, opens it again
// and checks the round trip, and every few intervals it opens notes it
// sealed earlier, under every key version it has seen. /stats counts the
// results per operation and per key version and lists recent failures with
// their times, so a test can watch a key rotation or a sidecar restart from
// the app's side.
//
// It finds the sidecar through $KEYSHIFT_SOCKET, which the injector sets.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
	"github.com/keyshift/keyshift/sidecar/client"
)

// store keeps ciphertexts only: a leaked copy of it reveals nothing.
type store struct {
	mu    sync.Mutex
	notes map[string][]byte
}

type app struct {
	keys    *sidecar
	store   *store
	traffic *traffic
	log     *slog.Logger
}

func newApp(keys *sidecar, log *slog.Logger) *app {
	return &app{
		keys:    keys,
		store:   &store{notes: map[string][]byte{}},
		traffic: newTraffic(keys, log),
		log:     log,
	}
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /notes", a.create)
	mux.HandleFunc("GET /notes/{id}", a.read)
	mux.HandleFunc("GET /stats", a.stats)
	mux.HandleFunc("GET /keyring", a.keyring)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	return mux
}

func (a *app) create(w http.ResponseWriter, r *http.Request) {
	tenant := r.URL.Query().Get("tenant")
	if tenant == "" {
		http.Error(w, "tenant query parameter required", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
	ct, _, err := a.keys.encrypt(r.Context(), body, map[string]string{"tenant": tenant})
	if err != nil {
		a.log.Error("encrypt failed", "code", status.Code(err).String())
		http.Error(w, "encryption unavailable", http.StatusServiceUnavailable)
		return
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	a.store.mu.Lock()
	a.store.notes[hex.EncodeToString(id)] = ct
	a.store.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]string{"id": hex.EncodeToString(id)})
}

// keyring shows what the pod's sidecar holds, for people watching a rotation.
func (a *app) keyring(w http.ResponseWriter, r *http.Request) {
	st, err := a.keys.status(r.Context())
	if err != nil {
		http.Error(w, "sidecar unavailable: "+status.Code(err).String(), http.StatusServiceUnavailable)
		return
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(st)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func (a *app) read(w http.ResponseWriter, r *http.Request) {
	a.store.mu.Lock()
	ct, ok := a.store.notes[r.PathValue("id")]
	a.store.mu.Unlock()
	if !ok {
		http.Error(w, "no such note", http.StatusNotFound)
		return
	}
	pt, err := a.keys.decrypt(r.Context(), ct, map[string]string{"tenant": r.URL.Query().Get("tenant")})
	switch status.Code(err) {
	case codes.OK:
		_, _ = w.Write(pt)
	case codes.InvalidArgument: // another tenant's note: the context does not match
		http.Error(w, "not yours", http.StatusForbidden)
	default:
		a.log.Error("decrypt failed", "code", status.Code(err).String())
		http.Error(w, "decryption unavailable", http.StatusServiceUnavailable)
	}
}

func (a *app) stats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.traffic.snapshot())
}

// redialEvery bounds how often the app replaces its sidecar connection.
const redialEvery = time.Second

// sidecar is the app's handle on its pod's sidecar. gRPC reconnects a lost
// connection by itself, but with exponential backoff of up to two minutes,
// and client.Dial takes no gRPC options to cap that. A sidecar container
// that restarts removes and recreates its socket, so after an Unavailable
// error the app dials afresh (at most once per redialEvery): a new
// connection tries at once, and a restart costs about a second of errors.
type sidecar struct {
	path   string // "" means $KEYSHIFT_SOCKET
	keyset string // "" when the sidecar serves one keyset
	mu     sync.Mutex
	c      *client.Client
	dialed time.Time
}

func dialSidecar(path, keyset string) (*sidecar, error) {
	c, err := client.Dial(path)
	if err != nil {
		return nil, err
	}
	return &sidecar{path: path, keyset: keyset, c: c, dialed: time.Now()}, nil
}

func (s *sidecar) api() v1.CryptoClient {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.API()
}

// failed redials after an Unavailable error.
func (s *sidecar) failed(err error) {
	if status.Code(err) != codes.Unavailable {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.dialed) < redialEvery {
		return
	}
	c, err := client.Dial(s.path)
	if err != nil {
		return
	}
	old := s.c
	s.c, s.dialed = c, time.Now()
	time.AfterFunc(10*time.Second, func() { _ = old.Close() }) // let calls in flight finish
}

// status is the sidecar's keyring: keysets, versions and their states (no
// key material: the API never returns any).
func (s *sidecar) status(ctx context.Context) (*v1.StatusResponse, error) {
	r, err := s.api().Status(ctx, &v1.StatusRequest{})
	if err != nil {
		s.failed(err)
	}
	return r, err
}

// encrypt seals plaintext under the primary version and reports which
// version that was.
func (s *sidecar) encrypt(ctx context.Context, plaintext []byte, c map[string]string) ([]byte, uint32, error) {
	r, err := s.api().Encrypt(ctx, &v1.EncryptRequest{Keyset: s.keyset, Plaintext: plaintext, Context: c})
	if err != nil {
		s.failed(err)
		return nil, 0, err
	}
	return r.GetCiphertext(), r.GetVersion(), nil
}

func (s *sidecar) decrypt(ctx context.Context, ciphertext []byte, c map[string]string) ([]byte, error) {
	r, err := s.api().Decrypt(ctx, &v1.DecryptRequest{Ciphertext: ciphertext, Context: c})
	if err != nil {
		s.failed(err)
		return nil, err
	}
	return r.GetPlaintext(), nil
}

func (s *sidecar) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.Close()
}

// Bounds on what the traffic loop keeps.
const (
	maxFailures       = 256 // most recent failures listed in /stats
	samplesPerVersion = 4   // earlier notes kept per key version
	maxVersions       = 16  // key versions kept (the oldest is dropped)
	oldEvery          = 5   // ticks between checks of earlier notes
	callTimeout       = 2 * time.Second
)

// Operation names in /stats.
const (
	opEncrypt    = "encrypt"     // seal a fresh note
	opDecrypt    = "decrypt"     // open it again at once
	opDecryptOld = "decrypt_old" // open a note sealed earlier
)

type opStats struct {
	OK     int64 `json:"ok"`
	Failed int64 `json:"failed"`
}

type failure struct {
	At    time.Time `json:"at"`
	Op    string    `json:"op"`
	Error string    `json:"error"`
}

// stats is the body of GET /stats.
type stats struct {
	OK           int64              `json:"ok"`
	Failed       int64              `json:"failed"`
	ByVersion    map[uint32]int64   `json:"by_version"`     // encrypts per key version
	OldByVersion map[uint32]int64   `json:"old_by_version"` // earlier notes opened, per key version
	Ops          map[string]opStats `json:"ops"`
	LastError    string             `json:"last_error,omitempty"`
	LastErrorAt  time.Time          `json:"last_error_at,omitzero"`
	StartedAt    time.Time          `json:"started_at"`
	FirstOKAt    time.Time          `json:"first_ok_at,omitzero"`
	Failures     []failure          `json:"failures"` // the most recent maxFailures, oldest first
}

type sample struct {
	ct, pt []byte
	ctx    map[string]string
}

// traffic is the loop that exercises the sidecar and the counters it keeps.
type traffic struct {
	keys *sidecar
	log  *slog.Logger

	mu      sync.Mutex
	st      stats
	samples map[uint32][]sample
	seq     uint64
	failing bool
}

func newTraffic(keys *sidecar, log *slog.Logger) *traffic {
	return &traffic{
		keys: keys,
		log:  log,
		st: stats{
			ByVersion:    map[uint32]int64{},
			OldByVersion: map[uint32]int64{},
			Ops:          map[string]opStats{opEncrypt: {}, opDecrypt: {}, opDecryptOld: {}},
			StartedAt:    time.Now().UTC(),
			Failures:     []failure{},
		},
		samples: map[uint32][]sample{},
	}
}

// run ticks every interval until ctx ends.
func (t *traffic) run(ctx context.Context, every time.Duration) {
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		t.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}

// tick seals a random note, opens it again, and every oldEvery ticks opens
// one earlier note of each key version it has kept.
func (t *traffic) tick(ctx context.Context) {
	t.mu.Lock()
	t.seq++
	seq := t.seq
	t.mu.Unlock()

	raw := make([]byte, 16+mrand.IntN(48))
	_, _ = rand.Read(raw)
	note := []byte(hex.EncodeToString(raw))
	c := map[string]string{"tenant": "traffic", "seq": strconv.FormatUint(seq, 10)}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	ct, v, err := t.keys.encrypt(cctx, note, c)
	cancel()
	if t.record(opEncrypt, 0, err) {
		t.mu.Lock()
		t.st.ByVersion[v]++
		t.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		got, err := t.keys.decrypt(cctx, ct, c)
		cancel()
		if err == nil && !bytes.Equal(got, note) {
			err = errors.New("round trip returned other bytes")
		}
		if t.record(opDecrypt, 0, err) {
			t.keep(v, sample{ct: ct, pt: note, ctx: c})
		}
	}
	if seq%oldEvery == 0 {
		t.checkOld(ctx)
	}
}

func (t *traffic) keep(v uint32, s sample) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.samples[v]) < samplesPerVersion {
		t.samples[v] = append(t.samples[v], s)
	}
	if len(t.samples) > maxVersions {
		oldest := v
		for k := range t.samples {
			oldest = min(oldest, k)
		}
		delete(t.samples, oldest)
	}
}

func (t *traffic) checkOld(ctx context.Context) {
	t.mu.Lock()
	picked := make(map[uint32]sample, len(t.samples))
	for v, ss := range t.samples {
		picked[v] = ss[mrand.IntN(len(ss))]
	}
	t.mu.Unlock()
	for v, s := range picked {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		got, err := t.keys.decrypt(cctx, s.ct, s.ctx)
		cancel()
		if err == nil && !bytes.Equal(got, s.pt) {
			err = errors.New("earlier note opened to other bytes")
		}
		t.record(opDecryptOld, v, err)
	}
}

// record counts one operation's outcome and reports whether it succeeded.
// v, when not 0, is the key version of an earlier note opened.
func (t *traffic) record(op string, v uint32, err error) bool {
	now := time.Now().UTC()
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.st.Ops[op]
	if err == nil {
		o.OK++
		t.st.OK++
		if t.st.FirstOKAt.IsZero() {
			t.st.FirstOKAt = now
		}
		if v != 0 {
			t.st.OldByVersion[v]++
		}
		if t.failing && op != opDecryptOld {
			t.failing = false
			t.log.Info("traffic recovered", "op", op, "since", t.st.LastErrorAt)
		}
	} else {
		o.Failed++
		t.st.Failed++
		msg := err.Error()
		if v != 0 {
			msg = fmt.Sprintf("key version %d: %s", v, msg)
		}
		t.st.LastError, t.st.LastErrorAt = msg, now
		if len(t.st.Failures) == maxFailures {
			t.st.Failures = append(t.st.Failures[:0], t.st.Failures[1:]...)
		}
		t.st.Failures = append(t.st.Failures, failure{At: now, Op: op, Error: msg})
		if !t.failing {
			t.failing = true
			t.log.Warn("traffic failing", "op", op, "code", status.Code(err).String(), "version", v)
		}
	}
	t.st.Ops[op] = o
	return err == nil
}

// snapshot copies the counters for /stats.
func (t *traffic) snapshot() stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.st
	s.ByVersion = copyMap(t.st.ByVersion)
	s.OldByVersion = copyMap(t.st.OldByVersion)
	s.Ops = copyMap(t.st.Ops)
	s.Failures = append([]failure{}, t.st.Failures...)
	return s
}

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

type config struct {
	addr            string
	socket          string
	keyset          string
	trafficInterval time.Duration
}

// parseConfig reads flags, each defaulting to its environment variable so a
// Deployment can set either.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	fs := flag.NewFlagSet("notes", flag.ContinueOnError)
	var c config
	fs.StringVar(&c.addr, "addr", or(getenv("ADDR"), ":8080"), "listen address ($ADDR)")
	fs.StringVar(&c.socket, "socket", getenv(client.EnvSocket), "sidecar socket ($"+client.EnvSocket+")")
	fs.StringVar(&c.keyset, "keyset", getenv("KEYSET"), "keyset to encrypt with, when the sidecar serves several ($KEYSET)")
	var every time.Duration
	if s := getenv("TRAFFIC_INTERVAL"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return config{}, fmt.Errorf("TRAFFIC_INTERVAL: %w", err)
		}
		every = d
	}
	fs.DurationVar(&c.trafficInterval, "traffic-interval", every, "seal and open a note this often; 0 turns the loop off ($TRAFFIC_INTERVAL)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if c.trafficInterval < 0 {
		return config{}, errors.New("traffic interval must not be negative")
	}
	return c, nil
}

func run(ctx context.Context, c config, log *slog.Logger) error {
	keys, err := dialSidecar(c.socket, c.keyset)
	if err != nil {
		return err
	}
	defer keys.Close()
	a := newApp(keys, log)
	if c.trafficInterval > 0 {
		go a.traffic.run(ctx, c.trafficInterval)
		log.Info("traffic loop on", "interval", c.trafficInterval)
	}
	srv := &http.Server{Addr: c.addr, Handler: a.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	c, err := parseConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "notes:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c, log); err != nil {
		log.Error("notes", "err", err)
		os.Exit(1)
	}
}

func or(v, def string) string {
	if v != "" {
		return v
	}
	return def
}
