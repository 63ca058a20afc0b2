//go:build e2e

package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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
	"github.com/keyshift/keyshift/internal/sidecar"
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

// xdsSidecars runs real sidecars for injected pods of one namespace,
// subscribed to a controller's xDS server over TLS with each pod's own
// token, as the injector configures them.
type xdsSidecars struct {
	t      *testing.T
	ctl    *controller.Controller
	dir    string
	ns     string
	caFile string
	tokens map[string]string
}

// newXDSSidecars makes the pods names in ns (reading keysets, marked
// Running: there is no kubelet here) and writes the controller's CA bundle
// and each pod's token under dir.
func newXDSSidecars(t *testing.T, ctx context.Context, kc kubernetes.Interface, ctl *controller.Controller, dir, ns, keysets string, names ...string) *xdsSidecars {
	t.Helper()
	x := &xdsSidecars{t: t, ctl: ctl, dir: dir, ns: ns, caFile: filepath.Join(dir, "ca.pem"), tokens: map[string]string{}}
	if err := os.WriteFile(x.caFile, xdsCABundle(t, kc, ns), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		p := makeXDSPod(t, kc, ns, name, keysets, kube.DefaultXDSAudience)
		pod, err := kc.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.Phase = corev1.PodRunning
		if _, err := kc.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		x.tokens[name] = filepath.Join(dir, name+".token")
		if err := os.WriteFile(x.tokens[name], []byte(p.token), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// start runs pod name's sidecar on the socket dir/name.sock until the test
// ends, with cfg's keysets and other settings and the xDS ones filled in,
// and waits until it is ready. It returns the socket's path.
func (x *xdsSidecars) start(ctx context.Context, name string, cfg sidecar.Config) string {
	x.t.Helper()
	cfg.Socket = filepath.Join(x.dir, name+".sock")
	cfg.XDSAddr, cfg.NodeID = x.ctl.XDSAddr(), x.ns+"/"+name
	cfg.XDSCAFile, cfg.XDSServerName, cfg.XDSTokenFile = x.caFile, "keyshift-controller.keyshift-system.svc", x.tokens[name]
	sctx, cancel := context.WithCancel(ctx)
	s, err := sidecar.Start(sctx, cfg)
	if err != nil {
		cancel()
		x.t.Fatal(err)
	}
	x.t.Cleanup(func() { cancel(); _ = s.Wait() })
	select {
	case <-s.Ready():
	case <-time.After(30 * time.Second):
		x.t.Fatalf("sidecar %s not ready over xDS", name)
	}
	return cfg.Socket
}
