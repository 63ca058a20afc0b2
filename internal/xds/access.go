package xds

import (
	"context"
	"strings"
	"time"
	"unicode"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/xds/wire"
)

// Identity is who an xDS stream authenticated as: one pod.
type Identity struct {
	// Namespace and Pod name the pod; PodUID tells it from a later pod of
	// the same name.
	Namespace, Pod, PodUID string
	// ServiceAccount is the pod's service account name.
	ServiceAccount string
	// Expires is when the credential stops being valid; the stream is
	// closed then and the sidecar redials with a fresh one. Zero: never.
	Expires time.Time
}

// NodeID is the xDS node ID the pod must present: namespace/pod.
func (id Identity) NodeID() string { return wire.NodeID(id.Namespace, id.Pod) }

// Access decides who may subscribe and to what. A Server without Access
// is open: anyone who reaches it reads every keyset, which is only for a
// controller on loopback or a Unix socket (keyshift demo, tests).
type Access struct {
	// Authenticate establishes the identity of a new stream from its
	// context (gRPC metadata and peer). An error refuses the stream with
	// codes.Unauthenticated.
	Authenticate func(ctx context.Context) (Identity, error)
	// Authorize reports whether id may read the keyset of that name in
	// its own namespace. An error refuses the request with
	// codes.PermissionDenied.
	Authorize func(ctx context.Context, id Identity, keyset string) error
}

type identityKey struct{}

func withIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

func identityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// scopeHash groups nodes into snapshots by the namespace they
// authenticated in, so a stream can only ever be served its own
// namespace's keysets. OnStreamRequest refuses a node ID other than the
// authenticated one before the cache sees it, so the namespace part of the
// node ID is the authenticated namespace. An open server has one scope.
type scopeHash struct{ open bool }

func (h scopeHash) ID(node *core.Node) string {
	if h.open {
		return ""
	}
	ns, _, _ := wire.SplitNodeID(node.GetId())
	return ns
}

// authorize checks one request of an authenticated stream: its node ID is
// the pod's own, and it asks only for keysets the pod may read.
func (s *Server) authorize(str *stream, node string, names []string) error {
	if len(names) == 0 {
		// An empty list is a wildcard subscription in xDS: every keyset
		// of the snapshot.
		return status.Error(codes.InvalidArgument, "xds: name the keysets to subscribe to; wildcard subscriptions are not served")
	}
	for _, n := range names {
		if _, ok := wire.KeysetName(n); !ok {
			return status.Errorf(codes.InvalidArgument, "xds: resource %q is not a keyset (%sNAME)", clip(n), wire.ResourcePrefix)
		}
	}
	if s.access == nil {
		return nil
	}
	id := str.ident
	if node != id.NodeID() {
		return status.Errorf(codes.PermissionDenied, "xds: node id %q is not the authenticated pod %s", clip(node), id.NodeID())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range names {
		name, _ := wire.KeysetName(n)
		if err := s.access.Authorize(ctx, id, name); err != nil {
			return status.Errorf(codes.PermissionDenied, "xds: pod %s may not read keyset %s/%s: %v", id.NodeID(), id.Namespace, clip(name), err)
		}
	}
	return nil
}

// clip bounds a peer-supplied string before it reaches a log, an error,
// an Event or the audit trail: at most 200 bytes, printable only.
func clip(s string) string {
	const most = 200
	if len(s) > most {
		s = s[:most] + "…"
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}

// expiredErr ends a stream whose credential expired.
func expiredErr(id Identity) error {
	return status.Errorf(codes.Unauthenticated, "xds: the credential of %s expired at %s; redial with the renewed token", id.NodeID(), id.Expires.UTC().Format(time.RFC3339))
}
