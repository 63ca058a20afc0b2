package controller

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/wire"
)

// firstResponse opens an SDS stream for keyset "orders" and returns the
// first response or the error that ended the stream.
func firstResponse(t *testing.T, addr string) (*discovery.DiscoveryResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := secretservice.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return nil, err
	}
	// A refused stream fails Send with io.EOF; Recv returns the status.
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "ns/pod"}, TypeUrl: wire.SecretType, ResourceNames: []string{wire.ResourceName("orders")}}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return st.Recv()
}

// A replica serves xDS only during its leadership term: the keysets are
// published before the first stream is accepted and its pod carries the
// leader label; when the term ends the label goes and streams are refused.
func TestLeadTermServesOnlyWhileLeading(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek.json")
	ks, err := rotation.Create(context.Background(), local.New(kek), "orders", "local://"+kek, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := keyset.WriteFile(filepath.Join(dir, "orders.json"), ks); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := xds.NewServer(context.Background(), log, nil)
	x.SetActive(false)
	g := grpc.NewServer()
	x.Register(g)
	go func() { _ = g.Serve(l) }()
	defer g.Stop()
	client := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ctl-a", Namespace: "keyshift-system"}})
	term := leadTerm{
		eng:      &rotation.Engine{Store: &rotation.FileStore{Dir: dir}, KMS: kms.Registry{local.Scheme: local.Open}, Dist: x, Log: log, Actor: "test"},
		xds:      x,
		pod:      &kube.LeaderPod{Client: client, Namespace: "keyshift-system", Name: "ctl-a", Log: log},
		interval: time.Hour,
		log:      log,
	}
	role := func() string {
		p, err := client.CoreV1().Pods("keyshift-system").Get(context.Background(), "ctl-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Labels[kube.RoleLabel]
	}

	if _, err := firstResponse(t, l.Addr().String()); status.Code(err) != codes.Unavailable {
		t.Fatalf("before leading: %v, want Unavailable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); term.run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !x.Active() || role() != kube.RoleLeader {
		if time.Now().After(deadline) {
			t.Fatalf("leading: active %v, role %q", x.Active(), role())
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := firstResponse(t, l.Addr().String())
	if err != nil || len(resp.GetResources()) != 1 {
		t.Fatalf("first response while leading: %v, %v; want the keyset at once", resp, err)
	}

	cancel()
	<-done
	if x.Active() || role() != "" {
		t.Fatalf("after the term: active %v, role %q", x.Active(), role())
	}
	if _, err := firstResponse(t, l.Addr().String()); status.Code(err) != codes.Unavailable {
		t.Fatalf("after leading: %v, want Unavailable", err)
	}
}
