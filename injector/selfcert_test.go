package injector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"
)

const testNS = "keyshift-system"

// The names the serving certificate must carry, as the API server dials it.
var testDNSNames = []string{"keyshift-injector.keyshift-system.svc", "keyshift-injector.keyshift-system.svc.cluster.local"}

const day = 24 * time.Hour

// ignoreManagedFields leaves out what the fake's field manager records.
var ignoreManagedFields = cmpopts.IgnoreFields(metav1.ObjectMeta{}, "ManagedFields")

// testClock is a clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock {
	return &testClock{now: time.Now().Truncate(time.Second)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// readManifest decodes the YAML documents of manifests/injector/name.
func readManifest(t *testing.T, name string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "manifests", "injector", name))
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	for doc := range strings.SplitSeq(string(data), "\n---\n") {
		docs = append(docs, []byte(doc))
	}
	return docs
}

// manifestWebhook is the webhook configuration of the manifests, with a
// second webhook added so "every webhook" is checked.
func manifestWebhook(t *testing.T) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(readManifest(t, "webhook.yaml")[0], &mwc); err != nil {
		t.Fatal(err)
	}
	second := *mwc.Webhooks[0].DeepCopy()
	second.Name = "second.keyshift.io"
	mwc.Webhooks = append(mwc.Webhooks, second)
	return &mwc
}

// newFakeAPI is client-go's fake clientset holding the manifests' webhook
// configuration, plus what its object tracker lacks and the injector relies
// on: the API server's optimistic concurrency for Secrets. Every write
// sets a new resourceVersion, and an Update at an older one is a Conflict.
func newFakeAPI(t *testing.T, objs ...runtime.Object) *fake.Clientset {
	t.Helper()
	cs := fake.NewClientset(append([]runtime.Object{manifestWebhook(t)}, objs...)...)
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

func testSelfConfig(cs *fake.Clientset, clock *testClock) SelfSignedConfig {
	return SelfSignedConfig{
		Secrets:   cs.CoreV1().Secrets(testNS),
		Webhooks:  cs.AdmissionregistrationV1().MutatingWebhookConfigurations(),
		Namespace: testNS,
		Now:       clock.Now,
	}
}

func jsonLogger(w *syncBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func startSelfCert(t *testing.T, cfg SelfSignedConfig, logs *syncBuffer, m *Metrics) *selfCert {
	t.Helper()
	s, err := newSelfCert(context.Background(), cfg, time.Hour, jsonLogger(logs), m)
	if err != nil {
		t.Fatalf("newSelfCert: %v", err)
	}
	return s
}

func getSecret(t *testing.T, cs *fake.Clientset) *corev1.Secret {
	t.Helper()
	sec, err := cs.CoreV1().Secrets(testNS).Get(context.Background(), DefaultTLSSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

func getWebhook(t *testing.T, cs *fake.Clientset) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), DefaultWebhookConfig, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return mwc
}

// webhookBundle is the caBundle of the first webhook, after checking that
// every webhook has the same one.
func webhookBundle(t *testing.T, cs *fake.Clientset) []byte {
	t.Helper()
	mwc := getWebhook(t, cs)
	for _, w := range mwc.Webhooks {
		if !bytes.Equal(w.ClientConfig.CABundle, mwc.Webhooks[0].ClientConfig.CABundle) {
			t.Fatalf("webhook %s has another caBundle than %s", w.Name, mwc.Webhooks[0].Name)
		}
	}
	return mwc.Webhooks[0].ClientConfig.CABundle
}

func poolOf(t *testing.T, bundle []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(bundle) {
		t.Fatal("bundle holds no certificate")
	}
	return p
}

func leafOf(t *testing.T, sec *corev1.Secret) *x509.Certificate {
	t.Helper()
	certs := parseCerts(sec.Data[corev1.TLSCertKey])
	if len(certs) != 1 {
		t.Fatalf("tls.crt holds %d certificates, want 1", len(certs))
	}
	return certs[0]
}

// verifies reports whether leaf chains to bundle at now for every name.
func verifies(leaf *x509.Certificate, bundle []byte, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	for _, n := range testDNSNames {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, DNSName: n,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return err
		}
	}
	return nil
}

// countActions counts the fake's recorded actions of verb on resource.
func countActions(cs *fake.Clientset, verb, resource string) int {
	n := 0
	for _, a := range cs.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource {
			n++
		}
	}
	return n
}

// checkNoKeysInLogs fails when key material reached the logs: a PEM
// marker, or the base64 of a key as it stands in the Secret or PEM.
func checkNoKeysInLogs(t *testing.T, logs string, sec *corev1.Secret) {
	t.Helper()
	if strings.Contains(logs, "PRIVATE KEY") {
		t.Errorf("a private key reached the logs:\n%s", logs)
	}
	for _, k := range []string{CAKeyKey, corev1.TLSPrivateKeyKey} {
		pemBody := strings.Split(string(sec.Data[k]), "\n")[1]
		if strings.Contains(logs, pemBody) || strings.Contains(logs, base64.StdEncoding.EncodeToString(sec.Data[k])[:40]) {
			t.Errorf("%s reached the logs", k)
		}
	}
}

func TestSelfSignedCreate(t *testing.T) {
	clock := newTestClock()
	t0 := clock.Now()
	cs := newFakeAPI(t)
	logs := &syncBuffer{}
	m := NewMetrics()
	s := startSelfCert(t, testSelfConfig(cs, clock), logs, m)

	sec := getSecret(t, cs)
	if sec.Type != corev1.SecretTypeTLS || sec.Labels[ManagedByLabel] != ManagedByValue {
		t.Errorf("Secret type %q labels %v", sec.Type, sec.Labels)
	}
	var keys []string
	for k := range sec.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if diff := cmp.Diff([]string{"ca.crt", "ca.key", "tls.crt", "tls.key"}, keys); diff != "" {
		t.Errorf("Secret keys (-want +got):\n%s", diff)
	}

	cas := parseCerts(sec.Data[CABundleKey])
	if len(cas) != 1 {
		t.Fatalf("ca.crt holds %d certificates, want 1", len(cas))
	}
	ca, leaf := cas[0], leafOf(t, sec)
	for _, c := range []*x509.Certificate{ca, leaf} {
		if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s: key is not ECDSA P-256", c.Subject.CommonName)
		}
	}
	if !ca.IsCA || !ca.NotAfter.Equal(t0.Add(DefaultCAValidity)) {
		t.Errorf("CA: IsCA %v, NotAfter %s, want %s", ca.IsCA, ca.NotAfter, t0.Add(DefaultCAValidity))
	}
	if leaf.IsCA || !leaf.NotAfter.Equal(t0.Add(DefaultCertValidity)) || !slices.Equal(leaf.DNSNames, testDNSNames) {
		t.Errorf("serving certificate: IsCA %v, NotAfter %s (want %s), names %v", leaf.IsCA, leaf.NotAfter, t0.Add(DefaultCertValidity), leaf.DNSNames)
	}
	if err := verifies(leaf, sec.Data[CABundleKey], t0); err != nil {
		t.Errorf("serving certificate does not verify against ca.crt: %v", err)
	}
	if got := s.cur.Load().cert.Leaf.SerialNumber; got.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("serving serial %s, the Secret's is %s", got, leaf.SerialNumber)
	}
	if got := webhookBundle(t, cs); !bytes.Equal(got, sec.Data[CABundleKey]) {
		t.Errorf("webhook caBundle is not the Secret's ca.crt")
	}
	if s.notReady() != "" {
		t.Errorf("not ready after the caBundle was set: %s", s.notReady())
	}
	if got := counterValue(m.secretWrites.WithLabelValues("created")); got != 1 {
		t.Errorf("created count %v, want 1", got)
	}

	// A second pass with nothing due writes nothing.
	before := len(cs.Actions())
	if err := s.sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, a := range cs.Actions()[before:] {
		if a.GetVerb() != "get" {
			t.Errorf("an idle sync did %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
	checkNoKeysInLogs(t, logs.String(), sec)
}

// barrierSecrets holds the answers of the first n Gets, across every
// client sharing it, until all n have read, so that n managers read the
// same Secret before any of them writes: the race, made to happen every
// run.
type barrierSecrets struct {
	SecretClient
	b *barrier
}

type barrier struct {
	mu      sync.Mutex
	n       int
	arrived chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, arrived: make(chan struct{})} }

// reset arms the barrier again for the next n Gets.
func (b *barrier) reset(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n, b.arrived = n, make(chan struct{})
}

func (b *barrier) wait() {
	b.mu.Lock()
	if b.n == 0 {
		b.mu.Unlock()
		return
	}
	b.n--
	arrived := b.arrived
	if b.n == 0 {
		close(arrived)
	}
	b.mu.Unlock()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		panic("barrier: the other manager never read the Secret")
	}
}

func (s barrierSecrets) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error) {
	sec, err := s.SecretClient.Get(ctx, name, opts)
	s.b.wait()
	return sec, err
}

// TestSelfSignedRace runs two managers, as two replicas, on one Secret:
// both find it missing and create it (one gets AlreadyExists and adopts
// the winner's), then both find it due and update it (one gets a Conflict,
// rereads, and finds nothing left to do). They always serve the same.
func TestSelfSignedRace(t *testing.T) {
	clock := newTestClock()
	cs := newFakeAPI(t)
	logs := &syncBuffer{}
	m := NewMetrics()
	b := newBarrier(2)
	cfg := testSelfConfig(cs, clock)
	cfg.Secrets = barrierSecrets{cfg.Secrets, b}

	var wg sync.WaitGroup
	var managers [2]*selfCert
	for i := range managers {
		wg.Go(func() {
			s, err := newSelfCert(context.Background(), cfg, time.Hour, jsonLogger(logs), m)
			if err != nil {
				t.Errorf("manager %d: %v", i, err)
				return
			}
			managers[i] = s
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	sameServed := func(step string) *x509.Certificate {
		t.Helper()
		leaf := leafOf(t, getSecret(t, cs))
		for i, s := range managers {
			if got := s.cur.Load().cert.Leaf.SerialNumber; got.Cmp(leaf.SerialNumber) != 0 {
				t.Errorf("%s: manager %d serves %s, the Secret holds %s", step, i, got, leaf.SerialNumber)
			}
		}
		return leaf
	}
	first := sameServed("create")
	if got := countActions(cs, "create", "secrets"); got != 2 {
		t.Errorf("%d creates, want 2 (both found the Secret missing)", got)
	}
	if c, l := counterValue(m.secretWrites.WithLabelValues("created")), counterValue(m.secretWrites.WithLabelValues("conflict")); c != 1 || l != 1 {
		t.Errorf("created %v and conflicts %v, want 1 and 1", c, l)
	}

	clock.Advance(61 * day)
	b.reset(2)
	for i, s := range managers {
		wg.Go(func() {
			if err := s.sync(context.Background()); err != nil {
				t.Errorf("manager %d renewal: %v", i, err)
			}
		})
	}
	wg.Wait()
	renewed := sameServed("renewal")
	if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("the serving certificate was not renewed")
	}
	if got := countActions(cs, "update", "secrets"); got != 2 {
		t.Errorf("%d updates, want 2 (both found the certificate due)", got)
	}
	if r, l := counterValue(m.secretWrites.WithLabelValues("renewed")), counterValue(m.secretWrites.WithLabelValues("conflict")); r != 1 || l != 2 {
		t.Errorf("renewals %v and conflicts %v, want 1 and 2", r, l)
	}
	checkNoKeysInLogs(t, logs.String(), getSecret(t, cs))
}

// TestSelfSignedRenewal walks a Secret through time: the certificate is
// renewed at two thirds of its life under the same CA; a new CA joins the
// bundle at two thirds of the CA's life, and signs only after CAOverlap;
// the old CA leaves the bundle when it expires.
func TestSelfSignedRenewal(t *testing.T) {
	clock := newTestClock()
	t0 := clock.Now()
	cs := newFakeAPI(t)
	logs := &syncBuffer{}
	cfg := testSelfConfig(cs, clock)
	// 270 days, so the CA falls due (day 180) just as the third
	// certificate does: the overlap is what decides.
	cfg.CAValidity = 270 * day
	s := startSelfCert(t, cfg, logs, NewMetrics())

	type state struct {
		Serial string
		CAs    []string
		Issuer string
	}
	now := func() state {
		t.Helper()
		sec := getSecret(t, cs)
		leaf := leafOf(t, sec)
		var cas []string
		for _, c := range parseCerts(sec.Data[CABundleKey]) {
			cas = append(cas, c.Subject.CommonName)
		}
		if err := verifies(leaf, sec.Data[CABundleKey], clock.Now()); err != nil {
			t.Errorf("at +%s the serving certificate does not verify against ca.crt: %v", clock.Now().Sub(t0), err)
		}
		if got := webhookBundle(t, cs); !bytes.Equal(got, sec.Data[CABundleKey]) {
			t.Errorf("at +%s the webhook caBundle is not ca.crt", clock.Now().Sub(t0))
		}
		if got := s.cur.Load().cert.Leaf.SerialNumber.String(); got != leaf.SerialNumber.String() {
			t.Errorf("at +%s serving %s, the Secret holds %s", clock.Now().Sub(t0), got, leaf.SerialNumber)
		}
		return state{Serial: leaf.SerialNumber.String(), CAs: cas, Issuer: leaf.Issuer.CommonName}
	}
	step := func(to time.Duration) state {
		t.Helper()
		clock.Advance(t0.Add(to).Sub(clock.Now()))
		if err := s.sync(context.Background()); err != nil {
			t.Fatalf("sync at +%s: %v", to, err)
		}
		return now()
	}

	s0 := now()
	ca0 := s0.CAs[0]
	if got := step(59 * day); !cmp.Equal(got, s0) {
		t.Errorf("day 59 changed the Secret: %+v, was %+v", got, s0)
	}
	s1 := step(60*day + time.Hour)
	if s1.Serial == s0.Serial || !cmp.Equal(s1.CAs, s0.CAs) || s1.Issuer != ca0 {
		t.Errorf("day 60: %+v; want a new certificate from the same CA %s", s1, ca0)
	}
	s2 := step(120*day + 2*time.Hour)
	if s2.Serial == s1.Serial || s2.Issuer != ca0 {
		t.Errorf("day 120: %+v; want a new certificate from %s", s2, ca0)
	}

	// Day 180: the CA and the certificate are both due. The new CA joins
	// the bundle; the certificate waits for the overlap.
	s3 := step(180*day + 3*time.Hour)
	if len(s3.CAs) != 2 || s3.CAs[0] != ca0 || s3.Serial != s2.Serial {
		t.Fatalf("day 180: %+v; want a second CA in the bundle and the certificate %s kept", s3, s2.Serial)
	}
	ca1 := s3.CAs[1]
	if got := step(180*day + 3*time.Hour + DefaultCAOverlap/2); got.Serial != s2.Serial {
		t.Errorf("half the overlap later the certificate changed: %+v", got)
	}
	s4 := step(180*day + 3*time.Hour + DefaultCAOverlap)
	if s4.Serial == s2.Serial || s4.Issuer != ca1 || !cmp.Equal(s4.CAs, []string{ca0, ca1}) {
		t.Errorf("after the overlap: %+v; want a certificate from %s with both CAs trusted", s4, ca1)
	}

	// Day 270: the first CA expires and leaves the bundle.
	s5 := step(270 * day)
	if !cmp.Equal(s5.CAs, []string{ca1}) || s5.Issuer != ca1 {
		t.Errorf("day 270: %+v; want %s alone", s5, ca1)
	}
	checkNoKeysInLogs(t, logs.String(), getSecret(t, cs))
}

// TestSelfSignedYears syncs once a day for two years with the default
// lifetimes and checks, every day, what keeps the webhook working: the
// served certificate is live and verifies against the caBundle the API
// server had the day before (so no renewal outruns the bundle), and the
// bundle holds at most two CAs.
func TestSelfSignedYears(t *testing.T) {
	clock := newTestClock()
	cs := newFakeAPI(t)
	s := startSelfCert(t, testSelfConfig(cs, clock), &syncBuffer{}, NewMetrics())
	prev := webhookBundle(t, cs)
	cas := map[string]bool{}
	certs := map[string]bool{}
	for d := 1; d <= 730; d++ {
		clock.Advance(day)
		if err := s.sync(context.Background()); err != nil {
			t.Fatalf("day %d: %v", d, err)
		}
		leaf := s.cur.Load().cert.Leaf
		if err := verifies(leaf, prev, clock.Now()); err != nil {
			t.Fatalf("day %d: the served certificate does not verify against yesterday's caBundle: %v", d, err)
		}
		bundle := webhookBundle(t, cs)
		n := parseCerts(bundle)
		if len(n) > 2 {
			t.Fatalf("day %d: %d CAs in the bundle", d, len(n))
		}
		for _, c := range n {
			cas[c.Subject.CommonName] = true
		}
		certs[leaf.SerialNumber.String()] = true
		prev = bundle
	}
	// 730 days: a new CA on days 244 and 488, a certificate every 60 days.
	if len(cas) != 3 || len(certs) != 13 {
		t.Errorf("in two years: %d CAs (want 3) and %d certificates (want 13)", len(cas), len(certs))
	}
}

// TestSelfSignedCABundle checks the caBundle is put back when someone
// changes it, with a strategic merge patch that touches nothing else, and
// that a missing webhook configuration holds readiness back but not the
// certificate.
func TestSelfSignedCABundle(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	cs := newFakeAPI(t)
	if err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, DefaultWebhookConfig, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	m := NewMetrics()
	s := startSelfCert(t, testSelfConfig(cs, clock), logs, m)
	if s.cur.Load() == nil {
		t.Fatal("no certificate without the webhook configuration")
	}
	if why := s.notReady(); !strings.Contains(why, "caBundle is not set yet") {
		t.Errorf("ready without a caBundle: %q", why)
	}
	if !strings.Contains(logs.String(), "MutatingWebhookConfiguration keyshift-injector not found") {
		t.Errorf("the missing configuration was not logged:\n%s", logs.String())
	}

	// The configuration appears (kubectl apply); the next pass sets it.
	orig := manifestWebhook(t)
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, orig, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	bundle := getSecret(t, cs).Data[CABundleKey]
	want := orig.DeepCopy()
	for i := range want.Webhooks {
		want.Webhooks[i].ClientConfig.CABundle = bundle
	}
	if diff := cmp.Diff(want, getWebhook(t, cs), ignoreManagedFields); diff != "" {
		t.Errorf("webhook configuration (-want +got):\n%s", diff)
	}
	if s.notReady() != "" {
		t.Errorf("not ready after the caBundle was set: %s", s.notReady())
	}

	// Someone changes one webhook's caBundle: only that one is patched back.
	changed := getWebhook(t, cs)
	changed.Webhooks[1].ClientConfig.CABundle = []byte("someone else's CA")
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, changed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cs.ClearActions()
	if err := s.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, getWebhook(t, cs), ignoreManagedFields); diff != "" {
		t.Errorf("webhook configuration after the repair (-want +got):\n%s", diff)
	}
	var patches []k8stesting.PatchAction
	for _, a := range cs.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			patches = append(patches, p)
		}
	}
	if len(patches) != 1 || patches[0].GetPatchType() != types.StrategicMergePatchType {
		t.Fatalf("patches %v, want one strategic merge patch", patches)
	}
	wantPatch := map[string]any{"webhooks": []any{map[string]any{
		"name": "second.keyshift.io", "clientConfig": map[string]any{"caBundle": base64.StdEncoding.EncodeToString(bundle)}}}}
	var gotPatch map[string]any
	if err := json.Unmarshal(patches[0].GetPatch(), &gotPatch); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantPatch, gotPatch); diff != "" {
		t.Errorf("patch (-want +got):\n%s", diff)
	}
	if got := counterValue(m.caBundlePatches.WithLabelValues("ok")); got != 2 {
		t.Errorf("caBundle patches %v, want 2", got)
	}
	checkNoKeysInLogs(t, logs.String(), getSecret(t, cs))
}

// TestSelfSignedRepairs checks what the injector does with a Secret it
// finds: another's is refused, a damaged one of its own is remade.
func TestSelfSignedRepairs(t *testing.T) {
	clock := newTestClock()
	t.Run("not ours", func(t *testing.T) {
		cs := newFakeAPI(t, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: DefaultTLSSecret, Namespace: testNS},
			Type:       corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte("x"), "tls.key": []byte("y")},
		})
		start := time.Now()
		_, err := newSelfCert(context.Background(), testSelfConfig(cs, clock), time.Hour, slog.New(slog.DiscardHandler), NewMetrics())
		want := "injector: self-managed certificate: injector: invalid config: Secret keyshift-system/keyshift-injector-tls exists but is not the injector's (no label app.kubernetes.io/managed-by=keyshift-injector); delete it to let the injector make its own, set --tls-secret to another name, or serve it as it is with --cert-mode=files"
		if err == nil || err.Error() != want {
			t.Fatalf("error %v, want %q", err, want)
		}
		if !errors.Is(err, ErrConfig) || time.Since(start) > 5*time.Second {
			t.Errorf("a foreign Secret is not a config error refused at once (%v, %s)", err, time.Since(start))
		}
		if countActions(cs, "update", "secrets") != 0 {
			t.Error("the foreign Secret was written")
		}
	})
	t.Run("damaged", func(t *testing.T) {
		cs := newFakeAPI(t, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: DefaultTLSSecret, Namespace: testNS, ResourceVersion: "7",
				Labels: map[string]string{ManagedByLabel: ManagedByValue}},
			Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"tls.crt": []byte("garbage"), "tls.key": []byte("garbage"), "note": []byte("kept")},
		})
		s := startSelfCert(t, testSelfConfig(cs, clock), &syncBuffer{}, NewMetrics())
		sec := getSecret(t, cs)
		if err := verifies(leafOf(t, sec), sec.Data[CABundleKey], clock.Now()); err != nil {
			t.Errorf("remade certificate: %v", err)
		}
		if string(sec.Data["note"]) != "kept" {
			t.Error("a key the injector does not own was dropped")
		}
		if s.cur.Load() == nil {
			t.Error("nothing served")
		}
	})
	t.Run("another service name", func(t *testing.T) {
		cs := newFakeAPI(t)
		cfg := testSelfConfig(cs, clock)
		startSelfCert(t, cfg, &syncBuffer{}, NewMetrics())
		cfg.Service = "keyshift-webhook"
		startSelfCert(t, cfg, &syncBuffer{}, NewMetrics())
		if got := leafOf(t, getSecret(t, cs)).DNSNames; !slices.Equal(got, []string{"keyshift-webhook.keyshift-system.svc", "keyshift-webhook.keyshift-system.svc.cluster.local"}) {
			t.Errorf("after renaming the Service the certificate names %v", got)
		}
	})
}

func TestSelfSignedConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*SelfSignedConfig)
		err  string
	}{
		{"defaults", func(*SelfSignedConfig) {}, ""},
		{"no namespace", func(c *SelfSignedConfig) { c.Namespace = "" },
			"injector: invalid config: self-managed certificate: no namespace (set POD_NAMESPACE from the downward API, or --namespace)"},
		{"bad service", func(c *SelfSignedConfig) { c.Service = "Keyshift_Injector" },
			`injector: invalid config: self-managed certificate: Service name "Keyshift_Injector": write a DNS-1123 label such as keyshift-injector`},
		{"bad secret", func(c *SelfSignedConfig) { c.SecretName = "tls/secret" },
			`injector: invalid config: self-managed certificate: Secret name "tls/secret": write a Kubernetes object name such as keyshift-injector`},
		{"cert outlives half the CA", func(c *SelfSignedConfig) { c.CertValidity = 200 * day },
			"injector: invalid config: self-managed certificate: certificate validity 4800h0m0s exceeds half the CA validity 8760h0m0s; write a shorter --cert-validity or a longer --ca-validity"},
		{"cert shorter than the overlap allows", func(c *SelfSignedConfig) { c.CertValidity = 2 * time.Hour },
			"injector: invalid config: self-managed certificate: certificate validity 2h0m0s is under three times the CA overlap 1h0m0s; write a --cert-validity of at least 3h0m0s"},
		{"negative", func(c *SelfSignedConfig) { c.CAValidity = -time.Hour },
			"injector: invalid config: self-managed certificate: negative validity; write durations such as 8760h (CA) and 2160h (certificate)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := SelfSignedConfig{Namespace: testNS}
			tt.mod(&c)
			err := c.Validate()
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || err.Error() != tt.err {
				t.Fatalf("Validate = %v, want %q", err, tt.err)
			}
			if !errors.Is(err, ErrConfig) {
				t.Error("not an ErrConfig")
			}
		})
	}
	cs := newFakeAPI(t)
	_, err := Start(context.Background(), ServerConfig{Addr: "127.0.0.1:0", Injector: testConfig(), CertFile: "a", KeyFile: "b",
		SelfSigned: &SelfSignedConfig{Secrets: cs.CoreV1().Secrets(testNS), Webhooks: cs.AdmissionregistrationV1().MutatingWebhookConfigurations(), Namespace: testNS}})
	if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "exclude each other") {
		t.Errorf("Start with files and self-signed: %v", err)
	}
}

// TestSelfSignedServer runs two real admission servers, as two replicas,
// on one Secret, and a TLS client that trusts only the webhook's caBundle
// and checks the names, as the API server does. Renewals reach both
// servers without a restart; across a CA renewal a client holding the old
// bundle keeps working through the overlap.
func TestSelfSignedServer(t *testing.T) {
	clock := newTestClock()
	cs := newFakeAPI(t)
	logs := &syncBuffer{}
	cfg := testSelfConfig(cs, clock)
	var servers []*Server
	for range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		srv, err := Start(ctx, ServerConfig{
			Addr: "127.0.0.1:0", OpsAddr: "127.0.0.1:0", SelfSigned: &cfg, CertPoll: 20 * time.Millisecond,
			Injector: testConfig(), Logger: jsonLogger(logs),
		})
		if err != nil {
			cancel()
			t.Fatalf("Start: %v", err)
		}
		t.Cleanup(func() {
			cancel()
			if err := srv.Wait(); err != nil {
				t.Errorf("server: %v", err)
			}
		})
		servers = append(servers, srv)
	}
	clientTLS := func(bundle []byte) *tls.Config {
		// Time follows the test's clock: the certificates are made at it.
		return &tls.Config{RootCAs: poolOf(t, bundle), ServerName: testDNSNames[0], Time: clock.Now}
	}
	served := func(srv *Server, bundle []byte) (string, error) {
		c, err := tls.Dial("tcp", srv.Addr(), clientTLS(bundle))
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
	}
	// bothServe waits until the Secret holds a certificate other than
	// prev and both replicas present it to a client holding bundle.
	bothServe := func(what string, bundle []byte, prev string) string {
		t.Helper()
		var want string
		waitFor(t, what+" in the Secret", func() bool {
			want = leafOf(t, getSecret(t, cs)).SerialNumber.String()
			return want != prev
		})
		for i, srv := range servers {
			waitFor(t, what+" on replica "+strconv.Itoa(i), func() bool {
				got, err := served(srv, bundle)
				return err == nil && got == want
			})
		}
		return want
	}

	bundle0 := webhookBundle(t, cs)
	first := bothServe("the first certificate", bundle0, "")
	body := review(t, "self-1", admissionv1.Create, "pods", readPod(t, "minimal"))
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS(bundle0)}}
	resp, err := client.Post("https://"+servers[1].Addr()+"/mutate", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("admission: %d", resp.StatusCode)
	}
	ops, err := http.Get("http://" + servers[0].OpsAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	ops.Body.Close()
	if ops.StatusCode != http.StatusOK {
		t.Errorf("/readyz %d with the caBundle set", ops.StatusCode)
	}

	// Certificate renewals, same CA: both replicas follow the Secret.
	last := first
	for _, d := range []time.Duration{61, 60, 60} {
		clock.Advance(d * day)
		last = bothServe("a renewed certificate", bundle0, last)
	}

	// Day 244: the CA is due. A new CA joins the bundle, and during the
	// overlap the old bundle still verifies what is served.
	clock.Advance(63 * day)
	waitFor(t, "a second CA in the caBundle", func() bool { return len(parseCerts(webhookBundle(t, cs))) == 2 })
	bundle1 := webhookBundle(t, cs)
	for _, srv := range servers {
		if _, err := served(srv, bundle0); err != nil {
			t.Errorf("during the overlap a client with the old bundle fails: %v", err)
		}
	}
	// After the overlap the due certificate is renewed: the new CA signs,
	// the old bundle no longer verifies, the new one does.
	clock.Advance(2 * time.Hour)
	bothServe("a certificate from the new CA", bundle1, last)
	if _, err := served(servers[0], bundle0); err == nil {
		t.Error("a client trusting only the old CA verifies a certificate from the new one")
	}
	if got := countActions(cs, "create", "secrets"); got < 1 || got > 2 {
		t.Errorf("%d creates", got)
	}
	checkNoKeysInLogs(t, logs.String(), getSecret(t, cs))
}

// TestSelfSignedManifests checks that the manifests and the defaults name
// the same objects, and that the RBAC grants what the injector does.
func TestSelfSignedManifests(t *testing.T) {
	var svc corev1.Service
	if err := yaml.UnmarshalStrict(readManifest(t, "service.yaml")[0], &svc); err != nil {
		t.Fatal(err)
	}
	if svc.Name != DefaultService || svc.Namespace != testNS {
		t.Errorf("Service %s/%s, default %s/%s", svc.Namespace, svc.Name, testNS, DefaultService)
	}
	if got := manifestWebhook(t).Name; got != DefaultWebhookConfig {
		t.Errorf("webhook configuration %s, default %s", got, DefaultWebhookConfig)
	}
	var rules []rbacv1.PolicyRule
	for _, doc := range readManifest(t, "rbac.yaml") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "Role":
			var r rbacv1.Role
			if err := yaml.UnmarshalStrict(doc, &r); err != nil {
				t.Fatal(err)
			}
			if r.Namespace != testNS {
				t.Errorf("Role in %s", r.Namespace)
			}
			rules = append(rules, r.Rules...)
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict(doc, &r); err != nil {
				t.Fatal(err)
			}
			rules = append(rules, r.Rules...)
		}
	}
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{DefaultTLSSecret}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
		{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: []string{"mutatingwebhookconfigurations"}, ResourceNames: []string{DefaultWebhookConfig}, Verbs: []string{"get", "patch"}},
	}
	if diff := cmp.Diff(want, rules); diff != "" {
		t.Errorf("RBAC rules (-want +got):\n%s", diff)
	}
}
