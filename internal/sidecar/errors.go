package sidecar

import (
	"fmt"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/sidecar/cryptoapi"
)

// toStatus maps a service error to the gRPC status the caller sees. A
// decryption failure is one opaque message whatever its cause.
func toStatus(err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	switch cryptoapi.Reason(err) {
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
	return fmt.Errorf("%w: %s v%d is not loaded (unknown, disabled or destroyed)", cryptoapi.ErrUnknownKeyVersion, keyset, v)
}

func revokedVersion(keyset string, v uint32) error {
	return fmt.Errorf("%w: keyset %s v%d is revoked: rewrap the data with Rewrap, or restore it from a backup", cryptoapi.ErrRevoked, keyset, v)
}
