package kube

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/xds"
)

func keysetSecret(t *testing.T, ns, name, keysetName string, created time.Time) *corev1.Secret {
	t.Helper()
	ks := &keyset.Keyset{Name: keysetName, KMS: "local:///k", Versions: []keyset.Version{{
		Version: 1, State: keyset.StatePrimary, WrappedKey: []byte("wrapped"), CreatedAt: created, StateChangedAt: created,
	}}}
	b, err := ks.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{Label: "true"}, CreationTimestamp: metav1.NewTime(created), UID: types.UID("uid-" + ns + "-" + name), ResourceVersion: "1"},
		Data:       map[string][]byte{DataKey: b},
	}
}

// Keyset names are unique per namespace, and a duplicate is refused the
// same way whatever order the Secrets are read in: the older Secret holds
// the name. Two namespaces may each have the name. (Before, the first
// Secret read won, so a Secret in another namespace could take over a
// keyset after a leader change.)
func TestDuplicateKeysetsRefusedDeterministically(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	secrets := []*corev1.Secret{
		keysetSecret(t, "shop", "zz-original", "payments", t0),
		keysetSecret(t, "shop", "aa-impostor", "payments", t0.Add(time.Hour)),
		keysetSecret(t, "bank", "payments", "payments", t0.Add(2*time.Hour)),
	}
	for _, order := range [][]int{{0, 1, 2}, {1, 0, 2}, {2, 1, 0}} {
		c := fake.NewClientset()
		for _, i := range order {
			if _, err := c.CoreV1().Secrets(secrets[i].Namespace).Create(context.Background(), secrets[i], metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		s := &SecretStore{Client: c}
		_, stop := s.Events(slog.New(slog.DiscardHandler))
		keys, err := s.List(context.Background())
		stop()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"bank/payments", "shop/zz-original"}, keys); diff != "" {
			t.Fatalf("order %v: keys (-want +got):\n%s", order, diff)
		}
		if _, _, err := s.Get(context.Background(), "shop/aa-impostor"); err == nil || !strings.Contains(err.Error(), "already held by the older Secret shop/zz-original") {
			t.Fatalf("order %v: Get of the younger duplicate = %v", order, err)
		}
		if s.Scope("bank/payments") != "bank" {
			t.Fatal("Scope is not the namespace")
		}
	}
}

// With namespaces opting in (label + RoleBinding), the controller reads
// keyset Secrets of those namespaces only; one whose RoleBinding is
// missing is skipped, not fatal; pods of other namespaces get no keyset
// (finding 7: before, every Secret of the cluster was read).
func TestOptInNamespaces(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ns := func(name string, optIn bool) *corev1.Namespace {
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if optIn {
			n.Labels = map[string]string{"keyshift.io/keysets": "enabled"}
		}
		return n
	}
	c := fake.NewClientset(ns("shop", true), ns("broken", true), ns("bank", false),
		keysetSecret(t, "shop", "payments", "payments", t0),
		keysetSecret(t, "broken", "payments", "payments", t0),
		keysetSecret(t, "bank", "payments", "payments", t0),
		appPod("bank", "teller", "payments", corev1.PodRunning, true, false))
	c.PrependReactor("list", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetNamespace() == "broken" {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "", errors.New("no RoleBinding"))
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	optIn, err := NewOptIn(c, DefaultOptInLabel)
	if err != nil {
		t.Fatal(err)
	}
	optIn.Start(ctx)
	var logs strings.Builder
	s := &SecretStore{Client: c, Namespaces: optIn.List, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	keys, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"shop/payments"}, keys); diff != "" {
		t.Fatalf("keys (-want +got):\n%s", diff)
	}
	if !strings.Contains(logs.String(), "namespace=broken") {
		t.Fatalf("the namespace without a RoleBinding was not reported: %s", logs.String())
	}
	readers := NewPodReadersPerNamespace(c)
	readers.Start(ctx)
	a := &XDSAccess{Client: c, Pods: readers, OptIn: optIn}
	if err := a.Authorize(ctx, xds.Identity{Namespace: "bank", Pod: "teller"}, "payments"); err == nil || !strings.Contains(err.Error(), "has not opted in") {
		t.Fatalf("a pod of a namespace that did not opt in: %v", err)
	}
}

// The CA bundle lands in every namespace with keysets, follows a new
// bundle, and never takes over a ConfigMap that is not keyshift's.
func TestCAPublisher(t *testing.T) {
	foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: DefaultCAConfigMap, Namespace: "bank"}, Data: map[string]string{CABundleKey: "theirs"}}
	c := fake.NewClientset(foreign)
	p := &CAPublisher{Client: c}
	ctx := context.Background()
	get := func(ns string) string {
		cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, DefaultCAConfigMap, metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		return cm.Data[CABundleKey]
	}
	if err := p.Ensure(ctx, []string{"shop", "bank"}); err != nil || !strings.Contains(get("shop"), "not found") {
		t.Fatalf("Ensure before any bundle wrote %q (%v)", get("shop"), err)
	}
	err := p.SetBundle(ctx, []byte("ca-1"))
	if err == nil || !strings.Contains(err.Error(), "not keyshift's") {
		t.Fatalf("SetBundle over a foreign ConfigMap = %v", err)
	}
	if get("shop") != "ca-1" || get("bank") != "theirs" {
		t.Fatalf("shop %q, bank %q", get("shop"), get("bank"))
	}
	if err := p.Ensure(ctx, []string{"shop", "new"}); err != nil || get("new") != "ca-1" {
		t.Fatalf("a namespace seen later: %q, %v", get("new"), err)
	}
	if err := p.SetBundle(ctx, []byte("ca-1\nca-2")); err != nil || get("shop") != "ca-1\nca-2" || get("new") != "ca-1\nca-2" {
		t.Fatalf("a renewed bundle: shop %q, new %q, %v", get("shop"), get("new"), err)
	}
}

// A write at a revision succeeds when only the Secret's metadata moved
// since the read (the holders annotation, rewritten as usage reports
// arrive), and conflicts when its data did. Before, any change conflicted,
// so `keyshift keyset revoke` failed under traffic whenever a usage report
// landed between its read and its write.
func TestPutIgnoresMetadataOnlyChanges(t *testing.T) {
	ctx := context.Background()
	sec := keysetSecret(t, "shop", "keyset-payments", "payments", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := fake.NewClientset(sec)
	s := &SecretStore{Client: c}
	if _, err := s.List(ctx); err != nil {
		t.Fatal(err)
	}
	bump := func(change func(*corev1.Secret)) {
		t.Helper()
		cur, err := c.CoreV1().Secrets("shop").Get(ctx, "keyset-payments", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		change(cur)
		cur.ResourceVersion += "+"
		if _, err := c.CoreV1().Secrets("shop").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ks, rev, err := s.Get(ctx, "shop/keyset-payments")
	if err != nil {
		t.Fatal(err)
	}
	bump(func(sec *corev1.Secret) { sec.Annotations = map[string]string{HoldersAnnotation: `{}`} })
	next, err := ks.AddPending([]byte("w2"), "1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rev, err = s.Put(ctx, "shop/keyset-payments", next, rev)
	if err != nil {
		t.Fatalf("Put after an annotation-only change = %v, want it stored", err)
	}
	if got, _, _ := s.Get(ctx, "shop/keyset-payments"); got.Latest() != 2 {
		t.Fatalf("stored latest = %d, want 2", got.Latest())
	}
	bump(func(sec *corev1.Secret) { sec.Data["other"] = []byte("x") })
	if _, err := s.Put(ctx, "shop/keyset-payments", next, rev); !errors.Is(err, rotation.ErrConflict) {
		t.Fatalf("Put after a data change = %v, want ErrConflict", err)
	}
	// The audit head is an annotation, but a step continues from it.
	_, rev, err = s.Get(ctx, "shop/keyset-payments")
	if err != nil {
		t.Fatal(err)
	}
	bump(func(sec *corev1.Secret) { sec.Annotations[AuditHeadAnnotation] = "another head" })
	if _, err := s.Put(ctx, "shop/keyset-payments", next, rev); !errors.Is(err, rotation.ErrConflict) {
		t.Fatalf("Put after the audit head moved = %v, want ErrConflict", err)
	}
}
