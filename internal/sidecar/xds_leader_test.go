package sidecar

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	ctl "github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/xdstest"
)

// replica is one of the controller's replicas as `keyshift controller`
// assembles it under leader election (internal/controller): its own xDS
// server, inactive until the replica leads, and its own engine over the
// store the replicas share (the Secrets), which expects ACKs from the pods
// that use the keyset. The test plays the Lease: it says who leads.
type replica struct {
	*ctl.Controller
	addr string
	x    *xds.Server
	eng  *rotation.Engine
}

func startReplica(t *testing.T, dir string, pods []string) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := ctl.Start(ctx, ctl.Config{KeysetDir: filepath.Join(dir, "keysets"), AuditKeyFile: filepath.Join(dir, "audit.key"),
		XDSAddr: "127.0.0.1:0", XDSAuth: ctl.XDSAuthNone, KMS: kms.Registry{local.Scheme: local.Open}, Identity: "test", Manual: true})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = c.Wait() })
	// In a cluster the pod cache says which pods use the keyset; a keyset
	// directory has none, so the test names them. Set before any pass:
	// a Manual controller runs none of its own.
	c.Engine().Readers = func(context.Context, string) ([]string, error) { return pods, nil }
	return &replica{Controller: c, addr: c.XDSAddr(), x: c.XDS(), eng: c.Engine()}
}

// lead is what a replica does on winning the Lease: publish every keyset,
// then serve.
func (r *replica) lead(t *testing.T) {
	t.Helper()
	if err := r.Lead(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// promoteOnce reconciles on r until it promotes, checking at that moment
// that every sidecar has loaded v (its ACK was counted, not skipped), and
// then that nothing is promoted again.
func promoteOnce(t *testing.T, r *replica, v uint32, sidecars map[string]*Server) {
	t.Helper()
	ctx := ctxT(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := r.eng.Reconcile(ctx, "payments")
		if err != nil {
			t.Fatal(err)
		}
		if out.Action == "promote" {
			for node, s := range sidecars {
				if !loaded(s, v) {
					t.Fatalf("promoted v%d (%s) while %s had not loaded it", v, out.Reason, node)
				}
			}
			break
		}
		if out.Action != "waiting" || time.Now().After(deadline) {
			t.Fatalf("outcome %+v", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if out, _ := r.eng.Reconcile(ctx, "payments"); out.Action != "" {
		t.Fatalf("after the promotion: %+v", out)
	}
}

// The defect as shipped: both controller replicas behind one Service, the
// Service spreading sidecars over both, and only the leader publishing and
// counting ACKs. A sidecar that landed on the follower never got the
// keyset, yet the leader promoted the next version. Now the follower
// refuses the stream, the sidecar redials and lands on the leader, and the
// leader waits for every pod that uses the keyset.
func TestXDSEveryReplicasSidecarACKCounts(t *testing.T) {
	dir := newXDSKeyset(t)
	pods := []string{"ns/pod-a", "ns/pod-b"}
	leader, follower := startReplica(t, dir, pods), startReplica(t, dir, pods)
	leader.lead(t)
	svc := xdstest.NewBalancer(t, leader.addr, follower.addr) // as kube-proxy over both pods
	sidecars := map[string]*Server{}
	for _, p := range pods {
		sidecars[p] = startXDSSidecar(t, dir, svc.Addr, p, kms.Registry{local.Scheme: local.Open})
	}
	waitUntil(t, func() bool { return slices.Contains(svc.Dials(), follower.addr) }, "a sidecar's connection reaches the follower")
	if out, err := leader.eng.Rotate(ctxT(t), "payments", "test"); err != nil || out.Action != "add-pending" {
		t.Fatalf("Rotate = %+v, %v", out, err)
	}
	promoteOnce(t, leader, 2, sidecars)
	if st := follower.x.Status("", "payments", 2); len(st.Subscribers) != 0 {
		t.Fatalf("the follower holds streams %v", st.Subscribers)
	}
}

// The leader goes away mid-rotation. The other replica, once it leads,
// does not read its empty stream list as "all acked": it waits for every
// pod to reconnect and ACK, then promotes exactly once.
func TestXDSLeaderChangeMidRotation(t *testing.T) {
	dir := newXDSKeyset(t)
	pods := []string{"ns/pod-a", "ns/pod-b"}
	a, b := startReplica(t, dir, pods), startReplica(t, dir, pods)
	a.lead(t)
	svc := xdstest.NewBalancer(t, a.addr) // the Service selects the leader's pod
	sidecars := map[string]*Server{}
	for _, p := range pods {
		sidecars[p] = startXDSSidecar(t, dir, svc.Addr, p, kms.Registry{local.Scheme: local.Open})
	}
	ctx := ctxT(t)
	if out, err := a.eng.Rotate(ctx, "payments", "test"); err != nil || out.Action != "add-pending" {
		t.Fatalf("Rotate = %+v, %v", out, err)
	}

	// a steps down before promoting; while the label moves, the Service
	// has no endpoint. b takes over.
	svc.SetBackends()
	a.StepDown()
	b.lead(t)
	out, err := b.eng.Reconcile(ctx, "payments")
	if err != nil || out.Action != "waiting" || out.Reason != "0 of 2 pods have v2; waiting for ns/pod-a, ns/pod-b; no xDS stream from ns/pod-a, ns/pod-b" {
		t.Fatalf("new leader's first pass with no sidecar connected = %+v, %v; want waiting for both pods", out, err)
	}
	svc.SetBackends(a.addr, b.addr) // a stale endpoint too: a refuses, the sidecar redials
	promoteOnce(t, b, 2, sidecars)
	if got := b.x.Status("", "payments", 2).Acked; !slices.Equal(got, pods) {
		t.Fatalf("new leader counted ACKs from %v, want %v", got, pods)
	}
	if out, _ := a.eng.Reconcile(ctx, "payments"); out.Action == "promote" {
		t.Fatal("the old leader's engine promoted again")
	}
	for _, s := range sidecars {
		waitUntil(t, func() bool { p, _ := s.Service().Primary("payments"); return p == 2 }, fmt.Sprintf("sidecars encrypt with v2 from %s", b.addr))
	}
}
