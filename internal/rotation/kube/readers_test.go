package kube

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/keyshift/keyshift/injector/annotation"
)

func appPod(ns, name, keysets string, phase corev1.PodPhase, injected, deleting bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{annotation.Inject: "true", annotation.Keysets: keysets}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		Status:     corev1.PodStatus{Phase: phase},
	}
	if injected {
		p.Annotations[annotation.Status] = `{"version":1}`
	}
	if deleting {
		now := metav1.Now()
		p.DeletionTimestamp = &now
	}
	return p
}

// The readers of a keyset Secret are the running, injected pods of its
// namespace that list it, by name or as NAME=SECRET.
func TestPodReaders(t *testing.T) {
	c := fake.NewClientset(
		appPod("shop", "by-name", "payments", corev1.PodRunning, true, false),
		appPod("shop", "by-secret", "users, pay=payments", corev1.PodRunning, true, false),
		appPod("shop", "other-keyset", "users", corev1.PodRunning, true, false),
		appPod("shop", "name-is-not-secret", "payments=payments-v2", corev1.PodRunning, true, false),
		appPod("shop", "not-injected", "payments", corev1.PodRunning, false, false),
		appPod("shop", "still-pending", "payments", corev1.PodPending, true, false),
		appPod("shop", "terminating", "payments", corev1.PodRunning, true, true),
		appPod("shop", "finished", "payments", corev1.PodSucceeded, true, false),
		appPod("elsewhere", "same-name", "payments", corev1.PodRunning, true, false),
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := NewPodReaders(c, "")
	r.Start(ctx)
	got, err := r.Readers(ctx, "shop/payments")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"shop/by-name", "shop/by-secret"}, got); diff != "" {
		t.Fatalf("readers (-want +got):\n%s", diff)
	}
	// The cache follows changes: a pod that stops running stops counting.
	p, _ := c.CoreV1().Pods("shop").Get(ctx, "by-name", metav1.GetOptions{})
	p.Status.Phase = corev1.PodFailed
	if _, err := c.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ = r.Readers(ctx, "shop/payments")
		if cmp.Equal([]string{"shop/by-secret"}, got) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readers after the pod failed: %v", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Before the cache has loaded, Readers fails rather than report no readers.
func TestPodReadersFailClosedUntilSynced(t *testing.T) {
	r := NewPodReaders(fake.NewClientset(appPod("shop", "a", "payments", corev1.PodRunning, true, false)), "")
	r.SyncTimeout = 50 * time.Millisecond // never started: never syncs
	if got, err := r.Readers(context.Background(), "shop/payments"); !errors.Is(err, ErrPodsNotSynced) {
		t.Fatalf("Readers = %v, %v; want ErrPodsNotSynced", got, err)
	}
}

// The cache keeps only what the question needs.
func TestSlimPod(t *testing.T) {
	p := appPod("shop", "a", "payments", corev1.PodRunning, true, false)
	p.Annotations["unrelated"] = "big"
	got, err := slimPod(p)
	if err != nil {
		t.Fatal(err)
	}
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "shop", Annotations: map[string]string{annotation.Keysets: "payments", annotation.Status: `{"version":1}`}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("slim pod (-want +got):\n%s", diff)
	}
}
