package kube

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// A change to a keyset Secret wakes the controller at once, in the
// namespaces it manages now: one that opts out is no longer watched.
func TestWatchFollowsManagedNamespaces(t *testing.T) {
	c := fake.NewClientset()
	var mu sync.Mutex
	managed := []string{"shop"}
	s := &SecretStore{Client: c, Namespaces: func(context.Context) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), managed...), nil
	}}
	var pokes atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, 20*time.Millisecond, func() { pokes.Add(1) })
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	create := func(name string) {
		t.Helper()
		if _, err := c.CoreV1().Secrets("shop").Create(ctx, keysetSecret(t, "shop", name, name, t0), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for n := 0; pokes.Load() == 0; n++ {
		if time.Now().After(deadline) {
			t.Fatal("a new keyset Secret in a managed namespace woke nobody")
		}
		if n%10 == 0 { // the watch may not be open yet
			create("payments-" + string(rune('a'+n/10)))
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	managed = nil
	mu.Unlock()
	time.Sleep(200 * time.Millisecond) // several refreshes
	pokes.Store(0)
	create("orders")
	time.Sleep(200 * time.Millisecond)
	if n := pokes.Load(); n != 0 {
		t.Fatalf("%d wake-ups from a namespace that opted out", n)
	}
}
