package sidecar

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/gcp"
	"github.com/keyshift/keyshift/internal/kms/gcp/gcpkmstest"
	"github.com/keyshift/keyshift/internal/rotation"
)

// A sidecar on Google Cloud KMS (the real client over real gRPC to an
// in-process KeyManagementService server; no emulator exists): the KMS
// stops while traffic flows (0 failures), a version published meanwhile
// loads after it restarts, and throttling on load is retried.
func TestGCPKMSOutageAndThrottling(t *testing.T) {
	srv := gcpkmstest.Start(t)
	const key = "projects/p/locations/global/keyRings/r/cryptoKeys/keyshift"
	if err := srv.CreateKey(key); err != nil {
		t.Fatal(err)
	}
	reg := kms.Registry{gcp.Scheme: gcp.Opener(slog.New(slog.DiscardHandler), gcp.WithEndpoint(srv.Addr()), gcp.WithInsecure(),
		gcp.WithTimeout(300*time.Millisecond), gcp.WithRetry(gcp.RetryPolicy{MaxAttempts: 3, BaseDelay: 20 * time.Millisecond, MaxDelay: 50 * time.Millisecond}))}
	dir, err := os.MkdirTemp("", "ksg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ksPath := filepath.Join(dir, "ks", "keyset.json")
	os.Mkdir(filepath.Dir(ksPath), 0o755)
	ctx := context.Background()
	uri := "gcp-kms://" + key
	w, err := reg.Open(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := rotation.Create(ctx, w, "payments", uri, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyset.WriteFile(ksPath, ks)
	s, _ := startSidecar(t, Config{Socket: filepath.Join(dir, "s.sock"), Keysets: map[string]string{"payments": ksPath}, KMS: reg, Logger: slog.New(slog.DiscardHandler)})
	<-s.Ready()

	next := nextVersion(t, reg, ksPath)
	var fails atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			ct, err := s.Service().Encrypt(ctx, "payments", []byte("x"), nil)
			if err == nil {
				_, err = s.Service().Decrypt(ctx, ct.Ciphertext, nil)
			}
			if err != nil {
				fails.Add(1)
			}
		}
	}()
	srv.Stop()
	keyset.WriteFile(ksPath, next)
	waitUntil(t, func() bool { return strings.Contains(s.lastError("payments"), "unavailable") }, "v2 fails to load while Cloud KMS is down")
	<-done
	if fails.Load() != 0 {
		t.Fatalf("%d calls failed while Cloud KMS was down", fails.Load())
	}
	// Back, but throttling the first Decrypts: retried with backoff, then loaded.
	srv.FailNext(2, codes.ResourceExhausted, "Decrypt")
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return loaded(s, 2) }, "v2 loads once Cloud KMS is back")
}
