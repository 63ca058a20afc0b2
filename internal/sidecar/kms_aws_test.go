package sidecar

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	sdkkms "github.com/aws/aws-sdk-go-v2/service/kms"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	awskms "github.com/keyshift/keyshift/internal/kms/aws"
	"github.com/keyshift/keyshift/internal/kms/aws/localkms"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/sidecar/client"
)

// awsEnv is a real local-kms process (the AWS KMS JSON API, keys kept on
// disk across restarts) behind a recording proxy, a keyset wrapped by it,
// and a registry whose aws-kms backend talks to the proxy through the SDK.
type awsEnv struct {
	srv    *localkms.Server
	proxy  *localkms.Proxy
	keyID  string
	reg    kms.Registry
	dir    string
	ksPath string
	uri    string
}

func newAWSEnv(tb testing.TB) *awsEnv {
	localkms.SetEnv(tb)
	id := localkms.NewKeyID()
	srv := localkms.Start(tb, localkms.Key{ID: id})
	proxy := localkms.StartProxy(tb, srv.Endpoint)
	e := &awsEnv{srv: srv, proxy: proxy, keyID: id, uri: "aws-kms://" + localkms.KeyARN(id)}
	e.reg = kms.Registry{awskms.Scheme: awskms.Opener(slog.New(slog.DiscardHandler), awskms.WithEndpoint(proxy.URL),
		awskms.WithRetry(awskms.RetryPolicy{MaxAttempts: 2, BaseDelay: 20 * time.Millisecond, MaxDelay: 50 * time.Millisecond}),
		awskms.WithTimeout(500*time.Millisecond))}
	dir, err := os.MkdirTemp("", "ksa")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	e.dir, e.ksPath = dir, filepath.Join(dir, "ks", "keyset.json")
	os.Mkdir(filepath.Dir(e.ksPath), 0o755)
	w, err := e.reg.Open(context.Background(), e.uri)
	if err != nil {
		tb.Fatal(err)
	}
	ks, err := rotation.Create(context.Background(), w, "payments", e.uri, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	if err := keyset.WriteFile(e.ksPath, ks); err != nil {
		tb.Fatal(err)
	}
	return e
}

func (e *awsEnv) start(tb testing.TB) (*Server, *client.Client) {
	return startSidecar(tb, Config{Socket: filepath.Join(e.dir, "s.sock"), Keysets: map[string]string{"payments": e.ksPath},
		KMS: e.reg, KMSTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
}

func (e *awsEnv) next(tb testing.TB) *keyset.Keyset { return nextVersion(tb, e.reg, e.ksPath) }

// The KMS process is killed mid-run and restarted: traffic never fails, a
// version published while it is down loads once it is back, and every
// ciphertext written at any point decrypts at the end.
func TestAWSKMSKilledAndRestartedMidRun(t *testing.T) {
	e := newAWSEnv(t)
	s, c := e.start(t)
	<-s.Ready()
	next := e.next(t)
	ctx := ctxT(t)

	var stop atomic.Bool
	var fails atomic.Int64
	var mu sync.Mutex
	var written [][]byte
	n := 0
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ct, err := c.Encrypt(ctx, []byte("order"), nil)
				if err == nil {
					_, err = c.Decrypt(ctx, ct, nil)
				}
				if err != nil {
					fails.Add(1)
					t.Errorf("call failed while the KMS was away: %v", err)
					return
				}
				mu.Lock()
				if n++; n%20 == 0 {
					written = append(written, ct)
				}
				mu.Unlock()
			}
		}()
	}
	e.srv.Kill()
	keyset.WriteFile(e.ksPath, next)
	waitUntil(t, func() bool { return strings.Contains(s.lastError("payments"), "unavailable") }, "v2 load fails while the KMS is down")
	time.Sleep(200 * time.Millisecond)
	e.srv.Restart()
	waitUntil(t, func() bool { return loaded(s, 2) }, "v2 loads after the KMS restarts")
	promoted, _ := next.Promote(2, time.Now())
	keyset.WriteFile(e.ksPath, promoted)
	waitUntil(t, func() bool { p, _ := s.Service().Primary("payments"); return p == 2 }, "v2 promoted")
	time.Sleep(50 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if fails.Load() != 0 {
		t.Fatalf("%d failed calls", fails.Load())
	}
	versions := map[uint32]bool{}
	for _, ct := range written {
		versions[mustHeader(t, ct).Version] = true
		if _, err := c.Decrypt(ctx, ct, nil); err != nil {
			t.Fatalf("a ciphertext written during the outage does not decrypt: %v", err)
		}
	}
	if !versions[1] || !versions[2] {
		t.Fatalf("versions written: %v", versions)
	}
}

// Down at start: not ready, UNAVAILABLE; up again: ready. A disabled key:
// a new version fails as user-induced and the running keyring serves on.
func TestAWSKMSDownAtStartAndDisabledKey(t *testing.T) {
	e := newAWSEnv(t)
	e.srv.Kill()
	s, c := e.start(t)
	waitUntil(t, func() bool { return strings.Contains(s.lastError("payments"), "unavailable") }, "first load fails")
	if _, err := c.Encrypt(ctxT(t), []byte("x"), nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("encrypt before ready: %v", err)
	}
	e.srv.Restart()
	select {
	case <-s.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("not ready after the KMS came back")
	}
	next := e.next(t)
	if _, err := e.srv.Admin().DisableKey(context.Background(), &sdkkms.DisableKeyInput{KeyId: awssdk.String(e.keyID)}); err != nil {
		t.Fatal(err)
	}
	keyset.WriteFile(e.ksPath, next)
	waitUntil(t, func() bool { return strings.Contains(s.lastError("payments"), "key unusable") }, "disabled key reported as user-induced")
	if _, err := c.Encrypt(ctxT(t), []byte("still serving"), nil); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkEncryptVsKMSPerMessage compares 1 KiB encrypts through the
// sidecar with what an app without keyshift does, one KMS Encrypt call per
// message, against the same local-kms server in the same run, and counts
// the KMS calls the sidecar makes per 10,000 encrypts once loaded.
func BenchmarkEncryptVsKMSPerMessage(b *testing.B) {
	e := newAWSEnv(b)
	s, c := e.start(b)
	<-s.Ready()
	payload := make([]byte, 1024)
	rand.Read(payload)
	ctx := context.Background()
	var kmsNs, sideNs float64
	b.Run("kms-encrypt-per-message", func(b *testing.B) {
		// One SDK Encrypt call per message, straight to the server.
		api := e.srv.Admin()
		b.SetBytes(1024)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := api.Encrypt(ctx, &sdkkms.EncryptInput{KeyId: awssdk.String(e.keyID), Plaintext: payload,
				EncryptionContext: map[string]string{"app": "order"}}); err != nil {
				b.Fatal(err)
			}
		}
		kmsNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("sidecar-encrypt", func(b *testing.B) {
		b.SetBytes(1024)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Encrypt(ctx, payload, nil); err != nil {
				b.Fatal(err)
			}
		}
		sideNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if kmsNs > 0 {
			b.ReportMetric(kmsNs/sideNs, "x-faster-than-kms")
		}
	})
	b.Run("kms-calls-per-10000-encrypts", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			before := len(e.proxy.Ops())
			for range 10000 {
				if _, err := c.Encrypt(ctx, payload, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(e.proxy.Ops())-before), "kms-calls")
		}
	})

}
