package loadtest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/internal/sidecar/floor"
	"github.com/keyshift/keyshift/sidecar/client"
)

// testSidecar starts a real sidecar on a keyset file with the local KMS
// and returns its socket, the keyset file, the KEK's URI and the registry.
func testSidecar(t *testing.T) (sock, ksPath, kekURI string, reg kms.Registry) {
	t.Helper()
	sock, ksPath, kekURI = testKeyset(t)
	ctx, cancel := context.WithCancel(context.Background())
	reg = kms.Registry{local.Scheme: local.Open}
	srv, err := sidecar.Start(ctx, sidecar.Config{Socket: sock, Keysets: map[string]string{"bench": ksPath}, KMS: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); srv.Wait() })
	<-srv.Ready()
	return sock, ksPath, kekURI, reg
}

// testKeyset writes a keyset "bench" under a local file KEK in a fresh
// directory and returns a socket path beside it, the keyset file and the
// KEK's URI.
func testKeyset(t *testing.T) (sock, ksPath, kekURI string) {
	t.Helper()
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek.json")
	ksPath, sock, kekURI = filepath.Join(dir, "ks.json"), filepath.Join(dir, "s.sock"), "local://"+kek
	ks, err := rotation.Create(context.Background(), local.New(kek), "bench", kekURI, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := keyset.WriteFile(ksPath, ks); err != nil {
		t.Fatal(err)
	}
	return sock, ksPath, kekURI
}

// A real sidecar under load with rotations every 150 ms and a mixed,
// batched workload: zero errors, the rotations happened, the report is
// complete, and the same-run floor gives a ratio.
func TestRunAgainstSidecarWithRotations(t *testing.T) {
	sock, ksPath, _, reg := testSidecar(t)
	c, err := client.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	rep, err := Run(context.Background(), Options{
		Socket: sock, Clients: 4, Payload: 256, Duration: 700 * time.Millisecond,
		Mix:         Mix{Encrypt: 2, Decrypt: 1, Rewrap: 1, Batch: 3},
		RotateEvery: 150 * time.Millisecond, Rotate: FileRotation(ksPath, reg, c.API()),
		Floor: true, Rounds: 2,
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
	if len(rep.Timeline) < 5 || rep.Floor == nil || rep.RatioToFloor <= 0 || rep.Floor.Calls < 100 || len(rep.Floor.Errors) != 0 {
		t.Fatalf("timeline %d windows, floor %+v, ratio %v", len(rep.Timeline), rep.Floor, rep.RatioToFloor)
	}
	if len(rep.RoundItemsPerSec) != 2 || len(rep.Floor.KeyshiftOverByRound) != 2 || rep.Floor.KeyshiftOverByRound[1] != rep.RoundItemsPerSec[1]/rep.Floor.RoundItemsPerSec[1] {
		t.Fatalf("by round: %v, floor %v, ratios %v", rep.RoundItemsPerSec, rep.Floor.RoundItemsPerSec, rep.Floor.KeyshiftOverByRound)
	}
	if rep.Rounds != 2 || rep.ItemsPerSec != 3*rep.CallsPerSec || rep.Floor.KeyshiftOver != rep.RatioToFloor {
		t.Fatalf("rounds %d, items/s %v for %v calls/s, floor ratio %v vs %v", rep.Rounds, rep.ItemsPerSec, rep.CallsPerSec, rep.Floor.KeyshiftOver, rep.RatioToFloor)
	}
	st, _ := c.Status(context.Background())
	if p := st.GetKeysets()[0].GetPrimary(); p < 3 {
		t.Fatalf("primary is v%d after the run", p)
	}
}

// testFloor serves the floor in this process for a test.
func testFloor(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "floor.sock")
	ctx, cancel := context.WithCancel(context.Background())
	wait, err := sidecar.ServeFloor(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); wait() })
	return path
}

// drive runs o against one target and returns its report.
func drive(t *testing.T, o Options, tg *Target) *Report {
	t.Helper()
	o.Rounds = max(o.Rounds, 1)
	o.Mix.Batch = max(o.Mix.Batch, 1)
	if o.Window == 0 {
		o.Window = 100 * time.Millisecond
	}
	r, err := newRunner(context.Background(), o, tg, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	for range o.Rounds {
		if err := r.round(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return r.report()
}

func TestCountStopsTheRun(t *testing.T) {
	tg, err := SocketTarget("floor", "", testFloor(t), "")
	if err != nil {
		t.Fatal(err)
	}
	rep := drive(t, Options{Clients: 3, Payload: 64, Count: 500, Mix: Mix{Encrypt: 1}}, tg)
	if rep.Calls != 500 || len(rep.Errors) != 0 {
		t.Fatalf("calls %d errors %v", rep.Calls, rep.Errors)
	}
}

// The floor serves every RPC the sidecar serves, batch forms included,
// with messages of the sidecar's sizes.
func TestFloorServesEveryOp(t *testing.T) {
	tg, err := SocketTarget("floor", "", testFloor(t), "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := tg.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, n := range []int{1, 5} {
		pts := make([][]byte, n)
		for i := range pts {
			pts[i] = []byte("a plaintext of some length")
		}
		cts, err := c.Encrypt(context.Background(), pts)
		if err != nil || len(cts) != n || len(cts[0]) != len(pts[0])+envelope.Overhead(len(floor.Keyset)) {
			t.Fatalf("batch %d: %d ciphertexts of %d bytes, %v", n, len(cts), len(cts[0]), err)
		}
		if err := c.Decrypt(context.Background(), cts); err != nil {
			t.Fatal(err)
		}
		if err := c.Rewrap(context.Background(), cts); err != nil {
			t.Fatal(err)
		}
	}
}

// stallConn answers at once except for one call that takes stall: the
// shape of a GC pause or a lock held during a rotation.
type stallConn struct {
	calls atomic.Int64
	at    int64
	stall time.Duration
}

func (c *stallConn) Encrypt(ctx context.Context, pts [][]byte) ([][]byte, error) {
	if c.calls.Add(1) == c.at {
		time.Sleep(c.stall)
	}
	return pts, nil
}
func (c *stallConn) Decrypt(context.Context, [][]byte) error { return nil }
func (c *stallConn) Rewrap(context.Context, [][]byte) error  { return ErrUnsupported }
func (c *stallConn) Close() error                            { return nil }

// At a fixed rate, a stall delays every call that was due during it; the
// latency counted from each call's scheduled time shows that queue, the
// latency from the actual send hides it (coordinated omission).
func TestRateLatencyCountsFromTheScheduledTime(t *testing.T) {
	sc := &stallConn{at: 50, stall: 300 * time.Millisecond}
	tg := &Target{Name: "stall", Dial: func(context.Context) (Conn, error) { return sc, nil }}
	rep := drive(t, Options{Clients: 1, Rate: 500, Duration: 1200 * time.Millisecond, Mix: Mix{Encrypt: 1}}, tg)
	// 300 ms at 500/s is 150 calls due during the stall: about a quarter
	// of the run's ~600 calls waited, the first of them ~300 ms.
	if rep.Latency.P90 < 50_000 || rep.Latency.Max < 250_000 {
		t.Fatalf("latency from the scheduled time %+v: the stall's queue is missing", rep.Latency)
	}
	if rep.ServiceLatency == nil || rep.ServiceLatency.P90 > 10_000 || rep.ServiceLatency.Max < 250_000 {
		t.Fatalf("latency from the send %+v: want fast calls and one stall", rep.ServiceLatency)
	}
	if rep.Calls < 400 {
		t.Fatalf("%d calls: the schedule did not catch up after the stall", rep.Calls)
	}
}

func TestParsePeer(t *testing.T) {
	if _, err := ParsePeer("consul=x"); err == nil || !strings.Contains(err.Error(), "vault") {
		t.Fatalf("unknown peer: %v", err)
	}
	p, err := ParsePeer("vault=http://127.0.0.1:8200/transit/bench")
	if err != nil || p.Kind != "vault" || p.Address != "http://127.0.0.1:8200/transit/bench" {
		t.Fatalf("%+v %v", p, err)
	}
}

func TestPercentiles(t *testing.T) {
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(100 - i)
	}
	got := percentiles(v)
	if got != (Latency{P50: 50, P90: 90, P99: 99, P999: 100, Max: 100}) {
		t.Fatalf("percentiles = %+v", got)
	}
}

// TestScheduleBalancesCarryOver checks the rounds' order over one square:
// every round runs each target once, each target runs in every position
// equally often, and each target runs right after every other equally
// often. Rotating the first target alone (0 1 2, 1 2 0, 2 0 1) fails the
// last: 1 always followed 0, so whatever 0 left on the machine always fell
// on 1.
func TestScheduleBalancesCarryOver(t *testing.T) {
	for n := 1; n <= 6; n++ {
		size := n
		if n%2 == 1 {
			size = 2 * n
		}
		rounds := schedule(n, size)
		position := map[[2]int]int{} // {target, position} -> count
		follows := map[[2]int]int{}  // {before, after} -> count
		for _, r := range rounds {
			if len(r) != n {
				t.Fatalf("n=%d: round %v does not run %d targets", n, r, n)
			}
			seen := map[int]bool{}
			for j, x := range r {
				if x < 0 || x >= n || seen[x] {
					t.Fatalf("n=%d: round %v is not an order of the %d targets", n, r, n)
				}
				seen[x] = true
				position[[2]int{x, j}]++
				if j > 0 {
					follows[[2]int{r[j-1], x}]++
				}
			}
		}
		for x := range n {
			for j := range n {
				if got := position[[2]int{x, j}]; got != size/n {
					t.Errorf("n=%d: target %d runs in position %d %d times over %d rounds, want %d: %v", n, x, j, got, size, size/n, rounds)
				}
			}
			for y := range n {
				if x == y {
					continue
				}
				if got, want := follows[[2]int{x, y}], size/n; got != want {
					t.Errorf("n=%d: target %d follows %d %d times over %d rounds, want %d: %v", n, y, x, got, size, want, rounds)
				}
			}
		}
		// Beyond one square the rounds repeat it.
		more := schedule(n, size+1)
		if diff := cmp.Diff(rounds[0], more[size]); diff != "" {
			t.Errorf("n=%d: round %d does not start the square again (-want +got):\n%s", n, size, diff)
		}
	}
}

// countConn counts the calls it answers.
type countConn struct{ calls atomic.Int64 }

func (c *countConn) Encrypt(_ context.Context, pts [][]byte) ([][]byte, error) {
	c.calls.Add(1)
	return pts, nil
}
func (c *countConn) Decrypt(context.Context, [][]byte) error { c.calls.Add(1); return nil }
func (c *countConn) Rewrap(context.Context, [][]byte) error  { return ErrUnsupported }
func (c *countConn) Close() error                            { return nil }

// The warm-up's calls reach the target but not the report.
func TestWarmupIsNotMeasured(t *testing.T) {
	cc := &countConn{}
	tg := &Target{Name: "count", Dial: func(context.Context) (Conn, error) { return cc, nil }}
	o := Options{Clients: 2, Count: 300, Rounds: 1, Mix: Mix{Encrypt: 1, Batch: 1}, Window: 100 * time.Millisecond}
	r, err := newRunner(context.Background(), o, tg, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	setup := cc.calls.Load()
	if err := r.warm(context.Background(), 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	warm := cc.calls.Load() - setup
	if warm == 0 {
		t.Fatal("the warm-up made no calls")
	}
	if err := r.round(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep := r.report()
	if rep.Calls != 300 || len(rep.RoundItemsPerSec) != 1 {
		t.Fatalf("report counts %d calls in %d rounds, want the 300 measured in 1 (the warm-up made %d)", rep.Calls, len(rep.RoundItemsPerSec), warm)
	}
	if got := cc.calls.Load() - setup; got != warm+300 {
		t.Fatalf("target answered %d calls, want %d warm-up + 300", got, warm)
	}
}

// A call that fails during the warm-up fails the run.
func TestWarmupFailureFailsTheRun(t *testing.T) {
	tg := &Target{Name: "refuse", Dial: func(context.Context) (Conn, error) { return refuseConn{}, nil }}
	r := &runner{o: Options{Clients: 1, Mix: Mix{Batch: 1}, Window: 100 * time.Millisecond}, t: tg, errors: map[string]int64{}}
	c, _ := tg.Dial(context.Background())
	r.conns = []Conn{c}
	r.ops = []op{func(ctx context.Context, c Conn) error { _, err := c.Encrypt(ctx, [][]byte{nil}); return err }}
	if err := r.warm(context.Background(), 30*time.Millisecond); err == nil || !strings.Contains(err.Error(), "calls failed") {
		t.Fatalf("warm-up against a refusing target: %v, want a failure", err)
	}
}

// refuseConn refuses every call, as a peer without the caller's rights.
type refuseConn struct{}

func (refuseConn) Encrypt(context.Context, [][]byte) ([][]byte, error) {
	return nil, status.Error(codes.PermissionDenied, "no")
}
func (refuseConn) Decrypt(context.Context, [][]byte) error {
	return status.Error(codes.PermissionDenied, "no")
}
func (refuseConn) Rewrap(context.Context, [][]byte) error { return ErrUnsupported }
func (refuseConn) Close() error                           { return nil }

// recordConn records the size of every encrypt call.
type recordConn struct {
	countConn
	sizes []int
}

func (c *recordConn) Encrypt(ctx context.Context, pts [][]byte) ([][]byte, error) {
	c.sizes = append(c.sizes, len(pts))
	return c.countConn.Encrypt(ctx, pts)
}

// Decrypt's ciphertexts come from one batch call, or with SealEach from
// one call per item.
func TestSealEachPreparesOneCallPerItem(t *testing.T) {
	for _, each := range []bool{false, true} {
		c := &recordConn{}
		if _, err := buildOps(context.Background(), Mix{Decrypt: 1, Batch: 4, SealEach: each}, c, []byte("p")); err != nil {
			t.Fatal(err)
		}
		want := []int{4}
		if each {
			want = []int{1, 1, 1, 1}
		}
		if diff := cmp.Diff(want, c.sizes); diff != "" {
			t.Fatalf("SealEach %v: encrypt call sizes (-want +got):\n%s", each, diff)
		}
	}
}
