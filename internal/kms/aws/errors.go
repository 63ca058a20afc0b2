package aws

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/keyshift/keyshift/internal/kms"
)

// ErrNotSupported marks a call the KMS endpoint does not implement (it
// answered HTTP 501), such as RotateKeyOnDemand on local-kms. It is not
// retried and wraps none of the kms sorted kinds.
var ErrNotSupported = errors.New("aws-kms: operation not implemented by this KMS endpoint")

// Error is the error every Client method returns for a failed KMS call. It
// wraps one of kms.ErrUserInduced, kms.ErrThrottled, kms.ErrUnavailable,
// kms.ErrCorrupt or ErrNotSupported (Kind) and, where there is one, the
// underlying cause (Err), both reachable with errors.Is and errors.As. It
// never holds a key, plaintext or ciphertext: AWS's own message is kept only
// for error codes whose messages name keys and states, never input values.
type Error struct {
	// Op is the KMS API operation: "Encrypt", "Decrypt", "GenerateDataKey",
	// "ReEncrypt", "DescribeKey", "RotateKeyOnDemand" or "GetKeyRotationStatus".
	Op string
	// Key is the key reference the call was made for.
	Key string
	// Code is the AWS error code, such as "DisabledException", or "" when no
	// AWS error arrived (network failure, timeout).
	Code string
	// StatusCode is the HTTP status KMS answered with, or 0 if none arrived.
	StatusCode int
	// RequestID is the AWS request ID, for a support case or CloudTrail.
	RequestID string
	// Detail says what went wrong and, where it can, what to do.
	Detail string
	// Kind is the sorted kind.
	Kind error
	// Err is the underlying cause (the typed AWS error, a network error,
	// context.DeadlineExceeded, ...) or nil.
	Err error
}

// Error renders "aws-kms: OP KEY: DETAIL (CODE, HTTP N, request ID): KIND".
func (e *Error) Error() string {
	var meta []string
	if e.Code != "" {
		meta = append(meta, e.Code)
	}
	if e.StatusCode != 0 {
		meta = append(meta, fmt.Sprintf("HTTP %d", e.StatusCode))
	}
	if e.RequestID != "" {
		meta = append(meta, "request "+e.RequestID)
	}
	return kms.FormatCallError("aws-kms", e.Op, e.Key, e.Detail, meta, e.Kind)
}

// Unwrap exposes the kind and the cause.
func (e *Error) Unwrap() []error { return kms.UnwrapCallError(e.Kind, e.Err) }

// Parts lets kms.Do say what a timeout or the caller's context did.
func (e *Error) Parts() (detail *string, kind, cause *error) { return &e.Detail, &e.Kind, &e.Err }

// codeKind sorts AWS error codes. KMS codes come first; the credential codes
// are STS's and the signer's, which surface when the default credential
// chain (IRSA, instance role) is refused.
var codeKind = map[string]error{
	"NotFoundException":             kms.ErrUserInduced,
	"DisabledException":             kms.ErrUserInduced,
	"KMSInvalidStateException":      kms.ErrUserInduced,
	"AccessDeniedException":         kms.ErrUserInduced,
	"IncorrectKeyException":         kms.ErrUserInduced,
	"InvalidKeyUsageException":      kms.ErrUserInduced,
	"InvalidArnException":           kms.ErrUserInduced,
	"InvalidGrantTokenException":    kms.ErrUserInduced,
	"UnsupportedOperationException": kms.ErrUserInduced,
	"ValidationException":           kms.ErrUserInduced,
	"SerializationException":        kms.ErrUserInduced,
	"MissingParameterException":     kms.ErrUserInduced,
	"NotAuthorizedException":        kms.ErrUserInduced,

	"AccessDenied":                kms.ErrUserInduced,
	"UnrecognizedClientException": kms.ErrUserInduced,
	"InvalidClientTokenId":        kms.ErrUserInduced,
	"InvalidSignatureException":   kms.ErrUserInduced,
	"IncompleteSignature":         kms.ErrUserInduced,
	"MissingAuthenticationToken":  kms.ErrUserInduced,
	"ExpiredToken":                kms.ErrUserInduced,
	"ExpiredTokenException":       kms.ErrUserInduced,
	"InvalidIdentityToken":        kms.ErrUserInduced,
	"IDPRejectedClaim":            kms.ErrUserInduced,

	"ThrottlingException":      kms.ErrThrottled,
	"Throttling":               kms.ErrThrottled,
	"TooManyRequestsException": kms.ErrThrottled,
	"RequestLimitExceeded":     kms.ErrThrottled,
	"LimitExceededException":   kms.ErrThrottled, // but see classify for RotateKeyOnDemand
	"RequestThrottled":         kms.ErrThrottled,

	"KMSInternalException":        kms.ErrUnavailable,
	"DependencyTimeoutException":  kms.ErrUnavailable,
	"KeyUnavailableException":     kms.ErrUnavailable,
	"InternalFailure":             kms.ErrUnavailable,
	"InternalFailureException":    kms.ErrUnavailable,
	"InternalServerError":         kms.ErrUnavailable,
	"ServiceUnavailable":          kms.ErrUnavailable,
	"ServiceUnavailableException": kms.ErrUnavailable,
	"RequestTimeout":              kms.ErrUnavailable,
	"RequestTimeoutException":     kms.ErrUnavailable,

	"InvalidCiphertextException": kms.ErrCorrupt,
}

// credentialCodes are the codes that mean the credentials were refused.
var credentialCodes = map[string]bool{
	"AccessDenied": true, "UnrecognizedClientException": true, "InvalidClientTokenId": true,
	"InvalidSignatureException": true, "IncompleteSignature": true, "MissingAuthenticationToken": true,
	"ExpiredToken": true, "ExpiredTokenException": true, "InvalidIdentityToken": true, "IDPRejectedClaim": true,
}

// quietCodes are codes whose AWS message may repeat request values (a
// validation message can quote the field it refused), so it is not kept.
var quietCodes = map[string]bool{"ValidationException": true, "SerializationException": true}

const maxDetail = 300

// classify sorts an error from the AWS SDK into an *Error.
func classify(op, key string, err error) *Error {
	e := &Error{Op: op, Key: key}
	var rerr *awshttp.ResponseError
	if errors.As(err, &rerr) {
		e.RequestID = rerr.ServiceRequestID()
	}
	var herr *smithyhttp.ResponseError
	if errors.As(err, &herr) {
		e.StatusCode = herr.HTTPStatusCode()
	}
	credentials := isCredentialError(err)

	var api smithy.APIError
	switch {
	case errors.As(err, &api):
		e.Code = api.ErrorCode()
		e.Err = api
		e.Kind = kindForCode(op, e.Code, e.StatusCode, api.ErrorFault())
		e.Detail = hintForCode(op, e.Code, e.Kind, credentials)
		if msg := tidy(api.ErrorMessage()); msg != "" && !quietCodes[e.Code] {
			e.Detail += ": AWS says " + msg
		} else if quietCodes[e.Code] {
			e.Err = nil // its text carries the message
		}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		e.Kind = kms.ErrUnavailable
		e.Detail = "no answer in time"
		if errors.Is(err, context.DeadlineExceeded) {
			e.Err = context.DeadlineExceeded
		} else {
			e.Err = context.Canceled
		}
	case credentials:
		e.Kind = kms.ErrUnavailable
		e.Detail = "cannot get AWS credentials from the default chain (IRSA web identity, pod identity, instance role): " + tidy(err.Error())
	case e.StatusCode == http.StatusNotImplemented:
		e.Kind = ErrNotSupported
		e.Detail = "the endpoint does not implement " + op
	case e.StatusCode != 0:
		e.Kind = kindForStatus(e.StatusCode)
		e.Detail = "unreadable answer"
	default:
		var send *smithyhttp.RequestSendError
		if errors.As(err, &send) {
			e.Err = send.Err
		} else {
			e.Err = err
		}
		// Connection refused or reset, DNS, TLS: the request may never have
		// arrived, or its answer was lost.
		e.Kind = kms.ErrUnavailable
		e.Detail = "cannot reach KMS: " + transportDetail(err)
	}
	return e
}

func kindForCode(op, code string, status int, fault smithy.ErrorFault) error {
	if code == "LimitExceededException" && op == opRotate {
		// For RotateKeyOnDemand this is the lifetime quota of on-demand
		// rotations, which waiting does not restore.
		return kms.ErrUserInduced
	}
	if k, ok := codeKind[code]; ok {
		return k
	}
	if fault == smithy.FaultServer {
		return kms.ErrUnavailable
	}
	if status != 0 {
		return kindForStatus(status)
	}
	return kms.ErrUserInduced
}

func kindForStatus(status int) error {
	switch {
	case status == http.StatusNotImplemented:
		return ErrNotSupported
	case status == http.StatusTooManyRequests:
		return kms.ErrThrottled
	case status >= 500, status == http.StatusRequestTimeout:
		return kms.ErrUnavailable
	default:
		return kms.ErrUserInduced
	}
}

// hintForCode says what an error code means for keyshift and what to do.
func hintForCode(op, code string, kind error, credentials bool) string {
	switch {
	case (credentials && kind == kms.ErrUserInduced) || credentialCodes[code]:
		return "AWS refused the credentials from the default chain (IRSA web identity, pod identity, instance role): check the role and its trust policy"
	case code == "NotFoundException":
		return "no such key or alias in this account and region: check the URI, the region and the account"
	case code == "DisabledException":
		return "the key is disabled: enable it (aws kms enable-key) or point the URI at an enabled key"
	case code == "KMSInvalidStateException":
		return "the key cannot be used in its current state (pending deletion, pending import, or its key store is unavailable): see aws kms describe-key"
	case code == "AccessDeniedException":
		action := "kms:" + op
		if op == opReEncrypt {
			action = "kms:ReEncryptFrom and kms:ReEncryptTo"
		}
		return "permission denied: the IAM role (IRSA or instance role) needs " + action + " on the key, and the key policy must allow it"
	case code == "IncorrectKeyException":
		return "the data key was wrapped by a different KMS key than the one asked for: point the URI at the key that wrapped it, or rewrap"
	case code == "InvalidKeyUsageException":
		return "the key cannot encrypt and decrypt: use a SYMMETRIC_DEFAULT key with key usage ENCRYPT_DECRYPT"
	case code == "UnsupportedOperationException":
		return "the key does not support " + op + " (imported, asymmetric, HMAC, replica or custom key store keys cannot rotate on demand)"
	case code == "LimitExceededException" && op == opRotate:
		return "the key's quota of on-demand rotations is used up; automatic rotation still works"
	case code == "InvalidCiphertextException":
		return "the wrapped key or its aad does not verify"
	case quietCodes[code]:
		return "KMS refused the request as invalid"
	case kind == kms.ErrThrottled:
		return "KMS is throttling requests"
	case kind == kms.ErrUnavailable:
		return "KMS failed or timed out"
	}
	return "KMS refused the request"
}

// isCredentialError reports whether err arose while getting credentials,
// before any request reached KMS.
func isCredentialError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "get identity") || strings.Contains(s, "retrieve credentials") ||
		strings.Contains(s, "get credentials")
}

// tidy makes an AWS message one bounded line.
func tidy(m string) string {
	m = strings.Join(strings.Fields(m), " ")
	if len(m) > maxDetail {
		m = m[:maxDetail] + "..."
	}
	return m
}

// transportDetail names a transport failure by its cause where it is
// recognisable, without the URL.
func transportDetail(err error) string {
	s := err.Error()
	for _, m := range []string{"connection refused", "connection reset", "broken pipe", "EOF", "no such host", "i/o timeout", "certificate", "tls:"} {
		if strings.Contains(s, m) {
			return m
		}
	}
	return tidy(s)
}
