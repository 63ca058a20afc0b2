package keyusage_test

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyshift/keyshift/internal/keyusage"
	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/usagev1"
)

type memHolders struct {
	mu     sync.Mutex
	m      map[string]keyusage.Holders
	writes int
}

func (s *memHolders) UpdateHolders(_ context.Context, ns, name string, change func(keyusage.Holders) bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	hs := s.m[ns+"/"+name]
	if hs == nil {
		hs = keyusage.Holders{}
	}
	if change(hs) {
		s.m[ns+"/"+name] = hs
		s.writes++
	}
	return nil
}

type event struct{ keyset, reason, msg string }

func newLedger(t *testing.T, threshold uint64) (*keyusage.Ledger, *memHolders, *[]event, *time.Time, *prometheus.Registry, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	store := &memHolders{m: map[string]keyusage.Holders{}}
	var events []event
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	reg := prometheus.NewRegistry()
	l := &keyusage.Ledger{Log: slog.New(slog.NewJSONHandler(&logs, nil)), Holders: store, SpikeThreshold: threshold, Now: func() time.Time { return now },
		Event: func(keyset string, warning bool, reason, msg string) {
			if !warning {
				t.Errorf("event %s is not a warning", reason)
			}
			events = append(events, event{keyset, reason, msg})
		}}
	l.Register(reg)
	return l, store, &events, &now, reg, &logs
}

var (
	podA = xds.Identity{Namespace: "shop", Pod: "web-1", ServiceAccount: "web"}
	podB = xds.Identity{Namespace: "shop", Pod: "web-2", ServiceAccount: "web"}
)

// Decrypt failures summed over the pods of a keyset raise one Warning
// Event per window once they reach the threshold, and count in a metric
// an alert can use.
func TestDecryptFailureSpike(t *testing.T) {
	l, _, events, now, reg, _ := newLedger(t, 100)
	ctx := context.Background()
	fail := func(id xds.Identity, n uint64) {
		l.Report(ctx, id, []*usagev1.Record{{Keyset: "payments", Version: 2, Op: "decrypt", Ok: 10, Failed: map[string]uint64{"auth_failed": n}}})
	}
	fail(podA, 60)
	if len(*events) != 0 {
		t.Fatalf("event below the threshold: %v", *events)
	}
	fail(podB, 40) // 100 within the window, across two pods
	if len(*events) != 1 {
		t.Fatalf("events %v, want one spike", *events)
	}
	ev := (*events)[0]
	if ev.keyset != "shop/payments" || ev.reason != "decrypt-failure-spike" || !strings.Contains(ev.msg, "100 failed decrypts within 1m0s") ||
		!strings.Contains(ev.msg, "auth_failed 100") || !strings.Contains(ev.msg, "shop/web-1, shop/web-2") {
		t.Fatalf("event %+v", ev)
	}
	fail(podA, 500) // same window: no second Event
	if len(*events) != 1 {
		t.Fatalf("events %v, want still one", *events)
	}
	*now = now.Add(time.Minute)
	fail(podA, 10) // a new window, below the threshold
	if len(*events) != 1 {
		t.Fatalf("events %v after a quiet window", *events)
	}
	got := gather(t, reg)
	if got[`keyshift_controller_decrypt_failure_spikes_total{keyset="shop/payments"}`] != 1 ||
		got[`keyshift_controller_key_usage_total{keyset="shop/payments",op="decrypt",result="auth_failed"}`] != 610 ||
		got[`keyshift_controller_key_usage_total{keyset="shop/payments",op="decrypt",result="ok"}`] != 40 {
		t.Errorf("metrics %v", got)
	}
}

// Who encrypted under which version is kept durably, one write per new
// holder or new day, not one per report, nor one per pod of the same
// service account (before, pods taking turns rewrote the Secret on every
// report).
func TestHoldersKept(t *testing.T) {
	l, store, _, now, _, logs := newLedger(t, 0)
	ctx := context.Background()
	enc := func(id xds.Identity, v uint32) {
		l.Report(ctx, id, []*usagev1.Record{
			{Keyset: "payments", Version: v, Op: "encrypt", Ok: 3, PeerUid: 1000},
			{Keyset: "payments", Version: v, Op: "decrypt", Ok: 9, PeerUid: 1000},
			{Keyset: "", Op: "decrypt", Failed: map[string]uint64{"malformed": 1}, PeerUid: 1000},
		})
	}
	enc(podA, 1)
	enc(podA, 1)
	if store.writes != 1 {
		t.Fatalf("%d writes for one holder, want 1", store.writes)
	}
	enc(podB, 1) // the same caller in another pod on the same day
	enc(podA, 1)
	if store.writes != 1 {
		t.Fatalf("%d writes for one holder in two pods on one day, want 1", store.writes)
	}
	enc(podA, 2)
	*now = now.Add(24 * time.Hour)
	enc(podA, 2)
	enc(podB, 1) // a new day: the pod seen then is stored
	if store.writes != 4 {
		t.Fatalf("%d writes, want 4", store.writes)
	}
	hs := store.m["shop/payments"]
	if len(hs[1]) != 1 || hs[1][0].LastPod != "shop/web-2" || hs[1][0].ServiceAccount != "web" || hs[1][0].PeerUID != 1000 {
		t.Fatalf("holders of v1: %+v", hs[1])
	}
	if len(hs[2]) != 1 || hs[2][0].FirstSeen != "2026-11-30" || hs[2][0].LastSeen != "2026-12-01" {
		t.Fatalf("holders of v2: %+v", hs[2])
	}
	for _, want := range []string{`"msg":"key usage"`, `"pod":"shop/web-1"`, `"service_account":"web"`, `"keyset":"shop/payments"`, `"op":"encrypt"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

// gather flattens the counters of reg as name{label="value",...} -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName()+"="+strconv.Quote(lp.GetValue()))
			}
			out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetCounter().GetValue()
		}
	}
	return out
}
