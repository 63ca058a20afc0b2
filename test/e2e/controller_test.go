//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

// replica is one controller process, as `keyshift controller` assembles
// it (internal/controller): its own engine, audit trail and
// leader-election identity, over the shared API server and audit key.
type replica struct {
	id    string
	trail string
	stop  func() // ends the replica and waits for it to step down
}

func startReplica(t *testing.T, client kubernetes.Interface, id, dir string) *replica {
	t.Helper()
	r := &replica{id: id, trail: filepath.Join(dir, id+".audit.jsonl")}
	ctx, cancel := context.WithCancel(context.Background())
	c := startController(t, ctx, controller.Config{Kube: client, Namespace: "payments", LeaderElect: true, LeaseDuration: 3 * time.Second, Identity: id,
		Interval: 200 * time.Millisecond, AuditLog: r.trail,
		KMS: kms.Registry{local.Scheme: local.Open}, KMSPolicy: rotation.KMSPolicy{Allow: map[string][]string{"payments": {"local://"}}}})
	r.stop = func() { cancel(); _ = c.Wait() }
	return r
}

func (r *replica) records(t *testing.T) []audit.Record {
	t.Helper()
	b, err := os.ReadFile(r.trail)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Verify(bytes.NewReader(b)); err != nil {
		t.Fatalf("%s audit trail: %v", r.id, err)
	}
	var out []audit.Record
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var rec audit.Record
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
	}
	return out
}

// The controller against a real API server: keysets in labelled Secrets,
// two replicas under leader election (only the leader acts; the other
// takes over when it dies), rotation on a 1 s policy with every step a
// Secret update, an audit record and an Event, and compare-and-swap on
// resourceVersion.
func TestControllerAgainstRealAPIServer(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t)
	client := c.kube
	for _, ns := range []string{controller.DefaultNamespace, "payments"} {
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek.json")
	ks, err := rotation.Create(ctx, local.New(kek), "payments", "local://"+kek, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ks.Policy = &keyset.Policy{RotationPeriod: keyset.Duration(time.Second)}
	store := &kube.SecretStore{Client: client}
	if err := store.Create(ctx, "payments/keyset-payments", ks); err != nil {
		t.Fatal(err)
	}

	a := startReplica(t, client, "replica-a", dir)
	time.Sleep(500 * time.Millisecond) // a usually wins the Lease; either way one leads
	b := startReplica(t, client, "replica-b", dir)
	time.Sleep(4 * time.Second)

	first, second := a, b
	if len(a.records(t)) == 0 {
		first, second = b, a
	}
	if n := len(second.records(t)); n != 0 {
		t.Fatalf("both replicas acted: %s wrote %d audit records while %s led", second.id, n, first.id)
	}
	led := first.records(t)
	if len(led) < 4 {
		t.Fatalf("the leader took %d steps in 4 s on a 1 s rotation policy", len(led))
	}

	// The leader dies; the other takes the Lease and carries on.
	first.stop()
	deadline := time.Now().Add(15 * time.Second)
	for len(second.records(t)) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%s never took over after %s stopped", second.id, first.id)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The stored keyset: consecutive versions, one primary, and as many
	// versions as add-pending steps across both trails.
	got, rev, err := store.Get(ctx, "payments/keyset-payments")
	if err != nil {
		t.Fatal(err)
	}
	adds := 0
	for _, rec := range append(led, second.records(t)...) {
		if rec.Action == "add-pending" && rec.Result == "ok" {
			adds++
		}
	}
	// One chain in the Secret across both leaders, anchored by its head.
	st, err := store.AuditTrail(ctx, "payments/keyset-payments")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := controllerAuditKey(t, client).VerifyStored(st.Keyset, st.Records, st.Head); err != nil {
		t.Fatalf("the Secret's audit trail: %v", err)
	}
	for i, v := range got.Versions {
		if v.Version != uint32(i+1) {
			t.Fatalf("versions not consecutive: %v", got.Versions)
		}
	}
	// One more addition may land between reading the trails and the Secret.
	if n := int(got.Latest()) - 1; n < adds || n > adds+1 {
		t.Fatalf("keyset has %d versions, audit trails show %d additions", got.Latest(), adds)
	}

	// Events on the Secret.
	evs, err := client.CoreV1().Events("payments").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=keyset-payments"})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]bool{}
	for _, e := range evs.Items {
		reasons[e.Reason] = true
	}
	if !reasons["AddPending"] || !reasons["Promote"] {
		t.Fatalf("Events on the Secret: %v", reasons)
	}

	// The latest outcome is on the Secret for operators.
	sec, err := client.CoreV1().Secrets("payments").Get(ctx, "keyset-payments", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := sec.Annotations[kube.StatusAnnotation]; !strings.HasPrefix(st, "promote [") && !strings.HasPrefix(st, "add-pending [") {
		t.Fatalf("status annotation %q", st)
	}

	// Compare-and-swap: a write at a stale resourceVersion is refused.
	second.stop()
	changed := got.Clone()
	changed.Policy = nil // a real change: a no-op update keeps the resourceVersion
	if _, err := store.Put(ctx, "payments/keyset-payments", changed, rev); err != nil {
		t.Fatalf("write at the current revision: %v", err)
	}
	if _, err := store.Put(ctx, "payments/keyset-payments", got, rev); !errors.Is(err, rotation.ErrConflict) {
		t.Fatalf("write at a stale revision: %v", err)
	}
}
