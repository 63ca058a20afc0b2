package rotation

import (
	"bytes"
	"context"
	"log/slog"
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

// acks is a Distributor whose sidecar answers the test sets directly; the
// real xDS path is tested in the sidecar package with real gRPC.
type acks struct {
	published map[string]*keyset.Keyset
	acked     map[string]uint32
	nacked    map[string]string
	nodes     []string
}

func (a *acks) Publish(_ context.Context, _ string, ks *keyset.Keyset) error {
	a.published[ks.Name] = ks.Clone()
	return nil
}

func (a *acks) Status(_, _ string, v uint32) AckStatus {
	st := AckStatus{Subscribers: a.nodes, NACKs: map[string]string{}}
	for _, n := range a.nodes {
		switch {
		case a.acked[n] >= v:
			st.Acked = append(st.Acked, n)
		case a.nacked[n] != "":
			st.NACKs[n] = a.nacked[n]
		default:
			st.Waiting = append(st.Waiting, n)
		}
	}
	return st
}

type rig struct {
	t     *testing.T
	now   time.Time
	kek   *local.KMS
	store *FileStore
	dist  *acks
	trail string
	key   *audit.Key
	eng   *Engine
}

func newRig(t *testing.T, policy *keyset.Policy) *rig {
	dir := t.TempDir()
	r := &rig{t: t, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), kek: local.New(filepath.Join(dir, "kek.json")),
		store: &FileStore{Dir: filepath.Join(dir, "keysets")}, dist: &acks{published: map[string]*keyset.Keyset{}, acked: map[string]uint32{}, nacked: map[string]string{}, nodes: []string{"pod-a", "pod-b"}},
		trail: filepath.Join(dir, "audit.jsonl"), key: testAuditKey(t)}
	os.Mkdir(r.store.Dir, 0o755)
	ks, err := Create(context.Background(), r.kek, "payments", "local://"+filepath.Join(dir, "kek.json"), r.now)
	if err != nil {
		t.Fatal(err)
	}
	ks.Policy = policy
	if err := keyset.WriteFile(r.store.path("payments"), ks); err != nil {
		t.Fatal(err)
	}
	r.eng = r.newEngine()
	return r
}

// newEngine is a fresh controller process over the same store and trail,
// as after a crash and restart.
func (r *rig) newEngine() *Engine {
	if r.eng != nil && r.eng.Audit != nil {
		r.eng.Audit.Close()
	}
	trail, err := audit.OpenKeyed(r.trail, r.key)
	if err != nil {
		r.t.Fatal(err)
	}
	return &Engine{Store: r.store, KMS: kms.Registry{local.Scheme: local.Open}, Dist: r.dist, Audit: trail, AuditKey: r.key,
		Log: slog.New(slog.DiscardHandler), Actor: "test", Now: func() time.Time { return r.now }}
}

func (r *rig) states() map[uint32]string {
	ks, _, err := r.store.Get(context.Background(), "payments")
	if err != nil {
		r.t.Fatal(err)
	}
	m := map[uint32]string{}
	for _, v := range ks.Versions {
		m[v.Version] = string(v.State) + "/kek" + v.KEKVersion
	}
	return m
}

func TestLifecycleWithFakeClock(t *testing.T) {
	day := 24 * time.Hour
	r := newRig(t, &keyset.Policy{RotationPeriod: keyset.Duration(30 * day), Retention: keyset.Duration(7 * day), AckTimeout: keyset.Duration(5 * time.Minute)})
	ctx := context.Background()
	steps := []struct {
		name    string
		advance time.Duration
		before  func()
		action  string
		reason  string
		states  map[uint32]string
	}{
		{"nothing due", 29 * day, nil, "", "", map[uint32]string{1: "primary/kek1"}},
		{"primary due: add pending", day, nil, "add-pending", "rotation period 720h0m0s", map[uint32]string{1: "primary/kek1", 2: "pending/kek1"}},
		{"sidecars have not loaded it", time.Minute, nil, "waiting", "0 of 2 sidecars have v2", map[uint32]string{1: "primary/kek1", 2: "pending/kek1"}},
		{"one ACK: still waiting for the slowest", time.Minute, func() { r.dist.acked["pod-a"] = 2 }, "waiting", "1 of 2", nil},
		{"ack timeout: not promoted", 4 * time.Minute, nil, "blocked", "not promoting v2: after 6m0s, 1 of 2 sidecars have not loaded it (pod-b)", map[uint32]string{1: "primary/kek1", 2: "pending/kek1"}},
		{"a NACK blocks too", 0, func() { r.dist.nacked["pod-b"] = "unwrap: kms: key unusable" }, "blocked", "pod-b: unwrap: kms: key unusable", nil},
		{"every sidecar has it: promote", 0, func() { delete(r.dist.nacked, "pod-b"); r.dist.acked["pod-b"] = 2 }, "promote", "every reader has it", map[uint32]string{1: "decrypt-only/kek1", 2: "primary/kek1"}},
		{"within retention", 6 * day, nil, "", "", nil},
		{"past retention: disable v1", day, nil, "retire", "retention of 168h0m0s", map[uint32]string{1: "disabled/kek1", 2: "primary/kek1"}},
		{"KEK rotated in the KMS: rewrap", 0, func() {
			if _, err := r.kek.Rotate(ctx); err != nil {
				t.Fatal(err)
			}
		}, "rewrap", "KEK version is now 2", map[uint32]string{1: "disabled/kek1", 2: "primary/kek2"}},
		{"steady", time.Hour, nil, "", "", nil},
	}
	for _, s := range steps {
		r.now = r.now.Add(s.advance)
		if s.before != nil {
			s.before()
		}
		out, err := r.eng.Reconcile(ctx, "payments")
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if out.Action != s.action || !strings.Contains(out.Reason, s.reason) {
			t.Fatalf("%s: outcome %+v, want action %q reason containing %q", s.name, out, s.action, s.reason)
		}
		if s.states != nil {
			if diff := cmp.Diff(s.states, r.states()); diff != "" {
				t.Fatalf("%s: states (-want +got):\n%s", s.name, diff)
			}
		}
		if got := r.dist.published["payments"]; got == nil || got.Latest() != mustGet(t, r).Latest() {
			t.Fatalf("%s: the stored document was not published", s.name)
		}
	}
	// add-pending, ack-timeout, nack, promote, retire, rewrap: each audited once,
	// in the store's trail and in the --audit-log file.
	if got := r.auditActions(); !cmp.Equal(got, []string{"add-pending ok", "ack-timeout blocked", "nack blocked", "promote ok", "retire ok", "rewrap ok"}) {
		t.Fatalf("audit records %v", got)
	}
}

func testAuditKey(t *testing.T) *audit.Key {
	t.Helper()
	k, err := audit.NewKey([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// auditActions verifies the keyset's stored trail, and the --audit-log
// file against the stored head, and returns the stored records as
// "action result".
func (r *rig) auditActions() []string {
	r.t.Helper()
	ctx := context.Background()
	st, err := r.store.AuditTrail(ctx, "payments")
	if err != nil {
		r.t.Fatal(err)
	}
	tr, err := r.key.VerifyStored(st.Keyset, st.Records, st.Head)
	if err != nil {
		r.t.Fatalf("stored trail: %v\n%s", err, st.Records)
	}
	r.eng.Audit.Close()
	b, _ := os.ReadFile(r.trail)
	if _, err := audit.VerifyLog(bytes.NewReader(b), r.key, map[string]audit.Head{st.Keyset: tr.Head}); err != nil {
		r.t.Fatalf("--audit-log file: %v\n%s", err, b)
	}
	var out []string
	for _, rec := range tr.Records {
		out = append(out, rec.Action+" "+rec.Result)
	}
	return out
}

func mustGet(t *testing.T, r *rig) *keyset.Keyset {
	ks, _, err := r.store.Get(context.Background(), "payments")
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// A controller that dies after adding a pending version, before
// promoting, is replaced by one that finds the pending version in the
// store, republishes it, waits for the ACKs and promotes it exactly once.
func TestCrashBetweenStepsResumes(t *testing.T) {
	r := newRig(t, &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour)})
	ctx := context.Background()
	r.now = r.now.Add(time.Hour)
	if out, err := r.eng.Reconcile(ctx, "payments"); err != nil || out.Action != "add-pending" {
		t.Fatalf("first controller: %+v %v", out, err)
	}
	// Crash: the new process starts with an empty xDS cache.
	r.dist.published = map[string]*keyset.Keyset{}
	r.eng = r.newEngine()
	if out, _ := r.eng.Reconcile(ctx, "payments"); out.Action != "waiting" {
		t.Fatalf("restarted controller: %+v", out)
	}
	if r.dist.published["payments"].Latest() != 2 {
		t.Fatal("restarted controller did not republish the pending version")
	}
	r.dist.acked["pod-a"], r.dist.acked["pod-b"] = 2, 2
	if out, _ := r.eng.Reconcile(ctx, "payments"); out.Action != "promote" {
		t.Fatalf("after ACKs: %+v", out)
	}
	if out, _ := r.eng.Reconcile(ctx, "payments"); out.Action != "" {
		t.Fatalf("a second promotion or rotation happened: %+v", out)
	}
	if diff := cmp.Diff(map[uint32]string{1: "decrypt-only/kek1", 2: "primary/kek1"}, r.states()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

// Two controllers racing on one document: the compare-and-swap lets one win.
func TestConcurrentWritersConflict(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	ks, rev, _ := r.store.Get(ctx, "payments")
	a, _ := AddVersion(ctx, r.kek, ks, r.now)
	b, _ := AddVersion(ctx, r.kek, ks, r.now)
	if _, err := r.store.Put(ctx, "payments", a, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := r.store.Put(ctx, "payments", b, rev); err == nil || !strings.Contains(err.Error(), "changed concurrently") {
		t.Fatalf("second writer: %v", err)
	}
}

// A version whose stored canary no longer decrypts stops the rotation.
func TestVerifyCatchesBrokenOlderVersion(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	ks, rev, _ := r.store.Get(ctx, "payments")
	other, _ := Create(ctx, r.kek, "payments", ks.KMS, r.now)
	ks.Versions[0].Canary = other.Versions[0].Canary // a canary of a different key
	if _, err := r.store.Put(ctx, "payments", ks, rev); err != nil {
		t.Fatal(err)
	}
	out, err := r.eng.Rotate(ctx, "payments", "manual")
	if err == nil || out.Action != "blocked" || !strings.Contains(err.Error(), "stored canary does not decrypt") {
		t.Fatalf("Rotate = %+v, %v", out, err)
	}
	if len(mustGet(t, r).Versions) != 1 {
		t.Fatal("a version was added despite a failed verification")
	}
}

// A blocked promotion is published as the keyset's status once, with the
// reason, and not again while nothing changes.
func TestStatusPublishedOnChange(t *testing.T) {
	r := newRig(t, &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour), AckTimeout: keyset.Duration(time.Minute)})
	var got []string
	r.eng.Status = func(_ context.Context, key string, out Outcome) error {
		got = append(got, key+" "+out.String())
		return nil
	}
	ctx := context.Background()
	r.now = r.now.Add(time.Hour)
	for range 3 {
		r.eng.Reconcile(ctx, "payments")
		r.now = r.now.Add(time.Minute)
	}
	r.eng.Reconcile(ctx, "payments")
	want := []string{
		"payments add-pending [2]: primary v1 is 1h0m0s old (rotation period 1h0m0s)",
		"payments waiting [2]: 0 of 2 sidecars have v2",
		"payments blocked [2]: not promoting v2: after 2m0s, 2 of 2 sidecars have not loaded it (pod-a, pod-b)",
		"payments blocked [2]: not promoting v2: after 3m0s, 2 of 2 sidecars have not loaded it (pod-a, pod-b)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("statuses (-want +got):\n%s", diff)
	}
	// The audit trail records the blocked promotion once, not once a pass.
	if got := r.auditActions(); !cmp.Equal(got, []string{"add-pending ok", "ack-timeout blocked"}) {
		t.Fatalf("audit records %v, want add-pending and one ack-timeout", got)
	}
}
