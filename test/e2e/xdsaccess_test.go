//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/injector/annotation"
	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/injector"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/xds/wire"
	"github.com/keyshift/keyshift/internal/xds/xdstest"
)

// xdsPod is a pod as the injector leaves it, and a token bound to it.
type xdsPod struct {
	ns, name, uid, token string
}

func makeXDSPod(t *testing.T, client kubernetes.Interface, ns, name, keysets string, audience string) *xdsPod {
	t.Helper()
	ctx := context.Background()
	pod, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{
			annotation.Status: "injected", annotation.Keysets: keysets,
		}},
		Spec: corev1.PodSpec{ServiceAccountName: "app", Containers: []corev1.Container{{Name: "app", Image: "example-app", ImagePullPolicy: corev1.PullNever}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "app", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: ptrTo(int64(600)),
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &xdsPod{ns: ns, name: name, uid: string(pod.UID), token: tr.Status.Token}
}

func ptrTo[T any](v T) *T { return &v }

// xdsAskWith opens a raw SDS stream over creds with token ("" for none),
// asks as node for names, and returns the first response's keyset
// documents or the error.
func xdsAskWith(creds grpc.DialOption, addr, token, node string, names ...string) (map[string]*keyset.Keyset, error) {
	conn, err := grpc.NewClient(addr, creds)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := xdstest.Subscribe(ctx, conn, token, node, names...)
	if err != nil {
		return nil, err
	}
	resp, err := st.Recv()
	if err != nil {
		return nil, err
	}
	out := map[string]*keyset.Keyset{}
	for _, a := range resp.GetResources() {
		name, doc, err := wire.Decode(a)
		if err != nil {
			return nil, err
		}
		if out[name], err = keyset.Parse(doc); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Authenticated xDS against a real API server: TokenReview of projected,
// pod-bound tokens; pods scoped to their namespace and to the keysets
// they name. Each way in that finding 1 of the security review named is
// refused, none sees a keyset, and none counts as a subscriber.
func TestXDSAccessAgainstRealAPIServer(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t)
	client := c.kube
	for _, ns := range []string{"shop", "other"} {
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// No controller-manager runs here to make ServiceAccounts.
		if _, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if injector.XDSAudience != kube.DefaultXDSAudience {
		t.Fatalf("the injector projects tokens for %q, the controller expects %q", injector.XDSAudience, kube.DefaultXDSAudience)
	}
	podA := makeXDSPod(t, client, "shop", "pod-a", "payments", kube.DefaultXDSAudience)
	podB := makeXDSPod(t, client, "shop", "pod-b", "orders", kube.DefaultXDSAudience)
	podX := makeXDSPod(t, client, "other", "pod-x", "payments", kube.DefaultXDSAudience)
	apiTok := makeXDSPod(t, client, "shop", "pod-api", "payments", "https://kubernetes.default.svc")

	// Keyset "payments" in both namespaces, and the controller, as
	// `keyshift controller` runs it, managing every namespace.
	docs := map[string]*keyset.Keyset{}
	store := &kube.SecretStore{Client: client}
	for _, ns := range []string{"shop", "other"} {
		kek := filepath.Join(t.TempDir(), "kek.json")
		ks, err := rotation.Create(ctx, local.New(kek), "payments", "local://"+kek, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		docs[ns] = ks
		if err := store.Create(ctx, ns+"/payments", ks); err != nil {
			t.Fatal(err)
		}
	}
	ctl := startController(t, ctx, controller.Config{Kube: client, XDSAddr: "127.0.0.1:0",
		KMS: kms.Registry{local.Scheme: local.Open}, KMSPolicy: rotation.KMSPolicy{Allow: map[string][]string{"*": {"local://"}}},
		Interval: time.Minute, Identity: "e2e"})
	addr := ctl.XDSAddr()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(xdsCABundle(t, client, "shop")) {
		t.Fatal("the controller's CA bundle holds no certificate")
	}
	verified := grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "keyshift-controller.keyshift-system.svc"}))
	xdsAsk := func(addr, token, node string, names ...string) (map[string]*keyset.Keyset, error) {
		return xdsAskWith(verified, addr, token, node, names...)
	}

	// The legitimate pod is served its own namespace's keyset (the pod
	// cache may take a moment to see the new pod).
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := xdsAsk(addr, podA.token, "shop/pod-a", "payments")
		if err == nil {
			if string(got["payments"].Versions[0].WrappedKey) != string(docs["shop"].Versions[0].WrappedKey) {
				t.Fatal("shop/pod-a was served another namespace's keyset")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shop/pod-a, with its own token, was refused: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	got, err := xdsAsk(addr, podX.token, "other/pod-x", "payments")
	if err != nil {
		t.Fatal(err)
	}
	if string(got["payments"].Versions[0].WrappedKey) != string(docs["other"].Versions[0].WrappedKey) {
		t.Fatal("other/pod-x was served shop's keyset of the same name")
	}

	refused := []struct {
		name, token, node string
		code              codes.Code
		msg               string
	}{
		{"no credentials", "", "shop/pod-a", codes.Unauthenticated, "no bearer token"},
		{"garbage token", "not-a-jwt", "shop/pod-a", codes.Unauthenticated, "token refused"},
		{"token for the API server's audience", apiTok.token, "shop/pod-api", codes.Unauthenticated, "token refused"},
		{"another namespace's token as a shop pod", podX.token, "shop/pod-a", codes.PermissionDenied, "is not the authenticated pod other/pod-x"},
		{"forged node id", podB.token, "shop/pod-a", codes.PermissionDenied, "is not the authenticated pod shop/pod-b"},
		{"a keyset the pod does not name", podB.token, "shop/pod-b", codes.PermissionDenied, "does not name keyset payments"},
	}
	for _, r := range refused {
		t.Run(r.name, func(t *testing.T) {
			got, err := xdsAsk(addr, r.token, r.node, "payments")
			if err == nil {
				t.Fatalf("served %d keysets, want %s", len(got), r.code)
			}
			if status.Code(err) != r.code || !strings.Contains(status.Convert(err).Message(), r.msg) {
				t.Fatalf("got %v, want %s with %q", err, r.code, r.msg)
			}
		})
	}
	// A replayed token: pod-a is gone, its token with it. The pod cache
	// refuses it at once; the API server's TokenReview, which checks the
	// bound pod through caches of its own, soon refuses it too.
	if err := client.CoreV1().Pods("shop").Delete(ctx, "pod-a", metav1.DeleteOptions{GracePeriodSeconds: ptrTo(int64(0))}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		_, err := xdsAsk(addr, podA.token, "shop/pod-a", "payments")
		if status.Code(err) != codes.Unauthenticated && status.Code(err) != codes.PermissionDenied {
			t.Fatalf("the token of a deleted pod was not refused: %v", err)
		}
		if status.Code(err) == codes.Unauthenticated {
			t.Logf("replayed token of the deleted pod: %v", err)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token of a deleted pod still works: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// None of the refused streams is a subscriber that could hold up a
	// rotation (the served ones have closed).
	if st := ctl.XDS().Status("shop", "payments", 1); len(st.Subscribers) != 0 {
		t.Fatalf("subscribers of shop/payments after every stream closed: %v", st.Subscribers)
	}
}
