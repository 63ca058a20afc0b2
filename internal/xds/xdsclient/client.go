// Package xdsclient is the sidecar's side of keyset distribution: a small
// state-of-the-world SDS client that applies each pushed keyset document
// and ACKs only once it is in use. It imports only the few Envoy protos it
// speaks, not go-control-plane's server, to keep the sidecar small.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// Client subscribes a sidecar to its keysets over SDS. Each pushed document
// goes to Apply; the response is ACKed only if every document applied, and
// NACKed with the error otherwise, so the controller learns which version
// each sidecar actually serves. The client reconnects with capped,
// jittered backoff for as long as its context lives; the sidecar keeps
// serving its current keyring meanwhile.
//
// Every attempt dials a new connection. Only the leading controller
// replica serves (a follower refuses with codes.Unavailable, and a replica
// that steps down closes its streams); a new TCP connection is what lets
// the Service route the retry to the current leader, where a reused one
// would stay pinned to the replica that refused.
type Client struct {
	// Addr is the controller's xDS address (host:port, or unix:///path).
	Addr string
	// NodeID identifies this sidecar (namespace/pod).
	NodeID string
	// Keysets are the keyset names to subscribe to.
	Keysets []string
	// Apply loads one keyset document; an error NACKs it.
	Apply func(ctx context.Context, name string, doc []byte) error
	// Log receives connection events; never documents.
	Log *slog.Logger
	// DialOptions replace the default (insecure, for a loopback or mesh-
	// protected controller address).
	DialOptions []grpc.DialOption
	// MinBackoff and MaxBackoff bound reconnect delays (250ms and 30s when zero).
	MinBackoff, MaxBackoff time.Duration
}

// Run subscribes until ctx is done.
func (c *Client) Run(ctx context.Context) error {
	if c.NodeID == "" || len(c.Keysets) == 0 || c.Apply == nil {
		return errors.New("xds: client needs a node id, keysets and an apply function")
	}
	minB, maxB := c.MinBackoff, c.MaxBackoff
	if minB <= 0 {
		minB = 250 * time.Millisecond
	}
	if maxB <= 0 {
		maxB = 30 * time.Second
	}
	// gRPC's own reconnect backoff (up to 120 s by default) would outlast
	// ours while no replica is reachable, e.g. during a leader change.
	opts := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: minB, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxB},
		MinConnectTimeout: 10 * time.Second,
	})}
	if c.DialOptions == nil {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	opts = append(opts, c.DialOptions...)
	probe, err := grpc.NewClient(c.Addr, opts...) // a bad address never gets better
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	probe.Close()
	delay := minB
	for ctx.Err() == nil {
		start := time.Now()
		err := c.attempt(ctx, opts)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			delay = minB // the stream was healthy for a while
		}
		d := delay/2 + rand.N(delay/2+1)
		if status.Code(err) == codes.Unavailable {
			c.Log.Info("xDS stream refused or closed by the controller; redialling (only the leader serves)", "addr", c.Addr, "err", err, "retry_in", d)
		} else {
			c.Log.Warn("xDS stream ended; keeping the current keyring and reconnecting", "addr", c.Addr, "err", err, "retry_in", d)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		delay = min(delay*2, maxB)
	}
	return nil
}

// attempt runs one session on a connection of its own.
func (c *Client) attempt(ctx context.Context, opts []grpc.DialOption) error {
	conn, err := grpc.NewClient(c.Addr, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	return c.session(ctx, secretservice.NewSecretDiscoveryServiceClient(conn))
}

func (c *Client) session(ctx context.Context, sds secretservice.SecretDiscoveryServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := sds.StreamSecrets(ctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	names := make([]string, len(c.Keysets))
	for i, n := range c.Keysets {
		names[i] = ResourceName(n)
	}
	node := &core.Node{Id: c.NodeID}
	req := &discovery.DiscoveryRequest{Node: node, TypeUrl: SecretType, ResourceNames: names}
	if err := st.Send(req); err != nil {
		return streamErr(st, err)
	}
	c.Log.Info("xDS subscribed", "addr", c.Addr, "node", c.NodeID, "keysets", c.Keysets)
	acked := ""
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		var errs []string
		for _, a := range resp.GetResources() {
			name, doc, err := Decode(a)
			if err == nil {
				err = c.Apply(ctx, name, doc)
			}
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			}
		}
		next := &discovery.DiscoveryRequest{Node: node, TypeUrl: SecretType, ResourceNames: names, ResponseNonce: resp.GetNonce()}
		if len(errs) > 0 {
			next.VersionInfo = acked
			next.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: strings.Join(errs, "; ")}
		} else {
			acked = resp.GetVersionInfo()
			next.VersionInfo = acked
		}
		if err := st.Send(next); err != nil {
			return streamErr(st, err)
		}
	}
}

// streamErr returns why a stream ended when Send failed: gRPC reports a
// stream the server ended (such as a follower's "not the leader") as
// io.EOF on Send and gives the status to Recv.
func streamErr(st grpc.ClientStream, err error) error {
	if errors.Is(err, io.EOF) {
		if rerr := st.RecvMsg(new(discovery.DiscoveryResponse)); rerr != nil {
			return rerr
		}
	}
	return err
}

// SecretType is the SDS type URL keysets travel as.
const SecretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// ResourcePrefix starts every keyset resource name.
const ResourcePrefix = "keyshift/"

// ResourceName is the xDS resource name of keyset name.
func ResourceName(name string) string { return ResourcePrefix + name }

// Decode extracts the keyset name and document from an SDS resource.
func Decode(a *anypb.Any) (name string, doc []byte, err error) {
	var sec tlsv3.Secret
	if err := a.UnmarshalTo(&sec); err != nil {
		return "", nil, fmt.Errorf("xds: resource is not a Secret: %w", err)
	}
	if !strings.HasPrefix(sec.GetName(), ResourcePrefix) {
		return "", nil, fmt.Errorf("xds: resource %q is not a keyshift keyset", sec.GetName())
	}
	b := sec.GetGenericSecret().GetSecret().GetInlineBytes()
	if len(b) == 0 {
		return "", nil, fmt.Errorf("xds: resource %q carries no inline bytes", sec.GetName())
	}
	return strings.TrimPrefix(sec.GetName(), ResourcePrefix), b, nil
}
