package rotation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
)

// One keyset's chain, continued by whichever engine acts: a second
// replica after a leader change, then the first again, then the first
// restarted with an empty --audit-log file. The store's trail holds every
// record in one chain; each file verifies on its own, the first one
// without a gap (the records the other replica stored are copied in).
func TestAuditChainContinuesAcrossEngines(t *testing.T) {
	r := newRig(t, &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour)})
	ctx := context.Background()
	dir := t.TempDir()
	engine := func(actor, file string) *Engine {
		l, err := audit.OpenKeyed(filepath.Join(dir, file), r.key)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return &Engine{Store: r.store, KMS: kms.Registry{local.Scheme: local.Open}, Dist: r.dist, Audit: l, AuditKey: r.key,
			Log: slog.New(slog.DiscardHandler), Actor: actor, Now: func() time.Time { return r.now }}
	}
	a, b := engine("controller/a", "a.jsonl"), engine("controller/b", "b.jsonl")
	r.dist.acked["pod-a"], r.dist.acked["pod-b"] = 99, 99
	step := func(e *Engine, want string) {
		t.Helper()
		if out, err := e.Reconcile(ctx, "payments"); err != nil || out.Action != want {
			t.Fatalf("%s: %+v %v, want %s", e.Actor, out, err, want)
		}
	}
	r.now = r.now.Add(time.Hour)
	step(a, "add-pending")
	step(b, "promote") // b leads
	r.now = r.now.Add(time.Hour)
	step(b, "add-pending")
	step(a, "promote") // a leads again
	a2 := engine("controller/a", "a-restarted.jsonl")
	r.now = r.now.Add(time.Hour)
	step(a2, "add-pending") // a restarted on a new emptyDir

	st, err := r.store.AuditTrail(ctx, "payments")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := r.key.VerifyStored(st.Keyset, st.Records, st.Head)
	if err != nil {
		t.Fatalf("stored trail: %v", err)
	}
	var got []string
	for _, rec := range tr.Records {
		got = append(got, fmt.Sprintf("%d %s %s", rec.Seq, rec.Actor, rec.Action))
	}
	want := []string{"1 controller/a add-pending", "2 controller/b promote", "3 controller/b add-pending", "4 controller/a promote", "5 controller/a add-pending"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("stored trail (-want +got):\n%s", diff)
	}
	for file, span := range map[string][2]uint64{"a.jsonl": {1, 4}, "b.jsonl": {2, 3}, "a-restarted.jsonl": {5, 5}} {
		b, _ := os.ReadFile(filepath.Join(dir, file))
		s, err := audit.VerifyLog(bytes.NewReader(b), r.key, nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if s.First["payments"].Seq != span[0] || s.Last["payments"].Seq != span[1] {
			t.Fatalf("%s holds records %d..%d, want %d..%d", file, s.First["payments"].Seq, s.Last["payments"].Seq, span[0], span[1])
		}
	}
}

// A Put at a stale revision stores neither the step nor its record nor
// the head, in the file store as in a Secret.
func TestConflictingPutStoresNeitherStepNorHead(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	ks, rev, _ := r.store.Get(ctx, "payments")
	a, _ := AddVersion(ctx, r.kek, ks, r.now)
	b, _ := AddVersion(ctx, r.kek, ks, r.now)
	if _, _, err := r.store.PutAudited(ctx, "payments", a, rev, r.key, audit.Record{Actor: "a", Action: "add-pending", Keyset: "payments", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	before, _ := r.store.AuditTrail(ctx, "payments")
	doc, _ := os.ReadFile(r.store.path("payments"))
	if _, _, err := r.store.PutAudited(ctx, "payments", b, rev, r.key, audit.Record{Actor: "b", Action: "add-pending", Keyset: "payments", Result: "ok"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second writer: %v", err)
	}
	after, _ := r.store.AuditTrail(ctx, "payments")
	if diff := cmp.Diff(before, after); diff != "" {
		t.Fatalf("the losing writer changed the trail (-before +after):\n%s", diff)
	}
	if now, _ := os.ReadFile(r.store.path("payments")); !bytes.Equal(doc, now) {
		t.Fatal("the losing writer changed the keyset")
	}
}

// flakyKMS is the local KMS whose KEK status call fails while down, each
// time with another request ID, as a real KMS outage does.
type flakyKMS struct {
	*local.KMS
	down  bool
	calls int
}

func (f *flakyKMS) PrimaryKEKVersion(ctx context.Context) (string, error) {
	f.calls++
	if f.down {
		return "", fmt.Errorf("flaky: request %d timed out: %w", f.calls, kms.ErrUnavailable)
	}
	return f.KMS.PrimaryKEKVersion(ctx)
}

// A KMS outage seen on every pass is one audit record (and one Event),
// not one per pass; once the keyset is fine again, the next outage is
// recorded again.
func TestFailureAuditedOncePerSituation(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	flaky := &flakyKMS{KMS: r.kek, down: true}
	r.eng.KMS = kms.Registry{"flaky": func(context.Context, *url.URL) (kms.Wrapper, error) { return flaky, nil }}
	ks, rev, _ := r.store.Get(ctx, "payments")
	ks.KMS = "flaky://kek"
	if _, err := r.store.Put(ctx, "payments", ks, rev); err != nil {
		t.Fatal(err)
	}
	var events []string
	r.eng.Event = func(_ string, _ bool, reason, _ string) { events = append(events, reason) }
	pass := func(n int) {
		for range n {
			r.eng.Reconcile(ctx, "payments")
		}
	}
	pass(5)
	flaky.down = false
	pass(1)
	flaky.down = true
	pass(3)
	if flaky.calls != 9 {
		t.Fatalf("%d KMS calls, want 9", flaky.calls)
	}
	if got := r.auditActions(); !cmp.Equal(got, []string{"kek-status failed", "kek-status failed"}) {
		t.Fatalf("audit records %v, want one per outage", got)
	}
	if !cmp.Equal(events, []string{"kek-status", "kek-status"}) {
		t.Fatalf("events %v", events)
	}
}

// Without an audit key the engine writes no trail (tests and tools that
// need none), and the store is left as before.
func TestNoAuditKeyNoTrail(t *testing.T) {
	r := newRig(t, &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour)})
	r.eng.AuditKey, r.eng.Audit = nil, nil
	r.now = r.now.Add(time.Hour)
	if out, err := r.eng.Reconcile(context.Background(), "payments"); err != nil || out.Action != "add-pending" {
		t.Fatalf("%+v %v", out, err)
	}
	if _, err := os.Stat(r.store.TrailPath("payments")); !os.IsNotExist(err) {
		t.Fatalf("a trail was written: %v", err)
	}
}

// A trail edited between two steps, and a chain that went back, are
// reported loudly at the next step; the rotation goes on.
func TestEngineReportsBrokenTrail(t *testing.T) {
	r := newRig(t, &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour)})
	var logs bytes.Buffer
	r.eng.Log = slog.New(slog.NewTextHandler(&logs, nil))
	ctx := context.Background()
	r.dist.acked["pod-a"], r.dist.acked["pod-b"] = 99, 99
	r.now = r.now.Add(time.Hour)
	r.eng.Reconcile(ctx, "payments")
	p := r.store.TrailPath("payments")
	b, _ := os.ReadFile(p)
	os.WriteFile(p, bytes.Replace(b, []byte(`"result":"ok"`), []byte(`"result":"failed"`), 1), 0o600)
	if out, err := r.eng.Reconcile(ctx, "payments"); err != nil || out.Action != "promote" {
		t.Fatalf("%+v %v", out, err)
	}
	if !strings.Contains(logs.String(), "record 1 of payments was altered") {
		t.Fatalf("the altered record was not reported:\n%s", logs.String())
	}
	// The trail and head are put back as they were after record 1.
	os.WriteFile(p, b, 0o600)
	first, _ := audit.ParseTrail(b, "")
	os.WriteFile(r.store.HeadPath("payments"), []byte("1:"+first.Records[0].MAC), 0o600)
	r.now = r.now.Add(time.Hour)
	r.eng.Reconcile(ctx, "payments")
	if !strings.Contains(logs.String(), "audit chain went back") {
		t.Fatalf("the rolled-back chain was not reported:\n%s", logs.String())
	}
}
