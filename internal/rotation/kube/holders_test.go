package kube

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/keyshift/keyshift/internal/keyusage"
)

// Holders land in an annotation of the Secret that holds the keyset (the
// older of duplicates), leave its data alone, and merge with what is
// stored, so a new leader adds to the list rather than replacing it.
func TestUpdateHolders(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := fake.NewClientset(keysetSecret(t, "shop", "payments-keys", "payments", t0))
	ctx := context.Background()
	s := &SecretStore{Client: c}
	if err := s.UpdateHolders(ctx, "shop", "payments", func(keyusage.Holders) bool { return true }); err == nil {
		t.Fatal("holders stored for a keyset no List has seen")
	}
	if _, err := s.List(ctx); err != nil {
		t.Fatal(err)
	}
	add := func(sa, pod string) {
		t.Helper()
		err := s.UpdateHolders(ctx, "shop", "payments", func(hs keyusage.Holders) bool {
			return hs.Add(2, keyusage.Holder{ServiceAccount: sa, PeerUID: 1000, LastPod: pod, FirstSeen: "2026-11-30", LastSeen: "2026-11-30"})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	add("web", "shop/web-1")
	add("batch", "shop/batch-7")
	// A new controller (fresh store) merges with what is stored.
	s2 := &SecretStore{Client: c}
	if _, err := s2.List(ctx); err != nil {
		t.Fatal(err)
	}
	s = s2
	add("web", "shop/web-2")
	hs, err := s.Holders(ctx, "shop/payments-keys")
	if err != nil {
		t.Fatal(err)
	}
	if len(hs[2]) != 2 || hs[2][0].LastPod != "shop/web-2" || hs[2][1].ServiceAccount != "batch" {
		t.Fatalf("holders %+v", hs)
	}
	sec, _ := c.CoreV1().Secrets("shop").Get(ctx, "payments-keys", metav1.GetOptions{})
	if want := keysetSecret(t, "shop", "payments-keys", "payments", t0).Data[DataKey]; string(sec.Data[DataKey]) != string(want) {
		t.Fatal("storing holders changed the keyset document")
	}
	sec.Annotations[HoldersAnnotation] = "{not json"
	if _, err := HoldersOf(sec); err == nil {
		t.Fatal("a corrupt annotation read as holders")
	}
}
