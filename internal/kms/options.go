package kms

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"time"
)

// DefaultTimeout bounds one request to a remote KMS when Options set none.
const DefaultTimeout = 10 * time.Second

// Options are the settings every remote backend shares. Each backend's own
// options embed them, so timeouts, retries and logging are defaulted and
// checked in one place (WithDefaults) and mean the same for every KMS. The
// zero value of each field means its default.
type Options struct {
	// Timeout bounds each request attempt. The caller's context bounds a
	// call as a whole, retries included. Default DefaultTimeout.
	Timeout time.Duration
	// Retry is the retry policy for throttled and unavailable calls.
	// Default DefaultRetryPolicy.
	Retry RetryPolicy
	// Logger receives key names, versions, operations, attempts, sizes,
	// durations and the KMS's error codes, never key material. Default:
	// discard.
	Logger *slog.Logger
}

// WithDefaults returns o with each zero field set to its default. A
// negative timeout or an unusable retry policy is an error wrapping
// ErrBadURI, prefixed with backend ("aws-kms").
func (o Options) WithDefaults(backend string) (Options, error) {
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	o.Retry = o.Retry.OrDefault()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Timeout < 0:
		return Options{}, fmt.Errorf("%s: timeout %v must be positive: %w", backend, o.Timeout, ErrBadURI)
	case !o.Retry.Valid():
		return Options{}, fmt.Errorf("%s: retry policy needs MaxAttempts >= 1 and 0 <= BaseDelay <= MaxDelay: %w", backend, ErrBadURI)
	}
	return o, nil
}

// Opener makes a backend's OpenFunc: open parses the URI and builds a
// client with opts, which start with the logger's option (withLogger(log))
// and go on with extra, so every backend applies them in the same order.
func Opener[O any](open func(ctx context.Context, u *url.URL, opts []O) (Wrapper, error), withLogger func(*slog.Logger) O, log *slog.Logger, extra []O) OpenFunc {
	opts := append([]O{withLogger(log)}, extra...)
	return func(ctx context.Context, u *url.URL) (Wrapper, error) { return open(ctx, u, opts) }
}
