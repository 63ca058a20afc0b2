// Package vault is keyshift's KMS backend for the HashiCorp Vault Transit
// secrets engine (tested against Vault 1.14.1; OpenBao serves the same API).
// The KEK is a Transit key that never leaves Vault; Wrap and Unwrap call
// transit/encrypt and transit/decrypt, and a KEK rotation is
// transit/keys/NAME/rotate.
//
// # URI
//
//	vault-transit://MOUNT/KEY            a Transit engine mounted at MOUNT (one path segment)
//	vault-transit:///KEY                 the engine at the default mount "transit"
//	vault-transit:///A/B/MOUNT/KEY       a mount path with slashes: empty host, the last
//	                                     segment is the key, the segments before it the mount
//
// The Vault address comes from VAULT_ADDR (and TLS settings from VAULT_CACERT,
// VAULT_CLIENT_CERT, ... as for the vault CLI), never from the URI, so a keyset
// document stays valid when Vault moves. Query parameters, all optional:
//
//	namespace=NS         Vault Enterprise/OpenBao namespace (default: VAULT_NAMESPACE)
//	role=ROLE            log in with Kubernetes auth as ROLE (default: token auth)
//	auth_mount=PATH      Kubernetes auth mount (default "kubernetes")
//	jwt_file=PATH        service-account token (default /var/run/secrets/kubernetes.io/serviceaccount/token)
//	token_file=PATH      read the Vault token from PATH (re-read when Vault refuses it)
//	aad=MODE             how aad is bound: auto (default), context or associated_data
//
// Token auth takes VAULT_TOKEN, else token_file, else ~/.vault-token.
//
// # Binding aad
//
// Transit offers two ways to bind caller data to a ciphertext, and which one
// works depends on the key:
//
//   - A key created with derived=true takes a "context" on encrypt, decrypt,
//     datakey and rewrap, so every operation runs inside Vault. This is the
//     recommended set-up (vault write transit/keys/NAME derived=true). A
//     derived key refuses an empty context, so keyshift sends
//     "keyshift:" || aad as the context: never empty, and distinct aads stay
//     distinct.
//   - A plain AEAD key (aes256-gcm96, aes128-gcm96, chacha20-poly1305) takes
//     "associated_data" (Vault 1.13+), but only on encrypt and decrypt. With a
//     non-empty aad, GenerateDataKey then draws the DEK from crypto/rand and
//     wraps it, and Rewrap unwraps and wraps again in this process (the DEK is
//     zeroed afterwards). With an empty aad the server-side endpoints are used.
//
// In auto mode (the default) the client reads transit/keys/NAME once and picks
// the mode from the key's "derived" flag and type; give aad=context or
// aad=associated_data when the token may not read the key. Auto mode also
// keeps Wrap from creating a missing key by Transit's encrypt upsert.
//
// # Errors
//
// Every error starts with "vault-transit: " and wraps one of kms.ErrUserInduced
// (403, missing key or mount, KEK version below min_decryption_version, key
// type unable to bind aad), kms.ErrThrottled (429), kms.ErrUnavailable (5xx,
// sealed, connection refused, timeout) or kms.ErrCorrupt (the ciphertext or aad
// does not verify). Throttled and unavailable calls are retried with capped
// exponential backoff and jitter. Tokens, keys, plaintext and ciphertext are
// never logged nor put in errors.
package vault

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keyshift/keyshift/internal/kms"
)

// Scheme is the URI scheme this backend serves.
const Scheme = "vault-transit"

// DefaultMount is the Transit mount used when a URI or New names none.
const DefaultMount = "transit"

// DefaultServiceAccountTokenFile is where Kubernetes mounts a pod's
// service-account token.
const DefaultServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// DefaultKubernetesAuthMount is the usual mount of Vault's Kubernetes auth method.
const DefaultKubernetesAuthMount = "kubernetes"

var (
	_ kms.Wrapper          = (*Client)(nil)
	_ kms.DataKeyGenerator = (*Client)(nil)
	_ kms.KEKStatus        = (*Client)(nil)
	_ kms.Rewrapper        = (*Client)(nil)
	_ slog.LogValuer       = (*Client)(nil)
	_ fmt.Stringer         = (*Client)(nil)
	_ kms.OpenFunc         = Open
)

// Binding says how Wrap and Unwrap bind aad to a ciphertext; see the package
// documentation.
type Binding string

const (
	// BindAuto reads the key once and picks BindContext for derived keys and
	// BindAssociatedData for other AEAD keys.
	BindAuto Binding = "auto"
	// BindContext sends "keyshift:" || aad as Transit's key-derivation context.
	// The key must have been created with derived=true.
	BindContext Binding = "context"
	// BindAssociatedData sends aad as Transit's associated_data. The key must be
	// an AEAD type (aes256-gcm96, aes128-gcm96, chacha20-poly1305).
	BindAssociatedData Binding = "associated_data"
)

// KubernetesAuth configures login with Vault's Kubernetes auth method.
type KubernetesAuth struct {
	// Role is the Vault role to log in as. Required.
	Role string
	// TokenFile holds the pod's service-account JWT; it is read at every
	// login, so a rotated projected token is picked up.
	// Default DefaultServiceAccountTokenFile.
	TokenFile string
	// Mount is the auth method's mount path. Default DefaultKubernetesAuthMount.
	Mount string
}

// Option configures New.
type Option func(*config) error

type config struct {
	address   string
	namespace string
	mount     string
	token     string
	tokenFile string
	k8s       *KubernetesAuth
	binding   Binding
	kms.Options
}

// WithAddress sets the Vault address (default VAULT_ADDR, else https://127.0.0.1:8200).
func WithAddress(addr string) Option {
	return func(c *config) error {
		u, err := url.Parse(addr)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("vault-transit: address %q: write http(s)://host:port: %w", addr, kms.ErrBadURI)
		}
		c.address = addr
		return nil
	}
}

// WithNamespace sets the Vault namespace (default VAULT_NAMESPACE).
func WithNamespace(ns string) Option {
	return func(c *config) error { c.namespace = strings.Trim(ns, "/"); return nil }
}

// WithMount sets the Transit mount path, which may contain slashes (default "transit").
func WithMount(mount string) Option {
	return func(c *config) error {
		m := strings.Trim(mount, "/")
		if err := checkMount(m); err != nil {
			return err
		}
		c.mount = m
		return nil
	}
}

// WithToken authenticates with a fixed Vault token. A renewable token is
// renewed before it expires.
func WithToken(token string) Option {
	return func(c *config) error { c.token = token; return nil }
}

// WithTokenFile authenticates with the token in path (as written by Vault
// Agent). The file is read at the first call and again whenever Vault refuses
// the token or it can no longer be renewed.
func WithTokenFile(path string) Option {
	return func(c *config) error { c.tokenFile = path; return nil }
}

// WithKubernetesAuth logs in with Vault's Kubernetes auth method, renews the
// resulting token and logs in again when renewal ends or Vault refuses it.
func WithKubernetesAuth(a KubernetesAuth) Option {
	return func(c *config) error {
		if a.Role == "" {
			return fmt.Errorf("vault-transit: Kubernetes auth needs a role: %w", kms.ErrBadURI)
		}
		if a.TokenFile == "" {
			a.TokenFile = DefaultServiceAccountTokenFile
		}
		a.Mount = strings.Trim(a.Mount, "/")
		if a.Mount == "" {
			a.Mount = DefaultKubernetesAuthMount
		}
		if err := checkMount(a.Mount); err != nil {
			return err
		}
		c.k8s = &a
		return nil
	}
}

// WithTimeout bounds each HTTP attempt (default kms.DefaultTimeout). The
// caller's context bounds the call as a whole, retries included. Unlike a
// zero kms.Options field, an explicit zero is refused.
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("vault-transit: timeout %v must be positive: %w", d, kms.ErrBadURI)
		}
		c.Timeout = d
		return nil
	}
}

// WithRetry sets the retry policy for throttled and unavailable calls
// (default kms.DefaultRetryPolicy). Unlike a zero kms.Options field, a
// policy without attempts is refused.
func WithRetry(p RetryPolicy) Option {
	return func(c *config) error {
		if !p.Valid() {
			return fmt.Errorf("vault-transit: retry policy needs MaxAttempts >= 1 and 0 <= BaseDelay <= MaxDelay: %w", kms.ErrBadURI)
		}
		c.Retry = p
		return nil
	}
}

// WithLogger sets the logger (default: discard); nil keeps the current one.
// It receives key names, versions, durations and error kinds, never secrets.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error { c.Logger = cmp.Or(l, c.Logger); return nil }
}

// WithBinding chooses how aad is bound (default BindAuto).
func WithBinding(b Binding) Option {
	return func(c *config) error {
		switch b {
		case BindAuto, BindContext, BindAssociatedData:
			c.binding = b
			return nil
		case "":
			c.binding = BindAuto
			return nil
		}
		return fmt.Errorf("vault-transit: aad binding %q: write auto, context or associated_data: %w", b, kms.ErrBadURI)
	}
}

// Client wraps keys with one Transit key. It is safe for concurrent use.
// Close stops token renewal.
type Client struct {
	api    *vaultapi.Client
	mount  string
	key    string
	caller kms.Caller // runs every Vault request
	log    *slog.Logger
	auth   *authState

	bindMu  sync.Mutex
	binding Binding // BindContext or BindAssociatedData once resolved
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func checkMount(m string) error {
	if m == "" {
		return fmt.Errorf("vault-transit: empty mount path: %w", kms.ErrBadURI)
	}
	for _, seg := range strings.Split(m, "/") {
		if !namePattern.MatchString(seg) {
			return fmt.Errorf("vault-transit: mount path %q: each segment must match %s: %w", m, namePattern, kms.ErrBadURI)
		}
	}
	return nil
}

// New returns a client for the Transit key named key. It starts from the
// Vault client environment (VAULT_ADDR, VAULT_CACERT, VAULT_NAMESPACE, ...,
// but not VAULT_TOKEN), and opts override it. New makes no network call:
// authentication happens at the first operation, so a Vault outage at start
// does not stop the caller from starting.
func New(key string, opts ...Option) (*Client, error) {
	if !namePattern.MatchString(key) {
		return nil, fmt.Errorf("vault-transit: key name %q must match %s: %w", key, namePattern, kms.ErrBadURI)
	}
	cfg := config{mount: DefaultMount, binding: BindAuto}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	base, err := cfg.Options.WithDefaults(Scheme)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, set := range []bool{cfg.token != "", cfg.tokenFile != "", cfg.k8s != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("vault-transit: give exactly one of a token, a token file or Kubernetes auth (got %d): %w", n, kms.ErrBadURI)
	}

	vc := vaultapi.DefaultConfig()
	if vc.Error != nil {
		return nil, fmt.Errorf("vault-transit: Vault client environment: %v: %w", vc.Error, kms.ErrBadURI)
	}
	if cfg.address != "" {
		vc.Address = cfg.address
	}
	vc.MaxRetries = 0 // kms.Do retries, with its own policy and error sorting
	vc.Timeout = 0    // each attempt gets its own context deadline
	api, err := vaultapi.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault-transit: %v: %w", err, kms.ErrBadURI)
	}
	api.ClearToken() // NewClient takes VAULT_TOKEN implicitly; credentials come only from options
	if cfg.namespace != "" {
		api.SetNamespace(cfg.namespace)
	}
	base.Logger = base.Logger.With(slog.String("kms", Scheme), slog.String("mount", cfg.mount), slog.String("key", key))
	c := &Client{
		api:    api,
		mount:  cfg.mount,
		key:    key,
		caller: kms.Caller{Backend: Scheme, Options: base},
		log:    base.Logger,
	}
	if cfg.binding != BindAuto {
		c.binding = cfg.binding
	}
	c.auth = newAuthState(c, cfg)
	return c, nil
}

// String names the key, never a credential.
func (c *Client) String() string { return Scheme + ":///" + c.mount + "/" + c.key }

// LogValue logs the client as its key name, so a logged Client never shows
// the token it holds.
func (c *Client) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Close stops background token renewal. The client must not be used after.
func (c *Client) Close() error {
	c.auth.stop()
	return nil
}

// Open is the kms.OpenFunc for vault-transit URIs; it logs nowhere. Use
// Opener to pass a logger.
func Open(ctx context.Context, u *url.URL) (kms.Wrapper, error) {
	return Opener(nil)(ctx, u)
}

// Opener returns a kms.OpenFunc for vault-transit URIs whose clients log to
// log, with extra options applied after those from the URI and environment.
func Opener(log *slog.Logger, extra ...Option) kms.OpenFunc {
	return kms.Opener(openURL, WithLogger, log, extra)
}

func openURL(_ context.Context, u *url.URL, opts []Option) (kms.Wrapper, error) {
	key, fromURI, err := parseURI(u, os.Getenv)
	if err != nil {
		return nil, err
	}
	c, err := New(key, append(fromURI, opts...)...)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// parseURI turns a vault-transit URI and the environment into a key name
// and options.
func parseURI(u *url.URL, getenv func(string) string) (string, []Option, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("vault-transit: %q: %s (write vault-transit://MOUNT/KEY or vault-transit:///MOUNT/PATH/KEY): %w",
			u.Redacted(), fmt.Sprintf(format, a...), kms.ErrBadURI)
	}
	if u.Scheme != Scheme {
		return "", nil, bad("scheme is not %s", Scheme)
	}
	if u.User != nil || u.Port() != "" || u.Fragment != "" || u.Opaque != "" {
		return "", nil, bad("no user, port, fragment or opaque part allowed")
	}
	p := strings.Trim(u.Path, "/")
	var mount, key string
	if u.Host != "" {
		mount, key = u.Host, p
		if strings.Contains(key, "/") {
			return "", nil, bad("the host is the whole mount; for a mount path with slashes leave the host empty")
		}
	} else {
		i := strings.LastIndex(p, "/")
		if i < 0 {
			mount, key = DefaultMount, p
		} else {
			mount, key = p[:i], p[i+1:]
		}
	}
	if key == "" {
		return "", nil, bad("no key name")
	}
	opts := []Option{WithMount(mount)}
	q := u.Query()
	known := map[string]bool{"namespace": true, "role": true, "auth_mount": true, "jwt_file": true, "token_file": true, "aad": true}
	for k, v := range q {
		if !known[k] {
			return "", nil, bad("unknown parameter %q (known: namespace, role, auth_mount, jwt_file, token_file, aad)", k)
		}
		if len(v) != 1 {
			return "", nil, bad("parameter %q given %d times", k, len(v))
		}
	}
	if ns := q.Get("namespace"); ns != "" {
		opts = append(opts, WithNamespace(ns))
	}
	if a := q.Get("aad"); a != "" {
		opts = append(opts, WithBinding(Binding(a)))
	}
	switch role := q.Get("role"); {
	case role != "":
		if q.Has("token_file") {
			return "", nil, bad("role (Kubernetes auth) and token_file exclude each other")
		}
		opts = append(opts, WithKubernetesAuth(KubernetesAuth{Role: role, TokenFile: q.Get("jwt_file"), Mount: q.Get("auth_mount")}))
	case q.Has("auth_mount") || q.Has("jwt_file"):
		return "", nil, bad("auth_mount and jwt_file need role")
	case getenv("VAULT_TOKEN") != "":
		if q.Has("token_file") {
			return "", nil, bad("token_file given while VAULT_TOKEN is set; unset one")
		}
		opts = append(opts, WithToken(getenv("VAULT_TOKEN")))
	case q.Get("token_file") != "":
		opts = append(opts, WithTokenFile(q.Get("token_file")))
	default:
		home := getenv("HOME")
		if home == "" {
			return "", nil, bad("no credentials: set VAULT_TOKEN, token_file=PATH or role=ROLE")
		}
		opts = append(opts, WithTokenFile(filepath.Join(home, ".vault-token")))
	}
	return key, opts, nil
}

// errNotFound marks a 404 with an empty body (the Vault client returns no
// secret and no error for it).
var errNotFound = errors.New("not found")
