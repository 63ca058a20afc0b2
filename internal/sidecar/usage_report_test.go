package sidecar

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/usagev1"
	"github.com/keyshift/keyshift/sidecar/client"
)

// usageSink is the controller's side of usage reports, kept in memory.
type usageSink struct {
	mu   sync.Mutex
	pods map[string]bool
	recs []*usagev1.Record
}

func (u *usageSink) Report(_ context.Context, id xds.Identity, recs []*usagev1.Record) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pods[id.NodeID()] = true
	u.recs = append(u.recs, recs...)
}

// sum adds up ok and failed calls of keyset/version/op over every report.
func (u *usageSink) sum(keyset string, version uint32, op string) (ok, failed uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, r := range u.recs {
		if r.GetKeyset() == keyset && r.GetVersion() == version && r.GetOp() == op {
			ok += r.GetOk()
			for _, n := range r.GetFailed() {
				failed += n
			}
		}
	}
	return ok, failed
}

// A sidecar on xDS reports each interval's usage records to the
// controller, and the last partial interval when it stops.
func TestUsageReportedToController(t *testing.T) {
	dir := newXDSKeyset(t)
	c := startController(t, dir, "")
	sink := &usageSink{pods: map[string]bool{}}
	c.xds.SetUsage(sink)
	if _, err := c.eng.Reconcile(context.Background(), "payments"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{Socket: filepath.Join(dir, "s.sock"), Keysets: map[string]string{"payments": ""}, XDSAddr: c.addr, XDSInsecure: true,
		NodeID: "shop/web-1", KMS: kms.Registry{local.Scheme: local.Open}, Logger: slog.New(slog.DiscardHandler), UsageInterval: 200 * time.Millisecond}
	s, err := Start(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cl, err := client.Dial(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close(); cancel(); _ = s.Wait() })
	waitReady(t, s)
	for range 3 {
		ct, err := cl.Encrypt(ctx, []byte("card 4111"), nil)
		if err != nil {
			t.Fatal(err)
		}
		ct[len(ct)-1] ^= 1
		if _, err := cl.Decrypt(ctx, ct, nil); err == nil {
			t.Fatal("a tampered ciphertext decrypted")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, _ := sink.sum("payments", 1, "encrypt")
		_, failed := sink.sum("payments", 1, "decrypt")
		if ok == 3 && failed == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller got encrypt ok %d, decrypt failed %d; want 3 and 3", ok, failed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := cl.Encrypt(ctx, []byte("last"), nil); err != nil {
		t.Fatal(err)
	}
	cancel() // the last partial interval goes out on the way down
	_ = s.Wait()
	if ok, _ := sink.sum("payments", 1, "encrypt"); ok != 4 {
		t.Fatalf("after stop the controller has %d encrypts, want 4", ok)
	}
	if !sink.pods["shop/web-1"] {
		t.Fatalf("reports came from %v", sink.pods)
	}
}
