package xdstest

import (
	"context"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc"

	"github.com/keyshift/keyshift/internal/xds"
)

// Serve starts a controller replica's open xDS server (no Access) on real
// loopback gRPC, serving (active) or refusing streams as a follower does,
// and stops it when the test ends. It returns the server and its address.
func Serve(t testing.TB, active bool) (*xds.Server, string) {
	t.Helper()
	return ServeWith(t, active, nil, nil)
}

// ServeWith is Serve with Access and gRPC server options (TLS).
func ServeWith(t testing.TB, active bool, access *xds.Access, opts []grpc.ServerOption) (*xds.Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := xds.NewServer(ctx, slog.New(slog.DiscardHandler), access)
	x.SetActive(active)
	g := grpc.NewServer(opts...)
	x.Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(func() { g.Stop(); cancel() })
	return x, l.Addr().String()
}
