package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ctl "github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/rotationtest"
	"github.com/keyshift/keyshift/internal/xds"
)

// controller is `keyshift controller` on a keyset directory as the binary
// assembles it (internal/controller), serving xDS on loopback gRPC. It is
// Manual: the tests step the rotation engine themselves.
type controller struct {
	addr  string
	xds   *xds.Server
	eng   *rotation.Engine
	store rotation.Store
	stop  func() // the controller goes away: its streams end, its port closes
}

func startController(tb testing.TB, dir, addr string) *controller {
	tb.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := ctl.Start(ctx, ctl.Config{KeysetDir: filepath.Join(dir, "keysets"), AuditKeyFile: filepath.Join(dir, "audit.key"),
		XDSAddr: addr, XDSAuth: ctl.XDSAuthNone, KMS: kms.Registry{local.Scheme: local.Open}, Identity: "test", Manual: true})
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	stop := func() { cancel(); _ = c.Wait() }
	tb.Cleanup(stop)
	if err := c.Lead(ctx); err != nil {
		tb.Fatal(err)
	}
	return &controller{addr: c.XDSAddr(), xds: c.XDS(), eng: c.Engine(), store: c.Engine().Store, stop: stop}
}

// newXDSKeyset creates keyset "payments" in dir/keysets with a local KEK.
func newXDSKeyset(tb testing.TB) string {
	dir, err := os.MkdirTemp("", "ksx")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	rotationtest.NewStoreDir(tb, dir, "payments")
	return dir
}

// slowKMS delays every unwrap: a sidecar on a slow link to its KMS.
type slowKMS struct {
	kms.Wrapper
	delay time.Duration
}

func (s slowKMS) Unwrap(ctx context.Context, w kms.WrappedKey, aad []byte) ([]byte, error) {
	time.Sleep(s.delay)
	return s.Wrapper.Unwrap(ctx, w, aad)
}

// revokedKMS refuses every unwrap, as a KMS whose key grant was revoked.
type revokedKMS struct{ kms.Wrapper }

func (revokedKMS) Unwrap(context.Context, kms.WrappedKey, []byte) ([]byte, error) {
	return nil, fmt.Errorf("test kms: access denied: %w", kms.ErrUserInduced)
}

func registryWith(wrap func(kms.Wrapper) kms.Wrapper) kms.Registry {
	return kms.Registry{local.Scheme: func(ctx context.Context, u *url.URL) (kms.Wrapper, error) {
		w, err := local.Open(ctx, u)
		if err != nil {
			return nil, err
		}
		return wrap(w), nil
	}}
}

// startXDSSidecar starts a real sidecar that gets keyset "payments" only over xDS.
func startXDSSidecar(tb testing.TB, dir, addr, node string, reg kms.Registry) *Server {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, Config{
		Socket: filepath.Join(dir, strings.ReplaceAll(node, "/", "_")+".sock"), Keysets: map[string]string{"payments": ""},
		XDSAddr: addr, XDSInsecure: true, NodeID: node, KMS: reg, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); _ = s.Wait() })
	return s
}

func loaded(s *Server, v uint32) bool {
	set, ok := s.ring.load().set("payments")
	if !ok {
		return false
	}
	_, ok = set.keys[v]
	return ok
}

func waitReady(t *testing.T, servers ...*Server) {
	t.Helper()
	for _, s := range servers {
		select {
		case <-s.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("sidecar not ready over xDS")
		}
	}
}

// The controller promotes only after the slowest sidecar has ACKed, a NACK
// blocks promotion with the sidecar's reason, and sidecars keep serving
// and reconnect when the controller goes away and comes back.
func TestXDSPromotionWaitsForEveryACK(t *testing.T) {
	ctx := ctxT(t)
	dir := newXDSKeyset(t)
	c := startController(t, dir, "")
	if _, err := c.eng.Reconcile(ctx, "payments"); err != nil { // publishes v1
		t.Fatal(err)
	}
	a := startXDSSidecar(t, dir, c.addr, "ns/pod-a", kms.Registry{local.Scheme: local.Open})
	b := startXDSSidecar(t, dir, c.addr, "ns/pod-b", kms.Registry{local.Scheme: local.Open})
	slow := startXDSSidecar(t, dir, c.addr, "ns/pod-slow", registryWith(func(w kms.Wrapper) kms.Wrapper { return slowKMS{w, 400 * time.Millisecond} }))
	waitReady(t, a, b, slow)
	waitUntil(t, func() bool {
		return c.xds.Status("", "payments", 1).AllAcked() && len(c.xds.Status("", "payments", 1).Subscribers) == 3
	}, "three sidecars ACK v1")

	if out, err := c.eng.Rotate(ctx, "payments", "test"); err != nil || out.Action != "add-pending" {
		t.Fatalf("Rotate = %+v, %v", out, err)
	}
	var sawPartial bool
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := c.eng.Reconcile(ctx, "payments")
		if err != nil {
			t.Fatal(err)
		}
		if out.Action == "waiting" && strings.Contains(out.Reason, "2 of 3") {
			sawPartial = true
		}
		if out.Action == "promote" {
			if !loaded(slow, 2) {
				t.Fatal("promoted before the slowest sidecar loaded v2")
			}
			break
		}
		if out.Action != "waiting" || time.Now().After(deadline) {
			t.Fatalf("outcome %+v", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !sawPartial {
		t.Fatal("never saw the fast sidecars ACK before the slow one: the test did not exercise waiting")
	}
	for _, s := range []*Server{a, b, slow} {
		waitUntil(t, func() bool { p, _ := s.Service().Primary("payments"); return p == 2 }, "sidecars encrypt with v2")
	}

	// A sidecar whose KMS access was revoked NACKs the next version.
	revoked := startXDSSidecar(t, dir, c.addr, "ns/pod-revoked", registryWith(func(w kms.Wrapper) kms.Wrapper { return revokedKMS{w} }))
	if _, err := c.eng.Rotate(ctx, "payments", "test"); err != nil {
		t.Fatal(err)
	}
	var out rotation.Outcome
	waitUntil(t, func() bool {
		out, _ = c.eng.Reconcile(ctx, "payments")
		return out.Action == "blocked"
	}, "promotion blocked by a NACK")
	if !strings.Contains(out.Reason, "ns/pod-revoked") || !strings.Contains(out.Reason, "key unusable") {
		t.Fatalf("blocked reason %q does not name the sidecar and its error", out.Reason)
	}
	select {
	case <-revoked.Ready():
		t.Fatal("a sidecar that cannot unwrap became ready")
	default:
	}

	// Controller gone: sidecars keep serving; back at the same address:
	// they resubscribe and receive what was published meanwhile.
	c.stop()
	ct, err := a.Service().Encrypt(ctx, "payments", []byte("x"), nil)
	if err != nil || mustHeader(t, ct.Ciphertext).Version != 2 {
		t.Fatalf("encrypt with the controller down: %v", err)
	}
	c2 := startController(t, dir, c.addr)
	if _, err := c2.eng.Reconcile(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return loaded(a, 3) && loaded(b, 3) }, "sidecars reconnect and load v3 from the new controller")
}

// BenchmarkXDSPropagation50 measures the time from a push by the controller
// to each of 50 real sidecars serving the new version (unwrapped,
// self-tested and swapped in). The reference points are the 60 s status
// poll of the Kubernetes KMS v2 design and the 2 min rotation poll of the
// Secrets Store CSI driver.
func BenchmarkXDSPropagation50(b *testing.B) {
	ctx := context.Background()
	dir := newXDSKeyset(b)
	c := startController(b, dir, "")
	if _, err := c.eng.Reconcile(ctx, "payments"); err != nil {
		b.Fatal(err)
	}
	const n = 50
	var sidecars []*Server
	for i := range n {
		sidecars = append(sidecars, startXDSSidecar(b, dir, c.addr, fmt.Sprintf("ns/pod-%02d", i), kms.Registry{local.Scheme: local.Open}))
	}
	for _, s := range sidecars {
		<-s.Ready()
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ks, _, _ := c.store.Get(ctx, "payments")
		v := ks.NextVersion()
		start := time.Now()
		if out, err := c.eng.Rotate(ctx, "payments", "bench"); err != nil || out.Action != "add-pending" {
			b.Fatalf("%+v %v", out, err)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, s := range sidecars {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !loaded(s, v) {
					if time.Since(start) > 30*time.Second {
						b.Error("sidecar never loaded the pushed version")
						return
					}
					time.Sleep(200 * time.Microsecond)
				}
				mu.Lock()
				lat = append(lat, time.Since(start))
				mu.Unlock()
			}()
		}
		wg.Wait()
		b.StopTimer()
		for {
			out, err := c.eng.Reconcile(ctx, "payments")
			if err != nil {
				b.Fatal(err)
			}
			if out.Action == "promote" {
				break
			}
			time.Sleep(time.Millisecond)
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(60000/(float64(lat[len(lat)*99/100].Microseconds())/1000), "x-faster-than-60s-poll")
}

// Cross-pod traffic through three controller-driven rotations: one pod
// encrypts, another decrypts what it wrote. Two-phase rotation means no
// pod ever meets a version it has not loaded: zero failures.
func TestXDSRotationUnderCrossPodLoad(t *testing.T) {
	ctx := ctxT(t)
	dir := newXDSKeyset(t)
	c := startController(t, dir, "")
	if _, err := c.eng.Reconcile(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	writer := startXDSSidecar(t, dir, c.addr, "ns/writer", kms.Registry{local.Scheme: local.Open})
	reader := startXDSSidecar(t, dir, c.addr, "ns/reader", registryWith(func(w kms.Wrapper) kms.Wrapper { return slowKMS{w, 50 * time.Millisecond} }))
	waitReady(t, writer, reader)
	waitUntil(t, func() bool { return len(c.xds.Status("", "payments", 1).Acked) == 2 }, "both ACK v1")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ops, fails int
	versions := map[uint32]int{}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc := map[string]string{"w": fmt.Sprint(w)}
			for {
				select {
				case <-stop:
					return
				default:
				}
				sealed, err := writer.Service().Encrypt(ctx, "payments", []byte("order"), cc)
				if err == nil {
					_, err = reader.Service().Decrypt(ctx, sealed.Ciphertext, cc)
				}
				mu.Lock()
				ops++
				if err != nil {
					fails++
					t.Errorf("cross-pod request failed: %v", err)
				} else {
					versions[sealed.Version]++
				}
				mu.Unlock()
			}
		}()
	}
	for range 3 {
		if _, err := c.eng.Rotate(ctx, "payments", "test"); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, func() bool {
			out, err := c.eng.Reconcile(ctx, "payments")
			return err == nil && out.Action == "promote"
		}, "promotion")
		time.Sleep(30 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if fails != 0 || len(versions) < 3 {
		t.Fatalf("%d requests, %d failed, versions seen %v", ops, fails, versions)
	}
}

// A sidecar restarted while its peers rotate: while it is down it does not
// block promotion (its stream is gone), and when it comes back it loads
// the current document and reads what its peers wrote meanwhile.
func TestXDSSidecarRestartDuringRotation(t *testing.T) {
	ctx := ctxT(t)
	dir := newXDSKeyset(t)
	c := startController(t, dir, "")
	if _, err := c.eng.Reconcile(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	reg := kms.Registry{local.Scheme: local.Open}
	a := startXDSSidecar(t, dir, c.addr, "ns/a", reg)
	b := startXDSSidecar(t, dir, c.addr, "ns/b", reg)
	// c2 runs under its own context so the test can kill it mid-rotation.
	c2ctx, kill := context.WithCancel(context.Background())
	restarting, err := Start(c2ctx, Config{Socket: filepath.Join(dir, "r.sock"), Keysets: map[string]string{"payments": ""},
		XDSAddr: c.addr, XDSInsecure: true, NodeID: "ns/restarting", KMS: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, a, b, restarting)
	waitUntil(t, func() bool { return len(c.xds.Status("", "payments", 1).Acked) == 3 }, "three ACKs")

	if _, err := c.eng.Rotate(ctx, "payments", "test"); err != nil {
		t.Fatal(err)
	}
	kill()
	restarting.Wait()
	waitUntil(t, func() bool {
		out, _ := c.eng.Reconcile(ctx, "payments")
		return out.Action == "promote"
	}, "promotion with the restarting sidecar away")
	waitUntil(t, func() bool { p, _ := a.Service().Primary("payments"); return p == 2 }, "a encrypts with v2")
	written, err := a.Service().Encrypt(ctx, "payments", []byte("while you were away"), nil)
	if err != nil {
		t.Fatal(err)
	}
	back := startXDSSidecar(t, dir, c.addr, "ns/restarting", reg)
	waitReady(t, back)
	waitUntil(t, func() bool { return loaded(back, 2) }, "restarted sidecar loads v2")
	pt, err := back.Service().Decrypt(ctx, written.Ciphertext, nil)
	if err != nil || string(pt.Plaintext) != "while you were away" {
		t.Fatalf("restarted sidecar cannot read a peer's v2 ciphertext: %v", err)
	}
	waitUntil(t, func() bool {
		st := c.xds.Status("", "payments", 2)
		return st.AllAcked() && len(st.Subscribers) == 3
	}, "all three subscribed and ACKed v2 after the restart")
}
