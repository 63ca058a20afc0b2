package xds

import (
	"context"
	"errors"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errNotLeader refuses a stream on an inactive replica. Unavailable is the
// code xDS clients retry on: the sidecar redials, and the Service that
// selects only the leader's pod sends the new connection there.
var errNotLeader = status.Error(codes.Unavailable, "xds: this controller replica is not the leader; reconnect to reach the leader")

// errSteppedDown ends the open streams of a replica that stopped leading.
var errSteppedDown = status.Error(codes.Unavailable, "xds: this controller replica stopped leading; reconnect to reach the new leader")

// SetActive turns serving on or off. A controller under leader election
// keeps its Server inactive while another replica leads, because only the
// leader publishes and counts ACKs: a sidecar subscribed to a follower
// would get an empty snapshot and its ACK would never reach the rotation.
// Inactive, the Server refuses new streams with codes.Unavailable ("not
// the leader") and closes every open one, so sidecars reconnect to the
// leader. Activate it only after publishing every keyset, so no subscriber
// is ever served a snapshot without its keyset.
func (s *Server) SetActive(active bool) {
	s.mu.Lock()
	changed := s.active != active
	s.active = active
	if active && changed {
		s.since = time.Now()
	}
	var closers []func()
	if !active {
		for _, c := range s.closers {
			closers = append(closers, c)
		}
	}
	s.mu.Unlock()
	for _, c := range closers {
		c()
	}
	if changed {
		s.log.Info("xDS serving changed", "active", active, "closed_streams", len(closers))
	}
}

// Active reports whether the Server accepts streams.
func (s *Server) Active() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// ServingSince reports when the Server last became active. Sidecars that
// were subscribed to another replica have had only since then to
// reconnect here and ACK.
func (s *Server) ServingSince() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.since
}

// admit authenticates a new stream and registers it, or refuses it when
// the Server is inactive or the stream has no valid credential. Checking
// and registering under one lock means SetActive(false) never misses a
// stream that was being admitted.
func (s *Server) admit(st secretservice.SecretDiscoveryService_StreamSecretsServer) (*gatedStream, error) {
	if !s.Active() {
		return nil, errNotLeader // before any TokenReview
	}
	ctx := st.Context()
	var ident Identity
	if s.access != nil {
		var err error
		if ident, err = s.access.Authenticate(ctx); err != nil {
			s.log.Warn("xDS stream refused: not authenticated", "err", err)
			return nil, status.Errorf(codes.Unauthenticated, "xds: %v", err)
		}
		ctx = withIdentity(ctx, ident)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		return nil, errNotLeader
	}
	var cancel context.CancelFunc
	if ident.Expires.IsZero() {
		ctx, cancel = context.WithCancel(ctx)
	} else {
		ctx, cancel = context.WithDeadline(ctx, ident.Expires)
	}
	gs := &gatedStream{SecretDiscoveryService_StreamSecretsServer: st, ctx: ctx, ident: ident}
	s.closers[gs] = cancel
	return gs, nil
}

// release forgets a finished stream.
func (s *Server) release(gs *gatedStream) {
	s.mu.Lock()
	cancel := s.closers[gs]
	delete(s.closers, gs)
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// gate is the SDS service as registered: go-control-plane's, behind the
// Server's active switch.
type gate struct {
	secretservice.SecretDiscoveryServiceServer
	s *Server
}

// StreamSecrets serves one sidecar's stream while the Server is active.
func (g gate) StreamSecrets(st secretservice.SecretDiscoveryService_StreamSecretsServer) error {
	gs, err := g.s.admit(st)
	if err != nil {
		return err
	}
	defer g.s.release(gs)
	err = g.SecretDiscoveryServiceServer.StreamSecrets(gs)
	switch {
	case st.Context().Err() != nil:
		return err
	case errors.Is(gs.ctx.Err(), context.DeadlineExceeded):
		return expiredErr(gs.ident)
	case gs.ctx.Err() != nil:
		return errSteppedDown
	}
	return err
}

// FetchSecrets is not served: a one-off fetch has no stream to scope,
// authorise and count, and sidecars stream.
func (g gate) FetchSecrets(context.Context, *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	return nil, status.Error(codes.Unimplemented, "xds: FetchSecrets is not served; use StreamSecrets")
}

// gatedStream is a stream the Server can end on its own. go-control-plane
// stops a stream only when Recv fails or its whole server stops, so Recv
// here also fails once ctx, cancelled by SetActive(false), is done.
type gatedStream struct {
	secretservice.SecretDiscoveryService_StreamSecretsServer
	ctx   context.Context
	ident Identity
}

// Context is the stream's context, cancelled on step-down too.
func (g *gatedStream) Context() context.Context { return g.ctx }

// Recv returns the next request, or an error once the stream is closed.
// The inner Recv left running on close returns as soon as the handler
// does and gRPC ends the call.
func (g *gatedStream) Recv() (*discovery.DiscoveryRequest, error) {
	type result struct {
		req *discovery.DiscoveryRequest
		err error
	}
	ch := make(chan result, 1)
	go func() {
		req, err := g.SecretDiscoveryService_StreamSecretsServer.Recv()
		ch <- result{req, err}
	}()
	select {
	case r := <-ch:
		return r.req, r.err
	case <-g.ctx.Done():
		return nil, status.FromContextError(g.ctx.Err()).Err()
	}
}
