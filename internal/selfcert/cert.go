// Package selfcert owns a self-managed certificate authority kept in a
// Kubernetes Secret: a CA and a serving certificate made when missing,
// renewed at two thirds of their lives (a new CA beside the old one, which
// stays trusted until it expires), shared by every replica through the API
// server alone, served from memory, and published as a CA bundle through a
// function of the caller's (the injector patches its webhook's caBundle,
// the controller writes ConfigMaps). It serves clusters without
// cert-manager.
package selfcert

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Cert serves the certificate of a self-managed Secret and keeps the
// Secret and the published CA bundle up to date.
type Cert struct {
	cfg  Config
	poll time.Duration
	log  *slog.Logger

	cur atomic.Pointer[served]
	// published turns true once PublishCA succeeded: until then clients
	// could not verify this replica.
	published atomic.Bool
	// mu serialises syncs: Run's and a caller's.
	mu sync.Mutex
	// failures counts consecutive failed syncs, for the retry backoff;
	// only Run's goroutine touches it after Start.
	failures int
}

// served is the pair being served and the bundle that verifies it. It
// holds the private key.
type served struct {
	cert            *tls.Certificate
	certPEM, keyPEM []byte
	bundle          []byte
}

// String keeps the key out of any print.
func (*served) String() string { return "REDACTED" }

// LogValue keeps the key out of any log.
func (*served) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// Start gets or creates the Secret and loads its certificate, retrying for
// cfg.StartTimeout while the API server cannot be reached or refuses (RBAC
// may be applied just after the Deployment). A bundle it cannot publish
// yet does not stop it: Run retries, and NotReady says so meanwhile. poll
// is Run's interval (default DefaultPoll). Errors that no retry fixes
// (a bad Config, a Secret that is not Owner's) wrap ErrConfig.
func Start(ctx context.Context, cfg Config, poll time.Duration, log *slog.Logger) (*Cert, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if poll <= 0 {
		poll = DefaultPoll
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cert{cfg: cfg, poll: poll, log: log.With("secret", cfg.Namespace+"/"+cfg.SecretName)}
	deadline := time.Now().Add(cfg.StartTimeout)
	for attempt := 1; ; attempt++ {
		err := c.Sync(ctx)
		if c.cur.Load() != nil {
			if err != nil {
				c.failures = 1
				c.log.Warn("serving from the TLS Secret, but the CA bundle is not published yet; retrying", "err", err)
			}
			return c, nil
		}
		wait := retryDelay(attempt, poll)
		if errors.Is(err, ErrConfig) || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return nil, err
		}
		c.log.Warn("cannot get the TLS Secret yet; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("selfcert: Secret %s/%s: %w", cfg.Namespace, cfg.SecretName, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// retryDelay is the wait before retry attempt+1: 1s, 2s, 4s... up to poll.
func retryDelay(attempt int, poll time.Duration) time.Duration {
	return min(time.Second<<min(attempt-1, 10), poll)
}

// GetCertificate is the tls.Config hook: it never calls the API server.
func (c *Cert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load().cert, nil
}

// Bundle is the CA bundle (PEM) that verifies the certificate served now,
// for a client of this process that needs it.
func (c *Cert) Bundle() []byte {
	return bytes.Clone(c.cur.Load().bundle)
}

// NotReady holds readiness back until the CA bundle was published once, so
// a rollout is done only when clients can verify this replica; it is ""
// from then on. Later failures do not make the replica unready: the bundle
// published before still verifies it.
func (c *Cert) NotReady() string {
	if c.published.Load() {
		return ""
	}
	return fmt.Sprintf("the CA bundle of Secret %s/%s is not published yet (see the %s log)", c.cfg.Namespace, c.cfg.SecretName, c.cfg.Owner)
}

// Run rereads the Secret, renews what is due and publishes the bundle
// every poll interval (sooner after a failure) until ctx ends.
func (c *Cert) Run(ctx context.Context) {
	next := c.poll
	if c.failures > 0 {
		next = retryDelay(c.failures, c.poll)
	}
	timer := time.NewTimer(next)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		next = c.poll
		if err := c.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.failures++
			next = retryDelay(c.failures, c.poll)
			c.log.Warn("self-managed TLS check failed; keeping the current certificate", "err", err, "retry_in", next)
		} else {
			c.failures = 0
		}
		timer.Reset(next)
	}
}

// Sync is one pass, as Run makes every poll interval: the Secret brought
// up to date, its pair served, and its CA bundle published.
func (c *Cert) Sync(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	sec, err := c.ensureSecret(ctx)
	if err != nil {
		return err
	}
	if err := c.serve(sec); err != nil {
		return err
	}
	if err := c.cfg.PublishCA(ctx, c.Bundle()); err != nil {
		return fmt.Errorf("selfcert: publish the CA bundle: %w", err)
	}
	c.published.Store(true)
	return nil
}

// maxConflicts bounds the reread-and-retry of one sync.
const maxConflicts = 5

func (c *Cert) ensureSecret(ctx context.Context) (*corev1.Secret, error) {
	cfg, hooks := c.cfg, c.cfg.Hooks
	for range maxConflicts {
		now := cfg.Now()
		sec, err := cfg.Secrets.Get(ctx, cfg.SecretName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			p := &pki{}
			if _, err := cfg.renew(p, now); err != nil {
				return nil, err
			}
			data, err := p.data(nil)
			if err != nil {
				return nil, err
			}
			created, err := cfg.Secrets.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{
					Name: cfg.SecretName, Namespace: cfg.Namespace,
					Labels: map[string]string{
						ManagedByLabel:           cfg.Owner,
						"app.kubernetes.io/name": cfg.Owner, "app.kubernetes.io/part-of": "keyshift",
					},
				},
				Type: corev1.SecretTypeTLS,
				Data: data,
			}, metav1.CreateOptions{FieldManager: cfg.Owner})
			switch {
			case apierrors.IsAlreadyExists(err):
				// Another replica won the race: use its Secret.
				hooks.secretWrite(WriteConflict)
				c.log.Info("TLS Secret created meanwhile by another replica; reading it")
				continue
			case err != nil:
				hooks.secretWrite(WriteError)
				return nil, fmt.Errorf("selfcert: create Secret %s/%s: %w", cfg.Namespace, cfg.SecretName, err)
			}
			hooks.secretWrite(WriteCreated)
			c.log.Info("created the TLS Secret with a new CA and serving certificate",
				"ca", p.signer.Subject.CommonName, "ca_not_after", p.signer.NotAfter, "serial", p.leaf.SerialNumber.String(), "not_after", p.leaf.NotAfter)
			return created, nil
		}
		if err != nil {
			return nil, fmt.Errorf("selfcert: get Secret %s/%s: %w", cfg.Namespace, cfg.SecretName, err)
		}
		if sec.Labels[ManagedByLabel] != cfg.Owner {
			return nil, cfg.notOwned()
		}
		p := parsePKI(sec.Data)
		changes, err := cfg.renew(p, now)
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
		out, err := cfg.Secrets.Update(ctx, upd, metav1.UpdateOptions{FieldManager: cfg.Owner})
		switch {
		case apierrors.IsConflict(err):
			hooks.secretWrite(WriteConflict)
			c.log.Info("TLS Secret changed meanwhile, likely by another replica; rereading it")
			continue
		case err != nil:
			hooks.secretWrite(WriteError)
			return nil, fmt.Errorf("selfcert: update Secret %s/%s: %w", cfg.Namespace, cfg.SecretName, err)
		}
		hooks.secretWrite(WriteRenewed)
		c.log.Info("renewed the TLS Secret", "changes", changes, "cas", len(p.cas),
			"ca", p.signer.Subject.CommonName, "ca_not_after", p.signer.NotAfter, "serial", p.leaf.SerialNumber.String(), "not_after", p.leaf.NotAfter)
		return out, nil
	}
	return nil, fmt.Errorf("selfcert: Secret %s/%s changed under every one of %d attempts; retrying later", cfg.Namespace, cfg.SecretName, maxConflicts)
}

// serve swaps in the Secret's serving pair and bundle when they changed.
func (c *Cert) serve(sec *corev1.Secret) error {
	certPEM, keyPEM, bundle := sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey], sec.Data[CABundleKey]
	if cur := c.cur.Load(); cur != nil && bytes.Equal(cur.certPEM, certPEM) && bytes.Equal(cur.keyPEM, keyPEM) {
		if !bytes.Equal(cur.bundle, bundle) {
			c.cur.Store(&served{cert: cur.cert, certPEM: cur.certPEM, keyPEM: cur.keyPEM, bundle: bytes.Clone(bundle)})
		}
		return nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		c.cfg.Hooks.loaded(false, time.Time{})
		return fmt.Errorf("selfcert: Secret %s/%s: serving pair: %w", c.cfg.Namespace, c.cfg.SecretName, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		c.cfg.Hooks.loaded(false, time.Time{})
		return fmt.Errorf("selfcert: Secret %s/%s: serving certificate: %w", c.cfg.Namespace, c.cfg.SecretName, err)
	}
	cert.Leaf = leaf
	c.cur.Store(&served{cert: &cert, certPEM: bytes.Clone(certPEM), keyPEM: bytes.Clone(keyPEM), bundle: bytes.Clone(bundle)})
	c.cfg.Hooks.loaded(true, leaf.NotAfter)
	c.log.Info("serving certificate loaded from the TLS Secret", "serial", leaf.SerialNumber.String(),
		"issuer", leaf.Issuer.CommonName, "not_after", leaf.NotAfter)
	return nil
}
