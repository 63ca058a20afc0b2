package sidecar

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/kms/vault/vaulttest"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/testbin"
	"github.com/keyshift/keyshift/sidecar/client"
)

// vaultEnv is a real Vault dev server with a Transit key, a keyset wrapped
// by it, and the environment the vault-transit backend reads.
type vaultEnv struct {
	vault  *vaulttest.Server
	dir    string
	ksPath string
	uri    string
}

func newVaultEnv(t *testing.T) *vaultEnv {
	v := vaulttest.Start(t)
	v.CreateKey("keyshift", true)
	t.Setenv("VAULT_ADDR", v.Addr)
	t.Setenv("VAULT_TOKEN", v.TokenWithPolicy("1h"))
	dir, err := os.MkdirTemp("", "ksv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &vaultEnv{vault: v, dir: dir, ksPath: filepath.Join(dir, "ks", "keyset.json"), uri: "vault-transit://transit/keyshift"}
	os.Mkdir(filepath.Dir(e.ksPath), 0o755)
	ctx := context.Background()
	w, err := providers.Registry(nil).Open(ctx, e.uri)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := rotation.Create(ctx, w, "payments", e.uri, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := keyset.WriteFile(e.ksPath, ks); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *vaultEnv) start(t *testing.T, logs *testbin.SyncBuffer) (*Server, *client.Client) {
	return startSidecar(t, Config{Socket: filepath.Join(e.dir, "s.sock"), Keysets: map[string]string{"payments": e.ksPath},
		KMS: providers.Registry(nil), KMSTimeout: 500 * time.Millisecond, MetricsAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
}

func (e *vaultEnv) nextVersion(t *testing.T) *keyset.Keyset {
	return nextVersion(t, providers.Registry(nil), e.ksPath)
}

// Vault goes away while the sidecar runs: traffic continues from memory
// with zero failures; a new keyset version waits, retried with backoff,
// and loads as soon as Vault answers again. No KMS call is on the hot path.
func TestVaultOutageWhileRunning(t *testing.T) {
	e := newVaultEnv(t)
	logs := &testbin.SyncBuffer{}
	s, c := e.start(t, logs)
	<-s.Ready()
	next := e.nextVersion(t) // generated while Vault is up

	var stop atomic.Bool
	var ops, fails atomic.Int64
	var wg sync.WaitGroup
	ctx := ctxT(t)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ct, err := c.Encrypt(ctx, []byte("during the outage"), nil)
				if err == nil {
					_, err = c.Decrypt(ctx, ct, nil)
				}
				ops.Add(1)
				if err != nil {
					fails.Add(1)
				}
			}
		}()
	}
	e.vault.Signal(syscall.SIGSTOP) // Vault hangs: every call times out
	keyset.WriteFile(e.ksPath, next)
	waitUntil(t, func() bool { return strings.Contains(s.lastError("payments"), "unavailable") }, "load of v2 fails as unavailable")
	time.Sleep(300 * time.Millisecond)
	e.vault.Signal(syscall.SIGCONT)
	waitUntil(t, func() bool { return loaded(s, 2) }, "v2 loads once Vault is back, without a file change")
	stop.Store(true)
	wg.Wait()
	if fails.Load() != 0 || ops.Load() < 50 {
		t.Fatalf("%d calls, %d failed during the Vault outage", ops.Load(), fails.Load())
	}
}

// Vault is away when the sidecar starts: it serves UNAVAILABLE and is not
// ready (but live), retries, and becomes ready when Vault answers.
func TestVaultDownAtStartup(t *testing.T) {
	e := newVaultEnv(t)
	e.vault.Signal(syscall.SIGSTOP)
	logs := &testbin.SyncBuffer{}
	s, c := e.start(t, logs)
	waitUntil(t, func() bool { return strings.Contains(s.lastError("payments"), "unavailable") }, "first load fails")
	if _, err := c.Encrypt(ctxT(t), []byte("x"), nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("encrypt before ready: %v", err)
	}
	e.vault.Signal(syscall.SIGCONT)
	select {
	case <-s.Ready():
	case <-time.After(15 * time.Second):
		t.Fatalf("not ready after Vault came back; logs:\n%s", logs.String())
	}
	if _, err := c.Encrypt(ctxT(t), []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

// The sidecar's Vault token is revoked: a new version cannot load and the
// error says why (user-induced, not retried in a hot loop); the running
// keyring keeps serving and the process stays up.
func TestVaultRevokedToken(t *testing.T) {
	e := newVaultEnv(t)
	logs := &testbin.SyncBuffer{}
	s, c := e.start(t, logs)
	<-s.Ready()
	next := e.nextVersion(t)
	if err := e.vault.RootClient().Auth().Token().RevokeTree(os.Getenv("VAULT_TOKEN")); err != nil {
		t.Fatal(err)
	}
	keyset.WriteFile(e.ksPath, next)
	waitUntil(t, func() bool { return strings.Contains(s.lastError("payments"), "key unusable") }, "v2 refused as user-induced")
	time.Sleep(time.Second)
	// No hot retry loop on a user-induced error once loaded: a handful of attempts at most.
	if n := strings.Count(logs.String(), "keyset load failed"); n > 3 {
		t.Fatalf("%d load attempts in a second after a revoked token", n)
	}
	if _, err := c.Encrypt(ctxT(t), []byte("still serving"), nil); err != nil {
		t.Fatal(err)
	}
}
