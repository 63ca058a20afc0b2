package aws

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/kms"
)

func TestRetryPolicyCeiling(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 10, BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second}
	var got []time.Duration
	for attempt := 1; attempt <= 7; attempt++ {
		got = append(got, p.Ceiling(attempt))
	}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
		time.Second, time.Second, time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ceilings (-want +got):\n%s", diff)
	}
	seen := map[time.Duration]bool{}
	for range 200 {
		d := p.Delay(3)
		if d < 200*time.Millisecond || d > 400*time.Millisecond {
			t.Fatalf("delay %v outside [200ms, 400ms]", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct delays in 200 draws: no jitter", len(seen))
	}
	if d := (RetryPolicy{MaxAttempts: 2}).Delay(1); d != 0 {
		t.Errorf("zero base delay gave %v", d)
	}
}

// TestCallRetries drives the retry loop directly with the errors the SDK
// returns (real smithy and KMS error types), counting attempts and
// measuring the backoff between them.
func TestCallRetries(t *testing.T) {
	throttled := sdkError(opEncrypt, 400, "", &smithy.GenericAPIError{Code: "ThrottlingException", Message: "Rate exceeded"})
	internal := sdkError(opEncrypt, 500, "", &types.KMSInternalException{})
	disabled := sdkError(opEncrypt, 400, "", &types.DisabledException{})
	refused := &smithy.OperationError{Err: &smithyhttp.RequestSendError{Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}}
	reset := &smithy.OperationError{Err: &smithyhttp.RequestSendError{Err: &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}}}
	policy := RetryPolicy{MaxAttempts: 4, BaseDelay: 20 * time.Millisecond, MaxDelay: 40 * time.Millisecond}

	for _, tc := range []struct {
		name         string
		errs         []error // returned in turn; then success
		notSent      bool    // use the policy for calls that must not run twice
		wantKind     error
		wantAttempts int
	}{
		{name: "throttled twice then ok", errs: []error{throttled, throttled}, wantAttempts: 3},
		{name: "internal then ok", errs: []error{internal}, wantAttempts: 2},
		{name: "throttled past the last attempt", errs: []error{throttled, throttled, throttled, throttled, throttled}, wantKind: kms.ErrThrottled, wantAttempts: 4},
		{name: "disabled is not retried", errs: []error{disabled}, wantKind: kms.ErrUserInduced, wantAttempts: 1},
		{name: "not-sent policy retries throttling", errs: []error{throttled}, notSent: true, wantAttempts: 2},
		{name: "not-sent policy retries a refused connection", errs: []error{refused}, notSent: true, wantAttempts: 2},
		{name: "not-sent policy does not retry an internal error", errs: []error{internal}, notSent: true, wantKind: kms.ErrUnavailable, wantAttempts: 1},
		{name: "not-sent policy does not retry a reset connection", errs: []error{reset}, notSent: true, wantKind: kms.ErrUnavailable, wantAttempts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var events []RetryEvent
			p := policy
			p.OnRetry = func(e RetryEvent) { events = append(events, e) }
			c := &Client{ref: keyRef{id: "alias/app"}, caller: kms.Caller{Backend: Scheme, Options: kms.Options{Timeout: time.Second, Retry: p}}}
			var starts []time.Time
			fn := func(ctx context.Context) error {
				if _, ok := ctx.Deadline(); !ok {
					t.Error("attempt without a deadline")
				}
				starts = append(starts, time.Now())
				if n := len(starts); n <= len(tc.errs) {
					return tc.errs[n-1]
				}
				return nil
			}
			var retryable func(*Error) bool
			if tc.notSent {
				retryable = retryableNotSent
			}
			err := c.call(context.Background(), opEncrypt, "alias/app", retryable, fn)
			if tc.wantKind == nil && err != nil {
				t.Fatal(err)
			}
			if tc.wantKind != nil && !errors.Is(err, tc.wantKind) {
				t.Fatalf("error %v, want %v", err, tc.wantKind)
			}
			if len(starts) != tc.wantAttempts {
				t.Fatalf("%d attempts, want %d", len(starts), tc.wantAttempts)
			}
			if len(events) != tc.wantAttempts-1 {
				t.Fatalf("%d retry events, want %d", len(events), tc.wantAttempts-1)
			}
			for i, e := range events {
				ceil := p.Ceiling(e.Attempt)
				if e.Attempt != i+1 || e.Op != opEncrypt || e.Delay < ceil/2 || e.Delay > ceil {
					t.Errorf("retry %d: %+v; want attempt %d with a delay in [%v, %v]", i+1, e, i+1, ceil/2, ceil)
				}
				if gap := starts[i+1].Sub(starts[i]); gap < e.Delay {
					t.Errorf("attempt %d began %v after attempt %d, before the %v backoff", i+2, gap, i+1, e.Delay)
				}
			}
		})
	}
}

func TestCallStopsWhenCallerGivesUp(t *testing.T) {
	throttled := sdkError(opEncrypt, 400, "", &smithy.GenericAPIError{Code: "ThrottlingException"})
	c := &Client{ref: keyRef{id: "alias/app"}, caller: kms.Caller{Backend: Scheme, Options: kms.Options{Timeout: time.Second,
		Retry: RetryPolicy{MaxAttempts: 100, BaseDelay: time.Hour, MaxDelay: time.Hour}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	attempts := 0
	start := time.Now()
	err := c.call(ctx, opEncrypt, "alias/app", nil, func(context.Context) error { attempts++; return throttled })
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v to notice the caller's deadline", took)
	}
	if attempts != 1 || !errors.Is(err, kms.ErrThrottled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%d attempts, error %v; want 1 attempt, throttled, wrapping the deadline", attempts, err)
	}
}
