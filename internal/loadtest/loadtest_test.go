package loadtest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/sidecar/client"
)

// A real sidecar under load with rotations every 150 ms and a mixed,
// batched workload: zero errors, the rotations happened, the report is
// complete, and the same-run baseline gives a ratio.
func TestRunAgainstSidecarWithRotations(t *testing.T) {
	dir, err := os.MkdirTemp("", "kslt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kek, ksPath, sock := filepath.Join(dir, "kek.json"), filepath.Join(dir, "ks.json"), filepath.Join(dir, "s.sock")
	ks, err := rotation.Create(context.Background(), local.New(kek), "bench", "local://"+kek, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := keyset.WriteFile(ksPath, ks); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	reg := kms.Registry{local.Scheme: local.Open}
	srv, err := sidecar.Start(ctx, sidecar.Config{Socket: sock, Keysets: map[string]string{"bench": ksPath}, KMS: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); srv.Wait() })
	<-srv.Ready()
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	rep, err := Run(context.Background(), Options{
		Socket: sock, Clients: 4, Payload: 256, Duration: 700 * time.Millisecond,
		Mix:         Mix{Encrypt: 2, Decrypt: 1, Rewrap: 1, Batch: 3},
		RotateEvery: 150 * time.Millisecond, Rotate: FileRotation(ksPath, reg, c.API()),
		Baseline: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Errors) != 0 || rep.Calls < 100 || rep.Rotations < 2 {
		t.Fatalf("calls %d, errors %v, rotations %d", rep.Calls, rep.Errors, rep.Rotations)
	}
	if rep.Latency.P50 <= 0 || rep.Latency.P99 < rep.Latency.P50 || rep.Latency.Max < rep.Latency.P99 {
		t.Fatalf("latency %+v", rep.Latency)
	}
	if rep.Sidecar == nil || rep.Sidecar.PID != int32(os.Getpid()) || rep.Sidecar.RSSMaxKiB <= 0 {
		t.Fatalf("sidecar process figures %+v", rep.Sidecar)
	}
	if len(rep.Timeline) < 5 || rep.Baseline == nil || rep.RatioToBaseline <= 0 {
		t.Fatalf("timeline %d windows, baseline %+v, ratio %v", len(rep.Timeline), rep.Baseline, rep.RatioToBaseline)
	}
	st, _ := c.Status(context.Background())
	if p := st.GetKeysets()[0].GetPrimary(); p < 3 {
		t.Fatalf("primary is v%d after the run", p)
	}
}

func TestCountStopsTheRun(t *testing.T) {
	dir, _ := os.MkdirTemp("", "kslt")
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "echo.sock")
	stop, err := StartEcho(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	rep, err := run(context.Background(), Options{Clients: 3, Payload: 64, Count: 500, Mix: Mix{Encrypt: 1}, Window: 100 * time.Millisecond}, path, true)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Calls != 500 || len(rep.Errors) != 0 {
		t.Fatalf("calls %d errors %v", rep.Calls, rep.Errors)
	}
}

func TestPercentiles(t *testing.T) {
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(100 - i)
	}
	got := percentiles(v)
	if got != (Latency{P50: 50, P90: 90, P99: 99, Max: 100}) {
		t.Fatalf("percentiles = %+v", got)
	}
}
