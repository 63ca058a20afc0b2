package aws

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/aws/localkms"
)

// These tests drive the real AWS SDK against a real local-kms process
// (scripts/install-local-kms.sh builds it). Where local-kms cannot act a
// part (throttling, KMS internal errors, key material IDs, on-demand
// rotation), a localkms.Proxy in front of it answers on the same wire.

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// fastRetry keeps failing tests quick.
func fastRetry() RetryPolicy {
	return RetryPolicy{MaxAttempts: 3, BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}
}

// openClient opens uri through a kms.Registry, as keyshift does, against endpoint.
func openClient(t *testing.T, endpoint, uri string, opts ...Option) *Client {
	t.Helper()
	base := []Option{WithEndpoint(endpoint), WithTimeout(2 * time.Second), WithRetry(fastRetry())}
	reg := kms.Registry{Scheme: Opener(nil, append(base, opts...)...)}
	w, err := reg.Open(testContext(t), uri)
	if err != nil {
		t.Fatalf("open %s: %v", uri, err)
	}
	return w.(*Client)
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func wantKind(t *testing.T, err, kind error) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("error %q does not wrap %v", err, kind)
	}
	if !strings.HasPrefix(err.Error(), "aws-kms: ") {
		t.Errorf("error %q lacks the aws-kms: prefix", err)
	}
}

// wantContains checks err's text names each of subs.
func wantContains(t *testing.T, err error, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	localkms.SetEnv(t)
	id := localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id, Aliases: []string{"alias/app"}})
	arn := localkms.KeyARN(id)
	for _, tc := range []struct {
		name string
		uri  string
		opts []Option
	}{
		{name: "key ARN", uri: "aws-kms:///" + arn},
		{name: "key ARN, Tink form", uri: "aws-kms://" + arn},
		{name: "alias ARN", uri: "aws-kms:///" + localkms.AliasARN("alias/app")},
		{name: "alias with region", uri: "aws-kms://alias/app?region=" + localkms.Region},
		{name: "alias with WithRegion", uri: "aws-kms://alias/app", opts: []Option{WithRegion(localkms.Region)}},
		{name: "key ID", uri: "aws-kms://" + id + "?region=" + localkms.Region},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := ParseURI(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			w, err := Opener(nil, append([]Option{WithEndpoint(srv.Endpoint), WithRetry(fastRetry())}, tc.opts...)...)(testContext(t), u)
			if err != nil {
				t.Fatal(err)
			}
			c := w.(*Client)
			ctx := testContext(t)
			for _, aad := range [][]byte{
				[]byte("keyshift keyset payments v7"),
				nil,
				{0, 1, 2, 0xff, '\n'},
			} {
				dek := randomKey(t)
				wk, err := c.Wrap(ctx, dek, aad)
				if err != nil {
					t.Fatalf("wrap: %v", err)
				}
				if wk.KEKVersion != arn {
					t.Errorf("KEK version %q, want the key ARN %q (local-kms reports no key material ID)", wk.KEKVersion, arn)
				}
				if bytes.Contains(wk.Ciphertext, dek) {
					t.Fatal("wrapped key contains the data key")
				}
				got, err := c.Unwrap(ctx, wk, aad)
				if err != nil {
					t.Fatalf("unwrap: %v", err)
				}
				if diff := cmp.Diff(dek, got); diff != "" {
					t.Errorf("unwrapped key (-want +got):\n%s", diff)
				}

				gen, gwk, err := c.GenerateDataKey(ctx, aad)
				if err != nil {
					t.Fatalf("generate: %v", err)
				}
				if len(gen) != 32 || gwk.KEKVersion != arn {
					t.Errorf("generated a %d-byte key under %q, want 32 bytes under %q", len(gen), gwk.KEKVersion, arn)
				}
				got, err = c.Unwrap(ctx, gwk, aad)
				if err != nil {
					t.Fatalf("unwrap generated: %v", err)
				}
				if diff := cmp.Diff(gen, got); diff != "" {
					t.Errorf("unwrapped generated key (-want +got):\n%s", diff)
				}

				rw, err := c.Rewrap(ctx, wk, aad)
				if err != nil {
					t.Fatalf("rewrap: %v", err)
				}
				if bytes.Equal(rw.Ciphertext, wk.Ciphertext) || rw.KEKVersion != arn {
					t.Errorf("rewrap gave the same ciphertext or KEK version %q", rw.KEKVersion)
				}
				got, err = c.Unwrap(ctx, rw, aad)
				if err != nil {
					t.Fatalf("unwrap rewrapped: %v", err)
				}
				if diff := cmp.Diff(dek, got); diff != "" {
					t.Errorf("unwrapped rewrapped key (-want +got):\n%s", diff)
				}
			}
			v, err := c.PrimaryKEKVersion(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if v != arn {
				t.Errorf("primary KEK version %q, want %q", v, arn)
			}
		})
	}
}

// TestEncryptionContextOnTheWire checks what KMS receives for aad, since
// IAM policies and CloudTrail queries are written against it.
func TestEncryptionContextOnTheWire(t *testing.T) {
	localkms.SetEnv(t)
	id := localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	var mu sync.Mutex
	var got []any
	proxy.Handle(func(op string, req map[string]any) *localkms.Reply {
		if op == "Encrypt" {
			mu.Lock()
			got = append(got, req["EncryptionContext"])
			mu.Unlock()
		}
		return nil
	})
	c := openClient(t, proxy.URL, "aws-kms:///"+localkms.KeyARN(id))
	for _, aad := range [][]byte{[]byte("keyshift keyset payments v7"), {0xde, 0xad, 0xbe, 0xef}, nil} {
		if _, err := c.Wrap(testContext(t), randomKey(t), aad); err != nil {
			t.Fatal(err)
		}
	}
	want := []any{
		map[string]any{"keyshift-aad-text": "keyshift keyset payments v7"},
		map[string]any{"keyshift-aad-b64url": "3q2-7w"},
		nil,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("encryption contexts sent (-want +got):\n%s", diff)
	}
}

func TestCorrupt(t *testing.T) {
	localkms.SetEnv(t)
	id, other := localkms.NewKeyID(), localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id}, localkms.Key{ID: other})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	c := openClient(t, proxy.URL, "aws-kms:///"+localkms.KeyARN(id))
	ctx := testContext(t)
	aad := []byte("keyshift keyset app v1")
	wk, err := c.Wrap(ctx, randomKey(t), aad)
	if err != nil {
		t.Fatal(err)
	}
	oc := openClient(t, srv.Endpoint, "aws-kms:///"+localkms.KeyARN(other))
	owk, err := oc.Wrap(ctx, randomKey(t), aad)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(wk.Ciphertext)
	flipped[len(flipped)-1] ^= 1

	for _, tc := range []struct {
		name    string
		wrapped kms.WrappedKey
		aad     []byte
		// rewrap is false where local-kms's ReEncrypt departs from AWS's:
		// it ignores SourceKeyId (so another key's ciphertext rewraps) and
		// reads a truncated blob as naming key "key/" (NotFoundException).
		// AWS answers IncorrectKeyException and InvalidCiphertextException.
		rewrap bool
	}{
		{name: "wrong aad", wrapped: wk, aad: []byte("keyshift keyset app v2"), rewrap: true},
		{name: "no aad", wrapped: wk, aad: nil, rewrap: true},
		{name: "aad in the other encoding", wrapped: wk, aad: append(bytes.Clone(aad), 0), rewrap: true},
		{name: "flipped bit", wrapped: kms.WrappedKey{Ciphertext: flipped, KEKVersion: wk.KEKVersion}, aad: aad, rewrap: true},
		{name: "truncated", wrapped: kms.WrappedKey{Ciphertext: wk.Ciphertext[:20], KEKVersion: wk.KEKVersion}, aad: aad},
		// Without its KEK version, another key's ciphertext is sent to the
		// URI's key, which refuses it (real AWS: IncorrectKeyException,
		// user-induced; local-kms: InvalidCiphertextException).
		{name: "another key's ciphertext", wrapped: kms.WrappedKey{Ciphertext: owk.Ciphertext}, aad: aad},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy.Reset()
			_, err := c.Unwrap(ctx, tc.wrapped, tc.aad)
			wantKind(t, err, kms.ErrCorrupt)
			wantContains(t, err, "aws-kms: Decrypt", "InvalidCiphertextException", "does not verify")
			if n := proxy.Count("Decrypt"); n != 1 {
				t.Errorf("%d Decrypt attempts, want 1 (corrupt is not retried)", n)
			}
			if tc.rewrap {
				_, err = c.Rewrap(ctx, tc.wrapped, tc.aad)
				wantKind(t, err, kms.ErrCorrupt)
			}
		})
	}
}

func TestUserInduced(t *testing.T) {
	localkms.SetEnv(t)
	id, doomed := localkms.NewKeyID(), localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id, Aliases: []string{"alias/app"}}, localkms.Key{ID: doomed})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	admin := srv.Admin()
	ctx := testContext(t)
	c := openClient(t, proxy.URL, "aws-kms://alias/app?region="+localkms.Region)
	aad := []byte("keyshift keyset app v1")
	wk, err := c.Wrap(ctx, randomKey(t), aad)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("disabled key", func(t *testing.T) {
		if _, err := admin.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: aws.String(id)}); err != nil {
			t.Fatal(err)
		}
		proxy.Reset()
		_, err := c.Wrap(ctx, randomKey(t), aad)
		wantKind(t, err, kms.ErrUserInduced)
		wantContains(t, err, "aws-kms: Encrypt alias/app", "the key is disabled", "enable-key", "DisabledException", "HTTP 400")
		if diff := cmp.Diff([]string{"DescribeKey", "Encrypt"}, proxy.Ops()); diff != "" {
			t.Errorf("operations (-want +got); user-induced errors are not retried:\n%s", diff)
		}
		_, err = c.Unwrap(ctx, wk, aad)
		wantKind(t, err, kms.ErrUserInduced)
		wantContains(t, err, "DisabledException")
		_, _, err = c.GenerateDataKey(ctx, aad)
		wantKind(t, err, kms.ErrUserInduced)
		_, err = c.Rewrap(ctx, wk, aad)
		wantKind(t, err, kms.ErrUserInduced)
		_, err = c.PrimaryKEKVersion(ctx)
		wantKind(t, err, kms.ErrUserInduced)
		wantContains(t, err, "is disabled", localkms.KeyARN(id))

		if _, err := admin.EnableKey(ctx, &awskms.EnableKeyInput{KeyId: aws.String(id)}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Unwrap(ctx, wk, aad); err != nil {
			t.Fatalf("unwrap after enabling the key again: %v", err)
		}
	})

	t.Run("pending deletion", func(t *testing.T) {
		if _, err := admin.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: aws.String(doomed), PendingWindowInDays: aws.Int32(7)}); err != nil {
			t.Fatal(err)
		}
		dc := openClient(t, proxy.URL, "aws-kms:///"+localkms.KeyARN(doomed))
		_, _, err := dc.GenerateDataKey(ctx, aad)
		wantKind(t, err, kms.ErrUserInduced)
		wantContains(t, err, "KMSInvalidStateException", "pending deletion")
		_, err = dc.PrimaryKEKVersion(ctx)
		wantKind(t, err, kms.ErrUserInduced)
		wantContains(t, err, "PendingDeletion")
	})

	t.Run("missing alias", func(t *testing.T) {
		mc := openClient(t, proxy.URL, "aws-kms://alias/nope?region="+localkms.Region)
		_, _, err := mc.GenerateDataKey(ctx, aad)
		wantKind(t, err, kms.ErrUserInduced)
		wantContains(t, err, "NotFoundException", "no such key or alias")
		_, err = mc.PrimaryKEKVersion(ctx)
		wantKind(t, err, kms.ErrUserInduced)
	})
}

func TestServerDownAndBack(t *testing.T) {
	localkms.SetEnv(t)
	id := localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id})
	var mu sync.Mutex
	var events []RetryEvent
	policy := RetryPolicy{MaxAttempts: 4, BaseDelay: 20 * time.Millisecond, MaxDelay: 60 * time.Millisecond,
		OnRetry: func(e RetryEvent) { mu.Lock(); events = append(events, e); mu.Unlock() }}
	const timeout = time.Second
	c := openClient(t, srv.Endpoint, "aws-kms:///"+localkms.KeyARN(id), WithTimeout(timeout), WithRetry(policy))
	ctx := testContext(t)
	dek := randomKey(t)
	aad := []byte("keyshift keyset app v1")
	wk, err := c.Wrap(ctx, dek, aad)
	if err != nil {
		t.Fatal(err)
	}

	srv.Kill()
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"unwrap", func() error { _, err := c.Unwrap(ctx, wk, aad); return err }},
		{"wrap", func() error { _, err := c.Wrap(ctx, dek, aad); return err }},
		{"generate", func() error { _, _, err := c.GenerateDataKey(ctx, aad); return err }},
		{"primary KEK version", func() error { _, err := c.PrimaryKEKVersion(ctx); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			events = nil
			mu.Unlock()
			start := time.Now()
			err := tc.call()
			took := time.Since(start)
			wantKind(t, err, kms.ErrUnavailable)
			wantContains(t, err, "cannot reach KMS")
			mu.Lock()
			defer mu.Unlock()
			if len(events) != policy.MaxAttempts-1 {
				t.Errorf("%d retries, want %d", len(events), policy.MaxAttempts-1)
			}
			for i, e := range events {
				if e.Attempt != i+1 || !errors.Is(e.Err, kms.ErrUnavailable) {
					t.Errorf("retry %d: attempt %d, error %v", i+1, e.Attempt, e.Err)
				}
			}
			// Refused connections fail fast: well inside one attempt's timeout.
			if took > timeout {
				t.Errorf("took %v to give up, want under %v", took, timeout)
			}
		})
	}

	srv.Restart()
	got, err := c.Unwrap(ctx, wk, aad)
	if err != nil {
		t.Fatalf("unwrap after restart: %v", err)
	}
	if diff := cmp.Diff(dek, got); diff != "" {
		t.Errorf("unwrapped after restart (-want +got):\n%s", diff)
	}
	if _, _, err := c.GenerateDataKey(ctx, aad); err != nil {
		t.Fatalf("generate after restart: %v", err)
	}
}

// TestServerDownMidCall cuts the server while the client holds pooled
// connections to it, behind a proxy that drops connections like a dead
// host would.
func TestServerDownMidCall(t *testing.T) {
	localkms.SetEnv(t)
	id := localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	c := openClient(t, proxy.URL, "aws-kms:///"+localkms.KeyARN(id))
	ctx := testContext(t)
	aad := []byte("a")
	wk, err := c.Wrap(ctx, randomKey(t), aad)
	if err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	proxy.Reset()
	_, err = c.Unwrap(ctx, wk, aad)
	wantKind(t, err, kms.ErrUnavailable)
	if n := proxy.Count("Decrypt"); n != fastRetry().MaxAttempts {
		t.Errorf("%d Decrypt attempts, want %d", n, fastRetry().MaxAttempts)
	}
	srv.Restart()
	if _, err := c.Unwrap(ctx, wk, aad); err != nil {
		t.Fatalf("unwrap after restart: %v", err)
	}
}

// TestTimeout points the client at a socket that accepts and never answers.
func TestTimeout(t *testing.T) {
	localkms.SetEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	endpoint := "http://" + l.Addr().String()
	arn := localkms.KeyARN(localkms.NewKeyID())
	wk := kms.WrappedKey{Ciphertext: []byte("opaque"), KEKVersion: arn}

	t.Run("per-attempt timeout", func(t *testing.T) {
		const timeout = 200 * time.Millisecond
		policy := RetryPolicy{MaxAttempts: 2, BaseDelay: 10 * time.Millisecond, MaxDelay: 10 * time.Millisecond}
		c := openClient(t, endpoint, "aws-kms:///"+arn, WithTimeout(timeout), WithRetry(policy))
		start := time.Now()
		_, err := c.Unwrap(testContext(t), wk, nil)
		took := time.Since(start)
		wantKind(t, err, kms.ErrUnavailable)
		wantContains(t, err, "no answer within 200ms")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %q does not wrap context.DeadlineExceeded", err)
		}
		if took < 2*timeout || took > 2*timeout+time.Second {
			t.Errorf("took %v, want about two attempts of %v", took, timeout)
		}
	})

	t.Run("caller's deadline bounds the retries", func(t *testing.T) {
		c := openClient(t, endpoint, "aws-kms:///"+arn, WithTimeout(5*time.Second),
			WithRetry(RetryPolicy{MaxAttempts: 10, BaseDelay: 10 * time.Millisecond, MaxDelay: 10 * time.Millisecond}))
		ctx, cancel := context.WithTimeout(testContext(t), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Unwrap(ctx, wk, nil)
		took := time.Since(start)
		wantKind(t, err, kms.ErrUnavailable)
		wantContains(t, err, "caller gave up")
		if took > 2*time.Second {
			t.Errorf("took %v after the caller's 300ms deadline", took)
		}
	})
}

// TestThrottledAndFailing injects AWS error answers on the wire, in front of
// the real server, and checks the sorting and the retries.
func TestThrottledAndFailing(t *testing.T) {
	localkms.SetEnv(t)
	id := localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	policy := RetryPolicy{MaxAttempts: 4, BaseDelay: 20 * time.Millisecond, MaxDelay: 50 * time.Millisecond}
	for _, tc := range []struct {
		name         string
		replies      []*localkms.Reply
		wantKind     error
		wantCode     string
		wantAttempts int
	}{
		{name: "throttled twice then ok", replies: []*localkms.Reply{
			localkms.APIError(400, "ThrottlingException", "Rate exceeded"),
			localkms.APIError(400, "ThrottlingException", "Rate exceeded"),
		}, wantAttempts: 3},
		{name: "internal error then ok", replies: []*localkms.Reply{
			localkms.APIError(500, "KMSInternalException", "internal"),
		}, wantAttempts: 2},
		{name: "dependency timeout and key unavailable then ok", replies: []*localkms.Reply{
			localkms.APIError(500, "DependencyTimeoutException", ""),
			localkms.APIError(500, "KeyUnavailableException", ""),
		}, wantAttempts: 3},
		{name: "HTTP 503 without a body then ok", replies: []*localkms.Reply{{Status: 503}}, wantAttempts: 2},
		{name: "limit exceeded past the last attempt", replies: []*localkms.Reply{
			localkms.APIError(400, "LimitExceededException", ""),
			localkms.APIError(400, "LimitExceededException", ""),
			localkms.APIError(400, "LimitExceededException", ""),
			localkms.APIError(400, "LimitExceededException", ""),
		}, wantKind: kms.ErrThrottled, wantCode: "LimitExceededException", wantAttempts: 4},
		{name: "access denied is not retried", replies: []*localkms.Reply{
			localkms.APIError(400, "AccessDeniedException", "User: arn:aws:sts::111122223333:assumed-role/app is not authorized to perform: kms:GenerateDataKey"),
		}, wantKind: kms.ErrUserInduced, wantCode: "AccessDeniedException", wantAttempts: 1},
		{name: "refused credentials are not retried", replies: []*localkms.Reply{
			localkms.APIError(400, "UnrecognizedClientException", "The security token included in the request is invalid."),
		}, wantKind: kms.ErrUserInduced, wantCode: "UnrecognizedClientException", wantAttempts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			replies := append([]*localkms.Reply(nil), tc.replies...)
			proxy.Handle(func(op string, _ map[string]any) *localkms.Reply {
				mu.Lock()
				defer mu.Unlock()
				if op != "GenerateDataKey" || len(replies) == 0 {
					return nil
				}
				r := replies[0]
				replies = replies[1:]
				return r
			})
			proxy.Reset()
			var events []RetryEvent
			p := policy
			p.OnRetry = func(e RetryEvent) { events = append(events, e) }
			c := openClient(t, proxy.URL, "aws-kms:///"+localkms.KeyARN(id), WithRetry(p))
			dek, wk, err := c.GenerateDataKey(testContext(t), []byte("aad"))
			if tc.wantKind == nil {
				if err != nil {
					t.Fatal(err)
				}
				if len(dek) != 32 || wk.KEKVersion != localkms.KeyARN(id) {
					t.Errorf("got a %d-byte key under %q", len(dek), wk.KEKVersion)
				}
			} else {
				wantKind(t, err, tc.wantKind)
				var e *Error
				if !errors.As(err, &e) || e.Code != tc.wantCode || e.Op != "GenerateDataKey" {
					t.Errorf("error %#v, want an *Error for GenerateDataKey with code %s", err, tc.wantCode)
				}
			}
			if got := proxy.Count("GenerateDataKey"); got != tc.wantAttempts {
				t.Errorf("%d GenerateDataKey attempts, want %d", got, tc.wantAttempts)
			}
			if len(events) != tc.wantAttempts-1 {
				t.Fatalf("%d retries, want %d", len(events), tc.wantAttempts-1)
			}
			for i, e := range events {
				ceil := p.Ceiling(e.Attempt)
				if e.Attempt != i+1 || e.Delay < ceil/2 || e.Delay > ceil || !kms.Retryable(e.Err) {
					t.Errorf("retry %d: attempt %d, delay %v outside [%v, %v], or error %v not retryable", i+1, e.Attempt, e.Delay, ceil/2, ceil, e.Err)
				}
			}
		})
	}
}

// TestLocalKMSRotation rotates a key the way local-kms can (a scheduled
// automatic rotation, done at the first use after it is due) and checks that
// keys wrapped before it still unwrap and rewrap onto the new material.
func TestLocalKMSRotation(t *testing.T) {
	localkms.SetEnv(t)
	id := localkms.NewKeyID()
	due := time.Now().Add(2 * time.Second)
	srv := localkms.Start(t, localkms.Key{ID: id, NextRotation: due})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	arn := localkms.KeyARN(id)
	c := openClient(t, proxy.URL, "aws-kms:///"+arn)
	ctx := testContext(t)
	aad := []byte("keyshift keyset app v1")

	before, err := c.PrimaryKEKVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dek := randomKey(t)
	old, err := c.Wrap(ctx, dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if time.Now().After(due) {
		t.Fatalf("starting local-kms and wrapping took past the rotation due at %v: the machine is too loaded for this test", due)
	}
	if i, _ := localkms.BackingKeyIndex(old.Ciphertext); i != 0 {
		t.Fatalf("wrapped under material %d before the rotation was due, want 0", i)
	}
	status, err := c.RotationStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !status.Automatic {
		t.Errorf("rotation status %+v, want automatic rotation on", status)
	}

	time.Sleep(time.Until(due) + 100*time.Millisecond)
	after, err := c.PrimaryKEKVersion(ctx) // local-kms rotates here, at the first use after due
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := c.Wrap(ctx, randomKey(t), aad)
	if err != nil {
		t.Fatal(err)
	}
	if i, _ := localkms.BackingKeyIndex(fresh.Ciphertext); i != 1 {
		t.Fatalf("wrapped under material %d after the rotation, want 1", i)
	}
	// local-kms reports no key material ID, so the version is the key ARN
	// on both sides of the rotation (TestKeyMaterialIDs covers real AWS).
	if diff := cmp.Diff([]string{arn, arn, arn}, []string{before, after, fresh.KEKVersion}); diff != "" {
		t.Errorf("versions before, after, and of a fresh wrap (-want +got):\n%s", diff)
	}

	got, err := c.Unwrap(ctx, old, aad)
	if err != nil {
		t.Fatalf("unwrap a key wrapped before the rotation: %v", err)
	}
	if diff := cmp.Diff(dek, got); diff != "" {
		t.Errorf("unwrapped (-want +got):\n%s", diff)
	}
	rw, err := c.Rewrap(ctx, old, aad)
	if err != nil {
		t.Fatal(err)
	}
	if i, _ := localkms.BackingKeyIndex(rw.Ciphertext); i != 1 {
		t.Errorf("rewrapped under material %d, want 1", i)
	}
	if got, err = c.Unwrap(ctx, rw, aad); err != nil || !bytes.Equal(got, dek) {
		t.Errorf("unwrap rewrapped: %v", err)
	}

	// local-kms has no RotateKeyOnDemand: HTTP 501, sorted as not supported
	// and not retried.
	proxy.Reset()
	err = c.RotateNow(ctx)
	if !errors.Is(err, ErrNotSupported) || kms.Retryable(err) {
		t.Fatalf("rotate now: %v, want ErrNotSupported, not retryable", err)
	}
	wantContains(t, err, "aws-kms: RotateKeyOnDemand", "HTTP 501")
	if n := proxy.Count("RotateKeyOnDemand"); n != 1 {
		t.Errorf("%d RotateKeyOnDemand attempts, want 1", n)
	}
}

// TestKeyMaterialIDs plays real AWS's part where local-kms has none: the
// proxy adds the key material IDs AWS reports and implements
// RotateKeyOnDemand by moving to new material. The KEK versions Wrap,
// GenerateDataKey and Rewrap write must match PrimaryKEKVersion, before and
// after a rotation, or a poller would rewrap forever.
func TestKeyMaterialIDs(t *testing.T) {
	localkms.SetEnv(t)
	id := localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id, Aliases: []string{"alias/app"}})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	arn := localkms.KeyARN(id)
	var mu sync.Mutex
	material := strings.Repeat("1a", 32)
	var rotateKeyIDs []any
	proxy.Handle(func(op string, req map[string]any) *localkms.Reply {
		if op != "RotateKeyOnDemand" {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		rotateKeyIDs = append(rotateKeyIDs, req["KeyId"])
		material = strings.Repeat("2b", 32)
		return &localkms.Reply{Status: http.StatusOK, Body: `{"KeyId":"` + arn + `"}`}
	})
	proxy.Amend(func(op string, _, answer map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		switch op {
		case "DescribeKey":
			answer["KeyMetadata"].(map[string]any)["CurrentKeyMaterialId"] = material
		case "GenerateDataKey":
			answer["KeyMaterialId"] = material
		case "ReEncrypt":
			answer["DestinationKeyMaterialId"] = material
		}
	})
	c := openClient(t, proxy.URL, "aws-kms://alias/app?region="+localkms.Region)
	ctx := testContext(t)
	aad := []byte("keyshift keyset app v1")
	v1 := arn + "#" + strings.Repeat("1a", 32)
	v2 := arn + "#" + strings.Repeat("2b", 32)

	primary, err := c.PrimaryKEKVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dek, gwk, err := c.GenerateDataKey(ctx, aad)
	if err != nil {
		t.Fatal(err)
	}
	wk, err := c.Wrap(ctx, dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{v1, v1, v1}, []string{primary, gwk.KEKVersion, wk.KEKVersion}); diff != "" {
		t.Errorf("primary, generated and wrapped versions (-want +got):\n%s", diff)
	}

	if err := c.RotateNow(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{arn}, rotateKeyIDs); diff != "" {
		t.Errorf("RotateKeyOnDemand key IDs (-want +got); it takes no alias:\n%s", diff)
	}
	primary, err = c.PrimaryKEKVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rw, err := c.Rewrap(ctx, gwk, aad)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{v2, v2}, []string{primary, rw.KEKVersion}); diff != "" {
		t.Errorf("primary and rewrapped versions after rotation (-want +got):\n%s", diff)
	}
	got, err := c.Unwrap(ctx, rw, aad)
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("unwrap rewrapped: %v", err)
	}
	keyARN, mat := ParseKEKVersion(rw.KEKVersion)
	if diff := cmp.Diff([]string{arn, strings.Repeat("2b", 32)}, []string{keyARN, mat}); diff != "" {
		t.Errorf("ParseKEKVersion (-want +got):\n%s", diff)
	}
}

// TestAliasMove moves an alias to another key, the AWS way of rotating to a
// new key: the version changes, keys wrapped under the old key still unwrap
// (Decrypt asks for the key their version names), and Rewrap moves them.
func TestAliasMove(t *testing.T) {
	localkms.SetEnv(t)
	a, b := localkms.NewKeyID(), localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: a, Aliases: []string{"alias/app"}}, localkms.Key{ID: b})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	var mu sync.Mutex
	var decryptKeyIDs []any
	proxy.Handle(func(op string, req map[string]any) *localkms.Reply {
		mu.Lock()
		defer mu.Unlock()
		switch op {
		case "Decrypt":
			decryptKeyIDs = append(decryptKeyIDs, req["KeyId"])
		case "ReEncrypt":
			decryptKeyIDs = append(decryptKeyIDs, req["SourceKeyId"])
		}
		return nil
	})
	c := openClient(t, proxy.URL, "aws-kms://alias/app?region="+localkms.Region)
	ctx := testContext(t)
	aad := []byte("keyshift keyset app v1")
	dek := randomKey(t)
	old, err := c.Wrap(ctx, dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if old.KEKVersion != localkms.KeyARN(a) {
		t.Fatalf("KEK version %q, want key A's ARN", old.KEKVersion)
	}
	if _, err := srv.Admin().UpdateAlias(ctx, &awskms.UpdateAliasInput{AliasName: aws.String("alias/app"), TargetKeyId: aws.String(b)}); err != nil {
		t.Fatal(err)
	}
	primary, err := c.PrimaryKEKVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if primary != localkms.KeyARN(b) {
		t.Errorf("primary KEK version %q after the alias moved, want key B's ARN", primary)
	}
	if got, err := c.Unwrap(ctx, old, aad); err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("unwrap a key wrapped before the alias moved: %v", err)
	}
	rw, err := c.Rewrap(ctx, old, aad)
	if err != nil {
		t.Fatal(err)
	}
	if rw.KEKVersion != primary {
		t.Errorf("rewrapped under %q, want the primary %q", rw.KEKVersion, primary)
	}
	if got, err := c.Unwrap(ctx, rw, aad); err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("unwrap rewrapped: %v", err)
	}

	// A version naming a key in another account is not followed: Decrypt
	// asks for the alias, whose key (B) refuses A's ciphertext.
	foreign := kms.WrappedKey{Ciphertext: old.Ciphertext, KEKVersion: "arn:aws:kms:" + localkms.Region + ":999999999999:key/" + a}
	_, err = c.Unwrap(ctx, foreign, aad)
	wantKind(t, err, kms.ErrCorrupt)

	want := []any{localkms.KeyARN(a), localkms.KeyARN(a), localkms.KeyARN(b), "alias/app"}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(want, decryptKeyIDs); diff != "" {
		t.Errorf("key IDs sent to Decrypt and ReEncrypt (-want +got):\n%s", diff)
	}
}

// TestNoSecretsInLogsOrErrors runs every operation, and failures of each
// kind, with a debug logger, and checks that neither the log nor any error
// holds a data key or a wrapped key in any common encoding.
func TestNoSecretsInLogsOrErrors(t *testing.T) {
	localkms.SetEnv(t)
	id := localkms.NewKeyID()
	srv := localkms.Start(t, localkms.Key{ID: id})
	proxy := localkms.StartProxy(t, srv.Endpoint)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := openClient(t, proxy.URL, "aws-kms:///"+localkms.KeyARN(id), WithLogger(log))
	ctx := testContext(t)
	canary := sha256.Sum256([]byte("keyshift canary data key"))
	dek := canary[:]
	aad := []byte("keyshift keyset app v1")
	secrets := [][]byte{dek}
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	wk, err := c.Wrap(ctx, dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, wk.Ciphertext)
	if _, err := c.Unwrap(ctx, wk, aad); err != nil {
		t.Fatal(err)
	}
	gen, gwk, err := c.GenerateDataKey(ctx, aad)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, gen, gwk.Ciphertext)
	rw, err := c.Rewrap(ctx, wk, aad)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, rw.Ciphertext)

	_, err = c.Unwrap(ctx, wk, []byte("wrong aad"))
	note(err)
	// A validation message that quotes its input (as local-kms's do) must
	// not reach the error.
	proxy.Handle(func(op string, _ map[string]any) *localkms.Reply {
		return localkms.APIError(400, "ValidationException", "Value '"+hex.EncodeToString(dek)+"' at 'plaintext' failed to satisfy constraint")
	})
	_, err = c.Wrap(ctx, dek, aad)
	note(err)
	proxy.Handle(func(string, map[string]any) *localkms.Reply {
		return localkms.APIError(400, "ThrottlingException", "Rate exceeded")
	})
	_, err = c.Unwrap(ctx, wk, aad)
	note(err)
	proxy.Handle(nil)
	if _, err := srv.Admin().DisableKey(ctx, &awskms.DisableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Wrap(ctx, dek, aad)
	note(err)
	_, err = c.Rewrap(ctx, wk, aad)
	note(err)
	srv.Kill()
	_, err = c.Unwrap(ctx, wk, aad)
	note(err)

	if len(errs) != 6 {
		t.Fatalf("%d failures, want 6: %v", len(errs), errs)
	}
	var all bytes.Buffer
	all.Write(logs.Bytes())
	for _, err := range errs {
		all.WriteString(err.Error())
		all.WriteString("\n")
	}
	if !strings.Contains(logs.String(), "aws-kms: call done") || !strings.Contains(logs.String(), "aws-kms: retrying") {
		t.Fatalf("debug log lacks call records, so this test checks nothing:\n%s", logs.String())
	}
	for i, s := range secrets {
		for name, enc := range encodings(s) {
			if len(enc) >= 8 && strings.Contains(all.String(), enc) {
				t.Errorf("secret %d appears %s-encoded in the logs or errors", i, name)
			}
		}
	}
}

// encodings renders b as the text forms a leak would take.
func encodings(b []byte) map[string]string {
	return map[string]string{
		"hex":       hex.EncodeToString(b),
		"HEX":       strings.ToUpper(hex.EncodeToString(b)),
		"base64":    base64.StdEncoding.EncodeToString(b),
		"base64raw": base64.RawStdEncoding.EncodeToString(b),
		"base64url": base64.RawURLEncoding.EncodeToString(b),
		"raw":       string(b),
		"%v":        strings.Trim(fmt.Sprint(b), "[]"), // what a careless slog.Any would log
	}
}
