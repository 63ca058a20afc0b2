// Package gcp is keyshift's KMS backend for Google Cloud KMS. The KEK is a
// symmetric CryptoKey (purpose ENCRYPT_DECRYPT) that never leaves Cloud KMS:
// Wrap calls Encrypt, which uses the key's primary version, Unwrap calls
// Decrypt (the ciphertext names the version that made it, so any enabled
// version unwraps), PrimaryKEKVersion reads the primary version with
// GetCryptoKey, and Rotate creates a new version and makes it primary.
// Cloud KMS has no data-key generation for symmetric keys, so callers make
// the DEK from random bytes and Wrap it; it has no re-encryption either, so a
// rewrap is Unwrap then Wrap.
//
// # URI
//
//	gcp-kms://projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY
//
// Three slashes (gcp-kms:///projects/...) name the same key. The URI names
// a CryptoKey, never a version, and carries no endpoint or credentials, so a
// keyset stays valid wherever it is read. See ParseURI.
//
// # Credentials
//
// Open uses Application Default Credentials: Workload Identity on GKE (the
// pod's Kubernetes service account bound to a Google service account), else
// GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file or the metadata server.
// keyshift never holds a credential in its own configuration. New accepts
// the same and, for tests, WithEndpoint and WithInsecure (plaintext gRPC, no
// credentials).
//
// # KEK versions
//
// A WrappedKey's KEKVersion is the full CryptoKeyVersion resource name that
// Encrypt reports, projects/.../cryptoKeys/KEY/cryptoKeyVersions/N, and
// PrimaryKEKVersion reports the same form, so a poller comparing the two
// notices a rotation, made by Rotate, by Cloud KMS's automatic rotation
// schedule or by hand.
//
// # Integrity
//
// Every Encrypt and Decrypt carries CRC32C checksums of its data and aad,
// and every answer is checked: Encrypt must report verified_plaintext_crc32c
// and verified_additional_authenticated_data_crc32c and a ciphertext_crc32c
// that matches the ciphertext; Decrypt must report a plaintext_crc32c that
// matches the plaintext. A failed check, or Cloud KMS's InvalidArgument
// saying a request checksum did not match, means the bytes were damaged in
// transit or in memory, not that the wrapped key is bad (its checksum is
// computed here from the very bytes sent). Such failures wrap ErrChecksum
// and kms.ErrUnavailable and are retried like any transient failure, as
// Google's data-integrity guidance advises; when retries run out the caller
// gets kms.ErrUnavailable, never a damaged key. kms.ErrCorrupt is kept for
// what retrying cannot fix: Decrypt's InvalidArgument, meaning the wrapped
// key or its aad does not verify.
//
// # Errors
//
// Every error is an *Error starting with "gcp-kms: " and wraps one of
// kms.ErrUserInduced (PermissionDenied, NotFound, FailedPrecondition for a
// disabled or destroyed version, Unauthenticated, InvalidArgument outside
// Decrypt), kms.ErrThrottled (ResourceExhausted), kms.ErrUnavailable
// (Unavailable, DeadlineExceeded, Internal, Aborted, Unknown, timeouts,
// checksum failures) or kms.ErrCorrupt (InvalidArgument from Decrypt).
// Throttled and unavailable calls are retried with capped exponential
// backoff and jitter (RetryPolicy), each attempt bounded by a timeout; the
// client library's own retries and request logging are off. Keys, plaintext
// and ciphertext are never logged nor put in errors; logs carry the key
// name, versions, sizes, attempts and durations.
//
// # IAM
//
// The service account needs roles/cloudkms.cryptoKeyEncrypterDecrypter on
// the key for Wrap and Unwrap, cloudkms.cryptoKeys.get (roles/cloudkms.viewer)
// for PrimaryKEKVersion, and cloudkms.cryptoKeyVersions.create and
// cloudkms.cryptoKeys.update (roles/cloudkms.admin) for Rotate (controller only).
package gcp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net"
	"net/url"
	"time"

	kmsapi "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keyshift/keyshift/internal/kms"
)

// Scheme is the URI scheme this backend serves.
const Scheme = "gcp-kms"

// Size limits that Cloud KMS enforces (64 KiB for plaintext and aad of
// software keys; HSM keys allow less), checked here first so an oversized
// input fails without a call. No Cloud KMS ciphertext comes near maxCiphertext.
const (
	maxPlaintext  = 64 << 10
	maxAAD        = 64 << 10
	maxCiphertext = 128 << 10
)

// Cloud KMS method names, as in the API.
const (
	opEncrypt       = "Encrypt"
	opDecrypt       = "Decrypt"
	opGetCryptoKey  = "GetCryptoKey"
	opGetVersion    = "GetCryptoKeyVersion"
	opCreateVersion = "CreateCryptoKeyVersion"
	opUpdatePrimary = "UpdateCryptoKeyPrimaryVersion"
)

// How often Rotate polls a version that is still being generated: from
// the first to the second, doubling.
const (
	pollGenerationMin = 100 * time.Millisecond
	pollGenerationMax = 2 * time.Second
)

var (
	_ kms.Wrapper    = (*Client)(nil)
	_ kms.KEKStatus  = (*Client)(nil)
	_ slog.LogValuer = (*Client)(nil)
	_ fmt.Stringer   = (*Client)(nil)
	_ kms.OpenFunc   = Open
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Options configures a Client. The zero value of each field means its default.
type Options struct {
	// Endpoint overrides the Cloud KMS endpoint, as host:port: a Private
	// Service Connect endpoint, a regional endpoint, or a test server.
	// Default: cloudkms.googleapis.com:443.
	Endpoint string
	// Insecure dials Endpoint over plaintext gRPC with no credentials. For
	// test servers on loopback only: it sends data keys unencrypted.
	Insecure bool
	// Options are the timeout, retry policy and logger every backend shares.
	kms.Options
	// ClientOptions are passed to the Cloud KMS client library after
	// keyshift's own (for example option.WithCredentialsFile). They are
	// ignored with Insecure.
	ClientOptions []option.ClientOption
}

// Option sets one field of Options.
type Option func(*Options)

// WithEndpoint sets Options.Endpoint.
func WithEndpoint(hostport string) Option { return func(o *Options) { o.Endpoint = hostport } }

// WithInsecure sets Options.Insecure: plaintext gRPC to Endpoint, for tests.
func WithInsecure() Option { return func(o *Options) { o.Insecure = true } }

// WithTimeout sets Options.Timeout.
func WithTimeout(d time.Duration) Option { return func(o *Options) { o.Timeout = d } }

// WithRetry sets Options.Retry.
func WithRetry(p RetryPolicy) Option { return func(o *Options) { o.Retry = p } }

// WithLogger sets Options.Logger; nil keeps the current one.
func WithLogger(l *slog.Logger) Option { return func(o *Options) { o.Logger = cmp.Or(l, o.Logger) } }

// WithClientOptions appends to Options.ClientOptions.
func WithClientOptions(opts ...option.ClientOption) Option {
	return func(o *Options) { o.ClientOptions = append(o.ClientOptions, opts...) }
}

// Client wraps keys with one Cloud KMS CryptoKey. It is safe for concurrent
// use. Close it when done.
type Client struct {
	kc     *kmsapi.KeyManagementClient
	key    string
	caller kms.Caller // runs every Cloud KMS request
	log    *slog.Logger
}

// Open is the kms.OpenFunc for gcp-kms URIs, with Application Default
// Credentials; it logs nowhere. Use Opener to pass a logger or options.
func Open(ctx context.Context, u *url.URL) (kms.Wrapper, error) {
	return Opener(nil)(ctx, u)
}

// Opener returns a kms.OpenFunc for gcp-kms URIs whose clients log to log,
// with opts applied after the defaults.
func Opener(log *slog.Logger, opts ...Option) kms.OpenFunc {
	return kms.Opener(openURL, WithLogger, log, opts)
}

func openURL(ctx context.Context, u *url.URL, opts []Option) (kms.Wrapper, error) {
	key, err := ParseURI(u)
	if err != nil {
		return nil, err
	}
	c, err := New(ctx, key, opts...)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// New returns a client for the CryptoKey keyName
// (projects/P/locations/L/keyRings/R/cryptoKeys/K). It makes no Cloud KMS
// call, so an outage at start does not stop the caller from starting; it
// does look for credentials (Application Default Credentials unless
// WithInsecure or ClientOptions say otherwise) and fails, wrapping
// kms.ErrUserInduced, if there are none. Tokens are fetched at the first call.
func New(ctx context.Context, keyName string, opts ...Option) (*Client, error) {
	if err := CheckKeyName(keyName); err != nil {
		return nil, err
	}
	o := Options{}
	for _, opt := range opts {
		opt(&o)
	}
	base, err := o.Options.WithDefaults(Scheme)
	if err != nil {
		return nil, err
	}
	if o.Insecure && o.Endpoint == "" {
		return nil, fmt.Errorf("gcp-kms: an insecure transport needs an endpoint (WithEndpoint): %w", kms.ErrBadURI)
	}
	if o.Endpoint != "" {
		if _, _, err := net.SplitHostPort(o.Endpoint); err != nil {
			return nil, fmt.Errorf("gcp-kms: endpoint %q: write host:port: %w", o.Endpoint, kms.ErrBadURI)
		}
	}

	// The client library's request logging (GOOGLE_SDK_GO_LOGGING_LEVEL)
	// would print data keys: give it a logger that drops everything.
	copts := []option.ClientOption{option.WithLogger(slog.New(slog.DiscardHandler))}
	if o.Insecure {
		conn, err := grpc.NewClient(o.Endpoint,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			// Reconnect quickly after a test server restarts.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: base.Timeout,
			}))
		if err != nil {
			return nil, fmt.Errorf("gcp-kms: endpoint %q: %v: %w", o.Endpoint, err, kms.ErrBadURI)
		}
		copts = append(copts, option.WithGRPCConn(conn))
	} else {
		if o.Endpoint != "" {
			copts = append(copts, option.WithEndpoint(o.Endpoint))
		}
		copts = append(copts, o.ClientOptions...)
	}
	kc, err := kmsapi.NewKeyManagementClient(ctx, copts...)
	if err != nil {
		return nil, &Error{Op: "connect", Key: keyName, Kind: kms.ErrUserInduced, Err: err,
			Detail: "cannot set up the Cloud KMS client (no Application Default Credentials? on GKE enable Workload Identity; elsewhere set GOOGLE_APPLICATION_CREDENTIALS): " + tidy(err.Error())}
	}
	// call is the only retry layer, and it sets its own timeouts.
	kc.CallOptions = &kmsapi.KeyManagementCallOptions{}
	base.Logger = base.Logger.With(slog.String("kms", Scheme), slog.String("key", keyName))
	return &Client{kc: kc, key: keyName, caller: kms.Caller{Backend: Scheme, Options: base}, log: base.Logger}, nil
}

// Close releases the client's connections.
func (c *Client) Close() error { return c.kc.Close() }

// String names the key, never a credential.
func (c *Client) String() string { return Scheme + "://" + c.key }

// LogValue logs the client as its key URI.
func (c *Client) LogValue() slog.Value { return slog.StringValue(c.String()) }

// KeyName is the CryptoKey resource name the client uses.
func (c *Client) KeyName() string { return c.key }

// Wrap encrypts dek with the key's primary version, binding aad as
// additional authenticated data, and reports that version's resource name.
func (c *Client) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	if len(dek) == 0 || len(dek) > maxPlaintext {
		return kms.WrappedKey{}, &Error{Op: opEncrypt, Key: c.key, Kind: kms.ErrUserInduced,
			Detail: fmt.Sprintf("data key of %d bytes: Cloud KMS encrypts 1 to %d bytes", len(dek), maxPlaintext)}
	}
	if len(aad) > maxAAD {
		return kms.WrappedKey{}, &Error{Op: opEncrypt, Key: c.key, Kind: kms.ErrUserInduced,
			Detail: fmt.Sprintf("aad of %d bytes: Cloud KMS accepts at most %d", len(aad), maxAAD)}
	}
	req := &kmspb.EncryptRequest{
		Name:                              c.key,
		Plaintext:                         dek,
		AdditionalAuthenticatedData:       aad,
		PlaintextCrc32C:                   crc32c(dek),
		AdditionalAuthenticatedDataCrc32C: crc32c(aad),
	}
	resp, err := call(ctx, c, opEncrypt, nil, func(ctx context.Context) (*kmspb.EncryptResponse, error) {
		resp, err := c.kc.Encrypt(ctx, req)
		if err != nil {
			return nil, err
		}
		switch {
		case !resp.GetVerifiedPlaintextCrc32C():
			return nil, checksumError(opEncrypt, c.key, "Cloud KMS did not confirm the data key's checksum")
		case !resp.GetVerifiedAdditionalAuthenticatedDataCrc32C():
			return nil, checksumError(opEncrypt, c.key, "Cloud KMS did not confirm the aad's checksum")
		case resp.GetCiphertextCrc32C() == nil || resp.GetCiphertextCrc32C().GetValue() != crc32c(resp.GetCiphertext()).GetValue():
			return nil, checksumError(opEncrypt, c.key, "the wrapped key does not match its checksum")
		case versionOf(c.key, resp.GetName()) == "":
			return nil, &Error{Op: opEncrypt, Key: c.key, Kind: kms.ErrUnavailable,
				Detail: fmt.Sprintf("Cloud KMS reports version %q, which is not a version of this key", tidy(resp.GetName()))}
		}
		return resp, nil
	})
	if err != nil {
		return kms.WrappedKey{}, err
	}
	c.log.Debug("gcp-kms: wrapped", slog.String("kek_version", resp.GetName()),
		slog.Int("dek_bytes", len(dek)), slog.Int("aad_bytes", len(aad)), slog.Int("wrapped_bytes", len(resp.GetCiphertext())))
	return kms.WrappedKey{Ciphertext: resp.GetCiphertext(), KEKVersion: resp.GetName()}, nil
}

// Unwrap decrypts a key wrapped by Wrap under any enabled version of the
// key; aad must be the aad it was wrapped with.
func (c *Client) Unwrap(ctx context.Context, w kms.WrappedKey, aad []byte) ([]byte, error) {
	if len(w.Ciphertext) == 0 || len(w.Ciphertext) > maxCiphertext {
		return nil, &Error{Op: opDecrypt, Key: c.key, Kind: kms.ErrCorrupt,
			Detail: fmt.Sprintf("wrapped key of %d bytes cannot be a Cloud KMS ciphertext", len(w.Ciphertext))}
	}
	if len(aad) > maxAAD {
		return nil, &Error{Op: opDecrypt, Key: c.key, Kind: kms.ErrCorrupt,
			Detail: fmt.Sprintf("aad of %d bytes cannot have been bound by Cloud KMS (at most %d)", len(aad), maxAAD)}
	}
	req := &kmspb.DecryptRequest{
		Name:                              c.key,
		Ciphertext:                        w.Ciphertext,
		AdditionalAuthenticatedData:       aad,
		CiphertextCrc32C:                  crc32c(w.Ciphertext),
		AdditionalAuthenticatedDataCrc32C: crc32c(aad),
	}
	var usedPrimary bool
	dek, err := call(ctx, c, opDecrypt, nil, func(ctx context.Context) ([]byte, error) {
		resp, err := c.kc.Decrypt(ctx, req)
		if err != nil {
			return nil, err
		}
		pt := resp.GetPlaintext()
		if resp.GetPlaintextCrc32C() == nil || resp.GetPlaintextCrc32C().GetValue() != crc32c(pt).GetValue() {
			clear(pt)
			return nil, checksumError(opDecrypt, c.key, "the data key does not match its checksum")
		}
		usedPrimary = resp.GetUsedPrimary()
		return pt, nil
	})
	if err != nil {
		var e *Error
		if errors.As(err, &e) && errors.Is(e, kms.ErrCorrupt) && w.KEKVersion != "" && versionOf(c.key, w.KEKVersion) == "" {
			e.Detail += fmt.Sprintf("; the keyset says it was wrapped by %q, which is not a version of this key", tidy(w.KEKVersion))
		}
		return nil, err
	}
	c.log.Debug("gcp-kms: unwrapped", slog.String("kek_version", tidy(w.KEKVersion)), slog.Bool("used_primary", usedPrimary),
		slog.Int("wrapped_bytes", len(w.Ciphertext)), slog.Int("aad_bytes", len(aad)))
	return dek, nil
}

// PrimaryKEKVersion reports the resource name of the key's primary
// version, the one Wrap uses. A key without an enabled primary version is
// an error that wraps kms.ErrUserInduced.
func (c *Client) PrimaryKEKVersion(ctx context.Context) (string, error) {
	ck, err := call(ctx, c, opGetCryptoKey, nil, func(ctx context.Context) (*kmspb.CryptoKey, error) {
		return c.kc.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: c.key})
	})
	if err != nil {
		return "", err
	}
	if ck.GetPurpose() != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return "", &Error{Op: opGetCryptoKey, Key: c.key, Kind: kms.ErrUserInduced,
			Detail: fmt.Sprintf("the key's purpose is %s; keyshift needs a symmetric key with purpose ENCRYPT_DECRYPT", ck.GetPurpose())}
	}
	p := ck.GetPrimary()
	if p == nil || versionOf(c.key, p.GetName()) == "" {
		return "", &Error{Op: opGetCryptoKey, Key: c.key, Kind: kms.ErrUserInduced,
			Detail: "the key has no primary version: make an enabled version primary (gcloud kms keys set-primary-version)"}
	}
	if p.GetState() != kmspb.CryptoKeyVersion_ENABLED {
		return "", &Error{Op: opGetCryptoKey, Key: c.key, Kind: kms.ErrUserInduced,
			Detail: fmt.Sprintf("primary version %s is %s: enable it (gcloud kms keys versions enable) or make an enabled version primary", p.GetName(), p.GetState())}
	}
	return p.GetName(), nil
}

// Rotate creates a new version of the key, waits until Cloud KMS has
// generated it (HSM and external keys take a moment), makes it the primary
// and returns its resource name. Older versions stay enabled, so keys they
// wrapped still unwrap. CreateCryptoKeyVersion is retried only when Cloud
// KMS throttled it, since a retry after a lost answer could create a second
// version.
func (c *Client) Rotate(ctx context.Context) (string, error) {
	v, err := call(ctx, c, opCreateVersion, retryableNotApplied, func(ctx context.Context) (*kmspb.CryptoKeyVersion, error) {
		return c.kc.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: c.key, CryptoKeyVersion: &kmspb.CryptoKeyVersion{}})
	})
	if err != nil {
		return "", err
	}
	id := versionOf(c.key, v.GetName())
	if id == "" {
		return "", &Error{Op: opCreateVersion, Key: c.key, Kind: kms.ErrUnavailable,
			Detail: fmt.Sprintf("Cloud KMS reports new version %q, which is not a version of this key", tidy(v.GetName()))}
	}
	for wait := pollGenerationMin; v.GetState() == kmspb.CryptoKeyVersion_PENDING_GENERATION; wait = min(2*wait, pollGenerationMax) {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", &Error{Op: opCreateVersion, Key: c.key, Kind: kms.ErrUnavailable, Err: ctx.Err(),
				Detail: fmt.Sprintf("caller gave up while %s was still being generated; it is not primary", v.GetName())}
		case <-t.C:
		}
		name := v.GetName()
		if v, err = call(ctx, c, opGetVersion, nil, func(ctx context.Context) (*kmspb.CryptoKeyVersion, error) {
			return c.kc.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: name})
		}); err != nil {
			return "", err
		}
	}
	if v.GetState() != kmspb.CryptoKeyVersion_ENABLED {
		detail := fmt.Sprintf("new version %s is %s, not ENABLED", v.GetName(), v.GetState())
		if r := tidy(v.GetGenerationFailureReason()); r != "" {
			detail += ": " + r
		}
		return "", &Error{Op: opCreateVersion, Key: c.key, Kind: kms.ErrUserInduced, Detail: detail}
	}
	if _, err := call(ctx, c, opUpdatePrimary, nil, func(ctx context.Context) (*kmspb.CryptoKey, error) {
		return c.kc.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: c.key, CryptoKeyVersionId: id})
	}); err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Detail = fmt.Sprintf("created %s but could not make it primary: %s", v.GetName(), e.Detail)
		}
		return "", err
	}
	c.log.Info("gcp-kms: rotated", slog.String("kek_version", v.GetName()))
	return v.GetName(), nil
}

func crc32c(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, castagnoli)))
}
