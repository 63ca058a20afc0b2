package xds_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/wire"
	"github.com/keyshift/keyshift/internal/xds/xdsclient"
	"github.com/keyshift/keyshift/internal/xds/xdstest"
)

// replica is one controller replica's xDS server on real loopback gRPC.
type replica struct {
	x    *xds.Server
	addr string
}

func startReplica(t *testing.T, active bool) *replica {
	t.Helper()
	x, addr := xdstest.Serve(t, active)
	return &replica{x: x, addr: addr}
}

// keysets returns keyset "payments" at v1 and the same keyset with v2 pending.
func keysets(t *testing.T) (v1, v2 *keyset.Keyset) {
	t.Helper()
	ctx := context.Background()
	kek := filepath.Join(t.TempDir(), "kek.json")
	w := local.New(kek)
	v1, err := rotation.Create(ctx, w, "payments", "local://"+kek, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v2, err = rotation.AddVersion(ctx, w, v1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return v1, v2
}

func publish(t *testing.T, r *replica, ks *keyset.Keyset) {
	t.Helper()
	if err := r.x.Publish(context.Background(), "", ks); err != nil {
		t.Fatal(err)
	}
}

// subscribe opens a raw SDS stream for "payments" as node, without
// credentials (the open servers of these tests need none).
func subscribe(t *testing.T, addr, node string) secretservice.SecretDiscoveryService_StreamSecretsClient {
	t.Helper()
	return open(t, addr, "", node, "payments")
}

func wantUnavailable(t *testing.T, err error, msg string) {
	t.Helper()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("got %v, want codes.Unavailable with %q", err, msg)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A follower refuses streams and fetches with Unavailable, the code
// clients retry on, even when it holds a snapshot: it is not where ACKs
// are counted.
func TestXDSFollowerRefusesStreams(t *testing.T) {
	v1, _ := keysets(t)
	f := startReplica(t, false)
	publish(t, f, v1)
	_, err := subscribe(t, f.addr, "ns/pod-a").Recv()
	wantUnavailable(t, err, "not the leader")

	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = secretservice.NewSecretDiscoveryServiceClient(conn).FetchSecrets(context.Background(),
		&discovery.DiscoveryRequest{Node: nodeProto("ns/pod-a"), TypeUrl: wire.SecretType, ResourceNames: []string{wire.ResourceName("payments")}})
	// One-off fetches are not served at all: they have no stream to
	// scope, authorise and count.
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchSecrets: %v, want Unimplemented", err)
	}
	if st := f.x.Status("", "payments", 1); len(st.Subscribers) != 0 {
		t.Fatalf("a follower counts subscribers %v", st.Subscribers)
	}
}

// A leader that steps down closes its open streams with Unavailable, and
// forgets their subscriptions; once it leads again it serves its full
// snapshot from the first response.
func TestXDSStepDownClosesStreams(t *testing.T) {
	v1, _ := keysets(t)
	l := startReplica(t, true)
	publish(t, l, v1)
	st := subscribe(t, l.addr, "ns/pod-a")
	resp, err := st.Recv()
	if err != nil || len(resp.GetResources()) != 1 {
		t.Fatalf("leader's first response: %v, %v", resp, err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: nodeProto("ns/pod-a"), TypeUrl: wire.SecretType,
		ResourceNames: []string{wire.ResourceName("payments")}, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return slices.Equal(l.x.Status("", "payments", 1).Acked, []string{"ns/pod-a"}) }, "the leader counts the ACK")

	l.x.SetActive(false)
	_, err = st.Recv()
	wantUnavailable(t, err, "stopped leading")
	waitFor(t, func() bool { return len(l.x.Status("", "payments", 1).Subscribers) == 0 }, "the closed stream is forgotten")
	_, err = subscribe(t, l.addr, "ns/pod-a").Recv()
	wantUnavailable(t, err, "not the leader")

	l.x.SetActive(true)
	resp, err = subscribe(t, l.addr, "ns/pod-a").Recv()
	if err != nil || len(resp.GetResources()) != 1 {
		t.Fatalf("first response after leading again: %v, %v", resp, err)
	}
}

// The sidecar's client, behind a balancer that spreads connections over
// both replicas as the shipped Service did, is refused by the follower,
// redials, and lands on the leader, whose ACK count includes it. When
// leadership moves, the old leader closes the stream and the client
// follows to the new one.
func TestXDSClientLandsOnLeader(t *testing.T) {
	v1, v2 := keysets(t)
	a, b := startReplica(t, true), startReplica(t, false)
	publish(t, a, v1)
	bal := xdstest.NewBalancer(t, b.addr, a.addr) // the first connection goes to the follower
	var mu sync.Mutex
	var applied []uint32
	c := &xdsclient.Client{
		Addr: bal.Addr, Insecure: true, NodeID: "ns/pod-a", Keysets: []string{"payments"}, Log: slog.New(slog.DiscardHandler),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Apply: func(_ context.Context, _ string, doc []byte) error {
			ks, err := keyset.Parse(doc)
			if err != nil {
				return err
			}
			mu.Lock()
			applied = append(applied, ks.Latest())
			mu.Unlock()
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, func() bool { return slices.Equal(a.x.Status("", "payments", 1).Acked, []string{"ns/pod-a"}) }, "the leader counts the sidecar's ACK")
	if d := bal.Dials(); len(d) < 2 || d[0] != b.addr || d[len(d)-1] != a.addr {
		t.Fatalf("connections went to %v; want the follower first, then the leader (%s) on a new connection", d, a.addr)
	}

	// Leadership moves to b: it publishes first, then serves; a steps down.
	publish(t, b, v2)
	b.x.SetActive(true)
	a.x.SetActive(false)
	waitFor(t, func() bool { return slices.Equal(b.x.Status("", "payments", 2).Acked, []string{"ns/pod-a"}) }, "the new leader counts the sidecar's ACK of v2")
	mu.Lock()
	defer mu.Unlock()
	if applied[len(applied)-1] != 2 {
		t.Fatalf("applied %v, want v2 last", applied)
	}
}

func nodeProto(id string) *core.Node { return &core.Node{Id: id} }
