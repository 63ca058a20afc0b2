package controller_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation/rotationtest"
	"github.com/keyshift/keyshift/internal/sidecar"
)

// The controller's own loop, as the binary runs it on a keyset directory:
// a keyset with a 1 s rotation policy, a real sidecar that gets it over
// xDS only. The controller adds v2, waits for the sidecar's ACK and
// promotes it; the sidecar encrypts with v2; the audit log verifies.
func TestRotatesAndPushesToSidecar(t *testing.T) {
	dir := t.TempDir()
	ksDir, files := rotationtest.NewStoreDir(t, dir, "orders")
	ks := files.Read("orders")
	ks.Policy = &keyset.Policy{RotationPeriod: keyset.Duration(time.Second), Retention: keyset.Duration(time.Hour)}
	files.Write("orders", ks)
	reg := kms.Registry{local.Scheme: local.Open}
	trail := filepath.Join(dir, "audit.jsonl")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := controller.Start(ctx, controller.Config{KeysetDir: ksDir, AuditLog: trail, XDSAddr: "127.0.0.1:0", XDSAuth: controller.XDSAuthNone,
		KMS: reg, Interval: 100 * time.Millisecond, Identity: "test"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := sidecar.Start(ctx, sidecar.Config{Socket: filepath.Join(dir, "s.sock"), Keysets: map[string]string{"orders": ""},
		XDSAddr: c.XDSAddr(), XDSInsecure: true, NodeID: "ns/pod", KMS: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if p, _ := s.Service().Primary("orders"); p == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar never got v2 as primary over xDS")
		}
		time.Sleep(20 * time.Millisecond)
	}
	sealed, err := s.Service().Encrypt(ctx, "orders", []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if sealed.Version != 2 {
		t.Fatalf("encrypt after the rotation used v%d, want v2", sealed.Version)
	}
	cancel()
	if err := c.Wait(); err != nil {
		t.Fatalf("controller: %v", err)
	}
	_ = s.Wait()
	f, err := os.Open(trail)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	key, _, err := audit.OpenKey(context.Background(), audit.KeyFile{Path: filepath.Join(dir, controller.AuditKeyFileName)}, reg, "")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := audit.VerifyLog(f, key, nil)
	if err != nil || sum.Records < 2 {
		t.Fatalf("audit log: %d records, %v; want add-pending and promote, intact", sum.Records, err)
	}
}
