package gcp

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/kms"
)

// RetryPolicy and RetryEvent are the policy every backend shares.
type (
	RetryPolicy = kms.RetryPolicy
	RetryEvent  = kms.RetryEvent
)

// DefaultRetryPolicy makes up to 5 attempts, waiting about 100ms, 200ms,
// 400ms and 800ms (capped at 5s) between them.
func DefaultRetryPolicy() RetryPolicy { return kms.DefaultRetryPolicy() }

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
