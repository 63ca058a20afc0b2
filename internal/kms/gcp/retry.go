package gcp

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/kms"
)

// RetryPolicy and RetryEvent are the policy every backend shares.
type (
	RetryPolicy = kms.RetryPolicy
	RetryEvent  = kms.RetryEvent
)

// retryableNotApplied accepts only failures after which the request surely
// took no effect (throttled: Cloud KMS refused it), for calls that must not
// run twice, such as CreateCryptoKeyVersion.
func retryableNotApplied(e *Error) bool { return e.Code == codes.ResourceExhausted }

// call runs one Cloud KMS request through kms.Do, retrying the failures
// retryable accepts (nil: throttled and unavailable). fn is called once per
// attempt; its error is either from the client library or an *Error from a
// check of the answer. gRPC sends the deadline along, so Cloud KMS may
// report it a moment before the attempt's context ends.
func call[T any](ctx context.Context, c *Client, op string, retryable func(*Error) bool, fn func(ctx context.Context) (T, error)) (T, error) {
	return kms.Do(ctx, c.caller, kms.Call[*Error]{
		Op:             op,
		Classify:       func(err error) *Error { return classify(op, c.key, err) },
		Retryable:      retryable,
		ServerDeadline: func(err error) bool { return status.Code(err) == codes.DeadlineExceeded },
		Attrs:          func(e *Error) []slog.Attr { return []slog.Attr{slog.String("code", e.Code.String())} },
	}, fn)
}
