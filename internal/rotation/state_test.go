package rotation

import (
	"context"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// States reports each keyset's last outcome and, while a version is
// pending, its reader count: what `keyshift status --cluster` shows.
func TestStatesFollowAPendingVersion(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	if got := r.eng.States(); len(got) != 0 {
		t.Fatalf("States before any pass = %+v", got)
	}
	if _, err := r.eng.Rotate(ctx, "payments", "test"); err != nil {
		t.Fatal(err)
	}
	at := r.now
	steps := []struct {
		name  string
		setup func()
		want  KeysetState
	}{
		{"one of two sidecars ACKed", func() { r.dist.acked["pod-a"] = 2 },
			KeysetState{Key: "payments", Action: "waiting", Versions: []uint32{2}, Reason: "1 of 2 sidecars have v2", At: at,
				Pending: &PendingReaders{Version: 2, Readers: 2, Ready: 1, Waiting: []string{"pod-b"}}}},
		{"the other refused it", func() { r.dist.nacked["pod-b"] = "unwrap failed" },
			KeysetState{Key: "payments", Action: "blocked", Versions: []uint32{2}, Reason: "not promoting v2: 1 sidecar(s) refused it (pod-b: unwrap failed)", At: at,
				Pending: &PendingReaders{Version: 2, Readers: 2, Ready: 1, Waiting: []string{"pod-b"}, NACKs: map[string]string{"pod-b": "unwrap failed"}}}},
		{"both ACKed: promoted, nothing pending", func() { delete(r.dist.nacked, "pod-b"); r.dist.acked["pod-b"] = 2 },
			KeysetState{Key: "payments", Action: "promote", Versions: []uint32{2}, Reason: "every reader has it", At: at}},
		{"nothing due", func() {},
			KeysetState{Key: "payments", At: at}},
	}
	for _, s := range steps {
		s.setup()
		if _, err := r.eng.Reconcile(ctx, "payments"); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if diff := cmp.Diff([]KeysetState{s.want}, r.eng.States()); diff != "" {
			t.Fatalf("%s: States (-want +got):\n%s", s.name, diff)
		}
	}

	// A keyset that leaves the store leaves States at the next pass.
	if err := os.Remove(r.store.path("payments")); err != nil {
		t.Fatal(err)
	}
	if err := r.eng.ReconcileAll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.eng.States(); len(got) != 0 {
		t.Fatalf("States after the keyset was removed = %+v", got)
	}
}
