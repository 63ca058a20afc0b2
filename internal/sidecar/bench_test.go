package sidecar

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keyshift/keyshift/internal/sidecar/floor"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// startFloor serves the load tool's like-for-like floor (this package's
// own server stack with no crypto behind it) in this process.
func startFloor(b *testing.B) string {
	path := filepath.Join(b.TempDir(), "floor.sock")
	ctx, cancel := context.WithCancel(context.Background())
	wait, err := ServeAPI(ctx, path, []uint32{uint32(os.Getuid())}, floor.New(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); wait() })
	return path
}

func dialN(b *testing.B, path string, n int) []*grpc.ClientConn {
	conns := make([]*grpc.ClientConn, n)
	for i := range conns {
		c, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		c.Connect()
		conns[i] = c
		b.Cleanup(func() { c.Close() })
	}
	return conns
}

// drive runs op b.N times over clients concurrent connections (one
// goroutine per connection) and returns ns per op.
func drive(b *testing.B, clients int, conns []*grpc.ClientConn, op func(ctx context.Context, c *grpc.ClientConn) error) float64 {
	ctx := context.Background()
	for _, c := range conns { // warm every connection before timing
		if err := op(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(1024)
	b.ResetTimer()
	if clients == 1 {
		for i := 0; i < b.N; i++ {
			if err := op(ctx, conns[0]); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			c := conns[int(next.Add(1)-1)%len(conns)]
			for pb.Next() {
				if err := op(ctx, c); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
}

// BenchmarkSocket1KiB measures 1 KiB encrypt and decrypt through a real
// sidecar over its Unix socket next to the like-for-like floor in the same
// run: the same server stack (listener, peer check, gRPC options,
// interceptors) answering the same RPCs with messages of the same sizes
// and no crypto. "floor-ratio" is the sidecar's throughput as a fraction
// of the floor's for the same op (1.0 = the crypto costs nothing).
func BenchmarkSocket1KiB(b *testing.B) {
	payload := make([]byte, 1024)
	_, _ = rand.Read(payload)
	floorPath := startFloor(b)
	e := newEnv(b)
	ct, err := e.client.Encrypt(context.Background(), payload, map[string]string{"tenant": "bench"})
	if err != nil {
		b.Fatal(err)
	}
	encrypt := func(ctx context.Context, c *grpc.ClientConn) error {
		_, err := v1.NewCryptoClient(c).Encrypt(ctx, &v1.EncryptRequest{Keyset: "payments", Plaintext: payload, Context: map[string]string{"tenant": "bench"}})
		return err
	}
	decrypt := func(ctx context.Context, c *grpc.ClientConn) error {
		_, err := v1.NewCryptoClient(c).Decrypt(ctx, &v1.DecryptRequest{Ciphertext: ct, Context: map[string]string{"tenant": "bench"}})
		return err
	}
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			floorConns := dialN(b, floorPath, clients)
			sideConns := dialN(b, e.cfg.Socket, clients)
			for _, o := range []struct {
				name string
				op   func(context.Context, *grpc.ClientConn) error
			}{{"encrypt", encrypt}, {"decrypt", decrypt}} {
				var floorNs float64
				b.Run("floor-"+o.name, func(b *testing.B) { floorNs = drive(b, clients, floorConns, o.op) })
				b.Run(o.name, func(b *testing.B) { reportRatio(b, floorNs, drive(b, clients, sideConns, o.op)) })
			}
		})
	}
}

// reportRatio reports throughput relative to the floor measured in the
// same run (none when the floor was filtered out).
func reportRatio(b *testing.B, floorNs, ns float64) {
	if floorNs > 0 && ns > 0 {
		b.ReportMetric(floorNs/ns, "floor-ratio")
	}
}
