// Package xdsclient is the sidecar's side of keyset distribution: a small
// state-of-the-world SDS client that applies each pushed keyset document
// and ACKs only once it is in use. It imports only the few Envoy protos it
// speaks, not go-control-plane's server, to keep the sidecar small; what
// it shares with the controller is in package wire.
package xdsclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/xds/usagev1"
	"github.com/keyshift/keyshift/internal/xds/wire"
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
	// Log receives connection events; never documents or tokens.
	Log *slog.Logger
	// CAFile is the PEM bundle the controller's certificate must chain
	// to, and ServerName the DNS name it must carry. The file is reread
	// at every dial, so a mounted ConfigMap follows the controller's CA
	// renewal.
	CAFile, ServerName string
	// TokenFile holds the pod's projected ServiceAccount token (audience
	// wire.TokenAudience). It is reread for every stream, as the kubelet
	// renews it, and sent as a bearer token over TLS only.
	TokenFile string
	// Insecure dials without TLS and token, for a controller on loopback
	// or a Unix socket (keyshift demo); it is refused for other addresses.
	Insecure bool
	// DialOptions are added to the dial (tests).
	DialOptions []grpc.DialOption
	// MinBackoff and MaxBackoff bound reconnect delays (250ms and 30s when zero).
	MinBackoff, MaxBackoff time.Duration
}

// Run subscribes until ctx is done.
func (c *Client) Run(ctx context.Context) error {
	if c.NodeID == "" || len(c.Keysets) == 0 || c.Apply == nil {
		return errors.New("xds: client needs a node id, keysets and an apply function")
	}
	if err := c.CheckSecurity(); err != nil {
		return err
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
	opts = append(opts, c.DialOptions...)
	probe, err := grpc.NewClient(c.Addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...) // a bad address never gets better
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

// attempt runs one session on a connection of its own, with the CA bundle
// and token as they are now on disk.
func (c *Client) attempt(ctx context.Context, opts []grpc.DialOption) error {
	conn, err := c.dial(opts)
	if err != nil {
		return err
	}
	defer conn.Close()
	return c.session(ctx, secretservice.NewSecretDiscoveryServiceClient(conn))
}

// dial makes a new connection with opts and the CA bundle and token as
// they are now on disk.
func (c *Client) dial(opts []grpc.DialOption) (*grpc.ClientConn, error) {
	sec, err := c.credentials()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(c.Addr, append(append([]grpc.DialOption{}, opts...), sec...)...)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	return conn, nil
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
		names[i] = wire.ResourceName(n)
	}
	node := &core.Node{Id: c.NodeID}
	req := &discovery.DiscoveryRequest{Node: node, TypeUrl: wire.SecretType, ResourceNames: names}
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
			name, doc, err := wire.Decode(a)
			if err == nil {
				err = c.Apply(ctx, name, doc)
			}
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			}
		}
		next := &discovery.DiscoveryRequest{Node: node, TypeUrl: wire.SecretType, ResourceNames: names, ResponseNonce: resp.GetNonce()}
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

// Report sends one interval's key usage records to the controller, on a
// connection of its own with the same TLS and token as a stream, so it
// reaches the leader as a new stream would.
func (c *Client) Report(ctx context.Context, recs []*usagev1.Record) error {
	if err := c.CheckSecurity(); err != nil {
		return err
	}
	conn, err := c.dial(c.DialOptions)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = usagev1.NewKeyUsageClient(conn).Report(ctx, &usagev1.ReportRequest{NodeId: c.NodeID, Records: recs})
	return err
}

// CheckSecurity refuses a configuration that would send keysets in the
// clear or unauthenticated over a network.
func (c *Client) CheckSecurity() error {
	if c.Insecure {
		if !wire.Loopback(c.Addr) {
			return fmt.Errorf("xds: refusing an insecure connection to %s: only loopback and unix:// addresses may go without TLS and a token", c.Addr)
		}
		return nil
	}
	if c.CAFile == "" || c.ServerName == "" || c.TokenFile == "" {
		return errors.New("xds: set the controller's CA bundle, its server name and the pod's token file (or insecure, on loopback only)")
	}
	return nil
}

// credentials are the dial options of one attempt: TLS verifying the
// controller against the CA bundle, and the pod's token on each stream.
func (c *Client) credentials() ([]grpc.DialOption, error) {
	if c.Insecure {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("xds: controller CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("xds: controller CA bundle %s holds no PEM certificate", c.CAFile)
	}
	tok, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("xds: pod token: %w", err)
	}
	tok = bytes.TrimSpace(tok)
	if len(tok) == 0 {
		return nil, fmt.Errorf("xds: pod token file %s is empty", c.TokenFile)
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: c.ServerName, MinVersion: tls.VersionTLS13})),
		grpc.WithPerRPCCredentials(bearer(tok)),
	}, nil
}

// bearer sends the pod's token as gRPC metadata, over TLS only.
type bearer []byte

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{wire.AuthorizationKey: wire.Bearer(string(b))}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// String keeps the token out of any print.
func (bearer) String() string { return "REDACTED" }

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
