package injector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
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
	DefaultCAValidity = 365 * 24 * time.Hour
	// DefaultCertValidity is how long a serving certificate lives; it is
	// renewed at two thirds of that (every 60 days by default).
	DefaultCertValidity = 90 * 24 * time.Hour
	// DefaultCAOverlap is how long a new CA sits in the caBundle before it
	// signs the serving certificate, so every API server trusts it first.
	DefaultCAOverlap = time.Hour
	// DefaultStartTimeout bounds how long Start retries reaching the API
	// server for the Secret before it gives up.
	DefaultStartTimeout = 30 * time.Second
)

// Keys and labels of the self-managed TLS Secret. It is of type
// kubernetes.io/tls, so tls.crt and tls.key are the serving pair; ca.crt
// is the bundle to trust (every live CA) and ca.key the key of the CA that
// signs.
const (
	CABundleKey = "ca.crt"
	CAKeyKey    = "ca.key"
	// ManagedByLabel marks the Secret as the injector's: it never takes
	// over a Secret without ManagedByLabel=ManagedByValue.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "keyshift-injector"
)

// fieldManager names the injector's writes in managedFields.
const fieldManager = "keyshift-injector"

// renewAt is the fraction of a certificate's life after which it is
// renewed.
const renewNum, renewDen = 2, 3

// backdate is how far NotBefore is set in the past, for clocks that lag.
const backdate = 5 * time.Minute

// SecretClient is what the self-managed certificate needs of client-go's
// SecretInterface, for the injector's namespace.
type SecretClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error)
	Create(ctx context.Context, secret *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
	Update(ctx context.Context, secret *corev1.Secret, opts metav1.UpdateOptions) (*corev1.Secret, error)
}

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
// bundle into the webhook configuration's caBundle.
//
// Replicas coordinate through the API server alone: the Secret is made
// with Create (the loser of a race gets AlreadyExists and uses the
// winner's) and changed with Update at the resourceVersion read (the loser
// gets a Conflict, rereads, and finds nothing left to do). A serving
// certificate is renewed at two thirds of its life; a CA too, by adding a
// new CA to the bundle beside the old one, which stays until it expires.
// The new CA signs the next serving certificate only after CAOverlap, so
// the caBundle has reached every API server first.
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

func (c SelfSignedConfig) withDefaults() (SelfSignedConfig, error) {
	if c.Secrets == nil || c.Webhooks == nil {
		return c, fmt.Errorf("%w: self-managed certificate: no Kubernetes client", ErrConfig)
	}
	return c.settings()
}

// settings is c with every empty setting defaulted, or an error wrapping
// ErrConfig.
func (c SelfSignedConfig) settings() (SelfSignedConfig, error) {
	if c.Namespace == "" {
		return c, fmt.Errorf("%w: self-managed certificate: no namespace (set POD_NAMESPACE from the downward API, or --namespace)", ErrConfig)
	}
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&c.SecretName, DefaultTLSSecret)
	def(&c.Service, DefaultService)
	def(&c.WebhookConfig, DefaultWebhookConfig)
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
	for _, n := range []struct{ what, value string }{
		{"namespace", c.Namespace}, {"Service name", c.Service},
	} {
		if len(validation.IsDNS1123Label(n.value)) != 0 {
			return c, fmt.Errorf("%w: self-managed certificate: %s %q: write a DNS-1123 label such as keyshift-injector", ErrConfig, n.what, n.value)
		}
	}
	for _, n := range []struct{ what, value string }{
		{"Secret name", c.SecretName}, {"webhook configuration name", c.WebhookConfig},
	} {
		if len(validation.IsDNS1123Subdomain(n.value)) != 0 {
			return c, fmt.Errorf("%w: self-managed certificate: %s %q: write a Kubernetes object name such as keyshift-injector", ErrConfig, n.what, n.value)
		}
	}
	switch {
	case c.CAValidity < 0 || c.CertValidity < 0 || c.CAOverlap < 0:
		return c, fmt.Errorf("%w: self-managed certificate: negative validity; write durations such as 8760h (CA) and 2160h (certificate)", ErrConfig)
	case c.CertValidity > c.CAValidity/2:
		return c, fmt.Errorf("%w: self-managed certificate: certificate validity %s exceeds half the CA validity %s; write a shorter --cert-validity or a longer --ca-validity",
			ErrConfig, c.CertValidity, c.CAValidity)
	case c.CAOverlap > c.CertValidity/3:
		return c, fmt.Errorf("%w: self-managed certificate: certificate validity %s is under three times the CA overlap %s; write a --cert-validity of at least %s",
			ErrConfig, c.CertValidity, c.CAOverlap, 3*c.CAOverlap)
	}
	return c, nil
}

// dnsNames are the names the serving certificate carries: the Service's,
// as the API server calls it, first.
func (c SelfSignedConfig) dnsNames() []string {
	svc := c.Service + "." + c.Namespace + ".svc"
	return []string{svc, svc + ".cluster.local"}
}

// pki is the parsed content of the TLS Secret. It holds private keys, so
// it never prints them.
type pki struct {
	// cas is every CA to trust, oldest first: what ca.crt holds.
	cas []*x509.Certificate
	// signer, the CA whose key is signerKey, signs serving certificates;
	// nil when ca.key matches no CA in cas.
	signer    *x509.Certificate
	signerKey *ecdsa.PrivateKey
	// leaf and leafKey are the serving pair; nil when they do not match.
	leaf    *x509.Certificate
	leafKey *ecdsa.PrivateKey
}

// String keeps the keys out of any print.
func (*pki) String() string { return "REDACTED" }

// LogValue keeps the keys out of any log.
func (*pki) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// parsePKI reads what it can of a Secret's data; anything unusable is left
// out, and renew replaces it.
func parsePKI(data map[string][]byte) *pki {
	p := &pki{}
	for _, c := range parseCerts(data[CABundleKey]) {
		if c.IsCA && c.BasicConstraintsValid {
			p.cas = append(p.cas, c)
		}
	}
	if key, err := parseECKey(data[CAKeyKey]); err == nil {
		for _, c := range p.cas {
			if key.PublicKey.Equal(c.PublicKey) {
				p.signer, p.signerKey = c, key
			}
		}
	}
	if leaves := parseCerts(data[corev1.TLSCertKey]); len(leaves) > 0 {
		if key, err := parseECKey(data[corev1.TLSPrivateKeyKey]); err == nil && key.PublicKey.Equal(leaves[0].PublicKey) {
			p.leaf, p.leafKey = leaves[0], key
		}
	}
	return p
}

func parseCerts(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

func parseECKey(data []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if ec, ok := k.(*ecdsa.PrivateKey); ok {
			return ec, nil
		}
		return nil, errors.New("not an ECDSA key")
	}
	return x509.ParseECPrivateKey(b.Bytes)
}

// data is p as Secret data, on top of base (whose other keys are kept).
func (p *pki) data(base map[string][]byte) (map[string][]byte, error) {
	out := make(map[string][]byte, len(base)+4)
	for k, v := range base {
		out[k] = v
	}
	var bundle []byte
	for _, c := range p.cas {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	caKey, err := x509.MarshalPKCS8PrivateKey(p.signerKey)
	if err != nil {
		return nil, fmt.Errorf("injector: encode CA key: %w", err)
	}
	leafKey, err := x509.MarshalPKCS8PrivateKey(p.leafKey)
	if err != nil {
		return nil, fmt.Errorf("injector: encode serving key: %w", err)
	}
	out[CABundleKey] = bundle
	out[CAKeyKey] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKey})
	out[corev1.TLSCertKey] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.leaf.Raw})
	out[corev1.TLSPrivateKeyKey] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: leafKey})
	return out, nil
}

// issuedAt undoes the backdating of NotBefore.
func issuedAt(c *x509.Certificate) time.Time { return c.NotBefore.Add(backdate) }

// due reports whether c has lived two thirds of its life.
func due(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(issuedAt(c))
	return !now.Before(issuedAt(c).Add(life / renewDen * renewNum))
}

// renew brings p up to date at now and says what it changed (nothing:
// nil). It drops expired CAs, makes a new CA when there is no usable one or
// the current one is due, and issues a serving certificate when the
// current one is unusable, or due and the CA that would sign it has been
// trusted for CAOverlap (or the certificate would not outlast the wait).
func (c SelfSignedConfig) renew(p *pki, now time.Time) ([]string, error) {
	var changes []string
	live := p.cas[:0:0]
	for _, ca := range p.cas {
		if now.Before(ca.NotAfter) {
			live = append(live, ca)
		} else {
			changes = append(changes, "dropped expired CA "+ca.Subject.CommonName)
		}
	}
	p.cas = live
	if p.signer != nil && !now.Before(p.signer.NotAfter) {
		p.signer, p.signerKey = nil, nil
	}
	switch {
	case p.signer == nil:
		changes = append(changes, "new CA")
	case due(p.signer, now):
		changes = append(changes, "new CA (renewal)")
	}
	if p.signer == nil || due(p.signer, now) {
		ca, key, err := newCA(now, c.CAValidity)
		if err != nil {
			return nil, err
		}
		p.cas, p.signer, p.signerKey = append(p.cas, ca), ca, key
	}

	issue := false
	switch {
	case !c.leafUsable(p, now):
		issue = true
		changes = append(changes, "new serving certificate")
	case due(p.leaf, now):
		fromSigner := p.leaf.CheckSignatureFrom(p.signer) == nil
		trusted := now.Sub(issuedAt(p.signer)) >= c.CAOverlap
		expiring := p.leaf.NotAfter.Sub(now) <= c.CAOverlap
		if fromSigner || trusted || expiring {
			issue = true
			changes = append(changes, "serving certificate renewal")
		}
	}
	if issue {
		leaf, key, err := c.newLeaf(p.signer, p.signerKey, now)
		if err != nil {
			return nil, err
		}
		p.leaf, p.leafKey = leaf, key
	}
	return changes, nil
}

// leafUsable reports whether p's serving certificate is live at now,
// names exactly the Service, and chains to a CA in the bundle.
func (c SelfSignedConfig) leafUsable(p *pki, now time.Time) bool {
	if p.leaf == nil || now.Before(p.leaf.NotBefore) || !now.Before(p.leaf.NotAfter) {
		return false
	}
	if !slices.Equal(p.leaf.DNSNames, c.dnsNames()) {
		return false
	}
	roots := x509.NewCertPool()
	for _, ca := range p.cas {
		roots.AddCert(ca)
	}
	_, err := p.leaf.Verify(x509.VerifyOptions{
		Roots: roots, CurrentTime: now, DNSName: c.dnsNames()[0],
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err == nil
}

func newCA(now time.Time, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("injector: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		// A distinct name per CA, so two in one bundle are told apart.
		Subject:               pkix.Name{CommonName: "keyshift-injector-ca@" + strconv.FormatInt(now.Unix(), 10)},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("injector: create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("injector: parse CA: %w", err)
	}
	return cert, key, nil
}

// newLeaf issues a serving certificate for the Service; it never outlives
// its CA.
func (c SelfSignedConfig) newLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("injector: serving key: %w", err)
	}
	names := c.dnsNames()
	notAfter := now.Add(c.CertValidity)
	if ca.NotAfter.Before(notAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("injector: issue serving certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("injector: parse serving certificate: %w", err)
	}
	return cert, key, nil
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("injector: reading randomness: %v", err)) // crypto/rand never fails on Linux
	}
	return n
}

// selfCert serves the certificate of the self-managed Secret and keeps the
// Secret and the webhook's caBundle up to date.
type selfCert struct {
	cfg     SelfSignedConfig
	poll    time.Duration
	log     *slog.Logger
	metrics *Metrics

	cur atomic.Pointer[servedCert]
	// bundleSet turns true once the webhook's caBundle was seen to hold
	// the CA: until then the API server could not verify this replica.
	bundleSet atomic.Bool
	// failures counts consecutive failed syncs, for the retry backoff;
	// only run's goroutine touches it after start.
	failures int
}

// servedCert is the pair being served. It holds the private key.
type servedCert struct {
	cert            *tls.Certificate
	certPEM, keyPEM []byte
}

// String keeps the key out of any print.
func (*servedCert) String() string { return "REDACTED" }

// LogValue keeps the key out of any log.
func (*servedCert) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// newSelfCert gets or creates the Secret and loads its certificate,
// retrying for cfg.StartTimeout while the API server cannot be reached or
// refuses (its RBAC may be applied just after the Deployment). A webhook
// configuration it cannot patch yet does not stop it: run retries.
func newSelfCert(ctx context.Context, cfg SelfSignedConfig, poll time.Duration, log *slog.Logger, m *Metrics) (*selfCert, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if poll <= 0 {
		poll = time.Minute
	}
	s := &selfCert{cfg: cfg, poll: poll, log: log.With("secret", cfg.Namespace+"/"+cfg.SecretName), metrics: m}
	deadline := time.Now().Add(cfg.StartTimeout)
	for attempt := 1; ; attempt++ {
		err := s.sync(ctx)
		if s.cur.Load() != nil {
			if err != nil {
				s.failures = 1
				s.log.Warn("serving from the TLS Secret, but the webhook caBundle is not updated yet; retrying", "err", err)
			}
			return s, nil
		}
		wait := retryDelay(attempt, poll)
		if errors.Is(err, ErrConfig) || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return nil, fmt.Errorf("injector: self-managed certificate: %w", err)
		}
		s.log.Warn("cannot get the TLS Secret yet; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("injector: self-managed certificate: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
}

// retryDelay is the wait before retry attempt+1: 1s, 2s, 4s... up to poll.
func retryDelay(attempt int, poll time.Duration) time.Duration {
	return min(time.Second<<min(attempt-1, 10), poll)
}

// GetCertificate is the tls.Config hook: it never calls the API server.
func (s *selfCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load().cert, nil
}

// notReady holds readiness back until the caBundle was set once, so a
// rollout is done only when the webhook works. Later failures do not make
// the replica unready: the caBundle set before still verifies it.
func (s *selfCert) notReady() string {
	if s.bundleSet.Load() {
		return ""
	}
	return "the webhook caBundle is not set yet (see the injector's log)"
}

// run rereads the Secret, renews what is due and checks the caBundle every
// poll interval (sooner after a failure) until ctx ends.
func (s *selfCert) run(ctx context.Context) {
	next := s.poll
	if s.failures > 0 {
		next = retryDelay(s.failures, s.poll)
	}
	timer := time.NewTimer(next)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		next = s.poll
		if err := s.sync(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.failures++
			next = retryDelay(s.failures, s.poll)
			s.log.Warn("self-managed TLS check failed; keeping the current certificate", "err", err, "retry_in", next)
		} else {
			s.failures = 0
		}
		timer.Reset(next)
	}
}

// sync is one pass: the Secret brought up to date, its pair served, and
// its CA bundle in every webhook of the configuration.
func (s *selfCert) sync(ctx context.Context) error {
	sec, err := s.ensureSecret(ctx)
	if err != nil {
		return err
	}
	if err := s.serve(sec); err != nil {
		return err
	}
	return s.ensureCABundle(ctx, sec.Data[CABundleKey])
}

// maxConflicts bounds the reread-and-retry of one sync.
const maxConflicts = 5

func (s *selfCert) ensureSecret(ctx context.Context) (*corev1.Secret, error) {
	c := s.cfg
	for range maxConflicts {
		now := c.Now()
		sec, err := c.Secrets.Get(ctx, c.SecretName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			p := &pki{}
			if _, err := c.renew(p, now); err != nil {
				return nil, err
			}
			data, err := p.data(nil)
			if err != nil {
				return nil, err
			}
			created, err := c.Secrets.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{
					Name: c.SecretName, Namespace: c.Namespace,
					Labels: map[string]string{
						ManagedByLabel:           ManagedByValue,
						"app.kubernetes.io/name": "keyshift-injector", "app.kubernetes.io/part-of": "keyshift",
					},
				},
				Type: corev1.SecretTypeTLS,
				Data: data,
			}, metav1.CreateOptions{FieldManager: fieldManager})
			switch {
			case apierrors.IsAlreadyExists(err):
				// Another replica won the race: use its Secret.
				s.metrics.secretWrite("conflict")
				s.log.Info("TLS Secret created meanwhile by another replica; reading it")
				continue
			case err != nil:
				s.metrics.secretWrite("error")
				return nil, fmt.Errorf("injector: create Secret %s/%s: %w", c.Namespace, c.SecretName, err)
			}
			s.metrics.secretWrite("created")
			s.log.Info("created the TLS Secret with a new CA and serving certificate",
				"ca", p.signer.Subject.CommonName, "ca_not_after", p.signer.NotAfter, "serial", p.leaf.SerialNumber.String(), "not_after", p.leaf.NotAfter)
			return created, nil
		}
		if err != nil {
			return nil, fmt.Errorf("injector: get Secret %s/%s: %w", c.Namespace, c.SecretName, err)
		}
		if sec.Labels[ManagedByLabel] != ManagedByValue {
			return nil, fmt.Errorf("%w: Secret %s/%s exists but is not the injector's (no label %s=%s); delete it to let the injector make its own, set --tls-secret to another name, or serve it as it is with --cert-mode=files",
				ErrConfig, c.Namespace, c.SecretName, ManagedByLabel, ManagedByValue)
		}
		p := parsePKI(sec.Data)
		changes, err := c.renew(p, now)
		if err != nil {
			return nil, err
		}
		if len(changes) == 0 {
			return sec, nil
		}
		upd := sec.DeepCopy()
		if upd.Data, err = p.data(sec.Data); err != nil {
			return nil, err
		}
		// upd carries the resourceVersion read: a replica that changed
		// the Secret since makes this a Conflict.
		out, err := c.Secrets.Update(ctx, upd, metav1.UpdateOptions{FieldManager: fieldManager})
		switch {
		case apierrors.IsConflict(err):
			s.metrics.secretWrite("conflict")
			s.log.Info("TLS Secret changed meanwhile, likely by another replica; rereading it")
			continue
		case err != nil:
			s.metrics.secretWrite("error")
			return nil, fmt.Errorf("injector: update Secret %s/%s: %w", c.Namespace, c.SecretName, err)
		}
		s.metrics.secretWrite("renewed")
		s.log.Info("renewed the TLS Secret", "changes", changes, "cas", len(p.cas),
			"ca", p.signer.Subject.CommonName, "ca_not_after", p.signer.NotAfter, "serial", p.leaf.SerialNumber.String(), "not_after", p.leaf.NotAfter)
		return out, nil
	}
	return nil, fmt.Errorf("injector: Secret %s/%s changed under every one of %d attempts; retrying later", c.Namespace, c.SecretName, maxConflicts)
}

// serve swaps in the Secret's serving pair when it changed.
func (s *selfCert) serve(sec *corev1.Secret) error {
	certPEM, keyPEM := sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]
	if cur := s.cur.Load(); cur != nil && bytes.Equal(cur.certPEM, certPEM) && bytes.Equal(cur.keyPEM, keyPEM) {
		return nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		s.metrics.reloaded(false, time.Time{})
		return fmt.Errorf("injector: Secret %s/%s: serving pair: %w", s.cfg.Namespace, s.cfg.SecretName, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		s.metrics.reloaded(false, time.Time{})
		return fmt.Errorf("injector: Secret %s/%s: serving certificate: %w", s.cfg.Namespace, s.cfg.SecretName, err)
	}
	cert.Leaf = leaf
	s.cur.Store(&servedCert{cert: &cert, certPEM: certPEM, keyPEM: keyPEM})
	s.metrics.reloaded(true, leaf.NotAfter)
	s.log.Info("serving certificate loaded from the TLS Secret", "serial", leaf.SerialNumber.String(),
		"issuer", leaf.Issuer.CommonName, "not_after", leaf.NotAfter)
	return nil
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

// ensureCABundle sets the caBundle of every webhook of the configuration
// to bundle, when one differs (a new CA, or someone changed it).
func (s *selfCert) ensureCABundle(ctx context.Context, bundle []byte) error {
	name := s.cfg.WebhookConfig
	mwc, err := s.cfg.Webhooks.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("injector: MutatingWebhookConfiguration %s not found (apply manifests/, or set --webhook-config to its name): %w", name, err)
	}
	if err != nil {
		return fmt.Errorf("injector: get MutatingWebhookConfiguration %s: %w", name, err)
	}
	if len(mwc.Webhooks) == 0 {
		return fmt.Errorf("injector: MutatingWebhookConfiguration %s has no webhooks", name)
	}
	var patch webhookCAPatch
	var stale []string
	for _, w := range mwc.Webhooks {
		if bytes.Equal(w.ClientConfig.CABundle, bundle) {
			continue
		}
		h := webhookCA{Name: w.Name}
		h.ClientConfig.CABundle = bundle
		patch.Webhooks = append(patch.Webhooks, h)
		stale = append(stale, w.Name)
	}
	if len(stale) == 0 {
		s.bundleSet.Store(true)
		return nil
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return fmt.Errorf("injector: caBundle patch: %w", err)
	}
	if _, err := s.cfg.Webhooks.Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		s.metrics.caBundlePatched(false)
		return fmt.Errorf("injector: patch the caBundle of MutatingWebhookConfiguration %s: %w", name, err)
	}
	s.metrics.caBundlePatched(true)
	s.bundleSet.Store(true)
	s.log.Info("set the webhook caBundle", "webhook_config", name, "webhooks", stale, "cas", len(parseCerts(bundle)))
	return nil
}
