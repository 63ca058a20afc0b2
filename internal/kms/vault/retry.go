package vault

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keyshift/keyshift/internal/kms"
)

// RetryPolicy and RetryEvent are the policy every backend shares.
type (
	RetryPolicy = kms.RetryPolicy
	RetryEvent  = kms.RetryEvent
)

// notSent retries only failures after which the request surely did not take
// effect (throttled, sealed or standby, connection refused), for calls that
// must not run twice.
func notSent(e *Error) bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode == http.StatusServiceUnavailable ||
		(e.StatusCode == 0 && strings.Contains(e.Detail, "connection refused"))
}

// call runs one Vault request through kms.Do, logging in first when the
// client holds no valid token, and once more when Vault answers 403 (an
// expired or revoked token answers so too) and the credentials can give a
// new token. It retries the failures retryable accepts (nil: throttled and
// unavailable); a failed login sent no request, so it is retried whenever it
// is throttled or unavailable.
func (c *Client) call(ctx context.Context, op, path string, retryable func(*Error) bool, fn func(ctx context.Context) (*vaultapi.Secret, error)) (*vaultapi.Secret, error) {
	if retryable == nil {
		retryable = func(e *Error) bool { return kms.Retryable(e) }
	}
	var gen uint64 // the token generation the attempt used
	relogged := false
	return kms.Do(ctx, c.caller, kms.Call[*Error]{
		Op: op,
		Classify: func(err error) *Error {
			if e := (*Error)(nil); errors.As(err, &e) { // from the login
				return e
			}
			return classify(op, path, err)
		},
		Retryable: func(e *Error) bool { return retryable(e) || (e.Op == "login" && kms.Retryable(e)) },
		Prepare: func(ctx context.Context) (err error) {
			gen, err = c.auth.ensure(ctx)
			return err
		},
		Again: func(e *Error) bool {
			if relogged || e.Op == "login" || !isPermissionDenied(e) || !c.auth.canRelogin() {
				return false
			}
			relogged = true
			c.auth.invalidate(gen)
			c.log.Info("vault-transit: permission denied, authenticating again", slog.String("op", op))
			return true
		},
		Attrs: func(e *Error) []slog.Attr {
			if e.Op != op {
				return []slog.Attr{slog.String("step", e.Op), slog.Int("status", e.StatusCode)}
			}
			return []slog.Attr{slog.Int("status", e.StatusCode)}
		},
	}, fn)
}
