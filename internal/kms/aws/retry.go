package aws

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"syscall"

	"github.com/keyshift/keyshift/internal/kms"
)

// RetryPolicy and RetryEvent are the policy every backend shares.
type (
	RetryPolicy = kms.RetryPolicy
	RetryEvent  = kms.RetryEvent
)

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

// call runs one KMS request for key through kms.Do, retrying the failures
// retryable accepts (nil: throttled and unavailable). fn must store its
// result itself; it is called once per attempt.
func (c *Client) call(ctx context.Context, op, key string, retryable func(*Error) bool, fn func(ctx context.Context) error) error {
	_, err := kms.Do(ctx, c.caller, kms.Call[*Error]{
		Op:        op,
		Classify:  func(err error) *Error { return classify(op, key, err) },
		Retryable: retryable,
		Attrs: func(e *Error) []slog.Attr {
			return []slog.Attr{slog.String("code", e.Code), slog.Int("status", e.StatusCode), slog.String("request_id", e.RequestID)}
		},
	}, func(ctx context.Context) (struct{}, error) { return struct{}{}, fn(ctx) })
	return err
}
