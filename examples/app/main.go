// Command notes is a sample app that encrypts without holding a key: it
// stores notes sealed by its pod's keyshift sidecar, bound to the tenant
// that wrote them, and opens them again on read, whatever key version
// sealed them.
//
//	POST /notes?tenant=acme   (body: the note)  -> 201, {"id": "..."}
//	GET  /notes/ID?tenant=acme                  -> the note, or 404/403
//
// It finds the sidecar through $KEYSHIFT_SOCKET, which the injector sets.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/sidecar/client"
)

// store keeps ciphertexts only: a leaked copy of it reveals nothing.
type store struct {
	mu    sync.Mutex
	notes map[string][]byte
}

type app struct {
	keys  *client.Client
	store *store
	log   *slog.Logger
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /notes", a.create)
	mux.HandleFunc("GET /notes/{id}", a.read)
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
	ct, err := a.keys.Encrypt(r.Context(), body, map[string]string{"tenant": tenant})
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

func (a *app) read(w http.ResponseWriter, r *http.Request) {
	a.store.mu.Lock()
	ct, ok := a.store.notes[r.PathValue("id")]
	a.store.mu.Unlock()
	if !ok {
		http.Error(w, "no such note", http.StatusNotFound)
		return
	}
	pt, err := a.keys.Decrypt(r.Context(), ct, map[string]string{"tenant": r.URL.Query().Get("tenant")})
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

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	keys, err := client.Dial("") // $KEYSHIFT_SOCKET
	if err != nil {
		log.Error("no sidecar", "err", err)
		os.Exit(1)
	}
	defer keys.Close()
	a := &app{keys: keys, store: &store{notes: map[string][]byte{}}, log: log}
	srv := &http.Server{Addr: envOr("ADDR", ":8080"), Handler: a.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serve", "err", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
