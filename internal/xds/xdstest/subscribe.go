package xdstest

import (
	"context"
	"errors"
	"io"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/keyshift/keyshift/internal/xds/wire"
)

// Subscribe opens a raw SDS stream on conn, with token as its bearer
// credential ("" for none), and sends one request as node for keysets
// names: what a sidecar sends, or what an attacker could. A stream the
// server refuses at once fails Send with io.EOF, which is not an error
// here: Recv returns the server's status.
func Subscribe(ctx context.Context, conn *grpc.ClientConn, token, node string, names ...string) (secretservice.SecretDiscoveryService_StreamSecretsClient, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, wire.AuthorizationKey, wire.Bearer(token))
	}
	st, err := secretservice.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return nil, err
	}
	res := make([]string, len(names))
	for i, n := range names {
		res[i] = wire.ResourceName(n)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: wire.SecretType, ResourceNames: res}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return st, nil
}
