package vault

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/kms"
)

// scriptedVault is a loopback HTTP server that answers transit/encrypt with
// a scripted sequence of statuses, the error bodies Vault sends for them,
// then success. A dev-mode Vault cannot throttle or fail on cue; this can.
type scriptedVault struct {
	mu       sync.Mutex
	statuses []int // answered in order; then 200
	calls    []time.Time
	tokens   []string
}

// vaultErrorBodies are the bodies Vault sends with these statuses.
var vaultErrorBodies = map[int]string{
	http.StatusTooManyRequests:     `{"errors":["request path \"transit/encrypt/app\": rate limit quota exceeded"]}`,
	http.StatusServiceUnavailable:  `{"errors":["Vault is sealed"]}`,
	http.StatusInternalServerError: `{"errors":["1 error occurred:\n\t* internal error\n\n"]}`,
	http.StatusBadRequest:          `{"errors":["encryption key not found"]}`,
	http.StatusForbidden:           `{"errors":["permission denied"]}`,
}

func (v *scriptedVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path != "/v1/transit/encrypt/app" {
		// lookup-self: refused, so the fixed token is simply not renewed.
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, vaultErrorBodies[http.StatusForbidden])
		return
	}
	v.mu.Lock()
	v.calls = append(v.calls, time.Now())
	v.tokens = append(v.tokens, r.Header.Get("X-Vault-Token"))
	status := http.StatusOK
	if len(v.statuses) > 0 {
		status, v.statuses = v.statuses[0], v.statuses[1:]
	}
	v.mu.Unlock()
	w.WriteHeader(status)
	if status != http.StatusOK {
		_, _ = io.WriteString(w, vaultErrorBodies[status])
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"request_id": "1", "lease_id": "", "renewable": false, "lease_duration": 0,
		"data": map[string]any{"ciphertext": "vault:v4:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "key_version": 4},
	})
}

func TestRetryPolicy(t *testing.T) {
	policy := RetryPolicy{MaxAttempts: 4, BaseDelay: 40 * time.Millisecond, MaxDelay: 100 * time.Millisecond}
	for _, tc := range []struct {
		name         string
		statuses     []int
		wantKind     error
		wantAttempts int
	}{
		{name: "throttled then ok", statuses: []int{429, 429}, wantAttempts: 3},
		{name: "sealed then ok", statuses: []int{503}, wantAttempts: 2},
		{name: "internal error then ok", statuses: []int{500, 500, 500}, wantAttempts: 4},
		{name: "throttled past the last attempt", statuses: []int{429, 429, 429, 429, 429}, wantKind: kms.ErrThrottled, wantAttempts: 4},
		{name: "user-induced is not retried", statuses: []int{400}, wantKind: kms.ErrUserInduced, wantAttempts: 1},
		{name: "forbidden with a fixed token is not retried", statuses: []int{403}, wantKind: kms.ErrUserInduced, wantAttempts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &scriptedVault{statuses: tc.statuses}
			srv := httptest.NewServer(v)
			t.Cleanup(srv.Close)
			var events []RetryEvent
			p := policy
			p.OnRetry = func(e RetryEvent) { events = append(events, e) }
			c, err := New("app", WithAddress(srv.URL), WithToken("hvs.test"), WithBinding(BindContext), WithRetry(p))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })

			w, err := c.Wrap(testContext(t), []byte("0123456789abcdef0123456789abcdef"), []byte("aad"))
			wantKind(t, err, tc.wantKind)
			if tc.wantKind == nil {
				if diff := cmp.Diff(kms.WrappedKey{Ciphertext: []byte("vault:v4:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), KEKVersion: "4"}, w); diff != "" {
					t.Errorf("wrapped (-want +got):\n%s", diff)
				}
			}

			v.mu.Lock()
			calls := v.calls
			v.mu.Unlock()
			if got := len(calls); got != tc.wantAttempts {
				t.Fatalf("%d encrypt attempts, want %d", got, tc.wantAttempts)
			}
			for i, tok := range v.tokens {
				if tok != "hvs.test" {
					t.Errorf("attempt %d sent token %q, want the configured one", i+1, tok)
				}
			}
			var gotAttempts []int
			for i, e := range events {
				gotAttempts = append(gotAttempts, e.Attempt)
				ceil := p.Ceiling(e.Attempt)
				if e.Delay < ceil/2 || e.Delay > ceil {
					t.Errorf("retry %d: delay %v outside [%v, %v]", i+1, e.Delay, ceil/2, ceil)
				}
				if !kms.Retryable(e.Err) || e.Op != "encrypt" {
					t.Errorf("retry %d: op %q error %v; want a retryable encrypt error", i+1, e.Op, e.Err)
				}
				if gap := calls[i+1].Sub(calls[i]); gap < e.Delay {
					t.Errorf("retry %d: next attempt came %v after the failure, before the %v backoff", i+1, gap, e.Delay)
				}
			}
			var wantAttempts []int
			for i := 1; i < tc.wantAttempts; i++ {
				wantAttempts = append(wantAttempts, i)
			}
			if diff := cmp.Diff(wantAttempts, gotAttempts); diff != "" {
				t.Errorf("retried attempts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBackoffCeiling(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 10, BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second}
	var got []time.Duration
	for a := 1; a <= 6; a++ {
		got = append(got, p.Ceiling(a))
	}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ceilings (-want +got):\n%s", diff)
	}
	for range 1000 {
		if d := p.Delay(3); d < 200*time.Millisecond || d > 400*time.Millisecond {
			t.Fatalf("delay(3) = %v, want within [200ms, 400ms]", d)
		}
	}
}

// TestRotateRetries: a rotation that may have reached Vault
// is not sent twice, but one Vault certainly refused (429) is.
func TestRotateRetries(t *testing.T) {
	for _, tc := range []struct {
		status       int
		wantAttempts int
	}{
		{status: 429, wantAttempts: 2},
		{status: 500, wantAttempts: 1},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			var mu sync.Mutex
			rotations := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				switch r.URL.Path {
				case "/v1/transit/keys/app/rotate":
					rotations++
					if rotations == 1 {
						w.WriteHeader(tc.status)
						_, _ = io.WriteString(w, vaultErrorBodies[tc.status])
						return
					}
					w.WriteHeader(http.StatusNoContent)
				case "/v1/transit/keys/app":
					_, _ = io.WriteString(w, `{"data":{"type":"aes256-gcm96","derived":false,"latest_version":2,"min_decryption_version":1,"min_encryption_version":0}}`)
				default:
					w.WriteHeader(http.StatusForbidden)
					_, _ = io.WriteString(w, vaultErrorBodies[http.StatusForbidden])
				}
			}))
			t.Cleanup(srv.Close)
			c, err := New("app", WithAddress(srv.URL), WithToken("hvs.test"),
				WithRetry(RetryPolicy{MaxAttempts: 3, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			_, _ = c.Rotate(testContext(t))
			mu.Lock()
			defer mu.Unlock()
			if rotations != tc.wantAttempts {
				t.Errorf("%d rotate requests, want %d", rotations, tc.wantAttempts)
			}
		})
	}
}
