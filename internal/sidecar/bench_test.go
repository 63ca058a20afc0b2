package sidecar

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keyshift/keyshift/internal/loadtest"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

func startEcho(b *testing.B) string {
	dir, err := os.MkdirTemp("", "ksecho")
	if err != nil {
		b.Fatal(err)
	}
	stop, err := loadtest.StartEcho(filepath.Join(dir, "echo.sock"), false)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stop(); os.RemoveAll(dir) })
	return filepath.Join(dir, "echo.sock")
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
// sidecar over its Unix socket next to the bare echo baseline in the same
// run. "echo-ratio" is the sidecar's throughput as a fraction of the
// echo's (1.0 = no cost over the transport).
func BenchmarkSocket1KiB(b *testing.B) {
	payload := make([]byte, 1024)
	_, _ = rand.Read(payload)
	echoPath := startEcho(b)
	e := newEnv(b)
	ct, err := e.client.Encrypt(context.Background(), payload, map[string]string{"tenant": "bench"})
	if err != nil {
		b.Fatal(err)
	}
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			echoConns := dialN(b, echoPath, clients)
			sideConns := dialN(b, e.cfg.Socket, clients)
			var echoNs float64
			b.Run("echo", func(b *testing.B) {
				echoNs = drive(b, clients, echoConns, func(ctx context.Context, c *grpc.ClientConn) error {
					out := new(v1.EncryptResponse)
					return c.Invoke(ctx, loadtest.EchoMethod, &v1.EncryptRequest{Keyset: "payments", Plaintext: payload, Context: map[string]string{"tenant": "bench"}}, out)
				})
			})
			b.Run("encrypt", func(b *testing.B) {
				ns := drive(b, clients, sideConns, func(ctx context.Context, c *grpc.ClientConn) error {
					_, err := v1.NewCryptoClient(c).Encrypt(ctx, &v1.EncryptRequest{Keyset: "payments", Plaintext: payload, Context: map[string]string{"tenant": "bench"}})
					return err
				})
				reportRatio(b, echoNs, ns)
			})
			b.Run("decrypt", func(b *testing.B) {
				ns := drive(b, clients, sideConns, func(ctx context.Context, c *grpc.ClientConn) error {
					_, err := v1.NewCryptoClient(c).Decrypt(ctx, &v1.DecryptRequest{Ciphertext: ct, Context: map[string]string{"tenant": "bench"}})
					return err
				})
				reportRatio(b, echoNs, ns)
			})
		})
	}
}

// reportRatio reports throughput relative to the echo baseline measured in
// the same run (skipped when the baseline was filtered out).
func reportRatio(b *testing.B, echoNs, ns float64) {
	if echoNs > 0 && ns > 0 {
		b.ReportMetric(echoNs/ns, "echo-ratio")
	}
}
