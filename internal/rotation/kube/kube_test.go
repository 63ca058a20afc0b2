package kube

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/keyshift/keyshift/internal/keyset"
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
