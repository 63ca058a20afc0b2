package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/envelope"
)

// Errors the service returns. They are mapped to gRPC codes and HTTP
// statuses in one place, toStatus.
var (
	// ErrNotReady: no keyring is loaded yet for the keyset.
	ErrNotReady = errors.New("sidecar: keyring not loaded yet")
	// ErrUnknownKeyset: the sidecar does not serve that keyset.
	ErrUnknownKeyset = errors.New("sidecar: unknown keyset")
	// ErrUnknownKeyVersion: the version named in a ciphertext is not loaded
	// (never existed here, disabled or destroyed).
	ErrUnknownKeyVersion = errors.New("sidecar: key version not available")
	// ErrKeysetRequired: the request names no keyset and the sidecar serves several.
	ErrKeysetRequired = errors.New("sidecar: keyset required")
	// ErrBatchTooLarge: a batch holds more than MaxBatch items.
	ErrBatchTooLarge = errors.New("sidecar: batch too large")
	// ErrBadMAC: a MAC does not verify under the version it names.
	ErrBadMAC = errors.New("sidecar: MAC does not verify")
	// ErrPermissionDenied: the peer's UID is not on the allowlist.
	ErrPermissionDenied = errors.New("sidecar: peer not allowed")
	// ErrRevoked: the ciphertext or MAC names a revoked version, whose key
	// may be compromised. Decrypt and Verify refuse it, so data forged
	// with a stolen key is not accepted; Rewrap still moves the data under
	// the primary.
	ErrRevoked = errors.New("sidecar: key version revoked")
)

// MaxBatch is the most items one batch call may carry.
const MaxBatch = 1000

// reason is the metric label and log word for an error. It never carries
// data from the request.
func reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, envelope.ErrDecrypt):
		return "auth_failed"
	case errors.Is(err, envelope.ErrMalformed):
		return "malformed"
	case errors.Is(err, envelope.ErrUnsupportedFormat):
		return "unsupported_format"
	case errors.Is(err, envelope.ErrBadContext):
		return "bad_context"
	case errors.Is(err, envelope.ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrUnknownKeyset):
		return "unknown_keyset"
	case errors.Is(err, ErrUnknownKeyVersion):
		return "unknown_version"
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, ErrNotReady):
		return "not_ready"
	case errors.Is(err, ErrKeysetRequired):
		return "keyset_required"
	case errors.Is(err, ErrBatchTooLarge):
		return "batch_too_large"
	case errors.Is(err, ErrPermissionDenied):
		return "permission_denied"
	case errors.Is(err, ErrBadMAC):
		return "bad_mac"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	default:
		return "internal"
	}
}

// toStatus maps a service error to the gRPC status the caller sees. A
// decryption failure is one opaque message whatever its cause.
func toStatus(err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	switch reason(err) {
	case "auth_failed":
		return status.New(codes.InvalidArgument, "decryption failed")
	case "bad_mac":
		return status.New(codes.InvalidArgument, "MAC does not verify")
	case "malformed", "unsupported_format", "bad_context", "too_large", "keyset_required", "batch_too_large":
		return status.New(codes.InvalidArgument, err.Error())
	case "unknown_keyset", "unknown_version":
		return status.New(codes.NotFound, err.Error())
	case "revoked":
		return status.New(codes.FailedPrecondition, err.Error())
	case "not_ready":
		return status.New(codes.Unavailable, err.Error())
	case "permission_denied":
		return status.New(codes.PermissionDenied, err.Error())
	case "canceled":
		return status.FromContextError(err)
	default:
		return status.New(codes.Internal, "internal error")
	}
}

// httpStatus is the HTTP status for a gRPC code on the HTTP/JSON API.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.FailedPrecondition:
		// 400 for FailedPrecondition as in google.rpc.Code; the body's
		// code names which.
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Canceled:
		return 499
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}

func unknownVersion(keyset string, v uint32) error {
	return fmt.Errorf("%w: %s v%d is not loaded (unknown, disabled or destroyed)", ErrUnknownKeyVersion, keyset, v)
}

func revokedVersion(keyset string, v uint32) error {
	return fmt.Errorf("%w: keyset %s v%d is revoked: rewrap the data with Rewrap, or restore it from a backup", ErrRevoked, keyset, v)
}
