package xds_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/usagev1"
	"github.com/keyshift/keyshift/internal/xds/wire"
)

// sink keeps what the server hands it.
type sink struct {
	mu   sync.Mutex
	ids  []xds.Identity
	recs []*usagev1.Record
}

func (s *sink) Report(_ context.Context, id xds.Identity, recs []*usagev1.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids = append(s.ids, id)
	s.recs = append(s.recs, recs...)
}

func report(t *testing.T, addr, token, node string, recs ...*usagev1.Record) (*usagev1.ReportResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, wire.AuthorizationKey, wire.Bearer(token))
	}
	return usagev1.NewKeyUsageClient(conn).Report(ctx, &usagev1.ReportRequest{NodeId: node, Records: recs})
}

// Usage reports take the same authentication as keyset streams, and a pod
// can only report against the keysets it may use: a record naming another
// keyset is kept, but under none, so no pod can add holders to, or raise
// alerts on, a keyset it does not use.
func TestUsageReportsAuthenticated(t *testing.T) {
	tk := tokens{
		ids:     map[string]xds.Identity{"tok-a": {Namespace: "shop", Pod: "pod-a", PodUID: "u1", ServiceAccount: "web"}},
		allowed: map[string]bool{"shop/pod-a/payments": true},
	}
	x, addr, _ := secureServer(t, tk)
	rec := &usagev1.Record{Keyset: "payments", Version: 1, Op: "decrypt", Ok: 5, PeerUid: 1000, Failed: map[string]uint64{"auth_failed": 2}}
	if _, err := report(t, addr, "tok-a", "shop/pod-a", rec); status.Code(err) != codes.Unimplemented {
		t.Fatalf("without a sink: %v, want Unimplemented", err)
	}
	var got sink
	x.SetUsage(&got)
	cases := []struct {
		name, token, node string
		code              codes.Code
		msg               string
	}{
		{"no credentials", "", "shop/pod-a", codes.Unauthenticated, "no bearer token"},
		{"forged token", "forged", "shop/pod-a", codes.Unauthenticated, "token refused"},
		{"forged node id", "tok-a", "bank/pod-b", codes.PermissionDenied, "is not the authenticated pod shop/pod-a"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := report(t, addr, c.token, c.node, rec)
			if status.Code(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %s with %q", err, c.code, c.msg)
			}
		})
	}
	if len(got.recs) != 0 {
		t.Fatalf("refused reports reached the sink: %v", got.recs)
	}

	other := &usagev1.Record{Keyset: "orders", Version: 3, Op: "encrypt", Ok: 1}
	odd := &usagev1.Record{Keyset: "payments", Version: 1, Op: "exfiltrate", Failed: map[string]uint64{"made\nup": 7}}
	bad := &usagev1.Record{Keyset: "../payments", Version: 1, Op: "decrypt", Ok: 1}
	resp, err := report(t, addr, "tok-a", "shop/pod-a", rec, other, odd, bad)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAccepted() != 2 {
		t.Errorf("accepted %d records under their keyset, want 2", resp.GetAccepted())
	}
	if len(got.ids) != 1 || got.ids[0].NodeID() != "shop/pod-a" || got.ids[0].ServiceAccount != "web" {
		t.Fatalf("sink got identities %+v, want the authenticated pod", got.ids)
	}
	want := []string{"payments v1 decrypt ok 5 failed map[auth_failed:2]", " v0 encrypt ok 1 failed map[]", "payments v1 other ok 0 failed map[other:7]", " v0 decrypt ok 1 failed map[]"}
	if len(got.recs) != len(want) {
		t.Fatalf("sink got %d records, want %d", len(got.recs), len(want))
	}
	for i, r := range got.recs {
		if s := fmt.Sprintf("%s v%d %s ok %d failed %v", r.GetKeyset(), r.GetVersion(), r.GetOp(), r.GetOk(), r.GetFailed()); s != want[i] {
			t.Errorf("record %d: %q, want %q", i, s, want[i])
		}
	}

	x.SetActive(false)
	if _, err := report(t, addr, "tok-a", "shop/pod-a", rec); status.Code(err) != codes.Unavailable {
		t.Fatalf("a follower took a report: %v", err)
	}
}
