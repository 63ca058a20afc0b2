package aws

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"syscall"
	"time"

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

// retryableNotSent accepts only failures after which the request surely did
// not take effect (throttled, or the connection refused), for calls that
// must not run twice, such as RotateKeyOnDemand, whose count is capped.
func retryableNotSent(e *Error) bool {
	return errors.Is(e, kms.ErrThrottled) || errors.Is(e, syscall.ECONNREFUSED) || isDialError(e.Err)
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// call runs one KMS request for key with a per-attempt timeout, error sorting and
// retries with backoff on the failures retryable accepts (nil: throttled and
// unavailable). fn must store its result itself; it is called once per attempt.
func (c *Client) call(ctx context.Context, op, key string, retryable func(*Error) bool, fn func(ctx context.Context) error) error {
	if retryable == nil {
		retryable = func(e *Error) bool { return kms.Retryable(e) }
	}
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return &Error{Op: op, Key: key, Detail: "caller gave up", Kind: kms.ErrUnavailable, Err: err}
		}
		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, c.timeout)
		err := fn(actx)
		cancel()
		if err == nil {
			c.log.Debug("aws-kms: call done", slog.String("op", op), slog.Int("attempt", attempt), slog.Duration("took", time.Since(start)))
			return nil
		}
		e := classify(op, key, err)
		if e.Err == context.DeadlineExceeded && ctx.Err() == nil {
			e.Detail = "no answer within " + c.timeout.String()
		}
		if cerr := ctx.Err(); cerr != nil {
			if errors.Is(e.Err, context.DeadlineExceeded) || errors.Is(e.Err, context.Canceled) {
				e.Detail, e.Err = "caller gave up", cerr
			}
			return e
		}
		if !retryable(e) || attempt >= c.retry.MaxAttempts {
			c.log.Debug("aws-kms: call failed", slog.String("op", op), slog.Int("attempt", attempt),
				slog.String("code", e.Code), slog.Int("status", e.StatusCode), slog.String("request_id", e.RequestID),
				slog.String("reason", kms.Reason(e)), slog.Duration("took", time.Since(start)))
			return e
		}
		d := c.retry.Delay(attempt)
		if c.retry.OnRetry != nil {
			c.retry.OnRetry(RetryEvent{Op: op, Attempt: attempt, Delay: d, Err: e})
		}
		c.log.Debug("aws-kms: retrying", slog.String("op", op), slog.Int("attempt", attempt),
			slog.String("code", e.Code), slog.Int("status", e.StatusCode), slog.String("reason", kms.Reason(e)),
			slog.Duration("backoff", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			e.Err = ctx.Err()
			return e
		case <-t.C:
		}
	}
}
