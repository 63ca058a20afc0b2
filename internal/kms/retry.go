package kms

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"
)

// RetryPolicy is how every backend retries calls that failed as throttled
// or unavailable: capped exponential backoff with jitter. Other failures
// are returned at once. Each backend switches its SDK's own retries off,
// so this is the only retry layer.
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
	// Op is the backend operation ("Encrypt", "decrypt", ...).
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

// Valid reports whether the policy can be used.
func (p RetryPolicy) Valid() bool {
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

// OrDefault is p, or DefaultRetryPolicy (keeping p's OnRetry) when p sets
// no attempts and no delays.
func (p RetryPolicy) OrDefault() RetryPolicy {
	if p.MaxAttempts != 0 || p.BaseDelay != 0 || p.MaxDelay != 0 {
		return p
	}
	d := DefaultRetryPolicy()
	d.OnRetry = p.OnRetry
	return d
}

// CallError is a backend's error type as Do sees it: a pointer to a struct
// with a detail, a sorted kind and a cause, which Do rewrites when an attempt
// times out or the caller gives up, so every backend says so alike.
type CallError interface {
	error
	// Parts points at the error's detail, kind and cause.
	Parts() (detail *string, kind, cause *error)
}

// Caller is what Do needs of a backend client: its name and its options.
type Caller struct {
	// Backend starts every log message ("aws-kms").
	Backend string
	// Options are the client's, after WithDefaults; Logger carries the
	// client's own attributes (key, region, ...).
	Options
}

// Call is one backend request for Do, with the backend's part in running
// it. Classify is required; every other field is optional.
type Call[E CallError] struct {
	// Op names the request in logs and RetryEvents ("Encrypt", "decrypt").
	Op string
	// Classify sorts an attempt's error, from the request or from Prepare,
	// into the backend's error.
	Classify func(err error) E
	// Retryable says which failures are worth another attempt. Nil means
	// Retryable (throttled or unavailable); calls that must not run twice
	// narrow it to failures after which the request surely took no effect.
	Retryable func(E) bool
	// ServerDeadline recognises a deadline reported by the server rather
	// than noticed here. Where the protocol sends the deadline along (gRPC),
	// the server may report it a moment before the attempt's context ends;
	// such an error at 90% of the timeout or later counts as a timeout.
	ServerDeadline func(err error) bool
	// Prepare runs before each attempt, under the caller's context but not
	// the attempt's timeout (Vault logs in). Its error fails the attempt.
	Prepare func(ctx context.Context) error
	// Again, after a failed attempt, reports whether to make the same
	// attempt once more at once, uncounted and without backoff (Vault logs
	// in again after a 403). It is asked before Retryable.
	Again func(E) bool
	// Attrs are the backend's own identifiers of a failure for the log
	// (error code, HTTP status, request ID); none may carry request data.
	Attrs func(E) []slog.Attr
}

// Do runs fn, the one request of call, until it succeeds or its failure is
// final: each attempt bounded by c.Timeout, failures sorted by
// call.Classify, the retryable ones retried up to c.Retry.MaxAttempts with
// capped, jittered backoff (c.Retry.OnRetry hears of each), and the
// caller's ctx bounding it all. An attempt that outlives its timeout fails
// as ErrUnavailable, "no answer within TIMEOUT"; once ctx ends, the error
// keeps its kind, says "caller gave up" and wraps ctx.Err().
func Do[T any, E CallError](ctx context.Context, c Caller, call Call[E], fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	retryable := call.Retryable
	if retryable == nil {
		retryable = func(e E) bool { return Retryable(e) }
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	note := func(msg string, attempt int, e E, last slog.Attr) {
		attrs := []slog.Attr{slog.String("op", call.Op), slog.Int("attempt", attempt)}
		if call.Attrs != nil {
			attrs = append(attrs, call.Attrs(e)...)
		}
		attrs = append(attrs, slog.String("reason", Reason(e)), last)
		log.LogAttrs(ctx, slog.LevelDebug, c.Backend+msg, attrs...)
	}
	for attempt := 1; ; {
		if cerr := ctx.Err(); cerr != nil {
			return zero, gaveUp(call.Classify(cerr), "caller gave up", cerr)
		}
		start := time.Now()
		out, took, cut, err := once(ctx, c.Timeout, call, fn)
		if err == nil {
			log.Debug(c.Backend+": call done", slog.String("op", call.Op), slog.Int("attempt", attempt), slog.Duration("took", time.Since(start)))
			return out, nil
		}
		e := call.Classify(err)
		if cerr := ctx.Err(); cerr != nil {
			if cut != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				gaveUp(e, "caller gave up", cerr)
			}
			return zero, e
		}
		if errors.Is(cut, context.DeadlineExceeded) || (call.ServerDeadline != nil && call.ServerDeadline(err) && took >= c.Timeout*9/10) {
			detail, kind, _ := e.Parts()
			*detail, *kind = "no answer within "+c.Timeout.String(), ErrUnavailable
		}
		if call.Again != nil && call.Again(e) {
			continue
		}
		if !retryable(e) || attempt >= c.Retry.MaxAttempts {
			note(": call failed", attempt, e, slog.Duration("took", time.Since(start)))
			return zero, e
		}
		d := c.Retry.Delay(attempt)
		if c.Retry.OnRetry != nil {
			c.Retry.OnRetry(RetryEvent{Op: call.Op, Attempt: attempt, Delay: d, Err: e})
		}
		note(": retrying", attempt, e, slog.Duration("backoff", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			detail, _, _ := e.Parts()
			return zero, gaveUp(e, "caller gave up while backing off after: "+*detail, ctx.Err())
		case <-t.C:
		}
		attempt++
	}
}

// once makes one attempt: call.Prepare, then fn under the attempt's
// timeout. took is how long fn ran, and cut the attempt context's error as
// fn returned.
func once[T any, E CallError](ctx context.Context, timeout time.Duration, call Call[E], fn func(ctx context.Context) (T, error)) (out T, took time.Duration, cut, err error) {
	if call.Prepare != nil {
		if err := call.Prepare(ctx); err != nil {
			return out, 0, nil, err
		}
	}
	start := time.Now()
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err = fn(actx)
	return out, time.Since(start), actx.Err(), err
}

// gaveUp records that the caller's context, which ended with cerr, ended
// the call.
func gaveUp[E CallError](e E, detail string, cerr error) E {
	d, _, cause := e.Parts()
	*d, *cause = detail, cerr
	return e
}
