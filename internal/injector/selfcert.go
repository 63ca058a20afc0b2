package injector

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/keyshift/keyshift/internal/selfcert"
)

// Defaults of the self-managed serving certificate (--cert-mode=self).
const (
	// DefaultTLSSecret is the Secret, in the injector's namespace, that
	// holds the CA and the serving certificate.
	DefaultTLSSecret = "keyshift-injector-tls"
	// DefaultService is the injector's Service; the serving certificate
	// names SERVICE.NAMESPACE.svc and SERVICE.NAMESPACE.svc.cluster.local.
	DefaultService = "keyshift-injector"
	// DefaultWebhookConfig is the MutatingWebhookConfiguration whose
	// caBundle the injector keeps in step with its CA
	// (manifests/injector/webhook.yaml).
	DefaultWebhookConfig = "keyshift-injector"
	// DefaultCAValidity is how long a CA lives. A new CA is made at two
	// thirds of that, while the old one stays trusted until it expires.
	DefaultCAValidity = selfcert.DefaultCAValidity
	// DefaultCertValidity is how long a serving certificate lives; it is
	// renewed at two thirds of that (every 60 days by default).
	DefaultCertValidity = selfcert.DefaultCertValidity
	// DefaultCAOverlap is how long a new CA sits in the caBundle before it
	// signs the serving certificate, so every API server trusts it first.
	DefaultCAOverlap = selfcert.DefaultCAOverlap
	// DefaultStartTimeout bounds how long Start retries reaching the API
	// server for the Secret before it gives up.
	DefaultStartTimeout = selfcert.DefaultStartTimeout
)

// Keys and labels of the self-managed TLS Secret. It is of type
// kubernetes.io/tls, so tls.crt and tls.key are the serving pair; ca.crt
// is the bundle to trust (every live CA) and ca.key the key of the CA that
// signs.
const (
	CABundleKey = selfcert.CABundleKey
	CAKeyKey    = selfcert.CAKeyKey
	// ManagedByLabel marks the Secret as the injector's: it never takes
	// over a Secret without ManagedByLabel=ManagedByValue.
	ManagedByLabel = selfcert.ManagedByLabel
	ManagedByValue = "keyshift-injector"
)

// fieldManager names the injector's writes in managedFields.
const fieldManager = ManagedByValue

// SecretClient is what the self-managed certificate needs of client-go's
// SecretInterface, for the injector's namespace.
type SecretClient = selfcert.SecretClient

// WebhookClient is what the self-managed certificate needs of client-go's
// MutatingWebhookConfigurationInterface.
type WebhookClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*admissionregistrationv1.MutatingWebhookConfiguration, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*admissionregistrationv1.MutatingWebhookConfiguration, error)
}

// SelfSignedConfig makes the injector its own certificate authority, for
// clusters without cert-manager. The injector keeps a CA and a serving
// certificate in one Secret, serves whatever that Secret holds (every
// replica rereads it, so they all follow a renewal), and writes the CA
// bundle into the webhook configuration's caBundle. The CA itself, its
// renewals and the replicas' coordination are package selfcert's (see
// selfcert.Config); the webhook configuration is the injector's.
type SelfSignedConfig struct {
	// Secrets reads and writes Secrets in Namespace. Required.
	Secrets SecretClient
	// Webhooks reads and patches WebhookConfig. Required.
	Webhooks WebhookClient
	// Namespace is the injector's (and its Service's and the Secret's)
	// namespace. Required.
	Namespace string
	// SecretName defaults to DefaultTLSSecret.
	SecretName string
	// Service defaults to DefaultService.
	Service string
	// WebhookConfig defaults to DefaultWebhookConfig.
	WebhookConfig string
	// CAValidity, CertValidity and CAOverlap default to DefaultCAValidity,
	// DefaultCertValidity and DefaultCAOverlap. A certificate may live at
	// most half as long as the CA, and the overlap may be at most a third
	// of a certificate's life.
	CAValidity, CertValidity, CAOverlap time.Duration
	// StartTimeout defaults to DefaultStartTimeout.
	StartTimeout time.Duration
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
}

// Validate reports whether c's settings can be used, leaving aside the
// clients, so bad flags stop the injector before it reaches for the API
// server.
func (c SelfSignedConfig) Validate() error {
	_, err := c.settings()
	return err
}

// settings is c with the injector's names defaulted and every setting
// checked, or an error wrapping ErrConfig.
func (c SelfSignedConfig) settings() (SelfSignedConfig, error) {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&c.SecretName, DefaultTLSSecret)
	def(&c.Service, DefaultService)
	def(&c.WebhookConfig, DefaultWebhookConfig)
	if len(validation.IsDNS1123Label(c.Service)) != 0 {
		return c, fmt.Errorf("%w: self-managed certificate: Service name %q: write a DNS-1123 label such as keyshift-injector", ErrConfig, c.Service)
	}
	if len(validation.IsDNS1123Subdomain(c.WebhookConfig)) != 0 {
		return c, fmt.Errorf("%w: self-managed certificate: webhook configuration name %q: write a Kubernetes object name such as keyshift-injector", ErrConfig, c.WebhookConfig)
	}
	return c, selfError(c.certConfig(nil, nil).Validate())
}

// certConfig is the selfcert.Config of c, publishing through publish and
// counting into m.
func (c SelfSignedConfig) certConfig(publish func(context.Context, []byte) error, m *Metrics) selfcert.Config {
	svc := c.Service + "." + c.Namespace + ".svc"
	return selfcert.Config{
		Secrets:    c.Secrets,
		Namespace:  c.Namespace,
		SecretName: c.SecretName,
		Owner:      ManagedByValue,
		// The Service's names, as the API server calls it, first.
		DNSNames:     []string{svc, svc + ".cluster.local"},
		CAValidity:   c.CAValidity,
		CertValidity: c.CertValidity,
		CAOverlap:    c.CAOverlap,
		StartTimeout: c.StartTimeout,
		Now:          c.Now,
		PublishCA:    publish,
		Hooks:        selfcert.Hooks{SecretWrite: m.secretWrite, Loaded: m.reloaded},
		Flags: selfcert.Flags{
			Namespace:  "POD_NAMESPACE from the downward API, or --namespace",
			SecretName: "--tls-secret", CAValidity: "--ca-validity", CertValidity: "--cert-validity",
			Otherwise: "serve it as it is with --cert-mode=files",
		},
	}
}

// selfError reports an error of package selfcert as the injector's: a
// *selfcert.ConfigError becomes an ErrConfig of the same problem.
func selfError(err error) error {
	if err == nil {
		return nil
	}
	if ce := (*selfcert.ConfigError)(nil); errors.As(err, &ce) {
		return fmt.Errorf("%w: self-managed certificate: %s", ErrConfig, ce.Problem)
	}
	return fmt.Errorf("injector: self-managed certificate: %w", err)
}

// selfCert serves the certificate of the self-managed Secret and keeps the
// Secret and the webhook's caBundle up to date.
type selfCert struct {
	cert *selfcert.Cert
}

// newSelfCert gets or creates the Secret and loads its certificate,
// retrying for cfg.StartTimeout while the API server cannot be reached or
// refuses (its RBAC may be applied just after the Deployment). A webhook
// configuration it cannot patch yet does not stop it: run retries.
func newSelfCert(ctx context.Context, cfg SelfSignedConfig, poll time.Duration, log *slog.Logger, m *Metrics) (*selfCert, error) {
	if cfg.Secrets == nil || cfg.Webhooks == nil {
		return nil, fmt.Errorf("%w: self-managed certificate: no Kubernetes client", ErrConfig)
	}
	cfg, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	w := &webhookCABundle{
		client: cfg.Webhooks, name: cfg.WebhookConfig, metrics: m,
		log: log.With("secret", cfg.Namespace+"/"+cfg.SecretName),
	}
	cert, err := selfcert.Start(ctx, cfg.certConfig(w.ensure, m), poll, log)
	if err != nil {
		return nil, selfError(err)
	}
	return &selfCert{cert: cert}, nil
}

// sync is one pass of run, now.
func (s *selfCert) sync(ctx context.Context) error { return selfError(s.cert.Sync(ctx)) }

// GetCertificate is the tls.Config hook: it never calls the API server.
func (s *selfCert) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.GetCertificate(hello)
}

// run rereads the Secret, renews what is due and checks the caBundle every
// poll interval (sooner after a failure) until ctx ends.
func (s *selfCert) run(ctx context.Context) { s.cert.Run(ctx) }

// notReady holds readiness back until the caBundle was set once, so a
// rollout is done only when the webhook works. Later failures do not make
// the replica unready: the caBundle set before still verifies it.
func (s *selfCert) notReady() string {
	if s.cert.NotReady() == "" {
		return ""
	}
	return "the webhook caBundle is not set yet (see the injector's log)"
}

// webhookCABundle publishes the CA bundle into the caBundle of every
// webhook of one MutatingWebhookConfiguration.
type webhookCABundle struct {
	client  WebhookClient
	name    string
	metrics *Metrics
	log     *slog.Logger
}

// webhookCAPatch is a strategic merge patch of a webhook configuration:
// webhooks merge by name, so only the listed webhooks' caBundle changes.
type webhookCAPatch struct {
	Webhooks []webhookCA `json:"webhooks"`
}

type webhookCA struct {
	Name         string `json:"name"`
	ClientConfig struct {
		CABundle []byte `json:"caBundle"`
	} `json:"clientConfig"`
}

// ensure sets the caBundle of every webhook of the configuration to
// bundle, when one differs (a new CA, or someone changed it).
func (w *webhookCABundle) ensure(ctx context.Context, bundle []byte) error {
	mwc, err := w.client.Get(ctx, w.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("injector: MutatingWebhookConfiguration %s not found (apply manifests/, or set --webhook-config to its name): %w", w.name, err)
	}
	if err != nil {
		return fmt.Errorf("injector: get MutatingWebhookConfiguration %s: %w", w.name, err)
	}
	if len(mwc.Webhooks) == 0 {
		return fmt.Errorf("injector: MutatingWebhookConfiguration %s has no webhooks", w.name)
	}
	var patch webhookCAPatch
	var stale []string
	for _, h := range mwc.Webhooks {
		if bytes.Equal(h.ClientConfig.CABundle, bundle) {
			continue
		}
		p := webhookCA{Name: h.Name}
		p.ClientConfig.CABundle = bundle
		patch.Webhooks = append(patch.Webhooks, p)
		stale = append(stale, h.Name)
	}
	if len(stale) == 0 {
		return nil
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return fmt.Errorf("injector: caBundle patch: %w", err)
	}
	if _, err := w.client.Patch(ctx, w.name, types.StrategicMergePatchType, data, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		w.metrics.caBundlePatched(false)
		return fmt.Errorf("injector: patch the caBundle of MutatingWebhookConfiguration %s: %w", w.name, err)
	}
	w.metrics.caBundlePatched(true)
	w.log.Info("set the webhook caBundle", "webhook_config", w.name, "webhooks", stale, "cas", countCerts(bundle))
	return nil
}

// countCerts is the number of certificates in a PEM bundle.
func countCerts(bundle []byte) int {
	n := 0
	for {
		var b *pem.Block
		if b, bundle = pem.Decode(bundle); b == nil {
			return n
		}
		if b.Type == "CERTIFICATE" {
			n++
		}
	}
}
