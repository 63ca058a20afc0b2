//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyshift/keyshift/internal/controller"
	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/sidecar/client"
)

// Revoking a compromised primary under traffic, against a real API
// server: two sidecars on authenticated xDS report usage to the
// controller and serve encrypt/decrypt between each other without pause;
// `keyshift keyset revoke` stores the request and the controller, woken by
// its watch on the Secret, pushes a new primary, waits for both ACKs and
// revokes the old version in one write. What fails: decrypting data
// sealed under the revoked version, including a ciphertext forged with the
// stolen key. What does not: any encrypt, any decrypt of new data, and
// Rewrap of the old data into the new primary. The holders of the revoked
// version come from the usage records, and the failed decrypts of old data
// raise a DecryptFailureSpike Event.
func TestRevokeUnderTraffic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := startCluster(t)
	kc := c.kube
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek.json")
	ks, err := rotation.Create(ctx, local.New(kek), "payments", "local://"+kek, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	store := &kube.SecretStore{Client: kc, Namespace: "shop", Log: slog.New(slog.DiscardHandler)}
	const key = "shop/payments-keys"
	if err := store.Create(ctx, key, ks); err != nil {
		t.Fatal(err)
	}

	// The controller, as `keyshift controller` runs it, with a long
	// interval: the Secret watch must start the revocation.
	log := slog.New(slog.DiscardHandler)
	ctl := startController(t, ctx, controller.Config{Kube: kc, Namespace: "shop", XDSAddr: "127.0.0.1:0",
		KMS: kms.Registry{local.Scheme: local.Open}, KMSPolicy: rotation.KMSPolicy{Allow: map[string][]string{"shop": {"local://"}}},
		Interval: time.Minute, DecryptFailureSpike: 5, Identity: "e2e", Logger: log})

	// Two injected pods, each with a real sidecar on TLS and its own token.
	pods := newXDSSidecars(t, ctx, kc, ctl, dir, "shop", "payments=payments-keys", "web-1", "web-2")
	var clients []*client.Client
	for _, name := range []string{"web-1", "web-2"} {
		sock := pods.start(ctx, name, sidecar.Config{Keysets: map[string]string{"payments": ""},
			KMS: kms.Registry{local.Scheme: local.Open}, Logger: log, UsageInterval: 300 * time.Millisecond})
		cl, err := client.Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		clients = append(clients, cl)
	}

	// Data stored under v1 before the revocation.
	var stored [][]byte
	for i := range 20 {
		ct, err := clients[i%2].Encrypt(ctx, []byte("order "+string(rune('a'+i))), map[string]string{"table": "orders"})
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, ct)
	}
	// Wait for the usage records to name the holders of v1.
	waitFor(t, 20*time.Second, "holders of v1 recorded", func() bool {
		hs, err := store.Holders(ctx, key)
		return err == nil && len(hs[1]) > 0
	})

	// Traffic: each pod encrypts and the other decrypts, without pause.
	var calls, failures, inFlight atomic.Int64
	var failMu sync.Mutex
	var failed []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			enc, dec := clients[i%2], clients[(i+1)%2]
			for {
				select {
				case <-stop:
					return
				default:
				}
				ct, err := enc.Encrypt(ctx, []byte("live"), map[string]string{"table": "live"})
				calls.Add(1)
				if err == nil {
					_, err = dec.Decrypt(ctx, ct, map[string]string{"table": "live"})
					if h, _, perr := envelope.Parse(ct); perr == nil && h.Version == 1 && status.Code(err) == codes.FailedPrecondition {
						// Sealed under v1 by a pod that had not yet loaded the
						// revocation, opened by one that had: in-flight data
						// under the compromised key fails like stored data.
						inFlight.Add(1)
						continue
					}
				}
				if err != nil {
					failures.Add(1)
					failMu.Lock()
					failed = append(failed, err.Error())
					failMu.Unlock()
				}
			}
		})
	}
	time.Sleep(time.Second)

	// keyshift keyset revoke --secret shop/payments-keys --version 1: one
	// read and one write, as the CLI does. The controller rewrites the
	// Secret's holders annotation as the pods report; a metadata-only
	// change does not make the write conflict.
	cur, rev, err := store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	req, err := rotation.RequestRevoke(cur, 1, "key file found in a public bucket", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	requested := time.Now()
	if _, err := store.Put(ctx, key, req, rev); err != nil {
		t.Fatal(err)
	}
	var done *keyset.Keyset
	waitFor(t, 30*time.Second, "the controller to revoke v1", func() bool {
		got, _, err := store.Get(ctx, key)
		if err == nil && got.Revocation == nil {
			done = got
			return true
		}
		return false
	})
	took := time.Since(requested)
	time.Sleep(time.Second) // traffic on the new primary
	close(stop)
	wg.Wait()
	if v, _ := done.Get(1); v.State != keyset.StateRevoked || done.Primary().Version != 2 {
		t.Fatalf("after revoke: v1 %s, primary v%d", v.State, done.Primary().Version)
	}
	t.Logf("revoked v1 %s after the request (new primary v2 pushed, both pods ACKed, promoted and revoked in one write); live traffic: %d encrypt+decrypt pairs, %d failed, %d of them sealed under v1 in the moment before the revocation reached the sealing pod",
		took.Round(time.Millisecond), calls.Load(), failures.Load()+inFlight.Load(), inFlight.Load())
	if failures.Load() != 0 {
		t.Fatalf("live traffic failed across the revocation other than on v1 data: %d of %d, e.g. %v", failures.Load(), calls.Load(), failed[:min(3, len(failed))])
	}
	if inFlight.Load() > calls.Load()/100 {
		t.Fatalf("%d of %d round trips were sealed under the revoked version: the new primary was not in use first", inFlight.Load(), calls.Load())
	}

	// New data is under v2.
	ct, err := clients[0].Encrypt(ctx, []byte("after"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := envelope.Parse(ct); err != nil || h.Version != 2 {
		t.Fatalf("encrypt after revoke: v%d %v", h.Version, err)
	}
	// What fails: stored v1 data, on either pod, with a specific error.
	for i, ct := range stored {
		_, err := clients[i%2].Decrypt(ctx, ct, map[string]string{"table": "orders"})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("decrypt of v1 data after revoke: %v, want FailedPrecondition naming the revocation", err)
		}
	}
	// ... and a ciphertext forged with the stolen v1 key.
	dek, err := local.New(kek).Unwrap(ctx, kms.WrappedKey{Ciphertext: ks.Versions[0].WrappedKey, KEKVersion: ks.Versions[0].KEKVersion}, keyset.WrapAAD("payments", 1))
	if err != nil {
		t.Fatal(err)
	}
	stolen, err := envelope.NewKey("payments", 1, dek)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := envelope.Seal(stolen, []byte(`{"refund":"all"}`), nil, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clients[1].Decrypt(ctx, forged, nil); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a forgery under the revoked key: %v", err)
	}
	// What does not: Rewrap moves the stored data under v2, readable.
	for i, ct := range stored {
		out, rewrapped, err := clients[i%2].Rewrap(ctx, ct, map[string]string{"table": "orders"})
		if err != nil || !rewrapped {
			t.Fatalf("rewrap of v1 data: %v (rewrapped %v)", err, rewrapped)
		}
		pt, err := clients[(i+1)%2].Decrypt(ctx, out, map[string]string{"table": "orders"})
		if err != nil || string(pt) != "order "+string(rune('a'+i)) {
			t.Fatalf("rewrapped data: %q %v", pt, err)
		}
	}

	// The holders of v1, from the usage records: the pods' service account.
	hs, err := store.Holders(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs[1] {
		t.Logf("holder of v1: %s", h)
		if h.ServiceAccount != "app" || !strings.HasPrefix(h.LastPod, "shop/web-") {
			t.Fatalf("holder %+v", h)
		}
	}
	// Events: the revocation, and the spike of failed decrypts it caused.
	waitFor(t, 20*time.Second, "Revoke and DecryptFailureSpike Events", func() bool {
		evs, err := kc.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=payments-keys"})
		if err != nil {
			return false
		}
		seen := map[string]string{}
		for _, e := range evs.Items {
			seen[e.Reason] = e.Message
		}
		if seen["Revoke"] != "" && seen["DecryptFailureSpike"] != "" {
			t.Logf("Event Revoke: %s", seen["Revoke"])
			t.Logf("Event DecryptFailureSpike: %s", seen["DecryptFailureSpike"])
			return true
		}
		return false
	})
	st, err := store.AuditTrail(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	trail, err := controllerAuditKey(t, kc).VerifyStored(st.Keyset, st.Records, st.Head)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, r := range trail.Records {
		actions = append(actions, r.Action)
	}
	if !strings.Contains(strings.Join(actions, " "), "add-pending revoke") {
		t.Fatalf("audit trail %v", actions)
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
