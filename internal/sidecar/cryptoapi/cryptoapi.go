// Package cryptoapi is the contract of the sidecar's crypto service that
// its transports share: the socket API (package sidecar, gRPC and
// HTTP/JSON) and Envoy ext_authz (package extauthz). It holds the results
// of each call, the errors the service returns and their reason labels,
// which name metrics and log lines and never carry request data.
package cryptoapi

import (
	"context"
	"errors"

	"github.com/keyshift/keyshift/internal/envelope"
)

// Sealed is the result of Encrypt or Rewrap.
type Sealed struct {
	Ciphertext  []byte
	Keyset      string
	Version     uint32
	FromVersion uint32
	Rewrapped   bool
}

// Opened is the result of Decrypt.
type Opened struct {
	Plaintext []byte
	Keyset    string
	Version   uint32
}

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

// Reason is the metric label and log word for an error. It never carries
// data from the request.
func Reason(err error) string {
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
