package selfcert

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Defaults of a Config.
const (
	// DefaultCAValidity is how long a CA lives. A new CA is made at two
	// thirds of that, while the old one stays trusted until it expires.
	DefaultCAValidity = 365 * 24 * time.Hour
	// DefaultCertValidity is how long a serving certificate lives; it is
	// renewed at two thirds of that (every 60 days by default).
	DefaultCertValidity = 90 * 24 * time.Hour
	// DefaultCAOverlap is how long a new CA sits in the published bundle
	// before it signs the serving certificate, so every client trusts it
	// first.
	DefaultCAOverlap = time.Hour
	// DefaultStartTimeout bounds how long Start retries reaching the API
	// server for the Secret before it gives up.
	DefaultStartTimeout = 30 * time.Second
	// DefaultPoll is how often Run rereads the Secret when Start is given
	// no interval.
	DefaultPoll = time.Minute
)

// Keys and labels of the TLS Secret. It is of type kubernetes.io/tls, so
// tls.crt and tls.key are the serving pair; ca.crt is the bundle to trust
// (every live CA) and ca.key the key of the CA that signs.
const (
	CABundleKey = "ca.crt"
	CAKeyKey    = "ca.key"
	// ManagedByLabel marks the Secret as Config.Owner's: a Secret without
	// ManagedByLabel=Owner is never taken over.
	ManagedByLabel = "app.kubernetes.io/managed-by"
)

// ErrConfig means a Config cannot be used, or its Secret belongs to
// someone else: nothing a retry fixes. Every such error is a
// *ConfigError.
var ErrConfig = errors.New("selfcert: invalid config")

// ConfigError is a Config setting, or a Secret, that cannot be used.
// Problem says what is wrong and what to write instead, without a prefix,
// so a caller can report it under its own name.
type ConfigError struct {
	Problem string
}

// Error is ErrConfig's text and the problem.
func (e *ConfigError) Error() string { return ErrConfig.Error() + ": " + e.Problem }

// Unwrap makes errors.Is(err, ErrConfig) true.
func (e *ConfigError) Unwrap() error { return ErrConfig }

func configErr(format string, args ...any) error {
	return &ConfigError{Problem: fmt.Sprintf(format, args...)}
}

// SecretClient is what a self-managed certificate needs of client-go's
// SecretInterface, for one namespace.
type SecretClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error)
	Create(ctx context.Context, secret *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
	Update(ctx context.Context, secret *corev1.Secret, opts metav1.UpdateOptions) (*corev1.Secret, error)
}

// Config is one self-managed certificate authority and the serving
// certificate it issues, kept in one Secret.
//
// Replicas coordinate through the API server alone: the Secret is made
// with Create (the loser of a race gets AlreadyExists and uses the
// winner's) and changed with Update at the resourceVersion read (the loser
// gets a Conflict, rereads, and finds nothing left to do). A serving
// certificate is renewed at two thirds of its life; a CA too, by adding a
// new CA to the bundle beside the old one, which stays until it expires.
// The new CA signs the next serving certificate only after CAOverlap, so
// the bundle has reached every client first.
type Config struct {
	// Secrets reads and writes Secrets in Namespace. Required.
	Secrets SecretClient
	// Namespace holds the Secret. Required.
	Namespace string
	// SecretName defaults to Owner + "-tls".
	SecretName string
	// Owner names the component that manages the Secret, such as
	// keyshift-injector: the value of ManagedByLabel, the field manager of
	// its writes, and the start of each CA's common name. Required.
	Owner string
	// DNSNames are the names the serving certificate carries, the one
	// clients dial first (it is also the subject's common name), such as
	// SERVICE.NAMESPACE.svc and SERVICE.NAMESPACE.svc.cluster.local.
	// Required.
	DNSNames []string
	// CAValidity, CertValidity and CAOverlap default to DefaultCAValidity,
	// DefaultCertValidity and DefaultCAOverlap. A certificate may live at
	// most half as long as the CA, and the overlap may be at most a third
	// of a certificate's life.
	CAValidity, CertValidity, CAOverlap time.Duration
	// StartTimeout defaults to DefaultStartTimeout.
	StartTimeout time.Duration
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
	// PublishCA puts bundle, every live CA as PEM, wherever clients read
	// it from (a webhook's caBundle, ConfigMaps). It is called after every
	// sync, changed or not, so it should compare before it writes, and
	// repair what someone else changed. Returning nil marks the bundle
	// published: from then on NotReady is "". Required.
	PublishCA func(ctx context.Context, bundle []byte) error
	// Hooks are told what happens, for metrics; each is optional.
	Hooks Hooks
	// Flags names how an operator sets some of these fields, so error
	// messages say what to change.
	Flags Flags
}

// Hooks are optional callbacks; fill only those you need.
type Hooks struct {
	// SecretWrite is called after each write of the Secret with its
	// result: WriteCreated, WriteRenewed, WriteConflict or WriteError.
	SecretWrite func(result string)
	// Loaded is called when a new serving pair from the Secret was loaded
	// (ok, and when it expires) or failed to load (the previous pair stays).
	Loaded func(ok bool, notAfter time.Time)
}

// The results Hooks.SecretWrite reports.
const (
	WriteCreated = "created"
	WriteRenewed = "renewed"
	// WriteConflict: another replica wrote first; the Secret is reread.
	WriteConflict = "conflict"
	WriteError    = "error"
)

func (h Hooks) secretWrite(result string) {
	if h.SecretWrite != nil {
		h.SecretWrite(result)
	}
}

func (h Hooks) loaded(ok bool, notAfter time.Time) {
	if h.Loaded != nil {
		h.Loaded(ok, notAfter)
	}
}

// Flags names how an operator sets some Config fields (a flag, an
// environment variable), for error messages. An empty name falls back to
// the field's name.
type Flags struct {
	// Namespace, such as "POD_NAMESPACE from the downward API, or
	// --namespace".
	Namespace string
	// SecretName, CAValidity and CertValidity, such as "--tls-secret".
	SecretName, CAValidity, CertValidity string
	// Otherwise is a further way out when the Secret exists but is not
	// Owner's, such as "serve it as it is with --cert-mode=files".
	Otherwise string
}

func or(name, field string) string {
	if name == "" {
		return field
	}
	return name
}

// Validate reports whether c's settings can be used, leaving aside
// Secrets and PublishCA, so bad flags stop a program before it reaches for
// the API server.
func (c Config) Validate() error {
	_, err := c.settings()
	return err
}

// withDefaults is c ready for Start, or a *ConfigError.
func (c Config) withDefaults() (Config, error) {
	if c.Secrets == nil {
		return c, configErr("no Kubernetes client for Secrets")
	}
	if c.PublishCA == nil {
		return c, configErr("no PublishCA: say where the CA bundle goes")
	}
	return c.settings()
}

// settings is c with every empty setting defaulted, or a *ConfigError.
func (c Config) settings() (Config, error) {
	if c.Namespace == "" {
		return c, configErr("no namespace (set %s)", or(c.Flags.Namespace, "Namespace"))
	}
	if len(validation.IsDNS1123Label(c.Namespace)) != 0 {
		return c, configErr("namespace %q: write a DNS-1123 label such as keyshift-system", c.Namespace)
	}
	if len(validation.IsDNS1123Label(c.Owner)) != 0 {
		return c, configErr("owner %q: write a DNS-1123 label such as keyshift-injector", c.Owner)
	}
	if c.SecretName == "" {
		c.SecretName = c.Owner + "-tls"
	}
	if len(validation.IsDNS1123Subdomain(c.SecretName)) != 0 {
		return c, configErr("Secret name %q: write a Kubernetes object name such as %s-tls", c.SecretName, c.Owner)
	}
	if len(c.DNSNames) == 0 {
		return c, configErr("no DNS names for the serving certificate; write the Service's, such as %s.%s.svc", c.Owner, c.Namespace)
	}
	for _, n := range c.DNSNames {
		if len(validation.IsDNS1123Subdomain(n)) != 0 {
			return c, configErr("DNS name %q: write a DNS name such as %s.%s.svc", n, c.Owner, c.Namespace)
		}
	}
	c.DNSNames = slices.Clone(c.DNSNames)
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defDur(&c.CAValidity, DefaultCAValidity)
	defDur(&c.CertValidity, DefaultCertValidity)
	defDur(&c.CAOverlap, DefaultCAOverlap)
	defDur(&c.StartTimeout, DefaultStartTimeout)
	if c.Now == nil {
		c.Now = time.Now
	}
	certFlag, caFlag := or(c.Flags.CertValidity, "CertValidity"), or(c.Flags.CAValidity, "CAValidity")
	switch {
	case c.CAValidity < 0 || c.CertValidity < 0 || c.CAOverlap < 0:
		return c, configErr("negative validity; write durations such as 8760h (CA) and 2160h (certificate)")
	case c.CertValidity > c.CAValidity/2:
		return c, configErr("certificate validity %s exceeds half the CA validity %s; write a shorter %s or a longer %s",
			c.CertValidity, c.CAValidity, certFlag, caFlag)
	case c.CAOverlap > c.CertValidity/3:
		return c, configErr("certificate validity %s is under three times the CA overlap %s; write a %s of at least %s",
			c.CertValidity, c.CAOverlap, certFlag, 3*c.CAOverlap)
	}
	return c, nil
}

// notOwned is the error for a Secret of that name without our label.
func (c Config) notOwned() error {
	ways := []string{
		"delete it to let " + c.Owner + " make its own",
		"set " + or(c.Flags.SecretName, "SecretName") + " to another name",
	}
	if c.Flags.Otherwise != "" {
		ways = append(ways, c.Flags.Otherwise)
	}
	ways[len(ways)-1] = "or " + ways[len(ways)-1]
	return configErr("Secret %s/%s exists but is not %s's (no label %s=%s); %s",
		c.Namespace, c.SecretName, c.Owner, ManagedByLabel, c.Owner, strings.Join(ways, ", "))
}
