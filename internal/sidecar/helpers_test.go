package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/rotationtest"
	"github.com/keyshift/keyshift/internal/testbin"
	"github.com/keyshift/keyshift/sidecar/client"
)

// env is one real sidecar on a real Unix socket with a local KMS and keyset
// files in a temporary directory.
type env struct {
	t       testing.TB
	dir     string
	kekPath string
	kms     *local.KMS
	files   map[string]string
	names   []string
	keysets *rotationtest.Files
	srv     *Server
	cfg     Config
	logs    *testbin.SyncBuffer
	client  *client.Client
	cancel  context.CancelFunc
}

type envOpt func(*env)

func withAllowed(uids []uint32) envOpt { return func(e *env) { e.cfg.AllowedUIDs = uids } }
func withKeysets(names ...string) envOpt {
	return func(e *env) { e.names = names }
}
func withoutWait() envOpt { return func(e *env) { e.cfg.Resync = -1 } }

// newEnv creates keysets (v1 primary) and starts a sidecar on them.
func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	// A short directory: socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ks")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, dir: dir, logs: &testbin.SyncBuffer{}, names: []string{"payments"}}
	e.cfg = Config{
		Socket:      filepath.Join(dir, "ks.sock"),
		MetricsAddr: "127.0.0.1:0",
		KMS:         kms.Registry{local.Scheme: local.Open},
		Logger:      slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Resync:      time.Hour,
	}
	wait := true
	for _, o := range opts {
		o(e)
	}
	if e.cfg.Resync < 0 {
		wait, e.cfg.Resync = false, time.Hour
	}
	e.keysets = rotationtest.NewFiles(t, dir, e.names...)
	e.files, e.kms, e.kekPath = e.keysets.Paths, e.keysets.KMS, e.keysets.KEKPath
	e.cfg.Keysets = maps.Clone(e.files)
	e.start()
	if wait {
		e.waitReady()
	}
	return e
}

func (e *env) start() {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := Start(ctx, e.cfg)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	e.srv, e.cancel = srv, cancel
	var opts []client.Option
	if len(e.files) == 1 {
		for n := range e.files {
			opts = append(opts, client.WithKeyset(n))
		}
	}
	c, err := client.Dial(e.cfg.Socket, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.client = c
	e.t.Cleanup(e.stop)
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.client.Close()
	e.cancel()
	if err := e.srv.Wait(); err != nil {
		e.t.Errorf("server: %v", err)
	}
	e.cancel = nil
}

func (e *env) waitReady() {
	e.t.Helper()
	select {
	case <-e.srv.Ready():
	case <-time.After(10 * time.Second):
		e.t.Fatalf("sidecar not ready after 10s; logs:\n%s", e.logs.String())
	}
}

// hideKEK takes the local KMS's KEK file away (the KMS is down) and
// returns what puts it back.
func (e *env) hideKEK() (restore func()) {
	e.t.Helper()
	hidden := e.kekPath + ".away"
	if err := os.Rename(e.kekPath, hidden); err != nil {
		e.t.Fatal(err)
	}
	return func() {
		e.t.Helper()
		if err := os.Rename(hidden, e.kekPath); err != nil {
			e.t.Fatal(err)
		}
	}
}

// restartWithoutKMS restarts the sidecar with its KMS down and waits until
// it says so; the returned function brings the KMS back.
func (e *env) restartWithoutKMS() (restore func()) {
	e.t.Helper()
	e.stop()
	restore = e.hideKEK()
	e.start()
	e.waitFor(func(st KeysetStatus) bool { return strings.Contains(st.LastError, "KEK file does not exist") })
	return restore
}

// keyset reads the current document of name.
func (e *env) keyset(name string) *keyset.Keyset { return e.keysets.Read(name) }

func (e *env) write(name string, ks *keyset.Keyset) { e.keysets.Write(name, ks) }

// rotate adds a pending version to the file, waits until the sidecar has
// it, then promotes it and waits again.
func (e *env) rotate(name string) uint32 {
	e.t.Helper()
	n := e.keysets.AddPending(name)
	e.waitFor(func(st KeysetStatus) bool { return hasVersion(st, n, "pending") })
	e.keysets.Promote(name, n)
	e.waitFor(func(st KeysetStatus) bool { return st.Primary == n })
	return n
}

// revoke marks version n of name revoked in the file and waits until the
// sidecar has loaded it so.
func (e *env) revoke(name string, n uint32) {
	e.t.Helper()
	e.keysets.Revoke(name, n)
	e.waitFor(func(st KeysetStatus) bool { return st.Name == name && hasVersion(st, n, "revoked") })
}

func hasVersion(st KeysetStatus, n uint32, state string) bool {
	for _, v := range st.Versions {
		if v.Version == n && v.State == state {
			return true
		}
	}
	return false
}

// waitFor polls the service's status until cond holds for some keyset.
func (e *env) waitFor(cond func(KeysetStatus) bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_, sets := e.srv.Service().Status(e.srv.lastError)
		for _, s := range sets {
			if cond(s) {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, sets := e.srv.Service().Status(e.srv.lastError)
	e.t.Fatalf("condition not reached in 10s; status %+v\nlogs:\n%s", sets, e.logs.String())
}

// httpClient speaks HTTP/1.1 over the sidecar socket, as curl --unix-socket does.
func (e *env) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.cfg.Socket)
	}}, Timeout: 10 * time.Second}
}

// postJSON posts body to the HTTP/JSON API on the socket and returns the
// status and the decoded JSON body.
func (e *env) postJSON(path, body string) (int, map[string]any) {
	e.t.Helper()
	resp, err := e.httpClient().Post("http://keyshift"+path, "application/json", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		e.t.Fatalf("%s: body %q is not JSON", path, b)
	}
	return resp.StatusCode, m
}

// metricsURL is the ops listener's base URL.
func (e *env) metricsURL() string {
	return fmt.Sprintf("http://%s", e.srv.OpsAddr())
}

func kmsWrapped(v keyset.Version) kms.WrappedKey {
	return kms.WrappedKey{Ciphertext: v.WrappedKey, KEKVersion: v.KEKVersion}
}

// startSidecar starts a real sidecar on cfg and a client on its socket;
// both stop when the test ends.
func startSidecar(tb testing.TB, cfg Config) (*Server, *client.Client) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, cfg)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	c, err := client.Dial(cfg.Socket)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(); cancel(); s.Wait() })
	return s, c
}

// nextVersion returns the keyset file at path with a new pending version
// generated through reg; the file itself is left as it is.
func nextVersion(tb testing.TB, reg kms.Registry, path string) *keyset.Keyset {
	tb.Helper()
	ks, err := keyset.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	w, err := reg.Open(context.Background(), ks.KMS)
	if err != nil {
		tb.Fatal(err)
	}
	next, err := rotation.AddVersion(context.Background(), w, ks, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	return next
}
