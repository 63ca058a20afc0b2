package kms

import (
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
