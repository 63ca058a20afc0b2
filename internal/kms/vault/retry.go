package vault

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

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

// notSent retries only failures after which the request surely did not take
// effect (throttled, sealed or standby, connection refused), for calls that
// must not run twice.
func notSent(e *Error) bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode == http.StatusServiceUnavailable ||
		(e.StatusCode == 0 && strings.Contains(e.Detail, "connection refused"))
}

// call runs one Vault request with authentication, a per-attempt timeout,
// error sorting, one re-login on 403 and retries with backoff on the
// failures retryable accepts (nil: throttled and unavailable).
func (c *Client) call(ctx context.Context, op, path string, retryable func(*Error) bool, fn func(ctx context.Context) (*vaultapi.Secret, error)) (*vaultapi.Secret, error) {
	if retryable == nil {
		retryable = func(e *Error) bool { return kms.Retryable(e) }
	}
	relogged := false
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, &Error{Op: op, Path: path, Detail: "caller gave up", Kind: kms.ErrUnavailable, Err: err}
		}
		start := time.Now()
		gen, err := c.auth.ensure(ctx)
		var s *vaultapi.Secret
		if err == nil {
			actx, cancel := context.WithTimeout(ctx, c.timeout)
			s, err = fn(actx)
			cancel()
			if err != nil {
				err = classify(op, path, err)
			}
		}
		if err == nil {
			c.log.Debug("vault-transit: call done", slog.String("op", op), slog.Int("attempt", attempt), slog.Duration("took", time.Since(start)))
			return s, nil
		}
		var e *Error
		if !errors.As(err, &e) {
			e = classify(op, path, err)
		}
		if cerr := ctx.Err(); cerr != nil {
			e.Err = cerr
			return nil, e
		}
		if isPermissionDenied(e) && e.Op != "login" && !relogged && c.auth.canRelogin() {
			// An expired or revoked token also answers 403: log in again once.
			relogged = true
			c.auth.invalidate(gen)
			c.log.Info("vault-transit: permission denied, authenticating again", slog.String("op", op))
			attempt--
			continue
		}
		if !(retryable(e) || (e.Op == "login" && kms.Retryable(e))) || attempt >= c.retry.MaxAttempts {
			c.log.Debug("vault-transit: call failed", slog.String("op", e.Op), slog.Int("attempt", attempt),
				slog.Int("status", e.StatusCode), slog.String("reason", kms.Reason(e)))
			return nil, e
		}
		d := c.retry.Delay(attempt)
		if c.retry.OnRetry != nil {
			c.retry.OnRetry(RetryEvent{Op: op, Attempt: attempt, Delay: d, Err: e})
		}
		c.log.Debug("vault-transit: retrying", slog.String("op", e.Op), slog.Int("attempt", attempt),
			slog.Int("status", e.StatusCode), slog.String("reason", kms.Reason(e)), slog.Duration("backoff", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			e.Err = ctx.Err()
			return nil, e
		case <-t.C:
		}
	}
}
