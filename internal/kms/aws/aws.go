// Package aws is keyshift's KMS backend for AWS Key Management Service. The
// KEK is a symmetric KMS key (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT) that never
// leaves KMS: Wrap and Unwrap call Encrypt and Decrypt, GenerateDataKey asks
// KMS for a fresh AES-256 data key, Rewrap is ReEncrypt (the data key never
// leaves KMS), and a KEK rotation is KMS's automatic or on-demand rotation
// (RotateNow), or moving an alias to another key.
//
// # URI
//
//	aws-kms:///arn:aws:kms:REGION:ACCOUNT:key/ID     a key by ARN (the region comes from the ARN)
//	aws-kms:///arn:aws:kms:REGION:ACCOUNT:alias/NAME an alias by ARN
//	aws-kms://alias/NAME                             an alias in the client's region and account
//	aws-kms://KEY-ID                                 a key ID (UUID or mrk-...) likewise
//	... ?region=REGION                               the region for the last two forms
//
// url.Parse, and so kms.ParseURI, refuses aws-kms://arn:aws:kms:... (two
// slashes before the ARN: it reads ":key/ID" as a bad port), so write three
// slashes, or parse with ParseURI, which accepts both. The KMS endpoint is
// never part of the URI, so a keyset stays valid wherever it is read; it
// comes from the SDK's resolution (AWS_ENDPOINT_URL_KMS, VPC endpoints by
// DNS) or WithEndpoint.
//
// Credentials come only from the SDK's default chain: environment, IRSA web
// identity, EKS Pod Identity, shared config, instance role. keyshift never
// holds static keys in its own configuration. The region comes from the key
// ARN, else ?region=, else WithRegion, else AWS_REGION and shared config.
//
// # Binding aad
//
// aad becomes the KMS encryption context, which KMS binds to the ciphertext
// and records in CloudTrail:
//
//	{"keyshift-aad-text": AAD}                   aad of printable ASCII (keyshift's own aad,
//	                                             "keyshift keyset NAME vN", is)
//	{"keyshift-aad-b64url": base64url(AAD)}      any other aad (unpadded base64url)
//	no encryption context                        empty aad
//
// The text form keeps CloudTrail readable ("which keyset version was
// unwrapped, by whom") and lets an IAM policy confine a role to some keysets
// with a condition on kms:EncryptionContext:keyshift-aad-text. The two key
// names differ before either ends, so no aad in one form can collide with an
// aad in the other even where the encryption context is flattened by
// concatenation (as local-kms does). See EncryptionContext.
//
// # KEK versions
//
// A WrappedKey's KEKVersion is the ARN of the key that wrapped it, followed
// by "#" and the KMS key material ID when KMS reports one:
//
//	arn:aws:kms:eu-west-2:111122223333:key/0b5c...#5ab1c7e0...
//
// The ARN is stable across alias moves and names the key even when the URI
// names an alias; the key material ID (KeyMetadata.CurrentKeyMaterialId,
// and KeyMaterialId in GenerateDataKey and ReEncrypt answers) changes with
// every automatic or on-demand rotation. PrimaryKEKVersion reports the same
// form from DescribeKey, so a poller comparing the two notices both a
// rotation and an alias move, and Rewrap converges to it. Encrypt reports no
// key material ID, so Wrap reads it with DescribeKey before encrypting (a
// rotation in between makes the label lag, never lead, and the next poll
// rewraps). Endpoints that report no key material ID (local-kms, older
// emulators) give the ARN alone: a rotation there is invisible, an alias
// move is not. ListKeyRotations is not used: it needs another permission
// and pagination and cannot say which material wrapped a given key.
//
// Unwrap and Rewrap ask KMS for the key named in KEKVersion when it is in
// the same partition, region and account as the URI's key, so data keys
// wrapped before an alias moved still unwrap; otherwise they ask for the
// URI's key, and KMS refuses ciphertext from any other key.
//
// # Errors
//
// Every error starts with "aws-kms: " and wraps one of kms.ErrUserInduced
// (NotFound, Disabled, KMSInvalidState, AccessDenied, IncorrectKey, refused
// credentials, ...), kms.ErrThrottled (ThrottlingException,
// LimitExceededException, HTTP 429), kms.ErrUnavailable (KMSInternal,
// DependencyTimeout, KeyUnavailable, HTTP 5xx, network failures, timeouts),
// kms.ErrCorrupt (InvalidCiphertextException: wrong aad or damaged
// ciphertext) or ErrNotSupported (HTTP 501). Throttled and unavailable calls
// are retried with capped exponential backoff and jitter (RetryPolicy); the
// SDK's own retryer is off. Keys, plaintext and ciphertext are never logged
// nor put in errors.
//
// # IAM
//
// The role needs kms:Encrypt, kms:Decrypt, kms:GenerateDataKey and
// kms:DescribeKey on the key; kms:ReEncryptFrom and kms:ReEncryptTo for
// Rewrap; kms:RotateKeyOnDemand and kms:GetKeyRotationStatus for RotateNow
// and RotationStatus (controller only).
package aws

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/keyshift/keyshift/internal/kms"
)

// Scheme is the URI scheme this backend serves.
const Scheme = "aws-kms"

// Encryption-context keys; see the package documentation and EncryptionContext.
const (
	// ContextKeyText holds an aad of printable ASCII as it is.
	ContextKeyText = "keyshift-aad-text"
	// ContextKeyBase64 holds any other aad, unpadded base64url.
	ContextKeyBase64 = "keyshift-aad-b64url"
)

// Size limits that KMS enforces, checked here first so an oversized input
// fails without a call (and no KMS message can echo it).
const (
	maxPlaintext  = 4096
	maxCiphertext = 6144
	maxAAD        = 4096
	dataKeySize   = 32
)

// KMS operation names, as in the API and in IAM actions.
const (
	opEncrypt         = "Encrypt"
	opDecrypt         = "Decrypt"
	opGenerateDataKey = "GenerateDataKey"
	opReEncrypt       = "ReEncrypt"
	opDescribe        = "DescribeKey"
	opRotate          = "RotateKeyOnDemand"
	opRotationStatus  = "GetKeyRotationStatus"
)

var (
	_ kms.Wrapper          = (*Client)(nil)
	_ kms.DataKeyGenerator = (*Client)(nil)
	_ kms.KEKStatus        = (*Client)(nil)
	_ kms.Rewrapper        = (*Client)(nil)
	_ slog.LogValuer       = (*Client)(nil)
	_ fmt.Stringer         = (*Client)(nil)
	_ kms.OpenFunc         = Open
)

// Options configures a Client. The zero value of each field means its default.
type Options struct {
	// Endpoint overrides the KMS endpoint, e.g. http://127.0.0.1:4599 for
	// local-kms or a VPC endpoint URL. Default: the SDK's resolution, which
	// honours AWS_ENDPOINT_URL_KMS and AWS_ENDPOINT_URL.
	Endpoint string
	// Region is used when the URI names an alias or key ID without
	// ?region=. A key or alias ARN's region always wins. Default: the SDK's
	// (AWS_REGION, AWS_DEFAULT_REGION, shared config).
	Region string
	// Options are the timeout, retry policy and logger every backend
	// shares. The logger also receives AWS request IDs.
	kms.Options
}

// Option sets one field of Options.
type Option func(*Options)

// WithEndpoint sets Options.Endpoint.
func WithEndpoint(endpoint string) Option { return func(o *Options) { o.Endpoint = endpoint } }

// WithRegion sets Options.Region.
func WithRegion(region string) Option { return func(o *Options) { o.Region = region } }

// WithTimeout sets Options.Timeout.
func WithTimeout(d time.Duration) Option { return func(o *Options) { o.Timeout = d } }

// WithRetry sets Options.Retry.
func WithRetry(p RetryPolicy) Option { return func(o *Options) { o.Retry = p } }

// WithLogger sets Options.Logger; nil keeps the current one.
func WithLogger(l *slog.Logger) Option { return func(o *Options) { o.Logger = cmp.Or(l, o.Logger) } }

// WithOptions replaces all options at once.
func WithOptions(opts Options) Option { return func(o *Options) { *o = opts } }

// Client wraps keys with one KMS key or alias. It is safe for concurrent use.
type Client struct {
	api    *awskms.Client
	ref    keyRef
	region string
	caller kms.Caller // runs every KMS request
	log    *slog.Logger
	// learned is the home of the key the URI resolves to, learned from KMS
	// answers when the reference itself does not say (alias/NAME, key ID).
	learned atomic.Pointer[home]
}

// New returns a client for key: a key ARN, an alias ARN, alias/NAME or a
// key ID. It loads the SDK's default configuration (credentials are fetched
// lazily, at the first call), so it makes no network call and a KMS outage
// at start does not stop the caller from starting.
func New(ctx context.Context, key string, opts ...Option) (*Client, error) {
	ref, err := parseKeyRef(key)
	if err != nil {
		return nil, err
	}
	return newClient(ctx, uriTarget{ref: ref}, opts)
}

// Open is the kms.OpenFunc for aws-kms URIs; it logs nowhere. Use Opener to
// pass a logger or options.
func Open(ctx context.Context, u *url.URL) (kms.Wrapper, error) {
	return Opener(nil)(ctx, u)
}

// Opener returns a kms.OpenFunc for aws-kms URIs whose clients log to log,
// with opts applied after the defaults.
func Opener(log *slog.Logger, opts ...Option) kms.OpenFunc {
	return kms.Opener(openURL, WithLogger, log, opts)
}

func openURL(ctx context.Context, u *url.URL, opts []Option) (kms.Wrapper, error) {
	t, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	c, err := newClient(ctx, t, opts)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func newClient(ctx context.Context, t uriTarget, opts []Option) (*Client, error) {
	o := Options{}
	for _, opt := range opts {
		opt(&o)
	}
	base, err := o.Options.WithDefaults(Scheme)
	if err != nil {
		return nil, err
	}
	if o.Region != "" && !regionPattern.MatchString(o.Region) {
		return nil, fmt.Errorf("aws-kms: region %q is not a region such as us-east-1: %w", o.Region, kms.ErrBadURI)
	}
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("aws-kms: endpoint %q: write http(s)://host[:port]: %w", o.Endpoint, kms.ErrBadURI)
		}
	}

	region := t.ref.home.region
	if region == "" {
		region = t.region
	}
	if region == "" {
		region = o.Region
	}
	var load []func(*config.LoadOptions) error
	if region != "" {
		load = append(load, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return nil, fmt.Errorf("aws-kms: AWS configuration: %v: %w", err, kms.ErrBadURI)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("aws-kms: key %q: no region: use a key ARN, add ?region=REGION to the URI, or set AWS_REGION: %w", t.ref.id, kms.ErrBadURI)
	}
	api := awskms.NewFromConfig(cfg, func(ko *awskms.Options) {
		ko.Retryer = aws.NopRetryer{} // call retries, with its own sorting and policy
		ko.RetryMaxAttempts = 0
		ko.ClientLogMode = 0 // never let the SDK log request or response bodies
		if o.Endpoint != "" {
			ko.BaseEndpoint = aws.String(o.Endpoint)
		}
	})
	base.Logger = base.Logger.With(slog.String("kms", Scheme), slog.String("key", t.ref.id), slog.String("region", cfg.Region))
	c := &Client{
		api:    api,
		ref:    t.ref,
		region: cfg.Region,
		caller: kms.Caller{Backend: Scheme, Options: base},
		log:    base.Logger,
	}
	return c, nil
}

// String names the key, never a credential.
func (c *Client) String() string { return Scheme + ":///" + c.ref.id }

// LogValue logs the client as its key reference.
func (c *Client) LogValue() slog.Value { return slog.StringValue(c.String()) }

// EncryptionContext is the KMS encryption context keyshift sends for aad:
// nil for an empty aad, {ContextKeyText: aad} when aad is printable ASCII,
// else {ContextKeyBase64: unpadded base64url of aad}. It is a pure function
// of aad, so IAM policies and CloudTrail queries can be written against it.
func EncryptionContext(aad []byte) map[string]string {
	if len(aad) == 0 {
		return nil
	}
	for _, b := range aad {
		if b < 0x20 || b > 0x7e {
			return map[string]string{ContextKeyBase64: base64.RawURLEncoding.EncodeToString(aad)}
		}
	}
	return map[string]string{ContextKeyText: string(aad)}
}

// ParseKEKVersion splits a KEKVersion written by this package into the key
// ARN and the key material ID ("" when KMS reported none).
func ParseKEKVersion(v string) (keyARN, keyMaterialID string) {
	keyARN, keyMaterialID, _ = strings.Cut(v, "#")
	return keyARN, keyMaterialID
}

func kekVersion(arn string, material *string) string {
	if material != nil && *material != "" {
		return arn + "#" + *material
	}
	return arn
}

// checkInput refuses inputs KMS would refuse, before any call.
func checkInput(op, what string, n, max int) error {
	if n < 1 || n > max {
		return fmt.Errorf("aws-kms: %s: %s must be 1 to %d bytes, got %d", op, what, max, n)
	}
	return nil
}

func checkAAD(op string, aad []byte) error {
	if len(aad) > maxAAD {
		return fmt.Errorf("aws-kms: %s: aad must be at most %d bytes, got %d", op, maxAAD, len(aad))
	}
	return nil
}

// Wrap encrypts dek under the key's current material with KMS Encrypt.
func (c *Client) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	if err := checkInput(opEncrypt, "data key", len(dek), maxPlaintext); err != nil {
		return kms.WrappedKey{}, err
	}
	if err := checkAAD(opEncrypt, aad); err != nil {
		return kms.WrappedKey{}, err
	}
	// Encrypt does not report the key material it used: read the current
	// material first, so a rotation in between makes the label lag.
	var material *string
	var describedARN string
	md, err := c.describe(ctx, nil)
	switch {
	case err == nil:
		material, describedARN = md.CurrentKeyMaterialId, aws.ToString(md.Arn)
	case isCode(err, "AccessDeniedException"):
		c.log.Warn("aws-kms: DescribeKey denied; KEK versions will name the key without its key material, so rotations go unnoticed (grant kms:DescribeKey)")
	default:
		return kms.WrappedKey{}, err
	}
	var out *awskms.EncryptOutput
	err = c.call(ctx, opEncrypt, c.ref.id, nil, func(ctx context.Context) error {
		var err error
		out, err = c.api.Encrypt(ctx, &awskms.EncryptInput{
			KeyId:             aws.String(c.ref.id),
			Plaintext:         dek,
			EncryptionContext: EncryptionContext(aad),
		})
		return err
	})
	if err != nil {
		return kms.WrappedKey{}, err
	}
	arn, err := c.answeredKey(opEncrypt, out.KeyId)
	if err != nil {
		return kms.WrappedKey{}, err
	}
	if len(out.CiphertextBlob) == 0 {
		return kms.WrappedKey{}, c.badAnswer(opEncrypt, "no ciphertext")
	}
	if arn != describedARN { // the alias moved in between
		material = nil
	}
	return kms.WrappedKey{Ciphertext: out.CiphertextBlob, KEKVersion: kekVersion(arn, material)}, nil
}

// Unwrap decrypts a key wrapped by Wrap, GenerateDataKey or Rewrap, under
// any key material of the key, with KMS Decrypt.
func (c *Client) Unwrap(ctx context.Context, wrapped kms.WrappedKey, aad []byte) ([]byte, error) {
	if err := checkInput(opDecrypt, "wrapped key", len(wrapped.Ciphertext), maxCiphertext); err != nil {
		return nil, err
	}
	if err := checkAAD(opDecrypt, aad); err != nil {
		return nil, err
	}
	key := c.sourceKey(ctx, wrapped.KEKVersion)
	var out *awskms.DecryptOutput
	err := c.call(ctx, opDecrypt, key, nil, func(ctx context.Context) error {
		var err error
		out, err = c.api.Decrypt(ctx, &awskms.DecryptInput{
			KeyId:             aws.String(key),
			CiphertextBlob:    wrapped.Ciphertext,
			EncryptionContext: EncryptionContext(aad),
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(out.Plaintext) == 0 {
		return nil, c.badAnswer(opDecrypt, "no plaintext")
	}
	c.learn(aws.ToString(out.KeyId))
	return out.Plaintext, nil
}

// GenerateDataKey asks KMS for a fresh 256-bit data key, returned in
// plaintext and wrapped. It implements kms.DataKeyGenerator.
func (c *Client) GenerateDataKey(ctx context.Context, aad []byte) ([]byte, kms.WrappedKey, error) {
	if err := checkAAD(opGenerateDataKey, aad); err != nil {
		return nil, kms.WrappedKey{}, err
	}
	var out *awskms.GenerateDataKeyOutput
	err := c.call(ctx, opGenerateDataKey, c.ref.id, nil, func(ctx context.Context) error {
		var err error
		out, err = c.api.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{
			KeyId:             aws.String(c.ref.id),
			KeySpec:           types.DataKeySpecAes256,
			EncryptionContext: EncryptionContext(aad),
		})
		return err
	})
	if err != nil {
		return nil, kms.WrappedKey{}, err
	}
	if len(out.Plaintext) != dataKeySize || len(out.CiphertextBlob) == 0 {
		n := len(out.Plaintext)
		clear(out.Plaintext)
		return nil, kms.WrappedKey{}, c.badAnswer(opGenerateDataKey, fmt.Sprintf("a %d-byte data key, want %d, or no ciphertext", n, dataKeySize))
	}
	arn, err := c.answeredKey(opGenerateDataKey, out.KeyId)
	if err != nil {
		clear(out.Plaintext)
		return nil, kms.WrappedKey{}, err
	}
	material := out.KeyMaterialId
	if material == nil {
		material = c.materialAfter(ctx, arn)
	}
	return out.Plaintext, kms.WrappedKey{Ciphertext: out.CiphertextBlob, KEKVersion: kekVersion(arn, material)}, nil
}

// Rewrap re-encrypts a wrapped key under the key's current material (or,
// after an alias moved, under the key the alias names now) with KMS
// ReEncrypt, so the data key never leaves KMS. aad stays bound.
func (c *Client) Rewrap(ctx context.Context, wrapped kms.WrappedKey, aad []byte) (kms.WrappedKey, error) {
	if err := checkInput(opReEncrypt, "wrapped key", len(wrapped.Ciphertext), maxCiphertext); err != nil {
		return kms.WrappedKey{}, err
	}
	if err := checkAAD(opReEncrypt, aad); err != nil {
		return kms.WrappedKey{}, err
	}
	src := c.sourceKey(ctx, wrapped.KEKVersion)
	ec := EncryptionContext(aad)
	var out *awskms.ReEncryptOutput
	err := c.call(ctx, opReEncrypt, src, nil, func(ctx context.Context) error {
		var err error
		out, err = c.api.ReEncrypt(ctx, &awskms.ReEncryptInput{
			CiphertextBlob:               wrapped.Ciphertext,
			SourceKeyId:                  aws.String(src),
			SourceEncryptionContext:      ec,
			DestinationKeyId:             aws.String(c.ref.id),
			DestinationEncryptionContext: ec,
		})
		return err
	})
	if err != nil {
		return kms.WrappedKey{}, err
	}
	arn, err := c.answeredKey(opReEncrypt, out.KeyId)
	if err != nil {
		return kms.WrappedKey{}, err
	}
	if len(out.CiphertextBlob) == 0 {
		return kms.WrappedKey{}, c.badAnswer(opReEncrypt, "no ciphertext")
	}
	material := out.DestinationKeyMaterialId
	if material == nil {
		material = c.materialAfter(ctx, arn)
	}
	return kms.WrappedKey{Ciphertext: out.CiphertextBlob, KEKVersion: kekVersion(arn, material)}, nil
}

// PrimaryKEKVersion reports the version Wrap would label a key with now:
// the ARN of the key the URI resolves to, and its current key material ID
// when KMS reports one (see the package documentation). A key that is not
// enabled, or not a symmetric encryption key, is an error wrapping
// kms.ErrUserInduced. It implements kms.KEKStatus.
func (c *Client) PrimaryKEKVersion(ctx context.Context) (string, error) {
	md, err := c.describe(ctx, nil)
	if err != nil {
		return "", err
	}
	if err := c.checkUsable(md); err != nil {
		return "", err
	}
	return kekVersion(aws.ToString(md.Arn), md.CurrentKeyMaterialId), nil
}

// RotateNow starts an on-demand rotation of the key (KMS RotateKeyOnDemand).
// KMS rotates asynchronously; PrimaryKEKVersion reports the new key material
// once it is current. KMS caps on-demand rotations per key, so a call is
// retried only when it surely did not reach KMS (throttled, connection
// refused). An endpoint without the API (local-kms) gives ErrNotSupported.
func (c *Client) RotateNow(ctx context.Context) error {
	arn, err := c.keyARN(ctx)
	if err != nil {
		return err
	}
	err = c.call(ctx, opRotate, arn, retryableNotSent, func(ctx context.Context) error {
		_, err := c.api.RotateKeyOnDemand(ctx, &awskms.RotateKeyOnDemandInput{KeyId: aws.String(arn)})
		return err
	})
	if err != nil {
		return err
	}
	c.log.Info("aws-kms: on-demand rotation started", slog.String("key_arn", arn))
	return nil
}

// RotationStatus is the key's rotation schedule as KMS reports it.
type RotationStatus struct {
	// Automatic is true when KMS rotates the key on a schedule.
	Automatic bool
	// Period is the automatic rotation period, or 0 when KMS did not say.
	Period time.Duration
	// Next is the next automatic rotation, or zero when KMS did not say.
	Next time.Time
	// OnDemandStarted is when an on-demand rotation in progress started, or zero.
	OnDemandStarted time.Time
}

// RotationStatus reads the key's rotation schedule (KMS GetKeyRotationStatus).
func (c *Client) RotationStatus(ctx context.Context) (RotationStatus, error) {
	arn, err := c.keyARN(ctx)
	if err != nil {
		return RotationStatus{}, err
	}
	var out *awskms.GetKeyRotationStatusOutput
	err = c.call(ctx, opRotationStatus, arn, nil, func(ctx context.Context) error {
		var err error
		out, err = c.api.GetKeyRotationStatus(ctx, &awskms.GetKeyRotationStatusInput{KeyId: aws.String(arn)})
		return err
	})
	if err != nil {
		return RotationStatus{}, err
	}
	s := RotationStatus{Automatic: out.KeyRotationEnabled}
	if out.RotationPeriodInDays != nil {
		s.Period = time.Duration(*out.RotationPeriodInDays) * 24 * time.Hour
	}
	if out.NextRotationDate != nil {
		s.Next = *out.NextRotationDate
	}
	if out.OnDemandRotationStartDate != nil {
		s.OnDemandStarted = *out.OnDemandRotationStartDate
	}
	return s, nil
}

// describe runs DescribeKey on the URI's key and learns its home.
func (c *Client) describe(ctx context.Context, retryable func(*Error) bool) (*types.KeyMetadata, error) {
	var out *awskms.DescribeKeyOutput
	err := c.call(ctx, opDescribe, c.ref.id, retryable, func(ctx context.Context) error {
		var err error
		out, err = c.api.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(c.ref.id)})
		return err
	})
	if err != nil {
		return nil, err
	}
	if out.KeyMetadata == nil {
		return nil, c.badAnswer(opDescribe, "no key metadata")
	}
	if _, err := c.answeredKey(opDescribe, out.KeyMetadata.Arn); err != nil {
		return nil, err
	}
	return out.KeyMetadata, nil
}

// checkUsable refuses a key that cannot wrap keys now.
func (c *Client) checkUsable(md *types.KeyMetadata) error {
	arn := aws.ToString(md.Arn)
	fail := func(kind error, detail string) error {
		return &Error{Op: opDescribe, Key: c.ref.id, Detail: detail, Kind: kind}
	}
	switch md.KeyState {
	case types.KeyStateEnabled:
	case types.KeyStateCreating, types.KeyStateUpdating:
		return fail(kms.ErrUnavailable, fmt.Sprintf("key %s is %s; try again shortly", arn, md.KeyState))
	case types.KeyStateDisabled:
		return fail(kms.ErrUserInduced, fmt.Sprintf("key %s is disabled: enable it (aws kms enable-key) or point the URI at an enabled key", arn))
	default:
		return fail(kms.ErrUserInduced, fmt.Sprintf("key %s is %s, so it cannot wrap or unwrap keys: see aws kms describe-key", arn, md.KeyState))
	}
	if md.KeyUsage != "" && md.KeyUsage != types.KeyUsageTypeEncryptDecrypt {
		return fail(kms.ErrUserInduced, fmt.Sprintf("key %s has key usage %s: use a SYMMETRIC_DEFAULT key with key usage ENCRYPT_DECRYPT", arn, md.KeyUsage))
	}
	if md.KeySpec != "" && md.KeySpec != types.KeySpecSymmetricDefault {
		return fail(kms.ErrUserInduced, fmt.Sprintf("key %s has key spec %s: use a SYMMETRIC_DEFAULT key", arn, md.KeySpec))
	}
	return nil
}

// keyARN returns the ARN of the key the URI resolves to, for the calls that
// take no alias.
func (c *Client) keyARN(ctx context.Context) (string, error) {
	if !c.ref.alias && c.ref.home.known() {
		return c.ref.id, nil
	}
	md, err := c.describe(ctx, nil)
	if err != nil {
		return "", err
	}
	return aws.ToString(md.Arn), nil
}

// sourceKey picks the KeyId for Decrypt and ReEncrypt: the key named in
// kekVersion when it lives in the same partition, region and account as
// the URI's key, else the URI's key.
func (c *Client) sourceKey(ctx context.Context, kekVersion string) string {
	arn, _ := ParseKEKVersion(kekVersion)
	if arn == "" || arn == c.ref.id {
		return c.ref.id
	}
	h, ok := parseKeyARN(arn)
	if !ok {
		return c.ref.id
	}
	mine, ok := c.home(ctx)
	if !ok || mine != h {
		c.log.Debug("aws-kms: KEK version names a key outside the URI key's account and region; asking for the URI's key",
			slog.String("kek_version_key", arn))
		return c.ref.id
	}
	return arn
}

// home is where the URI's key lives: from its ARN, from earlier answers, or
// from one DescribeKey attempt. ok is false when it cannot be learned now.
func (c *Client) home(ctx context.Context) (home, bool) {
	if c.ref.home.known() {
		return c.ref.home, true
	}
	if h := c.learned.Load(); h != nil {
		return *h, true
	}
	if _, err := c.describe(ctx, func(*Error) bool { return false }); err != nil {
		return home{}, false
	}
	if h := c.learned.Load(); h != nil {
		return *h, true
	}
	return home{}, false
}

// learn records the home of the key the URI resolves to from an ARN that
// KMS answered with.
func (c *Client) learn(arn string) {
	if c.ref.home.known() || arn == "" {
		return
	}
	if h, ok := parseKeyARN(arn); ok {
		c.learned.Store(&h)
	}
}

// answeredKey checks the key ARN a KMS answer names and learns from it.
func (c *Client) answeredKey(op string, keyID *string) (string, error) {
	arn := aws.ToString(keyID)
	if _, ok := parseKeyARN(arn); !ok {
		return "", c.badAnswer(op, fmt.Sprintf("key ID %q that is not a key ARN", arn))
	}
	c.learn(arn)
	return arn, nil
}

// materialAfter reads the current key material ID of arn, for answers that
// did not carry one. It makes one attempt; on failure the label names the
// key alone.
func (c *Client) materialAfter(ctx context.Context, arn string) *string {
	md, err := c.describe(ctx, func(*Error) bool { return false })
	if err != nil {
		c.log.Debug("aws-kms: cannot read the current key material; KEK version names the key alone",
			slog.String("reason", kms.Reason(err)))
		return nil
	}
	if aws.ToString(md.Arn) != arn {
		return nil
	}
	return md.CurrentKeyMaterialId
}

func (c *Client) badAnswer(op, what string) error {
	return &Error{Op: op, Key: c.ref.id, Detail: "KMS answered with " + what, Kind: kms.ErrUnavailable}
}

// isCode reports whether err is an *Error with the AWS error code code.
func isCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
