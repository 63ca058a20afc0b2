package xds_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/wire"
	"github.com/keyshift/keyshift/internal/xds/xdstest"
)

// tokens is an Access whose credentials are fixed bearer strings, so the
// server's own rules (identity, node ID, namespace scope, authorisation,
// expiry) are tested here; the TokenReview behind the real Access runs
// against a real API server in test/e2e.
type tokens struct {
	ids     map[string]xds.Identity
	allowed map[string]bool // namespace/pod/keyset
}

func (tk tokens) access() *xds.Access {
	return &xds.Access{
		Authenticate: func(ctx context.Context) (xds.Identity, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			v := md.Get(wire.AuthorizationKey)
			if len(v) != 1 {
				return xds.Identity{}, errors.New("no bearer token")
			}
			tok, _ := wire.ParseBearer(v[0])
			id, ok := tk.ids[tok]
			if !ok {
				return xds.Identity{}, errors.New("token refused")
			}
			return id, nil
		},
		Authorize: func(_ context.Context, id xds.Identity, ks string) error {
			if !tk.allowed[id.NodeID()+"/"+ks] {
				return fmt.Errorf("not allowed")
			}
			return nil
		},
	}
}

// secureServer serves "payments" in namespaces shop and bank (different
// documents) behind tk.
func secureServer(t *testing.T, tk tokens) (*xds.Server, string, map[string]*keyset.Keyset) {
	t.Helper()
	x, addr := xdstest.ServeWith(t, true, tk.access(), nil)
	shop, _ := keysets(t)
	bank, _ := keysets(t)
	for ns, ks := range map[string]*keyset.Keyset{"shop": shop, "bank": bank} {
		if err := x.Publish(context.Background(), ns, ks); err != nil {
			t.Fatal(err)
		}
	}
	return x, addr, map[string]*keyset.Keyset{"shop": shop, "bank": bank}
}

// open starts a raw SDS stream with token ("" for none) and sends one
// request as node for names.
func open(t *testing.T, addr, token, node string, names ...string) secretservice.SecretDiscoveryService_StreamSecretsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	st, err := xdstest.Subscribe(ctx, conn, token, node, names...)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func wantCode(t *testing.T, st secretservice.SecretDiscoveryService_StreamSecretsClient, code codes.Code, msg string) {
	t.Helper()
	resp, err := st.Recv()
	if err == nil {
		t.Fatalf("got %d resources, want %s (%q)", len(resp.GetResources()), code, msg)
	}
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("got %v, want %s with %q", err, code, msg)
	}
}

// Every stream that is not an authenticated pod asking, as itself, for a
// keyset it may read is refused before it sees a keyset or becomes a
// subscriber whose ACK (or silence, or NACK) promotion would wait for.
func TestAccessRefuses(t *testing.T) {
	tk := tokens{
		ids: map[string]xds.Identity{
			"tok-a":    {Namespace: "shop", Pod: "pod-a", PodUID: "u1"},
			"tok-evil": {Namespace: "evil", Pod: "pod-e", PodUID: "u9"},
		},
		allowed: map[string]bool{"shop/pod-a/payments": true, "evil/pod-e/payments": true},
	}
	x, addr, _ := secureServer(t, tk)
	cases := []struct {
		name, token, node string
		names             []string
		code              codes.Code
		msg               string
	}{
		{"no credentials", "", "shop/pod-a", []string{"payments"}, codes.Unauthenticated, "no bearer token"},
		{"unknown token", "forged", "shop/pod-a", []string{"payments"}, codes.Unauthenticated, "token refused"},
		{"forged node id", "tok-a", "shop/pod-b", []string{"payments"}, codes.PermissionDenied, "is not the authenticated pod shop/pod-a"},
		{"another namespace's node id", "tok-evil", "shop/pod-a", []string{"payments"}, codes.PermissionDenied, "is not the authenticated pod evil/pod-e"},
		{"keyset not allowed", "tok-a", "shop/pod-a", []string{"payments", "orders"}, codes.PermissionDenied, "may not read keyset shop/orders"},
		{"wildcard", "tok-a", "shop/pod-a", nil, codes.InvalidArgument, "wildcard"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantCode(t, open(t, addr, c.token, c.node, c.names...), c.code, c.msg)
			if st := x.Status("shop", "payments", 1); len(st.Subscribers) != 0 {
				t.Fatalf("a refused stream counts as a subscriber: %+v", st)
			}
		})
	}
}

// A pod is served its own namespace's keyset, never another namespace's
// keyset of the same name, and counts toward that one only.
func TestAccessScopesToNamespace(t *testing.T) {
	tk := tokens{
		ids: map[string]xds.Identity{
			"tok-a": {Namespace: "shop", Pod: "pod-a", PodUID: "u1"},
			"tok-e": {Namespace: "evil", Pod: "pod-e", PodUID: "u9"},
		},
		allowed: map[string]bool{"shop/pod-a/payments": true, "evil/pod-e/payments": true},
	}
	x, addr, docs := secureServer(t, tk)
	st := open(t, addr, "tok-a", "shop/pod-a", "payments")
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 {
		t.Fatalf("got %d resources, want 1", len(resp.GetResources()))
	}
	_, doc, err := wire.Decode(resp.GetResources()[0])
	if err != nil {
		t.Fatal(err)
	}
	got, _ := keyset.Parse(doc)
	if string(got.Versions[0].WrappedKey) != string(docs["shop"].Versions[0].WrappedKey) {
		t.Fatal("pod-a of shop was served another namespace's keyset")
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: wire.SecretType, ResourceNames: []string{wire.ResourceName("payments")}, ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(x.Status("shop", "payments", 1).Acked) == 1 }, "shop counts pod-a's ACK")
	if s := x.Status("bank", "payments", 1); len(s.Subscribers) != 0 {
		t.Fatalf("pod-a of shop counts for bank's keyset: %+v", s)
	}

	// A namespace without the keyset gets nothing, even when allowed by
	// name: its snapshot holds no "payments".
	ev := open(t, addr, "tok-e", "evil/pod-e", "payments")
	got2 := make(chan error, 1)
	go func() {
		resp, err := ev.Recv()
		if err == nil {
			err = fmt.Errorf("evil/pod-e was served %d resources", len(resp.GetResources()))
		}
		got2 <- err
	}()
	select {
	case err := <-got2:
		if status.Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.Canceled {
			t.Fatal(err)
		}
	case <-time.After(500 * time.Millisecond):
	}
	if s := x.Status("shop", "payments", 1); len(s.Subscribers) != 1 {
		t.Fatalf("shop's subscribers = %v, want pod-a only", s.Subscribers)
	}
}

// A stream lives no longer than its credential: at expiry it ends with
// Unauthenticated and the sidecar redials with its renewed token.
func TestAccessStreamEndsAtExpiry(t *testing.T) {
	tk := tokens{
		ids:     map[string]xds.Identity{"tok-a": {Namespace: "shop", Pod: "pod-a", PodUID: "u1", Expires: time.Now().Add(700 * time.Millisecond)}},
		allowed: map[string]bool{"shop/pod-a/payments": true},
	}
	_, addr, _ := secureServer(t, tk)
	st := open(t, addr, "tok-a", "shop/pod-a", "payments")
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	wantCode(t, st, codes.Unauthenticated, "expired")
}
