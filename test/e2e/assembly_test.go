//go:build e2e

package e2e

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

// startController runs the controller as `keyshift controller` assembles
// it (internal/controller) until the test ends, in the cluster of
// cfg.Kube; its own Secrets (xDS certificate, audit key) go to
// keyshift-system, made here if missing. The test fails if the controller
// stops for any reason but the test's end.
func startController(t *testing.T, ctx context.Context, cfg controller.Config) *controller.Controller {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: controller.DefaultNamespace}}
	if _, err := cfg.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	c, err := controller.Start(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := c.Wait(); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("controller %s: %v", cfg.Identity, err)
		}
	})
	return c
}

// xdsCABundle waits for the CA bundle the controller publishes into
// namespace ns for its sidecars, and returns it.
func xdsCABundle(t *testing.T, client kubernetes.Interface, ns string) []byte {
	t.Helper()
	var bundle []byte
	waitFor(t, 30*time.Second, "the controller's CA bundle in "+ns, func() bool {
		cm, err := client.CoreV1().ConfigMaps(ns).Get(context.Background(), kube.DefaultCAConfigMap, metav1.GetOptions{})
		if err != nil {
			return false
		}
		bundle = []byte(cm.Data[kube.CABundleKey])
		return len(bundle) > 0
	})
	return bundle
}

// controllerAuditKey reads the audit key the controller keeps in its
// namespace, as `keyshift audit verify` does.
func controllerAuditKey(t *testing.T, client kubernetes.Interface) *audit.Key {
	t.Helper()
	k, _, err := audit.OpenKey(context.Background(), kube.AuditKeySecret{Client: client, Namespace: controller.DefaultNamespace, Name: controller.DefaultAuditKeySecret},
		kms.Registry{local.Scheme: local.Open}, "")
	if err != nil {
		t.Fatal(err)
	}
	return k
}
