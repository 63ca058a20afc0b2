package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keyshift/keyshift/internal/kms"
)

// Error is the error every Client method returns. It wraps one of the kms
// sorted kinds (Kind) and, where there is one, the underlying cause (Err);
// both are reachable with errors.Is and errors.As. It never holds a token,
// key, plaintext or ciphertext.
type Error struct {
	// Op is the Transit operation: "encrypt", "decrypt", "datakey", "rewrap",
	// "rotate", "read-key" or "login".
	Op string
	// Path is the Vault path without the /v1/ prefix, e.g. "transit/decrypt/app".
	Path string
	// StatusCode is the HTTP status Vault answered with, or 0 if none arrived.
	StatusCode int
	// Detail is Vault's error text or a description of the failure.
	Detail string
	// Kind is kms.ErrUserInduced, kms.ErrThrottled, kms.ErrUnavailable or kms.ErrCorrupt.
	Kind error
	// Err is the underlying cause, such as context.DeadlineExceeded, or nil.
	Err error
}

// Error renders "vault-transit: OP PATH: DETAIL (HTTP N): KIND".
func (e *Error) Error() string {
	var meta []string
	if e.StatusCode != 0 {
		meta = append(meta, fmt.Sprintf("HTTP %d", e.StatusCode))
	}
	return kms.FormatCallError("vault-transit", e.Op, e.Path, e.Detail, meta, e.Kind)
}

// Unwrap exposes the kind and the cause.
func (e *Error) Unwrap() []error { return kms.UnwrapCallError(e.Kind, e.Err) }

// Parts lets kms.Do say what a timeout or the caller's context did.
func (e *Error) Parts() (detail *string, kind, cause *error) { return &e.Detail, &e.Kind, &e.Err }

// Vault error texts that sort a 4xx answer. Vault has no error codes, so
// this is the one place that reads its messages.
var (
	corruptMarkers = []string{
		"message authentication failed",
		"invalid ciphertext",
		"failed to base64-decode ciphertext",
		"unable to decode ciphertext",
		"could not decode",
	}
	tooOldMarkers = []string{"disallowed by policy (too old)"}
)

const maxDetail = 300

// classify sorts an error from the Vault client into an *Error.
func classify(op, path string, err error) *Error {
	e := &Error{Op: op, Path: path, Err: err}
	var re *vaultapi.ResponseError
	switch {
	case errors.As(err, &re):
		e.Err = nil // the client's text repeats the URL and the body; Detail keeps what matters
		e.StatusCode = re.StatusCode
		e.Detail = vaultMessage(re)
		e.Kind = kindForStatus(re.StatusCode, e.Detail)
		if e.Kind == kms.ErrUserInduced && containsAny(e.Detail, tooOldMarkers) {
			e.Detail = "the ciphertext's KEK version is below the key's min_decryption_version, so Vault refuses to decrypt it; " +
				"lower min_decryption_version or rewrap the keyset before raising it (Vault said: " + e.Detail + ")"
		}
	case errors.Is(err, errNotFound):
		e.Err = nil
		e.StatusCode = http.StatusNotFound
		e.Detail = "not found: check the mount path, the key name and the namespace"
		e.Kind = kms.ErrUserInduced
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		e.Detail = "no answer in time"
		e.Kind = kms.ErrUnavailable
	default:
		// Transport failures: connection refused or reset, DNS, TLS handshake.
		e.Detail = "cannot reach Vault: " + transportDetail(err)
		e.Kind = kms.ErrUnavailable
	}
	return e
}

func kindForStatus(code int, msg string) error {
	switch {
	case code == http.StatusTooManyRequests:
		return kms.ErrThrottled
	case code >= 500, code == http.StatusPreconditionFailed, code == http.StatusRequestTimeout:
		// 503: sealed or standby; 412: a performance standby not yet consistent.
		return kms.ErrUnavailable
	case code == http.StatusBadRequest && containsAny(msg, corruptMarkers):
		return kms.ErrCorrupt
	default:
		// 400 (key not found, unsupported parameter, version too old),
		// 403 (permission denied, bad token), 404 (no such mount or key).
		return kms.ErrUserInduced
	}
}

func vaultMessage(re *vaultapi.ResponseError) string {
	parts := make([]string, 0, len(re.Errors))
	for _, m := range re.Errors {
		if m = tidyMessage(m); m != "" {
			parts = append(parts, m)
		}
	}
	msg := strings.Join(parts, "; ")
	if re.RawError {
		msg = "unparsable answer"
	}
	if msg == "" {
		msg = http.StatusText(re.StatusCode)
	}
	if len(msg) > maxDetail {
		msg = msg[:maxDetail] + "..."
	}
	return msg
}

// multiErrorHeader is how go-multierror starts a list: "1 error occurred:".
var multiErrorHeader = regexp.MustCompile(`^\d+ errors? occurred:\s*`)

// tidyMessage flattens Vault's multi-line multierror text into one line.
func tidyMessage(m string) string {
	m = multiErrorHeader.ReplaceAllString(strings.TrimSpace(m), "")
	lines := strings.Split(m, "\n")
	out := lines[:0]
	for _, l := range lines {
		l = strings.TrimPrefix(strings.TrimSpace(l), "* ")
		if l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// transportDetail names a transport failure without its URL (which is
// harmless but long) where the cause is recognisable.
func transportDetail(err error) string {
	s := err.Error()
	for _, m := range []string{"connection refused", "connection reset", "EOF", "no such host", "i/o timeout", "certificate", "tls:"} {
		if strings.Contains(s, m) {
			return m
		}
	}
	if len(s) > maxDetail {
		s = s[:maxDetail] + "..."
	}
	return s
}

func containsAny(s string, subs []string) bool {
	for _, m := range subs {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

func isPermissionDenied(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == http.StatusForbidden
}
