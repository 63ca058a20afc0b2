// Package selfcerttest provides what tests of a self-managed certificate
// need around it: client-go's fake clientset with the API server's
// optimistic concurrency for Secrets, a clock the test moves, and checks
// of what the Secret holds and what reached the logs.
package selfcerttest

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/keyshift/keyshift/internal/selfcert"
)

// NewFakeAPI is client-go's fake clientset holding objs, plus what its
// object tracker lacks and a self-managed certificate relies on: the API
// server's optimistic concurrency for Secrets. Every write sets a new
// resourceVersion, and an Update at an older one is a Conflict.
func NewFakeAPI(t testing.TB, objs ...runtime.Object) *fake.Clientset {
	t.Helper()
	cs := fake.NewClientset(objs...)
	secrets := corev1.SchemeGroupVersion.WithResource("secrets")
	rv := 100
	// Reactors run under the fake's lock, one at a time.
	cs.PrependReactor("create", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sec := a.(k8stesting.CreateAction).GetObject().(*corev1.Secret).DeepCopy()
		rv++
		sec.ResourceVersion = strconv.Itoa(rv)
		if err := cs.Tracker().Create(secrets, sec, sec.Namespace); err != nil {
			return true, nil, err
		}
		return true, sec.DeepCopy(), nil
	})
	cs.PrependReactor("update", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sec := a.(k8stesting.UpdateAction).GetObject().(*corev1.Secret).DeepCopy()
		cur, err := cs.Tracker().Get(secrets, sec.Namespace, sec.Name)
		if err != nil {
			return true, nil, err
		}
		if got := cur.(*corev1.Secret).ResourceVersion; got != sec.ResourceVersion {
			return true, nil, apierrors.NewConflict(secrets.GroupResource(), sec.Name,
				errors.New("the object has been modified; please apply your changes to the latest version and try again"))
		}
		rv++
		sec.ResourceVersion = strconv.Itoa(rv)
		if err := cs.Tracker().Update(secrets, sec, sec.Namespace); err != nil {
			return true, nil, err
		}
		return true, sec.DeepCopy(), nil
	})
	return cs
}

// CountActions counts the fake's recorded actions of verb on resource.
func CountActions(cs *fake.Clientset, verb, resource string) int {
	n := 0
	for _, a := range cs.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource {
			n++
		}
	}
	return n
}

// Clock is a clock the test moves; start it with NewClock.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock is a Clock at the current second.
func NewClock() *Clock {
	return &Clock{now: time.Now().Truncate(time.Second)}
}

// Now is the clock's time: pass it as Config.Now.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Certs is every certificate of a PEM bundle; it fails t on one that does
// not parse.
func Certs(t testing.TB, bundle []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, bundle = pem.Decode(bundle)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("bundle: %v", err)
		}
		out = append(out, c)
	}
}

// Leaf is the one serving certificate of the Secret.
func Leaf(t testing.TB, sec *corev1.Secret) *x509.Certificate {
	t.Helper()
	certs := Certs(t, sec.Data[corev1.TLSCertKey])
	if len(certs) != 1 {
		t.Fatalf("tls.crt holds %d certificates, want 1", len(certs))
	}
	return certs[0]
}

// Verify checks that leaf chains to bundle at now for every one of names,
// as a serving certificate.
func Verify(leaf *x509.Certificate, bundle []byte, now time.Time, names []string) error {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	for _, n := range names {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, DNSName: n,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return err
		}
	}
	return nil
}

// CheckNoKeysInLogs fails t when key material of sec reached logs: a PEM
// marker, or a key as it stands in the Secret (PEM) or base64 of it.
func CheckNoKeysInLogs(t testing.TB, logs string, sec *corev1.Secret) {
	t.Helper()
	if strings.Contains(logs, "PRIVATE KEY") {
		t.Errorf("a private key reached the logs:\n%s", logs)
	}
	for _, k := range []string{selfcert.CAKeyKey, corev1.TLSPrivateKeyKey} {
		pemBody := strings.Split(string(sec.Data[k]), "\n")[1]
		if strings.Contains(logs, pemBody) || strings.Contains(logs, base64.StdEncoding.EncodeToString(sec.Data[k])[:40]) {
			t.Errorf("%s reached the logs", k)
		}
	}
}

// LogBuffer is an io.Writer for a logger that goroutines share.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
