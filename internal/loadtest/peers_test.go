package loadtest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/kms/vault/vaulttest"
)

// The sidecar, its floor and three peers in one run, each with the same
// load: real Vault Transit, the envelope in process, an app with a cached
// data key from the (local) KMS. Every target completes calls without
// errors and gets a ratio.
func TestPeersInOneRun(t *testing.T) {
	sock, ksPath, kekURI, reg := testSidecar(t)
	v := vaulttest.Start(t)
	v.CreateKey("bench", false)
	t.Setenv("VAULT_TOKEN", vaulttest.RootToken)
	for _, batch := range []int{1, 4} {
		rep, err := Run(context.Background(), Options{
			Socket: sock, Clients: 2, Payload: 512, Duration: 300 * time.Millisecond,
			Mix: Mix{Encrypt: 1, Decrypt: 1, Batch: batch}, Floor: true, KMS: reg,
			Peers: []PeerSpec{{"vault", v.Addr + "/transit/bench"}, {"in-process", ksPath}, {"cached-dek", kekURI}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Peers) != 3 || rep.Floor == nil {
			t.Fatalf("batch %d: %d peers, floor %v", batch, len(rep.Peers), rep.Floor)
		}
		for _, p := range append(rep.Peers, rep.Floor, rep) {
			if p.Calls < 10 || len(p.Errors) != 0 || p.Describe == "" || p.ItemsPerSec != float64(batch)*p.CallsPerSec {
				t.Fatalf("batch %d, %s: %d calls, errors %v, %v items/s", batch, p.Target, p.Calls, p.Errors, p.ItemsPerSec)
			}
			if p != rep && p.KeyshiftOver <= 0 {
				t.Fatalf("batch %d, %s: no ratio", batch, p.Target)
			}
		}
	}
}

// A peer that refuses (a wrong Vault token), or that lacks an operation
// of the mix (rewrap for cached-dek), fails the run before it starts,
// saying which and why.
func TestPeerRefusalsFailTheRun(t *testing.T) {
	sock, _, kekURI, reg := testSidecar(t)
	v := vaulttest.Start(t)
	v.CreateKey("bench", false)
	t.Setenv("VAULT_TOKEN", "not-a-token")
	_, err := Run(context.Background(), Options{Socket: sock, Clients: 1, Duration: 100 * time.Millisecond,
		Mix: Mix{Encrypt: 1, Decrypt: 1}, Peers: []PeerSpec{{"vault", v.Addr + "/transit/bench"}}})
	var ve *VaultError
	if !errors.As(err, &ve) || ve.Status != 403 || !strings.Contains(err.Error(), "vault") {
		t.Fatalf("wrong token: %v", err)
	}
	_, err = Run(context.Background(), Options{Socket: sock, Clients: 1, Duration: 100 * time.Millisecond, KMS: reg,
		Mix: Mix{Encrypt: 1, Rewrap: 1}, Peers: []PeerSpec{{"cached-dek", kekURI}}})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "cached-dek") {
		t.Fatalf("rewrap on cached-dek: %v", err)
	}
}

// The cached-dek app refuses a tampered or truncated message.
func TestCachedDEKRefusesTampering(t *testing.T) {
	_, _, kekURI, reg := testSidecar(t)
	tg, err := openCachedDEK(context.Background(), PeerSpec{"cached-dek", kekURI}, Options{KMS: reg})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := tg.Dial(context.Background())
	cts, err := c.Encrypt(context.Background(), [][]byte{[]byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Decrypt(context.Background(), cts); err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), cts[0]...)
	bad[len(bad)-1] ^= 1
	for _, m := range [][]byte{bad, cts[0][:10], nil} {
		if err := c.Decrypt(context.Background(), [][]byte{m}); !errors.Is(err, ErrCachedDEKMessage) {
			t.Fatalf("tampered message: %v", err)
		}
	}
}
