package kms

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// callError is a backend error as Do sees it, as each backend's *Error is.
type callError struct {
	Detail    string
	Kind, Err error
}

func (e *callError) Error() string   { return FormatCallError("test", "op", "", e.Detail, nil, e.Kind) }
func (e *callError) Unwrap() []error { return UnwrapCallError(e.Kind, e.Err) }
func (e *callError) Parts() (detail *string, kind, cause *error) {
	return &e.Detail, &e.Kind, &e.Err
}

// errServerDeadline stands for a deadline a server reports (gRPC's
// DeadlineExceeded status).
var errServerDeadline = errors.New("server: deadline exceeded")

// classifyTest sorts the errors the tests' requests return: a sorted kind
// is its own kind; anything else is unavailable, with the error as cause.
func classifyTest(err error) *callError {
	for _, k := range []error{ErrThrottled, ErrUnavailable, ErrUserInduced, ErrCorrupt} {
		if errors.Is(err, k) {
			return &callError{Detail: "the KMS said so", Kind: k}
		}
	}
	return &callError{Detail: "no answer in time", Kind: ErrUnavailable, Err: err}
}

// script is a request that fails with errs in turn, then succeeds,
// recording when each attempt began and whether it had a deadline.
type script struct {
	errs   []error
	starts []time.Time
	t      *testing.T
}

func (s *script) fn(ctx context.Context) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		s.t.Error("attempt without a deadline")
	}
	s.starts = append(s.starts, time.Now())
	if n := len(s.starts); n <= len(s.errs) {
		return "", s.errs[n-1]
	}
	return "done", nil
}

func TestDoRetries(t *testing.T) {
	policy := RetryPolicy{MaxAttempts: 4, BaseDelay: 10 * time.Millisecond, MaxDelay: 30 * time.Millisecond}
	notSent := func(e *callError) bool { return errors.Is(e, ErrThrottled) }
	for _, tc := range []struct {
		name         string
		errs         []error
		retryable    func(*callError) bool
		wantKind     error
		wantAttempts int
	}{
		{name: "throttled twice then ok", errs: []error{ErrThrottled, ErrThrottled}, wantAttempts: 3},
		{name: "unavailable then ok", errs: []error{ErrUnavailable}, wantAttempts: 2},
		{name: "unavailable past the last attempt", errs: []error{ErrUnavailable, ErrThrottled, ErrUnavailable, ErrUnavailable, ErrUnavailable}, wantKind: ErrUnavailable, wantAttempts: 4},
		{name: "user-induced is not retried", errs: []error{ErrUserInduced}, wantKind: ErrUserInduced, wantAttempts: 1},
		{name: "corrupt is not retried", errs: []error{ErrThrottled, ErrCorrupt}, wantKind: ErrCorrupt, wantAttempts: 2},
		{name: "narrowed policy retries throttling", errs: []error{ErrThrottled}, retryable: notSent, wantAttempts: 2},
		{name: "narrowed policy does not retry unavailable", errs: []error{ErrUnavailable}, retryable: notSent, wantKind: ErrUnavailable, wantAttempts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var events []RetryEvent
			p := policy
			p.OnRetry = func(e RetryEvent) { events = append(events, e) }
			s := &script{errs: tc.errs, t: t}
			out, err := Do(t.Context(), Caller{Backend: "test", Options: Options{Timeout: time.Second, Retry: p}},
				Call[*callError]{Op: "Encrypt", Classify: classifyTest, Retryable: tc.retryable}, s.fn)
			if !errors.Is(err, tc.wantKind) || (tc.wantKind == nil) != (err == nil) {
				t.Fatalf("error %v, want kind %v", err, tc.wantKind)
			}
			if want := map[bool]string{true: "done"}[err == nil]; out != want {
				t.Errorf("result %q, want %q", out, want)
			}
			if len(s.starts) != tc.wantAttempts {
				t.Fatalf("%d attempts, want %d", len(s.starts), tc.wantAttempts)
			}
			var gotAttempts, wantAttempts []int
			for i, e := range events {
				gotAttempts = append(gotAttempts, e.Attempt)
				wantAttempts = append(wantAttempts, i+1)
				ceil := p.Ceiling(e.Attempt)
				if e.Op != "Encrypt" || !Retryable(e.Err) || e.Delay < ceil/2 || e.Delay > ceil {
					t.Errorf("retry %d: %+v; want a retryable Encrypt error and a delay in [%v, %v]", i+1, e, ceil/2, ceil)
				}
				if gap := s.starts[i+1].Sub(s.starts[i]); gap < e.Delay {
					t.Errorf("attempt %d began %v after attempt %d, before the %v backoff", i+2, gap, i+1, e.Delay)
				}
			}
			if len(events) != tc.wantAttempts-1 {
				t.Errorf("%d retry events, want %d", len(events), tc.wantAttempts-1)
			}
			if diff := cmp.Diff(wantAttempts, gotAttempts); diff != "" {
				t.Errorf("retried attempts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDoCallerGivesUp(t *testing.T) {
	blocked := func(ctx context.Context) (string, error) { <-ctx.Done(); return "", ctx.Err() }
	for _, tc := range []struct {
		name         string
		ctx          func(t *testing.T) context.Context
		errs         []error // then the request blocks until its context ends
		wantKind     error
		wantDetail   string
		wantAttempts int
	}{
		{name: "before the first attempt", ctx: func(t *testing.T) context.Context {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			return ctx
		}, wantKind: ErrUnavailable, wantDetail: "caller gave up", wantAttempts: 0},
		{name: "during an attempt", ctx: deadline(50 * time.Millisecond),
			wantKind: ErrUnavailable, wantDetail: "caller gave up", wantAttempts: 1},
		{name: "while backing off", ctx: deadline(50 * time.Millisecond), errs: []error{ErrThrottled},
			wantKind: ErrThrottled, wantDetail: "caller gave up while backing off after: the KMS said so", wantAttempts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx(t)
			attempts := 0
			start := time.Now()
			_, err := Do(ctx, Caller{Backend: "test", Options: Options{Timeout: time.Hour,
				Retry: RetryPolicy{MaxAttempts: 100, BaseDelay: time.Hour, MaxDelay: time.Hour}}},
				Call[*callError]{Op: "Decrypt", Classify: classifyTest}, func(ctx context.Context) (string, error) {
					attempts++
					if attempts <= len(tc.errs) {
						return "", tc.errs[attempts-1]
					}
					return blocked(ctx)
				})
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("took %v to notice the caller's context", took)
			}
			if attempts != tc.wantAttempts {
				t.Errorf("%d attempts, want %d", attempts, tc.wantAttempts)
			}
			var e *callError
			if !errors.As(err, &e) || !errors.Is(err, tc.wantKind) || !errors.Is(err, ctx.Err()) || e.Detail != tc.wantDetail {
				t.Errorf("error %v; want %v saying %q and wrapping %v", err, tc.wantKind, tc.wantDetail, ctx.Err())
			}
		})
	}
}

func deadline(d time.Duration) func(t *testing.T) context.Context {
	return func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), d)
		t.Cleanup(cancel)
		return ctx
	}
}

func TestDoTimeout(t *testing.T) {
	const timeout = 50 * time.Millisecond
	c := Caller{Backend: "test", Options: Options{Timeout: timeout, Retry: RetryPolicy{MaxAttempts: 2}}}
	for _, tc := range []struct {
		name         string
		fn           func(ctx context.Context) (string, error)
		wantTimedOut bool
	}{
		{name: "the attempt's context ends", fn: func(ctx context.Context) (string, error) { <-ctx.Done(); return "", ctx.Err() }, wantTimedOut: true},
		{name: "the server reports the deadline just before", fn: func(context.Context) (string, error) {
			time.Sleep(timeout * 95 / 100)
			return "", errServerDeadline
		}, wantTimedOut: true},
		{name: "the server reports a deadline early", fn: func(context.Context) (string, error) { return "", errServerDeadline }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			attempts := 0
			_, err := Do(t.Context(), c, Call[*callError]{
				Op: "Encrypt", Classify: classifyTest,
				ServerDeadline: func(err error) bool { return errors.Is(err, errServerDeadline) },
			}, func(ctx context.Context) (string, error) { attempts++; return tc.fn(ctx) })
			if !errors.Is(err, ErrUnavailable) || attempts != 2 {
				t.Fatalf("%d attempts, error %v; want 2 attempts, %v", attempts, err, ErrUnavailable)
			}
			if got := strings.Contains(err.Error(), "no answer within 50ms"); got != tc.wantTimedOut {
				t.Errorf("error %q; saying no answer within 50ms: %v, want %v", err, got, tc.wantTimedOut)
			}
		})
	}
}

// TestDoPrepareAndAgain: Prepare's failure is an attempt like any other,
// and Again repeats an attempt at once, without backoff or counting it.
func TestDoPrepareAndAgain(t *testing.T) {
	var events []RetryEvent
	c := Caller{Backend: "test", Options: Options{Timeout: time.Second, Retry: RetryPolicy{MaxAttempts: 3,
		OnRetry: func(e RetryEvent) { events = append(events, e) }}}}
	var steps []string
	requests := []error{ErrUserInduced, ErrThrottled, nil} // a 403 that a new login cures, then throttled, then ok
	again := false
	out, err := Do(t.Context(), c, Call[*callError]{
		Op:       "encrypt",
		Classify: classifyTest,
		Prepare: func(context.Context) error {
			steps = append(steps, "prepare")
			if len(steps) == 1 {
				return ErrUnavailable // the login failed
			}
			return nil
		},
		Again: func(e *callError) bool {
			if !errors.Is(e, ErrUserInduced) || again {
				return false
			}
			again = true
			steps = append(steps, "again")
			return true
		},
	}, func(context.Context) (string, error) {
		steps = append(steps, "request")
		err := requests[0]
		requests = requests[1:]
		if err != nil {
			return "", err
		}
		return "done", nil
	})
	if err != nil || out != "done" {
		t.Fatalf("Do = %q, %v", out, err)
	}
	if diff := cmp.Diff([]string{"prepare", "prepare", "request", "again", "prepare", "request", "prepare", "request"}, steps); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	var got [][2]any
	for _, e := range events {
		got = append(got, [2]any{e.Attempt, Reason(e.Err)})
	}
	if diff := cmp.Diff([][2]any{{1, "unavailable"}, {2, "throttled"}}, got); diff != "" {
		t.Errorf("retry events (-want +got):\n%s", diff)
	}
}
