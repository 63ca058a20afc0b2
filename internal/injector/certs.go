package injector

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// certReloader serves the TLS certificate from a pair of files and picks up
// new files without a restart: a Secret volume's update (the kubelet swaps
// a ..data symlink in the directory), cert-manager renewing, or an operator
// replacing the files. It watches the files' directories and also rereads
// on a timer, in case an event is missed. A pair that does not load leaves
// the current certificate in place.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	metrics           *Metrics
	poll              time.Duration

	cur atomic.Pointer[loadedCert]
	mu  sync.Mutex // serialises reloads
}

type loadedCert struct {
	cert         *tls.Certificate
	certPEM, key []byte
	notAfter     time.Time
}

func newCertReloader(certFile, keyFile string, poll time.Duration, log *slog.Logger, m *Metrics) (*certReloader, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("injector: TLS certificate and key files are required (set --tls-cert-file and --tls-key-file)")
	}
	if poll <= 0 {
		poll = time.Minute
	}
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log, metrics: m, poll: poll}
	if _, err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// reload reads the pair and swaps it in when it changed. It reports
// whether it swapped.
func (r *certReloader) reload() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	certPEM, err1 := os.ReadFile(r.certFile)
	keyPEM, err2 := os.ReadFile(r.keyFile)
	if err := errors.Join(err1, err2); err != nil {
		return false, fmt.Errorf("injector: read TLS files: %w", err)
	}
	if old := r.cur.Load(); old != nil && bytes.Equal(old.certPEM, certPEM) && bytes.Equal(old.key, keyPEM) {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// Often a half-written pair (new cert, old key): the next event or
		// poll picks up the complete one.
		return false, fmt.Errorf("injector: load TLS key pair %s, %s: %w", r.certFile, r.keyFile, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return false, fmt.Errorf("injector: parse TLS certificate: %w", err)
	}
	cert.Leaf = leaf
	r.cur.Store(&loadedCert{cert: &cert, certPEM: certPEM, key: keyPEM, notAfter: leaf.NotAfter})
	r.metrics.reloaded(true, leaf.NotAfter)
	return true, nil
}

// GetCertificate is the tls.Config hook: it never blocks on disk.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load().cert, nil
}

// notReady is always "": whoever writes the files also sets the caBundle.
func (r *certReloader) notReady() string { return "" }

// run follows the files until ctx ends.
func (r *certReloader) run(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		r.log.Warn("TLS file watch unavailable; polling only", "err", err, "every", r.poll)
	} else {
		defer w.Close()
		for _, dir := range uniq(filepath.Dir(r.certFile), filepath.Dir(r.keyFile)) {
			if err := w.Add(dir); err != nil {
				r.log.Warn("TLS file watch failed; polling only", "dir", dir, "err", err)
			}
		}
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		events, errs = w.Events, w.Errors
	}
	tick := time.NewTicker(r.poll)
	defer tick.Stop()
	// Coalesce a burst of events (a symlink swap is several) into one
	// reload shortly after the last.
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
			debounce.Reset(100 * time.Millisecond)
		case err := <-errs:
			r.log.Warn("TLS file watch error", "err", err)
		case <-debounce.C:
			r.reloadAndLog()
		case <-tick.C:
			r.reloadAndLog()
		}
	}
}

func (r *certReloader) reloadAndLog() {
	swapped, err := r.reload()
	switch {
	case err != nil:
		r.metrics.reloaded(false, time.Time{})
		r.log.Warn("TLS reload failed; keeping the current certificate", "err", err)
	case swapped:
		c := r.cur.Load()
		r.log.Info("TLS certificate reloaded", "subject", c.cert.Leaf.Subject.String(), "not_after", c.notAfter)
	}
}

func uniq(a, b string) []string {
	if a == b {
		return []string{a}
	}
	return []string{a, b}
}
