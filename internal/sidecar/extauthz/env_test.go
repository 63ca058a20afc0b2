package extauthz

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation/rotationtest"
	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/internal/testbin"
)

// env is one real sidecar on a real Unix socket, over keyset files under a
// local KMS, whose crypto service ext_authz runs on: the same assembly as
// the binary's (cmd/internal/sidecarcmd).
type env struct {
	t       testing.TB
	dir     string
	files   map[string]string
	keysets *rotationtest.Files
	srv     *sidecar.Server
	cfg     sidecar.Config
	logs    *testbin.SyncBuffer
	cancel  context.CancelFunc
}

// newEnv creates the keysets (v1 primary; "payments" when none are named)
// and starts a sidecar on them.
func newEnv(t testing.TB, names ...string) *env {
	t.Helper()
	if len(names) == 0 {
		names = []string{"payments"}
	}
	// A short directory: socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ks")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, dir: dir, logs: &testbin.SyncBuffer{}}
	e.keysets = rotationtest.NewFiles(t, dir, names...)
	e.files = e.keysets.Paths
	e.cfg = sidecar.Config{
		Socket:      filepath.Join(dir, "ks.sock"),
		MetricsAddr: "127.0.0.1:0",
		Keysets:     maps.Clone(e.files),
		KMS:         kms.Registry{local.Scheme: local.Open},
		Logger:      slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Resync:      time.Hour,
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.srv, err = sidecar.Start(ctx, e.cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	e.cancel = cancel
	t.Cleanup(e.stop)
	select {
	case <-e.srv.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("sidecar not ready after 10s; logs:\n%s", e.logs.String())
	}
	return e
}

// authzConfig completes cfg as cmd/internal/sidecarcmd does: the sidecar's
// logger and registry, and its peer rejection counter.
func (e *env) authzConfig(cfg Config) Config {
	cfg.Logger = e.cfg.Logger
	cfg.Registry = e.srv.Metrics().Registry
	cfg.PeerRefused = func() { e.srv.Metrics().PeerRejected("extauthz") }
	return cfg
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	if err := e.srv.Wait(); err != nil {
		e.t.Errorf("server: %v", err)
	}
	e.cancel = nil
}

func (e *env) keyset(name string) *keyset.Keyset { return e.keysets.Read(name) }

func (e *env) write(name string, ks *keyset.Keyset) { e.keysets.Write(name, ks) }

// rotate adds a pending version, waits until the sidecar has it, promotes
// it and waits again.
func (e *env) rotate(name string) uint32 {
	e.t.Helper()
	n := e.keysets.AddPending(name)
	e.waitFor(func(st sidecar.KeysetStatus) bool { return hasVersion(st, n, "pending") })
	e.keysets.Promote(name, n)
	e.waitFor(func(st sidecar.KeysetStatus) bool { return st.Primary == n })
	return n
}

// revoke marks version n revoked and waits until the sidecar has loaded it.
func (e *env) revoke(name string, n uint32) {
	e.t.Helper()
	e.keysets.Revoke(name, n)
	e.waitFor(func(st sidecar.KeysetStatus) bool { return st.Name == name && hasVersion(st, n, "revoked") })
}

func hasVersion(st sidecar.KeysetStatus, n uint32, state string) bool {
	for _, v := range st.Versions {
		if v.Version == n && v.State == state {
			return true
		}
	}
	return false
}

// waitFor polls the sidecar's status until cond holds for some keyset.
func (e *env) waitFor(cond func(sidecar.KeysetStatus) bool) {
	e.t.Helper()
	noErr := func(string) string { return "" }
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_, sets := e.srv.Service().Status(noErr)
		for _, s := range sets {
			if cond(s) {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, sets := e.srv.Service().Status(noErr)
	e.t.Fatalf("condition not reached in 10s; status %+v\nlogs:\n%s", sets, e.logs.String())
}

func counterValue(t *testing.T, e *env, series string) float64 {
	t.Helper()
	return testbin.MetricValue(t, fmt.Sprintf("http://%s/metrics", e.srv.OpsAddr()), series)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
