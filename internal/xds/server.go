// Package xds is the controller's side of keyset distribution: it serves
// keyset documents to sidecars over xDS, as SDS generic-secret resources
// from go-control-plane's snapshot cache, and tracks each sidecar's ACK or
// NACK so the controller knows when a key version is loaded everywhere.
// The sidecar's side is package xdsclient; the contract both keep is
// package wire.
//
// Resource names are "keyshift/<keyset>"; the secret's inline bytes are the
// keyset JSON (wrapped keys only).
//
// With Access, every stream authenticates (a pod's projected ServiceAccount
// token, checked by TokenReview) and is scoped to its pod's namespace: its
// node ID must be the pod's own, it is served from its namespace's snapshot
// alone, and it may name only keysets the pod is allowed to read. Only such
// subscribers count toward promotion.
//
// Only an active Server serves. A leader-elected controller runs one per
// replica but keeps it inactive except while it leads: ACKs are counted
// where the rotation runs, and no sidecar waits on a replica that never
// publishes (see SetActive).
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/xds/wire"
)

// Server serves keysets to sidecars and tracks what each has acknowledged:
// the rotation engine's Distributor.
type Server struct {
	cache  cachev3.SnapshotCache
	xds    serverv3.Server
	log    *slog.Logger
	access *Access // nil: open

	mu      sync.Mutex
	docs    map[string]map[string]*keyset.Keyset // scope -> name -> document
	version int
	streams map[int64]*stream
	changed chan struct{}

	active  bool
	since   time.Time               // when active last became true
	closers map[*gatedStream]func() // open streams, to close on SetActive(false)
	usage   UsageSink               // nil: usage reports are refused
}

// stream is one sidecar's SDS stream.
var _ rotation.Distributor = (*Server)(nil)

type stream struct {
	ident  Identity // zero on an open server
	scope  string   // the namespace it is served from ("" when open)
	node   string
	names  map[string]bool
	sent   map[string]map[string]uint32 // nonce -> keyset -> latest version in it
	acked  map[string]uint32            // keyset -> latest version ACKed
	nacked map[string]nack              // keyset -> last NACK
}

type nack struct {
	version uint32
	reason  string
}

// NewServer returns an active Server with an empty snapshot. A controller
// under leader election calls SetActive(false) before it serves gRPC.
// access nil makes an open server: only for loopback or a Unix socket.
func NewServer(ctx context.Context, log *slog.Logger, access *Access) *Server {
	s := &Server{
		cache:   cachev3.NewSnapshotCache(false, scopeHash{open: access == nil}, nil),
		log:     log,
		access:  access,
		docs:    map[string]map[string]*keyset.Keyset{},
		streams: map[int64]*stream{},
		changed: make(chan struct{}),
		active:  true,
		since:   time.Now(),
		closers: map[*gatedStream]func(){},
	}
	s.xds = serverv3.NewServer(ctx, s.cache, s)
	return s
}

// Register adds the SDS and KeyUsage services to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	secretservice.RegisterSecretDiscoveryServiceServer(g, gate{s.xds, s})
	s.registerUsage(g)
}

// Publish makes ks the document served for its name in scope, the
// namespace that owns it ("" for an open server, which has one scope).
// Publishing the same document again is a no-op.
func (s *Server) Publish(ctx context.Context, scope string, ks *keyset.Keyset) error {
	if s.access == nil {
		scope = ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	docs := s.docs[scope]
	if docs == nil {
		docs = map[string]*keyset.Keyset{}
		s.docs[scope] = docs
	}
	if old, ok := docs[ks.Name]; ok && sameDoc(old, ks) {
		return nil
	}
	docs[ks.Name] = ks.Clone()
	s.version++
	var res []types.Resource
	for name, doc := range docs {
		b, err := doc.Marshal()
		if err != nil {
			return fmt.Errorf("xds: publish %s: %w", name, err)
		}
		res = append(res, wire.Encode(name, b))
	}
	snap, err := cachev3.NewSnapshot(strconv.Itoa(s.version), map[string][]types.Resource{wire.SecretType: res})
	if err != nil {
		return fmt.Errorf("xds: snapshot: %w", err)
	}
	if err := s.cache.SetSnapshot(ctx, scope, snap); err != nil {
		return fmt.Errorf("xds: set snapshot: %w", err)
	}
	s.log.Info("keyset published over xDS", "namespace", scope, "keyset", ks.Name, "latest", ks.Latest(), "primary", ks.Primary().Version, "snapshot", s.version)
	return nil
}

func sameDoc(a, b *keyset.Keyset) bool {
	x, err1 := a.Marshal()
	y, err2 := b.Marshal()
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// Status reports which subscribers of keyset name in scope hold version
// or later. On a server with Access every subscriber is an authenticated
// pod of that namespace allowed to read the keyset.
func (s *Server) Status(scope, name string, version uint32) rotation.AckStatus {
	if s.access == nil {
		scope = ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := rotation.AckStatus{NACKs: map[string]string{}}
	for _, str := range s.streams {
		if str.scope != scope || str.node == "" || !str.names[wire.ResourceName(name)] {
			continue
		}
		st.Subscribers = append(st.Subscribers, str.node)
		switch n, ok := str.nacked[name]; {
		case str.acked[name] >= version:
			st.Acked = append(st.Acked, str.node)
		case ok && n.version >= version:
			st.NACKs[str.node] = n.reason
		default:
			st.Waiting = append(st.Waiting, str.node)
		}
	}
	sort.Strings(st.Subscribers)
	sort.Strings(st.Acked)
	sort.Strings(st.Waiting)
	return st
}

// Changed returns a channel closed at the next ACK, NACK or stream change,
// so a waiting controller reacts at once instead of polling.
func (s *Server) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// OnStreamOpen implements the go-control-plane callbacks.
func (s *Server) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	if typeURL != wire.SecretType && typeURL != "" {
		return fmt.Errorf("xds: only %s is served", wire.SecretType)
	}
	str := &stream{names: map[string]bool{}, sent: map[string]map[string]uint32{}, acked: map[string]uint32{}, nacked: map[string]nack{}}
	if s.access != nil {
		ident, ok := identityFrom(ctx)
		if !ok {
			return status.Error(codes.Unauthenticated, "xds: stream without an authenticated identity")
		}
		str.ident, str.scope = ident, ident.Namespace
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[id] = str
	return nil
}

// OnStreamClosed forgets the stream: a departed sidecar no longer blocks promotion.
func (s *Server) OnStreamClosed(id int64, node *core.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, id)
	s.log.Info("xDS stream closed", "node", node.GetId())
	s.notify()
}

// OnStreamRequest records subscriptions and turns ACKs and NACKs into
// per-node state.
func (s *Server) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	str, ok := s.streams[id]
	if !ok {
		return nil
	}
	node := str.node
	if n := req.GetNode().GetId(); n != "" {
		node = n
	}
	if node == "" {
		return status.Error(codes.InvalidArgument, "xds: request without node id")
	}
	if err := s.authorize(str, node, req.GetResourceNames()); err != nil {
		s.log.Warn("xDS request refused", "node", clip(node), "identity", str.ident.NodeID(), "err", err)
		return err
	}
	str.node = node
	str.names = map[string]bool{}
	for _, n := range req.GetResourceNames() {
		str.names[n] = true
	}
	if nonce := req.GetResponseNonce(); nonce != "" {
		sent := str.sent[nonce]
		for name, v := range sent {
			if d := req.GetErrorDetail(); d != nil {
				reason := clip(d.GetMessage())
				str.nacked[name] = nack{version: v, reason: reason}
				s.log.Warn("sidecar refused keyset", "node", str.node, "keyset", name, "version", v, "reason", reason)
			} else if v > str.acked[name] {
				str.acked[name] = v
				delete(str.nacked, name)
			}
		}
		delete(str.sent, nonce)
	}
	s.notify()
	return nil
}

// OnStreamResponse remembers which keyset versions went out under each nonce.
func (s *Server) OnStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	str, ok := s.streams[id]
	if !ok {
		return
	}
	m := map[string]uint32{}
	for _, a := range resp.GetResources() {
		name, doc, err := wire.Decode(a)
		if err != nil {
			continue
		}
		ks, err := keyset.Parse(doc)
		if err != nil {
			continue
		}
		m[name] = ks.Latest()
	}
	str.sent[resp.GetNonce()] = m
}

// The remaining callbacks are unused.
func (s *Server) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error         { return nil }
func (s *Server) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}
func (s *Server) OnDeltaStreamOpen(context.Context, int64, string) error {
	return fmt.Errorf("xds: delta xDS is not served; use state-of-the-world SDS")
}
func (s *Server) OnDeltaStreamClosed(int64, *core.Node) {}
func (s *Server) OnStreamDeltaRequest(int64, *discovery.DeltaDiscoveryRequest) error {
	return nil
}
func (s *Server) OnStreamDeltaResponse(int64, *discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse) {
}
