package gcp

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/kms"
)

// ErrChecksum marks a call whose CRC32C checks failed: Cloud KMS reported
// that the request it received does not match the checksums sent with it,
// did not confirm it verified them, or the response does not match its own
// checksum. It is damage in transit (or in memory), not in the wrapped key,
// whose checksum the client computes itself before sending, so such errors
// are sorted kms.ErrUnavailable and retried; see the package documentation.
var ErrChecksum = errors.New("gcp-kms: CRC32C checksum mismatch in transit")

// Error is the error every Client method returns for a failed Cloud KMS
// call. It wraps one of kms.ErrUserInduced, kms.ErrThrottled,
// kms.ErrUnavailable or kms.ErrCorrupt (Kind) and, where there is one, the
// cause (Err: the gRPC status error, ErrChecksum, a context error), all
// reachable with errors.Is and errors.As. It never holds a key, plaintext or
// ciphertext: Cloud KMS's message is kept only for codes whose messages name
// resources, permissions and states, never request data.
type Error struct {
	// Op is the Cloud KMS method: "Encrypt", "Decrypt", "GetCryptoKey",
	// "CreateCryptoKeyVersion" or "UpdateCryptoKeyPrimaryVersion".
	Op string
	// Key is the CryptoKey resource name the call was made for.
	Key string
	// Code is the gRPC status code Cloud KMS answered with, or codes.OK when
	// no status arrived (the answer failed a checksum, the caller gave up).
	Code codes.Code
	// Detail says what went wrong and, where it can, what to do.
	Detail string
	// Kind is the sorted kind.
	Kind error
	// Err is the underlying cause, or nil.
	Err error
}

// Error renders "gcp-kms: OP KEY: DETAIL (CODE): KIND".
func (e *Error) Error() string {
	var meta []string
	if e.Code != codes.OK {
		meta = append(meta, "gRPC "+e.Code.String())
	}
	return kms.FormatCallError("gcp-kms", e.Op, e.Key, e.Detail, meta, e.Kind)
}

// Unwrap exposes the kind and the cause.
func (e *Error) Unwrap() []error { return kms.UnwrapCallError(e.Kind, e.Err) }

// Parts lets kms.Do say what a timeout or the caller's context did.
func (e *Error) Parts() (detail *string, kind, cause *error) { return &e.Detail, &e.Kind, &e.Err }

const maxDetail = 300

// classify sorts an error from the Cloud KMS client into an *Error. An
// *Error (from a response check) passes through unchanged.
func classify(op, key string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	e = &Error{Op: op, Key: key}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		e.Kind, e.Detail = kms.ErrUnavailable, "no answer in time"
		e.Err = context.DeadlineExceeded
		if errors.Is(err, context.Canceled) {
			e.Err = context.Canceled
		}
		return e
	}
	st, ok := status.FromError(err)
	if !ok {
		// Not a gRPC status: the client library failed before sending.
		e.Kind, e.Detail, e.Err = kms.ErrUnavailable, "cannot call Cloud KMS: "+tidy(err.Error()), err
		return e
	}
	e.Code = st.Code()
	e.Err = st.Err()
	e.Kind = kindForCode(op, e.Code)
	e.Detail = hint(op, e.Code)
	msg := tidy(st.Message())
	switch {
	case e.Code == codes.InvalidArgument && isChecksumMessage(msg):
		// The request reached Cloud KMS damaged: our checksums were computed
		// over what we meant to send.
		e.Kind = kms.ErrUnavailable
		e.Detail = "Cloud KMS received a request that does not match its CRC32C checksums (damaged in transit)"
		e.Err = errors.Join(ErrChecksum, st.Err())
	case e.Code == codes.InvalidArgument:
		// Its message could quote request fields; the code says enough.
		e.Err = nil
	case msg != "" && e.Kind == kms.ErrUnavailable:
		// Often the client's own transport message, not Cloud KMS's.
		e.Detail += ": " + msg
	case msg != "":
		e.Detail += ": Cloud KMS says " + msg
	}
	return e
}

func isChecksumMessage(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "crc32c") || strings.Contains(m, "checksum")
}

// kindForCode sorts a gRPC status code for the method op.
func kindForCode(op string, code codes.Code) error {
	switch code {
	case codes.ResourceExhausted:
		return kms.ErrThrottled
	case codes.Unavailable, codes.DeadlineExceeded, codes.Internal, codes.Aborted, codes.Unknown, codes.Canceled, codes.DataLoss:
		return kms.ErrUnavailable
	case codes.InvalidArgument:
		if op == opDecrypt {
			return kms.ErrCorrupt
		}
		return kms.ErrUserInduced
	default:
		// PermissionDenied, NotFound, FailedPrecondition, Unauthenticated,
		// Unimplemented, OutOfRange, AlreadyExists: an operator must act.
		return kms.ErrUserInduced
	}
}

// hint says what a code means for keyshift and what to do.
func hint(op string, code codes.Code) string {
	switch code {
	case codes.PermissionDenied:
		return "permission denied (or the key does not exist): the service account (Workload Identity or ADC) needs " + role(op) + " on the key"
	case codes.NotFound:
		return "no such key: check the project, location, key ring and key in the URI"
	case codes.FailedPrecondition:
		return "the key version is not usable in its current state (disabled, destroyed or scheduled for destruction): " +
			"enable or restore it (gcloud kms keys versions enable|restore), or rewrap the keyset under the primary version"
	case codes.Unauthenticated:
		return "Google refused the credentials: check Workload Identity (the Kubernetes service account's iam.gke.io/gcp-service-account annotation and its roles/iam.workloadIdentityUser binding) or GOOGLE_APPLICATION_CREDENTIALS"
	case codes.InvalidArgument:
		if op == opDecrypt {
			return "the wrapped key or its aad does not verify (or another CryptoKey wrapped it)"
		}
		return "Cloud KMS refused the request as invalid"
	case codes.Unimplemented:
		return "the endpoint does not implement " + op
	case codes.ResourceExhausted:
		return "Cloud KMS quota exceeded (throttled)"
	case codes.DeadlineExceeded:
		return "no answer in time"
	case codes.Unavailable:
		return "cannot reach Cloud KMS"
	}
	return "Cloud KMS failed"
}

// role names the predefined IAM role that grants op.
func role(op string) string {
	switch op {
	case opEncrypt, opDecrypt:
		return "roles/cloudkms.cryptoKeyEncrypterDecrypter"
	case opGetCryptoKey:
		return "roles/cloudkms.viewer (cloudkms.cryptoKeys.get)"
	default:
		return "roles/cloudkms.admin (cloudkms.cryptoKeyVersions.create and cloudkms.cryptoKeys.update)"
	}
}

// checksumError is the error for a response that fails a CRC32C check.
func checksumError(op, key, what string) *Error {
	return &Error{Op: op, Key: key, Detail: what + ": answer refused as damaged in transit", Kind: kms.ErrUnavailable, Err: ErrChecksum}
}

// tidy makes a message one bounded line.
func tidy(m string) string {
	m = strings.Join(strings.Fields(m), " ")
	if len(m) > maxDetail {
		m = m[:maxDetail] + "..."
	}
	return m
}
