package controller

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/rotation/rotationtest"
)

// keysetDir is a keyset directory holding keyset "orders" under a local
// KEK, and the directory for the audit log.
func keysetDir(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	ksDir, _ := rotationtest.NewStoreDir(t, dir, "orders")
	return ksDir, dir
}

// A replica that loses its Lease stops, and Wait says why: the process
// exits non-zero and restarts, rather than run on as a second leader or
// exit as if asked to.
func TestWaitReturnsLostLeadership(t *testing.T) {
	client := fake.NewClientset()
	// The API server refuses every renewal once refuse is set (a reactor
	// added while the client is in use would race).
	var refuse atomic.Bool
	client.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		if !refuse.Load() {
			return false, nil, nil
		}
		return true, &coordinationv1.Lease{}, errors.New("test: etcd unavailable")
	})
	c, err := Start(context.Background(), Config{
		Kube: client, Namespace: "shop", LeaderElect: true, Identity: "ctl-a", LeaseDuration: time.Second,
		KMS: kms.Registry{local.Scheme: local.Open}, Interval: time.Hour, MetricsAddr: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	holder := func() string {
		l, err := client.CoordinationV1().Leases(DefaultNamespace).Get(context.Background(), DefaultLeaseName, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	deadline := time.Now().Add(10 * time.Second)
	for holder() != "ctl-a" {
		if time.Now().After(deadline) {
			t.Fatal("the controller never took the Lease")
		}
		time.Sleep(10 * time.Millisecond)
	}
	refuse.Store(true)
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the controller ran on after its Lease could not be renewed")
	}
	if err := c.Wait(); !errors.Is(err, kube.ErrLeadershipLost) {
		t.Fatalf("Wait = %v, want %v", err, kube.ErrLeadershipLost)
	}
	// Everything it served has stopped.
	if _, err := http.Get("http://" + c.MetricsAddr() + "/healthz"); err == nil {
		t.Fatal("metrics still served after the controller stopped")
	}
}

// Stopped by its context, the controller has nothing to report: Run
// returns nil, the listeners are closed and the address is free again.
func TestRunStopsCleanly(t *testing.T) {
	ksDir, dir := keysetDir(t)
	ctx, cancel := context.WithCancel(context.Background())
	c, err := Start(ctx, Config{KeysetDir: ksDir, AuditLog: filepath.Join(dir, "audit.jsonl"), XDSAddr: "127.0.0.1:0", XDSAuth: XDSAuthNone,
		MetricsAddr: "127.0.0.1:0", KMS: kms.Registry{local.Scheme: local.Open}, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !c.Leading() {
		if time.Now().After(deadline) {
			t.Fatal("the controller never served xDS")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := http.Get("http://" + c.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	if err := c.Wait(); err != nil {
		t.Fatalf("Wait after cancel = %v, want nil", err)
	}
	if c.Leading() {
		t.Fatal("still serving xDS after stopping")
	}
	l, err := net.Listen("tcp", c.XDSAddr())
	if err != nil {
		t.Fatalf("the xDS address is still held: %v", err)
	}
	l.Close()
}

// Start refuses a configuration that cannot work, saying what to set.
func TestStartRefusesBadConfig(t *testing.T) {
	ksDir, dir := keysetDir(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	reg := kms.Registry{local.Scheme: local.Open}
	trail := filepath.Join(dir, "audit.jsonl")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no store", Config{}, "no keyset store"},
		{"two stores", Config{KeysetDir: ksDir, Kube: fake.NewClientset()}, "exclude each other"},
		{"open xDS off loopback", Config{KeysetDir: ksDir, XDSAddr: ":18000", XDSAuth: XDSAuthNone}, "only for --keyset-dir with a loopback --xds-addr"},
		{"open xDS in a cluster", Config{Kube: fake.NewClientset(), XDSAddr: "127.0.0.1:0", XDSAuth: XDSAuthNone}, "only for --keyset-dir"},
		{"tokens without a cluster", Config{KeysetDir: ksDir, XDSAddr: "127.0.0.1:0"}, "--xds-auth=token checks sidecar tokens"},
		{"unknown auth", Config{KeysetDir: ksDir, XDSAddr: "127.0.0.1:0", XDSAuth: "mtls"}, `--xds-auth "mtls"`},
		{"election without identity", Config{Kube: fake.NewClientset(), LeaderElect: true}, "needs an identity"},
		{"no audit key file", Config{KeysetDir: ksDir}, "give --audit-key-file"},
		{"xDS address taken", Config{KeysetDir: ksDir, AuditLog: trail, XDSAddr: busy.Addr().String(), XDSAuth: XDSAuthNone}, "xds listener"},
		{"metrics address taken", Config{KeysetDir: ksDir, AuditLog: trail, MetricsAddr: busy.Addr().String()}, "metrics listener"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.KMS = reg
			tc.cfg.Logger = slog.New(slog.DiscardHandler)
			c, err := Start(context.Background(), tc.cfg)
			if err == nil {
				t.Cleanup(func() { c.cancel(); _ = c.Wait() })
				t.Fatalf("Start succeeded, want an error with %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
