package gcp_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	kmsapi "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/gcp"
	"github.com/keyshift/keyshift/internal/kms/gcp/gcpkmstest"
	"github.com/keyshift/keyshift/internal/testbin"
)

const (
	keyName  = "projects/keyshift-test/locations/global/keyRings/ring/cryptoKeys/kek"
	version1 = keyName + "/cryptoKeyVersions/1"
	version2 = keyName + "/cryptoKeyVersions/2"
)

// fastRetry keeps backoffs short so tests stay quick.
func fastRetry() gcp.RetryPolicy {
	return gcp.RetryPolicy{MaxAttempts: 3, BaseDelay: 5 * time.Millisecond, MaxDelay: 50 * time.Millisecond}
}

// startServer starts a test Cloud KMS with keyName created.
func startServer(t *testing.T) *gcpkmstest.Server {
	t.Helper()
	srv := gcpkmstest.Start(t)
	if err := srv.CreateKey(keyName); err != nil {
		t.Fatal(err)
	}
	return srv
}

// newClient returns a client of srv for key over plaintext gRPC.
func newClient(t *testing.T, srv *gcpkmstest.Server, key string, opts ...gcp.Option) *gcp.Client {
	t.Helper()
	all := append([]gcp.Option{
		gcp.WithEndpoint(srv.Addr()), gcp.WithInsecure(),
		gcp.WithTimeout(2 * time.Second), gcp.WithRetry(fastRetry()),
	}, opts...)
	c, err := gcp.New(t.Context(), key, all...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// adminClient is the plain Cloud KMS client, for what an operator does by hand.
func adminClient(t *testing.T, srv *gcpkmstest.Server) *kmsapi.KeyManagementClient {
	t.Helper()
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	kc, err := kmsapi.NewKeyManagementClient(t.Context(), option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kc.Close() })
	return kc
}

func setState(t *testing.T, admin *kmsapi.KeyManagementClient, version string, state kmspb.CryptoKeyVersion_CryptoKeyVersionState) {
	t.Helper()
	_, err := admin.UpdateCryptoKeyVersion(t.Context(), &kmspb.UpdateCryptoKeyVersionRequest{
		CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: version, State: state},
		UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}},
	})
	if err != nil {
		t.Fatalf("set %s to %s: %v", version, state, err)
	}
}

func newDEK(t *testing.T) []byte {
	t.Helper()
	dek := make([]byte, 32)
	if _, err := rand.Read(dek); err != nil {
		t.Fatal(err)
	}
	return dek
}

func crc(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))))
}

// countCalls counts the calls of method that srv received.
func countCalls(srv *gcpkmstest.Server, method string) int {
	n := 0
	for _, m := range srv.Methods() {
		if m == method {
			n++
		}
	}
	return n
}

func TestRoundTrip(t *testing.T) {
	srv := startServer(t)
	c := newClient(t, srv, keyName)
	for _, tc := range []struct {
		name string
		aad  []byte
	}{
		{"no aad", nil},
		{"text aad", []byte("keyshift keyset payments v3")},
		{"binary aad", []byte{0, 1, 2, 0xff, 0xfe}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dek := newDEK(t)
			w, err := c.Wrap(t.Context(), dek, tc.aad)
			if err != nil {
				t.Fatalf("Wrap: %v", err)
			}
			if w.KEKVersion != version1 {
				t.Errorf("KEKVersion = %q, want %q", w.KEKVersion, version1)
			}
			if bytes.Contains(w.Ciphertext, dek) {
				t.Errorf("wrapped key contains the DEK")
			}
			got, err := c.Unwrap(t.Context(), w, tc.aad)
			if err != nil {
				t.Fatalf("Unwrap: %v", err)
			}
			if diff := cmp.Diff(dek, got); diff != "" {
				t.Errorf("Unwrap (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRequestsCarryChecksums checks what the client sends, whole.
func TestRequestsCarryChecksums(t *testing.T) {
	srv := startServer(t)
	c := newClient(t, srv, keyName)
	dek, aad := newDEK(t), []byte("keyshift keyset k v1")
	w, err := c.Wrap(t.Context(), dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Unwrap(t.Context(), w, aad); err != nil {
		t.Fatal(err)
	}
	var got []any
	for _, call := range srv.Calls() {
		got = append(got, call.Request)
	}
	want := []any{
		&kmspb.EncryptRequest{
			Name: keyName, Plaintext: dek, AdditionalAuthenticatedData: aad,
			PlaintextCrc32C: crc(dek), AdditionalAuthenticatedDataCrc32C: crc(aad),
		},
		&kmspb.DecryptRequest{
			Name: keyName, Ciphertext: w.Ciphertext, AdditionalAuthenticatedData: aad,
			CiphertextCrc32C: crc(w.Ciphertext), AdditionalAuthenticatedDataCrc32C: crc(aad),
		},
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}

func TestUnwrapRefusesWhatDoesNotVerify(t *testing.T) {
	srv := startServer(t)
	c := newClient(t, srv, keyName)
	const otherKey = "projects/keyshift-test/locations/global/keyRings/ring/cryptoKeys/other"
	if err := srv.CreateKey(otherKey); err != nil {
		t.Fatal(err)
	}
	other := newClient(t, srv, otherKey)

	dek, aad := newDEK(t), []byte("keyshift keyset k v1")
	w, err := c.Wrap(t.Context(), dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	wOther, err := other.Wrap(t.Context(), dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(w.Ciphertext)
	flipped[len(flipped)-1] ^= 0x80

	for _, tc := range []struct {
		name       string
		wrapped    kms.WrappedKey
		aad        []byte
		decrypts   int    // Decrypt calls expected: 1 means no retry
		wantDetail string // in the error message
	}{
		{"wrong aad", w, []byte("keyshift keyset k v2"), 1, "does not verify"},
		{"missing aad", w, nil, 1, "does not verify"},
		{"flipped ciphertext", kms.WrappedKey{Ciphertext: flipped, KEKVersion: w.KEKVersion}, aad, 1, "does not verify"},
		{"truncated ciphertext", kms.WrappedKey{Ciphertext: w.Ciphertext[:10], KEKVersion: w.KEKVersion}, aad, 1, "does not verify"},
		{"empty ciphertext", kms.WrappedKey{KEKVersion: w.KEKVersion}, aad, 0, "wrapped key of 0 bytes"},
		{"wrapped by another key", wOther, aad, 1, `wrapped by "` + otherKey + `/cryptoKeyVersions/1", which is not a version of this key`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.ResetCalls()
			got, err := c.Unwrap(t.Context(), tc.wrapped, tc.aad)
			if !errors.Is(err, kms.ErrCorrupt) {
				t.Fatalf("Unwrap = %x, %v; want %v", got, err, kms.ErrCorrupt)
			}
			if got != nil {
				t.Errorf("Unwrap returned %d bytes with its error", len(got))
			}
			if !strings.Contains(err.Error(), tc.wantDetail) || !strings.HasPrefix(err.Error(), "gcp-kms: Decrypt "+keyName) {
				t.Errorf("error %q: want prefix %q and %q in it", err, "gcp-kms: Decrypt "+keyName, tc.wantDetail)
			}
			if n := countCalls(srv, "Decrypt"); n != tc.decrypts {
				t.Errorf("%d Decrypt calls, want %d", n, tc.decrypts)
			}
		})
	}
}

// TestDamagedAnswers checks that an answer failing a CRC32C check is never
// used: it is retried, and refused as kms.ErrUnavailable when the damage persists.
func TestDamagedAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage gcpkmstest.Damage
		op     string
		detail string
	}{
		{"damaged ciphertext", gcpkmstest.DamageCiphertext, "Encrypt", "the wrapped key does not match its checksum"},
		{"plaintext checksum not verified", gcpkmstest.UnverifiedPlaintext, "Encrypt", "did not confirm the data key's checksum"},
		{"aad checksum not verified", gcpkmstest.UnverifiedAAD, "Encrypt", "did not confirm the aad's checksum"},
		{"damaged plaintext", gcpkmstest.DamagePlaintext, "Decrypt", "the data key does not match its checksum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t)
			c := newClient(t, srv, keyName)
			dek, aad := newDEK(t), []byte("aad")
			w, err := c.Wrap(t.Context(), dek, aad)
			if err != nil {
				t.Fatal(err)
			}
			run := func() ([]byte, error) {
				if tc.op == "Encrypt" {
					w, err := c.Wrap(t.Context(), dek, aad)
					if err != nil {
						return nil, err
					}
					return c.Unwrap(t.Context(), w, aad)
				}
				return c.Unwrap(t.Context(), w, aad)
			}

			// Damaged every time: refused after every attempt.
			srv.DamageNext(100, tc.damage)
			srv.ResetCalls()
			got, err := run()
			if !errors.Is(err, kms.ErrUnavailable) || !errors.Is(err, gcp.ErrChecksum) || errors.Is(err, kms.ErrCorrupt) {
				t.Fatalf("persistent damage: got %x, %v; want %v and %v", got, err, kms.ErrUnavailable, gcp.ErrChecksum)
			}
			if got != nil {
				t.Errorf("persistent damage: %d bytes returned with the error", len(got))
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q lacks %q", err, tc.detail)
			}
			if n := countCalls(srv, tc.op); n != fastRetry().MaxAttempts {
				t.Errorf("%d %s calls, want %d", n, tc.op, fastRetry().MaxAttempts)
			}

			// Damaged once: the retry gets a sound answer.
			srv = startServer(t)
			c = newClient(t, srv, keyName)
			if w, err = c.Wrap(t.Context(), dek, aad); err != nil {
				t.Fatal(err)
			}
			srv.DamageNext(1, tc.damage)
			srv.ResetCalls()
			got, err = run()
			if err != nil {
				t.Fatalf("single damage: %v", err)
			}
			if diff := cmp.Diff(dek, got); diff != "" {
				t.Errorf("single damage (-want +got):\n%s", diff)
			}
			if n := countCalls(srv, tc.op); n != 2 {
				t.Errorf("%d %s calls, want 2", n, tc.op)
			}
		})
	}
}

func TestDisabledVersion(t *testing.T) {
	srv := startServer(t)
	admin := adminClient(t, srv)
	c := newClient(t, srv, keyName)
	dek, aad := newDEK(t), []byte("aad")
	w1, err := c.Wrap(t.Context(), dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rotate(t.Context()); err != nil {
		t.Fatal(err)
	}

	// An old, disabled version: its keys no longer unwrap, and saying so
	// takes one call, not a retry loop.
	setState(t, admin, version1, kmspb.CryptoKeyVersion_DISABLED)
	srv.ResetCalls()
	_, err = c.Unwrap(t.Context(), w1, aad)
	if !errors.Is(err, kms.ErrUserInduced) {
		t.Fatalf("Unwrap under a disabled version: %v, want %v", err, kms.ErrUserInduced)
	}
	for _, want := range []string{version1 + " is not enabled, current state is: DISABLED", "enable or restore it", "FailedPrecondition"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if diff := cmp.Diff([]string{"Decrypt"}, srv.Methods()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}

	// A disabled primary: nothing wraps, and the poller is told why.
	setState(t, admin, version2, kmspb.CryptoKeyVersion_DISABLED)
	if _, err := c.Wrap(t.Context(), dek, aad); !errors.Is(err, kms.ErrUserInduced) || !strings.Contains(err.Error(), "DISABLED") {
		t.Errorf("Wrap under a disabled primary: %v, want %v naming DISABLED", err, kms.ErrUserInduced)
	}
	if v, err := c.PrimaryKEKVersion(t.Context()); !errors.Is(err, kms.ErrUserInduced) || !strings.Contains(err.Error(), "primary version "+version2+" is DISABLED") {
		t.Errorf("PrimaryKEKVersion = %q, %v; want %v naming the disabled primary", v, err, kms.ErrUserInduced)
	}

	// Enabled again: both work.
	setState(t, admin, version1, kmspb.CryptoKeyVersion_ENABLED)
	setState(t, admin, version2, kmspb.CryptoKeyVersion_ENABLED)
	if got, err := c.Unwrap(t.Context(), w1, aad); err != nil || !bytes.Equal(got, dek) {
		t.Errorf("Unwrap after enabling: %v", err)
	}
	if _, err := c.Wrap(t.Context(), dek, aad); err != nil {
		t.Errorf("Wrap after enabling: %v", err)
	}

	// Destroyed: the same sorting.
	if _, err := admin.DestroyCryptoKeyVersion(t.Context(), &kmspb.DestroyCryptoKeyVersionRequest{Name: version1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Unwrap(t.Context(), w1, aad); !errors.Is(err, kms.ErrUserInduced) || !strings.Contains(err.Error(), "DESTROY_SCHEDULED") {
		t.Errorf("Unwrap under a destroyed version: %v, want %v naming DESTROY_SCHEDULED", err, kms.ErrUserInduced)
	}
}

func TestUnknownKey(t *testing.T) {
	srv := startServer(t)
	const missing = "projects/keyshift-test/locations/global/keyRings/ring/cryptoKeys/missing"
	c := newClient(t, srv, missing)
	for _, tc := range []struct {
		name string
		run  func() error
		want []string
	}{
		{"Wrap", func() error { _, err := c.Wrap(t.Context(), newDEK(t), nil); return err },
			[]string{"gcp-kms: Encrypt " + missing, "roles/cloudkms.cryptoKeyEncrypterDecrypter", "PermissionDenied"}},
		{"Unwrap", func() error {
			_, err := c.Unwrap(t.Context(), kms.WrappedKey{Ciphertext: make([]byte, 64)}, nil)
			return err
		}, []string{"gcp-kms: Decrypt " + missing, "roles/cloudkms.cryptoKeyEncrypterDecrypter", "PermissionDenied"}},
		{"PrimaryKEKVersion", func() error { _, err := c.PrimaryKEKVersion(t.Context()); return err },
			[]string{"gcp-kms: GetCryptoKey " + missing, "no such key", "NotFound"}},
		{"Rotate", func() error { _, err := c.Rotate(t.Context()); return err },
			[]string{"gcp-kms: CreateCryptoKeyVersion " + missing, "no such key", "NotFound"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.ResetCalls()
			err := tc.run()
			if !errors.Is(err, kms.ErrUserInduced) {
				t.Fatalf("%v, want %v", err, kms.ErrUserInduced)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if n := len(srv.Methods()); n != 1 {
				t.Errorf("%d calls, want 1 (no retry)", n)
			}
		})
	}
}

// TestBackoff checks that throttled and unavailable calls are retried with
// growing, jittered delays, and that the server saw the waits.
func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		name     string
		code     codes.Code
		failures int
		kind     error
		wantErr  bool
	}{
		{"throttled then succeeds", codes.ResourceExhausted, 3, kms.ErrThrottled, false},
		{"unavailable then succeeds", codes.Unavailable, 3, kms.ErrUnavailable, false},
		{"internal then succeeds", codes.Internal, 1, kms.ErrUnavailable, false},
		{"throttled past the last attempt", codes.ResourceExhausted, 10, kms.ErrThrottled, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t)
			var mu sync.Mutex
			var events []gcp.RetryEvent
			policy := gcp.RetryPolicy{MaxAttempts: 5, BaseDelay: 20 * time.Millisecond, MaxDelay: time.Second,
				OnRetry: func(e gcp.RetryEvent) { mu.Lock(); events = append(events, e); mu.Unlock() }}
			c := newClient(t, srv, keyName, gcp.WithRetry(policy))
			srv.FailNext(tc.failures, tc.code, "Encrypt")

			_, err := c.Wrap(t.Context(), newDEK(t), nil)
			if tc.wantErr {
				if !errors.Is(err, tc.kind) {
					t.Fatalf("Wrap: %v, want %v", err, tc.kind)
				}
			} else if err != nil {
				t.Fatalf("Wrap: %v", err)
			}

			attempts := min(tc.failures+1, policy.MaxAttempts)
			calls := srv.Calls()
			var gotCodes, wantCodes []codes.Code
			for i, call := range calls {
				gotCodes = append(gotCodes, call.Code)
				if i < tc.failures {
					wantCodes = append(wantCodes, tc.code)
				} else {
					wantCodes = append(wantCodes, codes.OK)
				}
			}
			if diff := cmp.Diff(wantCodes[:attempts], gotCodes); diff != "" {
				t.Errorf("server answers (-want +got):\n%s", diff)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(events) != attempts-1 {
				t.Fatalf("%d backoffs, want %d", len(events), attempts-1)
			}
			for i, e := range events {
				ceiling := policy.Ceiling(i + 1)
				if e.Attempt != i+1 || e.Op != "Encrypt" || !errors.Is(e.Err, tc.kind) {
					t.Errorf("backoff %d: attempt %d op %s err %v; want attempt %d, Encrypt, %v", i, e.Attempt, e.Op, e.Err, i+1, tc.kind)
				}
				if e.Delay < ceiling/2 || e.Delay > ceiling {
					t.Errorf("backoff %d: delay %v outside [%v, %v]", i, e.Delay, ceiling/2, ceiling)
				}
				if i > 0 && e.Delay < events[i-1].Delay {
					t.Errorf("backoff %d: delay %v shorter than the one before, %v", i, e.Delay, events[i-1].Delay)
				}
				if gap := calls[i+1].At.Sub(calls[i].At); gap < e.Delay {
					t.Errorf("server saw attempts %d and %d %v apart, less than the backoff %v", i+1, i+2, gap, e.Delay)
				}
			}
		})
	}
}

func TestBackoffCeiling(t *testing.T) {
	p := gcp.RetryPolicy{MaxAttempts: 10, BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second}
	var got []time.Duration
	for attempt := 1; attempt <= 6; attempt++ {
		got = append(got, p.Ceiling(attempt))
	}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ceilings (-want +got):\n%s", diff)
	}
	for range 100 {
		if d := p.Delay(3); d < 200*time.Millisecond || d > 400*time.Millisecond {
			t.Fatalf("Delay(3) = %v, outside [200ms, 400ms]", d)
		}
	}
}

func TestServerStoppedAndRestarted(t *testing.T) {
	srv := startServer(t)
	const timeout = 300 * time.Millisecond
	policy := gcp.RetryPolicy{MaxAttempts: 4, BaseDelay: 50 * time.Millisecond, MaxDelay: 400 * time.Millisecond}
	c := newClient(t, srv, keyName, gcp.WithTimeout(timeout), gcp.WithRetry(policy))
	dek, aad := newDEK(t), []byte("aad")
	w, err := c.Wrap(t.Context(), dek, aad)
	if err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	start := time.Now()
	_, err = c.Unwrap(t.Context(), w, aad)
	took := time.Since(start)
	if !errors.Is(err, kms.ErrUnavailable) {
		t.Fatalf("Unwrap with the server stopped: %v, want %v", err, kms.ErrUnavailable)
	}
	// Every attempt bounded by the timeout, plus the backoffs between them.
	limit := time.Duration(policy.MaxAttempts)*timeout + 3*policy.MaxDelay
	if took > limit {
		t.Errorf("Unwrap with the server stopped took %v, more than %v", took, limit)
	}
	t.Logf("server stopped: %v after %v", err, took)

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// The connection comes back by itself; a caller retrying as the sidecar
	// does gets through within a few seconds.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := c.Unwrap(t.Context(), w, aad)
		if err == nil {
			if !bytes.Equal(got, dek) {
				t.Fatal("Unwrap after restart returned another key")
			}
			break
		}
		if !errors.Is(err, kms.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Unwrap after restart: %v", err)
		}
	}
}

func TestTimeouts(t *testing.T) {
	srv := startServer(t)
	srv.SetLatency(2 * time.Second)

	t.Run("per-attempt timeout", func(t *testing.T) {
		c := newClient(t, srv, keyName, gcp.WithTimeout(100*time.Millisecond),
			gcp.WithRetry(gcp.RetryPolicy{MaxAttempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 10 * time.Millisecond}))
		start := time.Now()
		_, err := c.Wrap(t.Context(), newDEK(t), nil)
		if !errors.Is(err, kms.ErrUnavailable) || !strings.Contains(err.Error(), "no answer within 100ms") {
			t.Fatalf("Wrap: %v, want %v saying no answer within 100ms", err, kms.ErrUnavailable)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("took %v for two 100ms attempts", took)
		}
	})
	t.Run("caller gives up", func(t *testing.T) {
		c := newClient(t, srv, keyName, gcp.WithTimeout(10*time.Second))
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, err := c.PrimaryKEKVersion(ctx)
		if !errors.Is(err, kms.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "caller gave up") {
			t.Fatalf("PrimaryKEKVersion: %v, want %v and %v", err, kms.ErrUnavailable, context.DeadlineExceeded)
		}
	})
}

func TestRotate(t *testing.T) {
	srv := startServer(t)
	c := newClient(t, srv, keyName)
	ctx := t.Context()
	primary := func() string {
		t.Helper()
		v, err := c.PrimaryKEKVersion(ctx)
		if err != nil {
			t.Fatalf("PrimaryKEKVersion: %v", err)
		}
		return v
	}

	if got := primary(); got != version1 {
		t.Errorf("primary before Rotate = %q, want %q", got, version1)
	}
	dek, aad := newDEK(t), []byte("aad")
	w1, err := c.Wrap(ctx, dek, aad)
	if err != nil {
		t.Fatal(err)
	}

	srv.ResetCalls()
	got, err := c.Rotate(ctx)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if got != version2 {
		t.Errorf("Rotate = %q, want %q", got, version2)
	}
	var reqs []any
	for _, call := range srv.Calls() {
		reqs = append(reqs, call.Request)
	}
	wantReqs := []any{
		&kmspb.CreateCryptoKeyVersionRequest{Parent: keyName, CryptoKeyVersion: &kmspb.CryptoKeyVersion{}},
		&kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: keyName, CryptoKeyVersionId: "2"},
	}
	if diff := cmp.Diff(wantReqs, reqs, protocmp.Transform()); diff != "" {
		t.Errorf("Rotate requests (-want +got):\n%s", diff)
	}
	if got := primary(); got != version2 {
		t.Errorf("primary after Rotate = %q, want %q", got, version2)
	}

	w2, err := c.Wrap(ctx, dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if w2.KEKVersion != version2 {
		t.Errorf("Wrap after Rotate used %q, want %q", w2.KEKVersion, version2)
	}
	for _, w := range []kms.WrappedKey{w1, w2} {
		if got, err := c.Unwrap(ctx, w, aad); err != nil || !bytes.Equal(got, dek) {
			t.Errorf("Unwrap of a key wrapped by %s: %v", w.KEKVersion, err)
		}
	}
}

func TestRotateWaitsForGeneration(t *testing.T) {
	srv := startServer(t)
	c := newClient(t, srv, keyName)
	srv.SetGenerationDelay(300 * time.Millisecond)
	srv.ResetCalls()
	got, err := c.Rotate(t.Context())
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if got != version2 {
		t.Errorf("Rotate = %q, want %q", got, version2)
	}
	methods := srv.Methods()
	if methods[0] != "CreateCryptoKeyVersion" || methods[len(methods)-1] != "UpdateCryptoKeyPrimaryVersion" || countCalls(srv, "GetCryptoKeyVersion") == 0 {
		t.Errorf("calls %v: want CreateCryptoKeyVersion, GetCryptoKeyVersion until generated, UpdateCryptoKeyPrimaryVersion", methods)
	}
}

// TestRotateRetries checks that CreateCryptoKeyVersion is retried only when
// throttled, so a lost answer never makes two versions.
func TestRotateRetries(t *testing.T) {
	for _, tc := range []struct {
		name    string
		code    codes.Code
		wantErr error
		creates int
	}{
		{"throttled: retried", codes.ResourceExhausted, nil, 2},
		{"unavailable: not retried", codes.Unavailable, kms.ErrUnavailable, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t)
			c := newClient(t, srv, keyName)
			srv.FailNext(1, tc.code, "CreateCryptoKeyVersion")
			_, err := c.Rotate(t.Context())
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Rotate: %v, want %v", err, tc.wantErr)
			}
			if n := countCalls(srv, "CreateCryptoKeyVersion"); n != tc.creates {
				t.Errorf("%d CreateCryptoKeyVersion calls, want %d", n, tc.creates)
			}
		})
	}
	t.Run("primary update fails", func(t *testing.T) {
		srv := startServer(t)
		c := newClient(t, srv, keyName)
		srv.FailNext(10, codes.PermissionDenied, "UpdateCryptoKeyPrimaryVersion")
		_, err := c.Rotate(t.Context())
		if !errors.Is(err, kms.ErrUserInduced) || !strings.Contains(err.Error(), "created "+version2+" but could not make it primary") {
			t.Fatalf("Rotate: %v, want %v naming the created version", err, kms.ErrUserInduced)
		}
	})
}

// TestLogsHoldNoKeyMaterial runs successes, retries and failures with a
// debug logger and looks for the DEK and the wrapped key in every encoding.
func TestLogsHoldNoKeyMaterial(t *testing.T) {
	srv := startServer(t)
	admin := adminClient(t, srv)
	var buf testbin.SyncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := newClient(t, srv, keyName, gcp.WithLogger(log))
	ctx := t.Context()
	dek, aad := newDEK(t), []byte("aad")

	var errs []error
	w, err := c.Wrap(ctx, dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Unwrap(ctx, w, aad); err != nil {
		t.Fatal(err)
	}
	srv.FailNext(1, codes.ResourceExhausted)
	if _, err := c.Wrap(ctx, dek, aad); err != nil {
		t.Fatal(err)
	}
	srv.DamageNext(10, gcpkmstest.DamagePlaintext)
	_, err = c.Unwrap(ctx, w, aad)
	errs = append(errs, err)
	srv.DamageNext(10, gcpkmstest.DamageCiphertext)
	_, err = c.Wrap(ctx, dek, aad)
	errs = append(errs, err)
	_, err = c.Unwrap(ctx, w, []byte("other aad"))
	errs = append(errs, err)
	if _, err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	setState(t, admin, version1, kmspb.CryptoKeyVersion_DISABLED)
	_, err = c.Unwrap(ctx, w, aad)
	errs = append(errs, err)

	logs := buf.String()
	for _, want := range []string{`"msg":"gcp-kms: wrapped"`, `"msg":"gcp-kms: unwrapped"`, `"msg":"gcp-kms: retrying"`, `"msg":"gcp-kms: call failed"`, `"msg":"gcp-kms: rotated"`, `"key":"` + keyName + `"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	var text strings.Builder
	text.WriteString(logs)
	for _, err := range errs {
		if err == nil {
			t.Fatal("a failure case succeeded")
		}
		text.WriteString(err.Error())
	}
	for name, secret := range map[string][]byte{"DEK": dek, "wrapped key": w.Ciphertext} {
		for enc, s := range map[string]string{
			"hex":       hex.EncodeToString(secret),
			"HEX":       strings.ToUpper(hex.EncodeToString(secret)),
			"base64":    base64.StdEncoding.EncodeToString(secret),
			"base64url": base64.URLEncoding.EncodeToString(secret),
			"raw":       string(secret),
		} {
			// A 16-character window catches a prefix of the encoding too.
			if strings.Contains(text.String(), s[:16]) {
				t.Errorf("logs or errors contain the %s in %s", name, enc)
			}
		}
	}
}

func TestOpener(t *testing.T) {
	srv := startServer(t)
	var buf testbin.SyncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := kms.Registry{gcp.Scheme: gcp.Opener(log, gcp.WithEndpoint(srv.Addr()), gcp.WithInsecure())}
	w, err := reg.Open(t.Context(), "gcp-kms://"+keyName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.(*gcp.Client).Close() })
	dek := newDEK(t)
	wk, err := w.Wrap(t.Context(), dek, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := w.Unwrap(t.Context(), wk, nil); err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("Unwrap: %v", err)
	}
	if v, err := w.(kms.KEKStatus).PrimaryKEKVersion(t.Context()); err != nil || v != version1 {
		t.Errorf("PrimaryKEKVersion = %q, %v; want %q", v, err, version1)
	}
	if !strings.Contains(buf.String(), "gcp-kms: wrapped") {
		t.Errorf("Opener's logger got nothing:\n%s", buf.String())
	}
	if got, want := w.(*gcp.Client).String(), "gcp-kms://"+keyName; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}

	// A bad URI fails before any client is made, Open included.
	for _, open := range []kms.OpenFunc{gcp.Open, reg[gcp.Scheme]} {
		u, _ := url.Parse("gcp-kms://projects/p/locations/global/keyRings/r")
		if _, err := open(t.Context(), u); !errors.Is(err, kms.ErrBadURI) {
			t.Errorf("open %s: %v, want %v", u, err, kms.ErrBadURI)
		}
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  string
		opts []gcp.Option
		want string
	}{
		{"insecure without endpoint", keyName, []gcp.Option{gcp.WithInsecure()}, "needs an endpoint"},
		{"endpoint without port", keyName, []gcp.Option{gcp.WithEndpoint("localhost"), gcp.WithInsecure()}, "write host:port"},
		{"negative timeout", keyName, []gcp.Option{gcp.WithTimeout(-time.Second)}, "must be positive"},
		{"no attempts", keyName, []gcp.Option{gcp.WithRetry(gcp.RetryPolicy{BaseDelay: time.Second, MaxDelay: time.Second})}, "MaxAttempts >= 1"},
		{"max below base", keyName, []gcp.Option{gcp.WithRetry(gcp.RetryPolicy{MaxAttempts: 2, BaseDelay: time.Second, MaxDelay: time.Millisecond})}, "BaseDelay <= MaxDelay"},
		{"a version, not a key", version1, nil, "names a CryptoKeyVersion"},
		{"not a key", "projects/p", nil, "not a CryptoKey resource name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := gcp.New(t.Context(), tc.key, tc.opts...)
			if !errors.Is(err, kms.ErrBadURI) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, %v; want %v saying %q", c, err, kms.ErrBadURI, tc.want)
			}
		})
	}
}

func TestWrapRefusesBadSizes(t *testing.T) {
	srv := startServer(t)
	c := newClient(t, srv, keyName)
	for _, tc := range []struct {
		name     string
		dek, aad []byte
	}{
		{"empty DEK", nil, nil},
		{"DEK over 64 KiB", make([]byte, 64<<10+1), nil},
		{"aad over 64 KiB", make([]byte, 32), make([]byte, 64<<10+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.ResetCalls()
			if _, err := c.Wrap(t.Context(), tc.dek, tc.aad); !errors.Is(err, kms.ErrUserInduced) {
				t.Errorf("Wrap: %v, want %v", err, kms.ErrUserInduced)
			}
			if n := len(srv.Methods()); n != 0 {
				t.Errorf("%d calls made, want none", n)
			}
		})
	}
}
