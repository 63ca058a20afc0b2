package kube

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// No API server runs in unit tests: client-go's fake clientset stands in,
// applying the merge patches and label selectors the real one would. The
// e2e suite runs the same code against a real cluster.

func controllerPod(name string, labels map[string]string) *corev1.Pod {
	l := map[string]string{"app.kubernetes.io/name": "keyshift-controller"}
	for k, v := range labels {
		l[k] = v
	}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "keyshift-system", Labels: l}}
}

func roles(t *testing.T, c kubernetes.Interface) map[string]string {
	t.Helper()
	l, err := c.CoreV1().Pods("keyshift-system").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, p := range l.Items {
		m[p.Name] = p.Labels[RoleLabel]
	}
	return m
}

// The new leader labels itself and strips the label from a crashed former
// leader, leaving other labels alone; stepping down removes its own.
func TestLeaderPodClaimAndRelease(t *testing.T) {
	leader := map[string]string{RoleLabel: RoleLeader}
	c := fake.NewClientset(controllerPod("ctl-old", leader), controllerPod("ctl-new", nil), controllerPod("ctl-third", nil))
	l := &LeaderPod{Client: c, Namespace: "keyshift-system", Name: "ctl-new", Log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	if err := l.Claim(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"ctl-old": "", "ctl-new": RoleLeader, "ctl-third": ""}, roles(t, c)); diff != "" {
		t.Fatalf("after Claim (-want +got):\n%s", diff)
	}
	p, _ := c.CoreV1().Pods("keyshift-system").Get(ctx, "ctl-old", metav1.GetOptions{})
	if _, has := p.Labels[RoleLabel]; has || p.Labels["app.kubernetes.io/name"] != "keyshift-controller" {
		t.Fatalf("former leader's labels %v: want the role label removed and the rest kept", p.Labels)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"ctl-old": "", "ctl-new": "", "ctl-third": ""}, roles(t, c)); diff != "" {
		t.Fatalf("after Release (-want +got):\n%s", diff)
	}
	// Releasing a pod that is gone is no error.
	gone := &LeaderPod{Client: c, Namespace: "keyshift-system", Name: "deleted", Log: slog.New(slog.DiscardHandler)}
	if err := gone.Release(ctx); err != nil {
		t.Fatalf("Release of a deleted pod: %v", err)
	}
}

// Hold keeps the label while ctx lives, puts it back if it is removed
// behind its back, and removes it when ctx ends.
func TestLeaderPodHold(t *testing.T) {
	c := fake.NewClientset(controllerPod("ctl-a", nil))
	l := &LeaderPod{Client: c, Namespace: "keyshift-system", Name: "ctl-a", Log: slog.New(slog.DiscardHandler), Every: 10 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Hold(ctx) }()
	waitRole(t, c, "ctl-a", RoleLeader)
	if err := (&LeaderPod{Client: c, Namespace: "keyshift-system", Name: "ctl-a"}).Release(ctx); err != nil {
		t.Fatal(err)
	}
	waitRole(t, c, "ctl-a", RoleLeader)
	cancel()
	<-done
	if got := roles(t, c)["ctl-a"]; got != "" {
		t.Fatalf("after Hold returned the pod is still labelled %q", got)
	}
}

func waitRole(t *testing.T, c kubernetes.Interface, pod, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for roles(t, c)[pod] != want {
		if time.Now().After(deadline) {
			t.Fatalf("pod %s never got role %q", pod, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
