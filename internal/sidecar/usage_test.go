package sidecar

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Key usage is recorded per caller (the peer UID of the socket), keyset,
// version and operation, with failures by reason, and written as log
// records that hold no plaintext, ciphertext or context values (finding
// 10 of the security review: before, nothing said who used which version).
func TestUsageRecords(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	secretCtx := map[string]string{"tenant": "CONTEXT-VALUE-7f3a"}
	var ct []byte
	for range 3 {
		var err error
		if ct, err = e.client.Encrypt(ctx, []byte("PLAINTEXT-9d1c"), secretCtx); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := e.client.Decrypt(ctx, ct, secretCtx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.client.Decrypt(ctx, ct, map[string]string{"tenant": "other"}); err == nil {
		t.Fatal("decrypt with the wrong context succeeded")
	}
	if _, err := e.client.Decrypt(ctx, []byte("not a ciphertext"), nil); err == nil {
		t.Fatal("decrypt of garbage succeeded")
	}
	if _, _, err := e.client.Rewrap(ctx, ct, secretCtx); err != nil {
		t.Fatal(err)
	}
	uid := int64(os.Getuid())
	got := e.srv.svc.usage.flush(time.Now())
	want := []UsageRecord{
		{PeerUID: uid, Keyset: "", Version: 0, Op: "decrypt", Failed: map[string]uint64{"unsupported_format": 1}},
		{PeerUID: uid, Keyset: "payments", Version: 1, Op: "decrypt", OK: 2, Failed: map[string]uint64{"auth_failed": 1}},
		{PeerUID: uid, Keyset: "payments", Version: 1, Op: "encrypt", OK: 3},
		{PeerUID: uid, Keyset: "payments", Version: 1, Op: "rewrap", OK: 1},
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(UsageRecord{}, "From", "To"), cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("usage records (-want +got):\n%s", diff)
	}
	if again := e.srv.svc.usage.flush(time.Now()); len(again) != 0 {
		t.Fatalf("a flush did not start a new interval: %v", again)
	}

	if _, err := e.client.Decrypt(ctx, ct, secretCtx); err != nil {
		t.Fatal(err)
	}
	e.srv.writeUsage(context.Background(), nil, time.Now(), time.Second)
	logs := e.logs.String()
	if !strings.Contains(logs, `"msg":"key usage"`) || !strings.Contains(logs, `"op":"decrypt"`) {
		t.Fatalf("no key usage record in the log:\n%s", logs)
	}
	for _, secret := range []string{"CONTEXT-VALUE-7f3a", "PLAINTEXT-9d1c", "tenant"} {
		if strings.Contains(logs, secret) {
			t.Fatalf("the log holds %q", secret)
		}
	}
}

// BenchmarkUsageCost prices usage recording on the hot path: the same
// in-process 1 KiB Encrypt, on every core, with and without it. Blocks of
// calls alternate (off-on, then on-off), so drift over the run (GC, heap
// growth, clock) falls on both alike; an A/A run of the old design, two
// sub-benchmarks one after the other, read 1.2 for identical code. "cost"
// is with/without.
func BenchmarkUsageCost(b *testing.B) {
	e := newEnv(b)
	svc := e.srv.svc
	on := svc.usage
	defer func() { svc.usage = on }()
	pt := make([]byte, 1024)
	ctx := b.Context()
	workers := runtime.GOMAXPROCS(0)
	const calls = 2000 // per worker per block
	block := func(u *usage) time.Duration {
		svc.usage = u
		start := time.Now()
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for range calls {
					if _, err := svc.Encrypt(ctx, "payments", pt, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}
	var tOff, tOn time.Duration
	n := 0
	for b.Loop() {
		if n%2 == 0 {
			tOff += block(nil)
			tOn += block(on)
		} else {
			tOn += block(on)
			tOff += block(nil)
		}
		n++
	}
	ops := float64(n * workers * calls)
	b.ReportMetric(float64(tOff.Nanoseconds())/ops, "ns/op-off")
	b.ReportMetric(float64(tOn.Nanoseconds())/ops, "ns/op-on")
	b.ReportMetric(float64(tOn)/float64(tOff), "cost")
}
