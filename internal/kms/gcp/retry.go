package gcp

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/kms"
)

// RetryPolicy retries calls that failed as throttled or unavailable, with
// capped exponential backoff and jitter. Other failures are returned at once.
// The Cloud KMS client library's own retries are switched off, so this is
// the only retry layer.
type RetryPolicy struct {
	// MaxAttempts counts every attempt, the first included; 1 disables retries.
	MaxAttempts int
	// BaseDelay is the backoff ceiling after the first failure; it doubles with
	// each further failure up to MaxDelay. The delay drawn is uniform in
	// [ceiling/2, ceiling] ("equal jitter"), so retries never bunch at zero.
	BaseDelay time.Duration
	// MaxDelay caps the ceiling.
	MaxDelay time.Duration
	// OnRetry, if set, is called before each backoff sleep, for metrics and tests.
	OnRetry func(RetryEvent)
}

// RetryEvent describes one backoff: the attempt that failed, its error and
// the delay before the next attempt.
type RetryEvent struct {
	// Op is the Cloud KMS method ("Encrypt", "Decrypt", ...).
	Op string
	// Attempt is the number of the attempt that failed, from 1.
	Attempt int
	// Delay is how long the client waits before the next attempt.
	Delay time.Duration
	// Err is the sorted error of the failed attempt.
	Err error
}

// DefaultRetryPolicy makes up to 5 attempts, waiting about 100ms, 200ms,
// 400ms and 800ms (capped at 5s) between them.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 5, BaseDelay: 100 * time.Millisecond, MaxDelay: 5 * time.Second}
}

func (p RetryPolicy) valid() bool {
	return p.MaxAttempts >= 1 && p.BaseDelay >= 0 && p.MaxDelay >= p.BaseDelay
}

// Ceiling is the upper bound of the delay after the attempt-th failure.
func (p RetryPolicy) Ceiling(attempt int) time.Duration {
	d := p.BaseDelay
	for i := 1; i < attempt && d < p.MaxDelay; i++ {
		d *= 2
	}
	return min(d, p.MaxDelay)
}

// Delay draws the wait after the attempt-th failure, in [Ceiling/2, Ceiling].
func (p RetryPolicy) Delay(attempt int) time.Duration {
	c := p.Ceiling(attempt)
	half := c / 2
	if half <= 0 {
		return c
	}
	return half + rand.N(c-half+1)
}

// retryableNotApplied accepts only failures after which the request surely
// took no effect (throttled: Cloud KMS refused it), for calls that must not
// run twice, such as CreateCryptoKeyVersion.
func retryableNotApplied(e *Error) bool { return e.Code == codes.ResourceExhausted }

// call runs one Cloud KMS request with a per-attempt timeout, error sorting
// and retries with backoff on the failures retryable accepts (nil: throttled
// and unavailable). fn is called once per attempt; its error is either from
// the client library or an *Error from a check of the answer.
func call[T any](ctx context.Context, c *Client, op string, retryable func(*Error) bool, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	if retryable == nil {
		retryable = func(e *Error) bool { return kms.Retryable(e) }
	}
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return zero, &Error{Op: op, Key: c.key, Detail: "caller gave up", Kind: kms.ErrUnavailable, Err: err}
		}
		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, c.timeout)
		out, err := fn(actx)
		// gRPC sends the deadline along, so the server may report it a
		// moment before actx notices.
		timedOut := errors.Is(actx.Err(), context.DeadlineExceeded) ||
			(status.Code(err) == codes.DeadlineExceeded && time.Since(start) >= c.timeout*9/10)
		cancel()
		if err == nil {
			c.log.Debug("gcp-kms: call done", slog.String("op", op), slog.Int("attempt", attempt), slog.Duration("took", time.Since(start)))
			return out, nil
		}
		e := classify(op, c.key, err)
		if cerr := ctx.Err(); cerr != nil {
			if e.Code == codes.DeadlineExceeded || e.Code == codes.Canceled || errors.Is(e.Err, context.DeadlineExceeded) || errors.Is(e.Err, context.Canceled) {
				e.Detail, e.Err = "caller gave up", cerr
			}
			return zero, e
		}
		if timedOut {
			e.Kind, e.Detail = kms.ErrUnavailable, "no answer within "+c.timeout.String()
		}
		if !retryable(e) || attempt >= c.retry.MaxAttempts {
			c.log.Debug("gcp-kms: call failed", slog.String("op", op), slog.Int("attempt", attempt),
				slog.String("code", e.Code.String()), slog.String("reason", kms.Reason(e)), slog.Duration("took", time.Since(start)))
			return zero, e
		}
		d := c.retry.Delay(attempt)
		if c.retry.OnRetry != nil {
			c.retry.OnRetry(RetryEvent{Op: op, Attempt: attempt, Delay: d, Err: e})
		}
		c.log.Debug("gcp-kms: retrying", slog.String("op", op), slog.Int("attempt", attempt),
			slog.String("code", e.Code.String()), slog.String("reason", kms.Reason(e)), slog.Duration("backoff", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			e.Detail, e.Err = "caller gave up while backing off after: "+e.Detail, ctx.Err()
			return zero, e
		case <-t.C:
		}
	}
}
