package rotation

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/keyset"
)

// leaderAcks is acks served by a replica that began leading at since.
type leaderAcks struct {
	*acks
	since time.Time
}

func (l leaderAcks) ServingSince() time.Time { return l.since }

// Promotion with expected readers: every pod that uses the keyset must
// have the pending version, whether or not it is connected right now.
func TestPromotionWaitsForExpectedReaders(t *testing.T) {
	const minPending = 90 * time.Second
	cases := []struct {
		name     string
		expected []string
		nodes    []string // connected sidecars
		acked    []string // of nodes, those that ACKed v2
		min      time.Duration
		age      time.Duration // since v2 was added
		leading  time.Duration // how long this replica has served (0: since before v2)
		action   string
		reason   string
	}{
		{name: "zero subscribers are not all acked while a pod uses the keyset",
			expected: []string{"ns/a"}, age: time.Second,
			action: "waiting", reason: "0 of 1 pods have v2; waiting for ns/a; no xDS stream from ns/a"},
		{name: "every expected pod ACKed: still wait MinPendingAge for the Secret volumes",
			expected: []string{"ns/a", "ns/b"}, nodes: []string{"ns/a", "ns/b"}, acked: []string{"ns/a", "ns/b"}, min: minPending, age: time.Second,
			action: "waiting", reason: "2 of 2 pods have v2; pending for 1s of at least 1m30s, for the kubelet to update every Secret volume"},
		{name: "every expected pod ACKed and MinPendingAge passed: promote",
			expected: []string{"ns/a", "ns/b"}, nodes: []string{"ns/a", "ns/b"}, acked: []string{"ns/a", "ns/b"}, min: minPending, age: 2 * time.Minute,
			action: "promote", reason: "every reader has it: 2 of 2 pods have v2"},
		{name: "a connected pod must ACK, however long v2 has waited",
			expected: []string{"ns/a"}, nodes: []string{"ns/a"}, min: minPending, age: 2 * time.Minute,
			action: "waiting", reason: "0 of 1 pods have v2; waiting for ns/a"},
		{name: "a pod without a stream is trusted to its mounted Secret after MinPendingAge",
			expected: []string{"ns/a", "ns/b"}, nodes: []string{"ns/a"}, acked: []string{"ns/a"}, min: minPending, age: 2 * time.Minute,
			action: "promote", reason: "every reader has it: 2 of 2 pods have v2; no xDS stream from ns/b (trusted to the mounted Secret after 1m30s)"},
		{name: "after a leader change, pods get MinPendingAge to reconnect first",
			expected: []string{"ns/a", "ns/b"}, nodes: []string{"ns/a"}, acked: []string{"ns/a"}, min: minPending, age: 2 * time.Minute, leading: time.Minute,
			action: "waiting", reason: "1 of 2 pods have v2; waiting for ns/b; no xDS stream from ns/b (trusted to the mounted Secret after 1m30s pending)"},
		{name: "MinPendingAge 0 says every sidecar uses xDS: a pod without a stream is waited for",
			expected: []string{"ns/a"}, age: 2 * time.Minute,
			action: "waiting", reason: "0 of 1 pods have v2; waiting for ns/a; no xDS stream from ns/a"},
		{name: "a connected sidecar the pod list does not know yet counts too",
			expected: []string{"ns/a"}, nodes: []string{"ns/a", "ns/new"}, acked: []string{"ns/a"}, age: time.Second,
			action: "waiting", reason: "1 of 2 pods have v2; waiting for ns/new"},
		{name: "the ACK timeout still bounds the wait, naming the pods",
			expected: []string{"ns/a", "ns/b"}, age: 6 * time.Minute,
			action: "blocked", reason: "not promoting v2: after 6m0s, 2 of 2 pods have not loaded it (ns/a, ns/b)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, nil)
			ctx := context.Background()
			if out, err := r.eng.Rotate(ctx, "payments", "test"); err != nil || out.Action != "add-pending" {
				t.Fatalf("Rotate = %+v, %v", out, err)
			}
			created := r.now
			r.now = r.now.Add(c.age)
			r.dist.nodes = c.nodes
			for _, n := range c.acked {
				r.dist.acked[n] = 2
			}
			since := created.Add(-time.Hour)
			if c.leading > 0 {
				since = r.now.Add(-c.leading)
			}
			r.eng.Dist = leaderAcks{r.dist, since}
			r.eng.MinPendingAge = c.min
			var asked []string
			r.eng.Readers = func(_ context.Context, key string) ([]string, error) {
				asked = append(asked, key)
				return c.expected, nil
			}
			out, err := r.eng.Reconcile(ctx, "payments")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(Outcome{Action: c.action, Versions: []uint32{2}, Reason: c.reason}, out); diff != "" {
				t.Fatalf("outcome (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"payments"}, asked); diff != "" {
				t.Fatalf("Readers asked for (-want +got):\n%s", diff)
			}
		})
	}
}

// When the readers cannot be listed, nothing is promoted.
func TestPromotionFailsClosedWithoutReaders(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	if _, err := r.eng.Rotate(ctx, "payments", "test"); err != nil {
		t.Fatal(err)
	}
	r.dist.nodes = nil
	r.now = r.now.Add(time.Hour)
	errCache := errors.New("pod cache not synced yet")
	r.eng.Readers = func(context.Context, string) ([]string, error) { return nil, errCache }
	out, err := r.eng.Reconcile(ctx, "payments")
	if !errors.Is(err, errCache) || out.Action != "blocked" {
		t.Fatalf("Reconcile = %+v, %v; want blocked by the readers error", out, err)
	}
	if diff := cmp.Diff(map[uint32]string{1: "primary/kek1", 2: "pending/kek1"}, r.states()); diff != "" {
		t.Fatalf("states (-want +got):\n%s", diff)
	}
}

// PublishAll hands every stored keyset to the distributor and takes no
// lifecycle step, even one that is due.
func TestPublishAllTakesNoStep(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	if _, err := r.eng.Rotate(ctx, "payments", "test"); err != nil {
		t.Fatal(err)
	}
	r.dist.published = map[string]*keyset.Keyset{}
	r.dist.acked["pod-a"], r.dist.acked["pod-b"] = 2, 2 // promotion is due
	if err := r.eng.PublishAll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.dist.published["payments"]; got == nil || got.Latest() != 2 || got.Primary().Version != 1 {
		t.Fatalf("published %+v, want the stored document with v2 still pending", got)
	}
	if !strings.Contains(r.states()[2], "pending") {
		t.Fatalf("PublishAll promoted: %v", r.states())
	}
}
