// Package kms owns the contract between keyshift and a key management
// service: the small interface a backend implements and the optional ones
// it may add (DataKeyGenerator, KEKStatus, Rewrapper), the URI that selects
// a backend, the sorted error kinds every backend reports, and the one call
// path (Options, Do) by which every remote backend times out, retries and
// logs its requests.
//
// The KEK (key-encryption key) never leaves the KMS. keyshift only asks the
// KMS to wrap and unwrap data keys (DEKs); the keyset document stores the
// wrapped DEK and the KEK version that wrapped it.
package kms

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Wrapper wraps and unwraps data keys with a KEK held by the KMS. aad is
// bound to the wrapped key (AWS encryption context, Cloud KMS additional
// authenticated data, Vault context): the same aad must be given to unwrap.
type Wrapper interface {
	// Wrap encrypts dek under the current KEK version and reports that version.
	Wrap(ctx context.Context, dek, aad []byte) (WrappedKey, error)
	// Unwrap decrypts a key wrapped by Wrap (under any still-enabled KEK version).
	Unwrap(ctx context.Context, wrapped WrappedKey, aad []byte) ([]byte, error)
}

// WrappedKey is a DEK as the KMS returned it, with the KEK version that
// wrapped it. It holds no plaintext key material.
type WrappedKey struct {
	// Ciphertext is the KMS-specific wrapped form of the DEK.
	Ciphertext []byte
	// KEKVersion names the KEK version that wrapped the key, in the KMS's own
	// terms ("1" for the local KMS, a CryptoKeyVersion for Cloud KMS, ...).
	KEKVersion string
}

// DataKeyGenerator is implemented by backends that can mint a fresh DEK and
// return it both in plaintext and wrapped in a single call (AWS
// GenerateDataKey, Vault datakey). Callers fall back to random bytes and Wrap.
type DataKeyGenerator interface {
	GenerateDataKey(ctx context.Context, aad []byte) (dek []byte, wrapped WrappedKey, err error)
}

// KEKStatus is implemented by backends that can report the KEK's current
// primary version, so a poller can notice a KEK rotation.
type KEKStatus interface {
	PrimaryKEKVersion(ctx context.Context) (string, error)
}

// Rewrapper is implemented by backends that re-encrypt a wrapped key under
// the current KEK version inside the KMS (AWS ReEncrypt, Vault rewrap), so
// the data key never leaves it. Callers fall back to Unwrap and Wrap.
type Rewrapper interface {
	Rewrap(ctx context.Context, wrapped WrappedKey, aad []byte) (WrappedKey, error)
}

// Sorted error kinds. Every backend wraps one of these with %w so callers,
// metrics and gRPC mapping use errors.Is, never string matching.
var (
	// ErrUserInduced: the KEK is revoked, disabled, missing or permission is denied.
	// Retrying does not help; an operator must act.
	ErrUserInduced = errors.New("kms: key unusable (revoked, disabled, missing or permission denied)")
	// ErrThrottled: the KMS asked us to slow down. Retried with backoff.
	ErrThrottled = errors.New("kms: throttled")
	// ErrUnavailable: the KMS could not be reached or failed internally. Retried with backoff.
	ErrUnavailable = errors.New("kms: unavailable")
	// ErrCorrupt: the wrapped key or its aad does not verify.
	ErrCorrupt = errors.New("kms: wrapped key corrupt or bound to different data")
	// ErrUnknownScheme: no backend is registered for the URI's scheme.
	ErrUnknownScheme = errors.New("kms: unknown URI scheme")
	// ErrBadURI: the URI does not parse or lacks what its backend needs.
	ErrBadURI = errors.New("kms: bad URI")
)

// Reason names an error's kind for a metric label or an audit record:
// "user_induced", "throttled", "unavailable", "corrupt" or "other".
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrUserInduced):
		return "user_induced"
	case errors.Is(err, ErrThrottled):
		return "throttled"
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return "unavailable"
	case errors.Is(err, ErrCorrupt):
		return "corrupt"
	default:
		return "other"
	}
}

// Retryable reports whether err is worth retrying with backoff.
func Retryable(err error) bool {
	return errors.Is(err, ErrThrottled) || errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)
}

// OpenFunc builds a Wrapper for a parsed URI of its scheme.
type OpenFunc func(ctx context.Context, uri *url.URL) (Wrapper, error)

// Registry maps URI schemes ("local", "aws-kms", ...) to backends. It is
// built once by the caller (see package providers) and never global.
type Registry map[string]OpenFunc

// Open parses uri and opens the backend registered for its scheme.
func (r Registry) Open(ctx context.Context, uri string) (Wrapper, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	open, ok := r[u.Scheme]
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownScheme, u.Scheme, strings.Join(r.Schemes(), ", "))
	}
	return open(ctx, u)
}

// Schemes lists the registered schemes, sorted.
func (r Registry) Schemes() []string {
	s := make([]string, 0, len(r))
	for k := range r {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// ParseURI parses a KMS URI such as local:///var/lib/keyshift/kek and
// checks it has a scheme.
func ParseURI(uri string) (*url.URL, error) {
	if uri == "" {
		return nil, fmt.Errorf("%w: empty (write for example local:///path/to/kek)", ErrBadURI)
	}
	u, err := url.Parse(uri)
	if err != nil {
		// aws-kms://arn:aws:kms:...:key/ID reads as a host with a bad port;
		// take what follows "://" as the path instead, as with three slashes.
		if scheme, rest, ok := strings.Cut(uri, "://"); ok && !strings.HasPrefix(rest, "/") {
			if u2, err2 := url.Parse(scheme + ":///" + rest); err2 == nil {
				return u2, nil
			}
		}
		return nil, fmt.Errorf("%w: %v", ErrBadURI, err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("%w %q: no scheme (write for example local:///path/to/kek)", ErrBadURI, uri)
	}
	return u, nil
}

// Cache opens each URI once and hands out the same Wrapper after that:
// backends hold connections, token-renewal goroutines and credentials, so
// a long-running process must not open one per call. It is safe for
// concurrent use.
type Cache struct {
	reg      Registry
	mu       sync.Mutex
	wrappers map[string]Wrapper
}

// NewCache returns an empty cache over reg.
func NewCache(reg Registry) *Cache { return &Cache{reg: reg, wrappers: map[string]Wrapper{}} }

// Open returns the cached Wrapper for uri, opening it on first use. A
// failed open is not cached, so the next call tries again.
func (c *Cache) Open(ctx context.Context, uri string) (Wrapper, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w, ok := c.wrappers[uri]; ok {
		return w, nil
	}
	w, err := c.reg.Open(ctx, uri)
	if err != nil {
		return nil, err
	}
	c.wrappers[uri] = w
	return w, nil
}

// FormatCallError renders a backend's failed call the way every backend
// does: "BACKEND: OP TARGET: DETAIL (META, ...): KIND", leaving out empty
// parts. meta holds the backend's own identifiers (error code, HTTP or
// gRPC status, request ID); none may carry request data.
func FormatCallError(backend, op, target, detail string, meta []string, kind error) string {
	var b strings.Builder
	b.WriteString(backend)
	b.WriteString(": ")
	b.WriteString(op)
	if target != "" {
		b.WriteString(" ")
		b.WriteString(target)
	}
	if detail != "" {
		b.WriteString(": ")
		b.WriteString(detail)
	}
	if len(meta) > 0 {
		b.WriteString(" (")
		b.WriteString(strings.Join(meta, ", "))
		b.WriteString(")")
	}
	if kind != nil {
		b.WriteString(": ")
		b.WriteString(kind.Error())
	}
	return b.String()
}

// UnwrapCallError is a backend error's Unwrap: its sorted kind and, when
// there is one, its cause, both reachable with errors.Is and errors.As.
func UnwrapCallError(kind, cause error) []error {
	if cause == nil {
		return []error{kind}
	}
	return []error{kind, cause}
}
