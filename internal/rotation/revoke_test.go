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

// request stores a revocation request for v, as `keyshift keyset revoke
// --secret` does.
func (r *rig) request(v uint32, reason string) {
	r.t.Helper()
	ks, rev, err := r.store.Get(context.Background(), "payments")
	if err != nil {
		r.t.Fatal(err)
	}
	next, err := RequestRevoke(ks, v, reason, r.now)
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.store.Put(context.Background(), "payments", next, rev); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) step(action, reason string, states map[uint32]string) {
	r.t.Helper()
	out, err := r.eng.Reconcile(context.Background(), "payments")
	if err != nil {
		r.t.Fatal(err)
	}
	if out.Action != action || !strings.Contains(out.Reason, reason) {
		r.t.Fatalf("outcome %+v, want %q with %q", out, action, reason)
	}
	if states != nil {
		if diff := cmp.Diff(states, r.states()); diff != "" {
			r.t.Fatalf("after %s: states (-want +got):\n%s", action, diff)
		}
	}
}

// Revoking the primary: a new version at once, pushed, promoted as soon
// as every reader has it, in the same write that revokes the old one.
func TestRevokePrimaryWaitsBrieflyForReaders(t *testing.T) {
	r := newRig(t, nil)
	r.request(1, "key file leaked in a CI log")
	r.step("add-pending", "new primary for revoking v1 (revoke requested: key file leaked in a CI log)", map[uint32]string{1: "primary/kek1", 2: "pending/kek1"})
	if r.dist.published["payments"].Latest() != 2 {
		t.Fatal("the new version was not pushed")
	}
	r.now = r.now.Add(2 * time.Second)
	r.dist.acked["pod-a"] = 2
	r.step("waiting", "revoking v1: 1 of 2 pods have v2", nil)
	r.dist.acked["pod-b"] = 2
	r.step("revoke", "every reader had v2 (2 pods)", map[uint32]string{1: "revoked/kek1", 2: "primary/kek1"})
	ks, _, _ := r.store.Get(context.Background(), "payments")
	if ks.Revocation != nil {
		t.Fatal("the request was not cleared")
	}
	r.step("", "", nil)
}

// The wait is bounded: after RevokeWait the new primary is promoted
// without the readers that have not loaded it, and the record names them.
func TestRevokeWaitIsBounded(t *testing.T) {
	r := newRig(t, nil)
	r.request(1, "")
	r.step("add-pending", "revoking v1", nil)
	r.dist.acked["pod-a"] = 2
	r.dist.nacked["pod-b"] = "kms: access denied"
	r.now = r.now.Add(5 * time.Second)
	r.step("waiting", "waiting for pod-b", nil)
	if w := r.eng.nextWake(); !w.Equal(r.now.Add(5 * time.Second)) {
		t.Fatalf("wake at %v, want the end of the 10 s wait", w)
	}
	r.now = r.now.Add(5 * time.Second)
	r.step("revoke", "v2 promoted after 10s without 1 of 2 pods (pod-b)", map[uint32]string{1: "revoked/kek1", 2: "primary/kek1"})
}

// A decrypt-only or pending version is revoked in one step; versions that
// cannot be revoked are refused up front, and a stored request that has
// become impossible is dropped with a record rather than retried forever.
func TestRevokeOtherStates(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	ks, rev, _ := r.store.Get(ctx, "payments")
	ks, err := AddVersion(ctx, r.kek, ks, r.now)
	if err != nil {
		t.Fatal(err)
	}
	if ks, err = ks.Promote(2, r.now); err != nil {
		t.Fatal(err)
	}
	if _, err := r.store.Put(ctx, "payments", ks, rev); err != nil {
		t.Fatal(err)
	}
	r.request(1, "")
	r.step("revoke", "revoke requested", map[uint32]string{1: "revoked/kek1", 2: "primary/kek1"})
	ks, _, _ = r.store.Get(ctx, "payments")
	if _, err := RequestRevoke(ks, 1, "", r.now); !errors.Is(err, keyset.ErrTransition) {
		t.Fatalf("revoking a revoked version: %v", err)
	}
	if _, err := RequestRevoke(ks, 9, "", r.now); !errors.Is(err, keyset.ErrUnknownVersion) {
		t.Fatalf("revoking an unknown version: %v", err)
	}
	// A request stored by hand for a version already revoked.
	bad := ks.Clone()
	bad.Revocation = &keyset.Revocation{Version: 1, RequestedAt: r.now}
	_, rev, _ = r.store.Get(ctx, "payments")
	if _, err := r.store.Put(ctx, "payments", bad, rev); err != nil {
		t.Fatal(err)
	}
	r.step("revoke-refused", "v1 is revoked", map[uint32]string{1: "revoked/kek1", 2: "primary/kek1"})
	r.step("", "", nil)
}

// Without a controller, RevokeNow replaces and revokes in one write.
func TestRevokeNow(t *testing.T) {
	r := newRig(t, nil)
	ks, _, _ := r.store.Get(context.Background(), "payments")
	next, p, err := RevokeNow(context.Background(), r.kek, ks, 1, r.now)
	if err != nil {
		t.Fatal(err)
	}
	if p != 2 || next.Primary().Version != 2 {
		t.Fatalf("new primary v%d", p)
	}
	if v, _ := next.Get(1); v.State != keyset.StateRevoked {
		t.Fatalf("v1 is %s", v.State)
	}
}
