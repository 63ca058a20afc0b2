//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyshift/keyshift/internal/injector"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

// xdsRefusesStrangers proves finding 1 of the security review on the
// installed system: the sample's sidecars hold the keyset over xDS (they
// authenticated with their projected tokens and verified the controller
// against the CA bundle the controller published into their namespace),
// while from the pod network a client without a token, a plaintext
// client, and a pod of another namespace get nothing.
func (n *node) xdsRefusesStrangers(ctx context.Context) {
	n.t.Helper()
	// The controller writes it on its first pass that sees the keyset.
	var cm *corev1.ConfigMap
	n.eventually("the controller's CA bundle in "+demoNS, 60*time.Second, func() (bool, string) {
		var err error
		cm, err = n.client.CoreV1().ConfigMaps(demoNS).Get(ctx, injector.XDSCAConfigMap, metav1.GetOptions{})
		return err == nil, errString(err)
	})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data[kube.CABundleKey])) {
		n.t.Fatalf("ConfigMap %s/%s holds no CA certificate", demoNS, injector.XDSCAConfigMap)
	}
	leader := n.leader(ctx)
	pod, err := n.client.CoreV1().Pods(systemNS).Get(ctx, leader, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	addr := net.JoinHostPort(pod.Status.PodIP, "18000")
	verified := grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "keyshift-controller.keyshift-system.svc"}))
	app := n.appPods(ctx)[0]

	if _, err := xdsAskWith(verified, addr, "", demoNS+"/"+app.Name, keysetName); status.Code(err) != codes.Unauthenticated {
		n.t.Fatalf("no token: %v, want Unauthenticated", err)
	}
	if got, err := xdsAskWith(grpc.WithTransportCredentials(insecure.NewCredentials()), addr, "", demoNS+"/"+app.Name, keysetName); err == nil {
		n.t.Fatalf("a plaintext client was served %d keysets", len(got))
	}
	// A pod of another namespace that names the keyset (anyone can write
	// those annotations on their own pod), with a valid token for it.
	const intruderNS = "intruder"
	if _, err := n.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: intruderNS}}, metav1.CreateOptions{}); err != nil {
		n.t.Fatal(err)
	}
	defer func() {
		_ = n.client.CoreV1().Namespaces().Delete(context.Background(), intruderNS, metav1.DeleteOptions{})
	}()
	n.eventually("the intruder namespace's default ServiceAccount", 30*time.Second, func() (bool, string) {
		_, err := n.client.CoreV1().ServiceAccounts(intruderNS).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, errString(err)
	})
	if _, err := n.client.CoreV1().ServiceAccounts(intruderNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		n.t.Fatal(err)
	}
	intruder := makeXDSPod(n.t, n.client, intruderNS, "reader", keysetName, injector.XDSAudience)
	if _, err := xdsAskWith(verified, addr, intruder.token, demoNS+"/"+app.Name, keysetName); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "is not the authenticated pod") {
		n.t.Fatalf("another namespace's token posing as %s: %v, want PermissionDenied", app.Name, err)
	}
	// As itself: its namespace has not opted in to keyshift (and would
	// hold no keyset of that name if it had: it is served its own
	// namespace's snapshot only, TestAccessScopesToNamespace).
	got, err := xdsAskWith(verified, addr, intruder.token, intruderNS+"/reader", keysetName)
	if err == nil {
		n.t.Fatalf("a pod of namespace %s was served %d keysets", intruderNS, len(got))
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "has not opted in") {
		n.t.Fatalf("a pod of namespace %s asking for %s: %v, want PermissionDenied (namespace not opted in)", intruderNS, keysetName, err)
	}
	n.logf("xDS: no token -> Unauthenticated; plaintext -> refused; another namespace's pod -> PermissionDenied, as a %s pod and as itself", demoNS)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
