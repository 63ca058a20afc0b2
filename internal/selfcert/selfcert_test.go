package selfcert_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/keyshift/keyshift/internal/selfcert"
	"github.com/keyshift/keyshift/internal/selfcert/selfcerttest"
)

const (
	testNS     = "keyshift-system"
	testOwner  = "keyshift-controller"
	testSecret = "keyshift-controller-tls" // the default: Owner + "-tls"
	day        = 24 * time.Hour
)

// The names the serving certificate must carry, as clients dial it.
var testDNSNames = []string{"keyshift-controller.keyshift-system.svc", "keyshift-controller.keyshift-system.svc.cluster.local"}

// publisher records every bundle PublishCA is given, and fails while err
// is set.
type publisher struct {
	mu      sync.Mutex
	bundles [][]byte
	err     error
}

func (p *publisher) publish(_ context.Context, bundle []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bundles = append(p.bundles, bundle)
	return p.err
}

func (p *publisher) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
}

// last is the bundle of the latest call, after checking there was one.
func (p *publisher) last(t *testing.T) []byte {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.bundles) == 0 {
		t.Fatal("PublishCA was never called")
	}
	return p.bundles[len(p.bundles)-1]
}

func (p *publisher) calls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.bundles)
}

// hookLog records what Hooks are told.
type hookLog struct {
	mu     sync.Mutex
	writes map[string]int
	loads  []loadEvent
}

type loadEvent struct {
	OK       bool
	NotAfter time.Time
}

func (h *hookLog) hooks() selfcert.Hooks {
	return selfcert.Hooks{
		SecretWrite: func(result string) {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.writes == nil {
				h.writes = map[string]int{}
			}
			h.writes[result]++
		},
		Loaded: func(ok bool, notAfter time.Time) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.loads = append(h.loads, loadEvent{ok, notAfter})
		},
	}
}

func (h *hookLog) secretWrites() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.writes)
}

func (h *hookLog) loaded() []loadEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.loads)
}

func testConfig(cs *fake.Clientset, clock *selfcerttest.Clock, pub *publisher) selfcert.Config {
	return selfcert.Config{
		Secrets:   cs.CoreV1().Secrets(testNS),
		Namespace: testNS,
		Owner:     testOwner,
		DNSNames:  testDNSNames,
		Now:       clock.Now,
		PublishCA: pub.publish,
	}
}

func jsonLogger(w *selfcerttest.LogBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func start(t *testing.T, cfg selfcert.Config, logs *selfcerttest.LogBuffer) *selfcert.Cert {
	t.Helper()
	c, err := selfcert.Start(context.Background(), cfg, time.Hour, jsonLogger(logs))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return c
}

func getSecret(t *testing.T, cs *fake.Clientset) *corev1.Secret {
	t.Helper()
	sec, err := cs.CoreV1().Secrets(testNS).Get(context.Background(), testSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// servedLeaf is the certificate c hands to a TLS handshake now.
func servedLeaf(t *testing.T, c *selfcert.Cert) *x509.Certificate {
	t.Helper()
	cert, err := c.GetCertificate(&tls.ClientHelloInfo{ServerName: testDNSNames[0]})
	if err != nil || cert == nil || cert.Leaf == nil {
		t.Fatalf("GetCertificate: %v, %v", cert, err)
	}
	return cert.Leaf
}

func TestCreate(t *testing.T) {
	clock := selfcerttest.NewClock()
	t0 := clock.Now()
	cs := selfcerttest.NewFakeAPI(t)
	logs := &selfcerttest.LogBuffer{}
	pub := &publisher{}
	var hooks hookLog
	cfg := testConfig(cs, clock, pub)
	cfg.Hooks = hooks.hooks()
	c := start(t, cfg, logs)

	sec := getSecret(t, cs)
	if sec.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret type %q", sec.Type)
	}
	wantLabels := map[string]string{selfcert.ManagedByLabel: testOwner, "app.kubernetes.io/name": testOwner, "app.kubernetes.io/part-of": "keyshift"}
	if diff := cmp.Diff(wantLabels, sec.Labels); diff != "" {
		t.Errorf("Secret labels (-want +got):\n%s", diff)
	}
	var keys []string
	for k := range sec.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if diff := cmp.Diff([]string{"ca.crt", "ca.key", "tls.crt", "tls.key"}, keys); diff != "" {
		t.Errorf("Secret keys (-want +got):\n%s", diff)
	}
	for _, a := range cs.Actions() {
		if a, ok := a.(k8stesting.CreateActionImpl); ok {
			if got := a.GetCreateOptions().FieldManager; got != testOwner {
				t.Errorf("create with field manager %q, want %q", got, testOwner)
			}
		}
	}

	cas := selfcerttest.Certs(t, sec.Data[selfcert.CABundleKey])
	if len(cas) != 1 {
		t.Fatalf("ca.crt holds %d certificates, want 1", len(cas))
	}
	ca, leaf := cas[0], selfcerttest.Leaf(t, sec)
	for _, c := range []*x509.Certificate{ca, leaf} {
		if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s: key is not ECDSA P-256", c.Subject.CommonName)
		}
	}
	if !ca.IsCA || !ca.NotAfter.Equal(t0.Add(selfcert.DefaultCAValidity)) || !strings.HasPrefix(ca.Subject.CommonName, testOwner+"-ca@") {
		t.Errorf("CA %s: IsCA %v, NotAfter %s, want %s", ca.Subject.CommonName, ca.IsCA, ca.NotAfter, t0.Add(selfcert.DefaultCAValidity))
	}
	if leaf.IsCA || !leaf.NotAfter.Equal(t0.Add(selfcert.DefaultCertValidity)) || !slices.Equal(leaf.DNSNames, testDNSNames) || leaf.Subject.CommonName != testDNSNames[0] {
		t.Errorf("serving certificate %s: IsCA %v, NotAfter %s (want %s), names %v", leaf.Subject.CommonName, leaf.IsCA, leaf.NotAfter, t0.Add(selfcert.DefaultCertValidity), leaf.DNSNames)
	}
	if err := selfcerttest.Verify(leaf, sec.Data[selfcert.CABundleKey], t0, testDNSNames); err != nil {
		t.Errorf("serving certificate does not verify against ca.crt: %v", err)
	}
	if got := servedLeaf(t, c).SerialNumber; got.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("serving serial %s, the Secret's is %s", got, leaf.SerialNumber)
	}
	if !bytes.Equal(pub.last(t), sec.Data[selfcert.CABundleKey]) || !bytes.Equal(c.Bundle(), sec.Data[selfcert.CABundleKey]) {
		t.Errorf("published bundle or Bundle() is not the Secret's ca.crt")
	}
	if c.NotReady() != "" {
		t.Errorf("not ready after the bundle was published: %s", c.NotReady())
	}
	if diff := cmp.Diff(map[string]int{selfcert.WriteCreated: 1}, hooks.secretWrites()); diff != "" {
		t.Errorf("SecretWrite hooks (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]loadEvent{{true, leaf.NotAfter}}, hooks.loaded()); diff != "" {
		t.Errorf("Loaded hooks (-want +got):\n%s", diff)
	}

	// A second pass with nothing due writes nothing, and publishes the
	// same bundle again (the publisher repairs what others changed).
	before := len(cs.Actions())
	if err := c.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, a := range cs.Actions()[before:] {
		if a.GetVerb() != "get" {
			t.Errorf("an idle sync did %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
	if pub.calls() != 2 || !bytes.Equal(pub.last(t), sec.Data[selfcert.CABundleKey]) {
		t.Errorf("an idle sync published %d times in all, the last %q", pub.calls(), pub.last(t))
	}
	if got := hooks.loaded(); len(got) != 1 {
		t.Errorf("an idle sync reloaded the pair: %v", got)
	}
	selfcerttest.CheckNoKeysInLogs(t, logs.String(), sec)
}

// barrierSecrets holds the answers of the first n Gets, across every
// client sharing it, until all n have read, so that n managers read the
// same Secret before any of them writes: the race, made to happen every
// run.
type barrierSecrets struct {
	selfcert.SecretClient
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

// TestRace runs two managers, as two replicas, on one Secret: both find
// it missing and create it (one gets AlreadyExists and adopts the
// winner's), then both find it due and update it (one gets a Conflict,
// rereads, and finds nothing left to do). They always serve the same.
func TestRace(t *testing.T) {
	clock := selfcerttest.NewClock()
	cs := selfcerttest.NewFakeAPI(t)
	logs := &selfcerttest.LogBuffer{}
	var hooks hookLog
	b := newBarrier(2)
	cfg := testConfig(cs, clock, &publisher{})
	cfg.Secrets = barrierSecrets{cfg.Secrets, b}
	cfg.Hooks = hooks.hooks()

	var wg sync.WaitGroup
	var managers [2]*selfcert.Cert
	for i := range managers {
		wg.Go(func() {
			c, err := selfcert.Start(context.Background(), cfg, time.Hour, jsonLogger(logs))
			if err != nil {
				t.Errorf("manager %d: %v", i, err)
				return
			}
			managers[i] = c
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	sameServed := func(step string) *x509.Certificate {
		t.Helper()
		leaf := selfcerttest.Leaf(t, getSecret(t, cs))
		for i, c := range managers {
			if got := servedLeaf(t, c).SerialNumber; got.Cmp(leaf.SerialNumber) != 0 {
				t.Errorf("%s: manager %d serves %s, the Secret holds %s", step, i, got, leaf.SerialNumber)
			}
		}
		return leaf
	}
	first := sameServed("create")
	if got := selfcerttest.CountActions(cs, "create", "secrets"); got != 2 {
		t.Errorf("%d creates, want 2 (both found the Secret missing)", got)
	}
	if diff := cmp.Diff(map[string]int{selfcert.WriteCreated: 1, selfcert.WriteConflict: 1}, hooks.secretWrites()); diff != "" {
		t.Errorf("Secret writes after the creation (-want +got):\n%s", diff)
	}

	clock.Advance(61 * day)
	b.reset(2)
	for i, c := range managers {
		wg.Go(func() {
			if err := c.Sync(context.Background()); err != nil {
				t.Errorf("manager %d renewal: %v", i, err)
			}
		})
	}
	wg.Wait()
	renewed := sameServed("renewal")
	if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("the serving certificate was not renewed")
	}
	if got := selfcerttest.CountActions(cs, "update", "secrets"); got != 2 {
		t.Errorf("%d updates, want 2 (both found the certificate due)", got)
	}
	if diff := cmp.Diff(map[string]int{selfcert.WriteCreated: 1, selfcert.WriteRenewed: 1, selfcert.WriteConflict: 2}, hooks.secretWrites()); diff != "" {
		t.Errorf("Secret writes after the renewal (-want +got):\n%s", diff)
	}
	selfcerttest.CheckNoKeysInLogs(t, logs.String(), getSecret(t, cs))
}

// TestRenewal walks a Secret through time: the certificate is renewed at
// two thirds of its life under the same CA; a new CA joins the bundle at
// two thirds of the CA's life, and signs only after CAOverlap; the old CA
// leaves the bundle when it expires.
func TestRenewal(t *testing.T) {
	clock := selfcerttest.NewClock()
	t0 := clock.Now()
	cs := selfcerttest.NewFakeAPI(t)
	logs := &selfcerttest.LogBuffer{}
	pub := &publisher{}
	cfg := testConfig(cs, clock, pub)
	// 270 days, so the CA falls due (day 180) just as the third
	// certificate does: the overlap is what decides.
	cfg.CAValidity = 270 * day
	c := start(t, cfg, logs)

	type state struct {
		Serial string
		CAs    []string
		Issuer string
	}
	now := func() state {
		t.Helper()
		sec := getSecret(t, cs)
		leaf := selfcerttest.Leaf(t, sec)
		var cas []string
		for _, c := range selfcerttest.Certs(t, sec.Data[selfcert.CABundleKey]) {
			cas = append(cas, c.Subject.CommonName)
		}
		if err := selfcerttest.Verify(leaf, sec.Data[selfcert.CABundleKey], clock.Now(), testDNSNames); err != nil {
			t.Errorf("at +%s the serving certificate does not verify against ca.crt: %v", clock.Now().Sub(t0), err)
		}
		if got := pub.last(t); !bytes.Equal(got, sec.Data[selfcert.CABundleKey]) {
			t.Errorf("at +%s the published bundle is not ca.crt", clock.Now().Sub(t0))
		}
		if got := servedLeaf(t, c).SerialNumber.String(); got != leaf.SerialNumber.String() {
			t.Errorf("at +%s serving %s, the Secret holds %s", clock.Now().Sub(t0), got, leaf.SerialNumber)
		}
		return state{Serial: leaf.SerialNumber.String(), CAs: cas, Issuer: leaf.Issuer.CommonName}
	}
	step := func(to time.Duration) state {
		t.Helper()
		clock.Advance(t0.Add(to).Sub(clock.Now()))
		if err := c.Sync(context.Background()); err != nil {
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
	if !bytes.Equal(c.Bundle(), pub.last(t)) {
		t.Error("day 180: Bundle() is not the published bundle with both CAs")
	}
	ca1 := s3.CAs[1]
	if got := step(180*day + 3*time.Hour + selfcert.DefaultCAOverlap/2); got.Serial != s2.Serial {
		t.Errorf("half the overlap later the certificate changed: %+v", got)
	}
	s4 := step(180*day + 3*time.Hour + selfcert.DefaultCAOverlap)
	if s4.Serial == s2.Serial || s4.Issuer != ca1 || !cmp.Equal(s4.CAs, []string{ca0, ca1}) {
		t.Errorf("after the overlap: %+v; want a certificate from %s with both CAs trusted", s4, ca1)
	}

	// Day 270: the first CA expires and leaves the bundle.
	s5 := step(270 * day)
	if !cmp.Equal(s5.CAs, []string{ca1}) || s5.Issuer != ca1 {
		t.Errorf("day 270: %+v; want %s alone", s5, ca1)
	}
	selfcerttest.CheckNoKeysInLogs(t, logs.String(), getSecret(t, cs))
}

// TestYears syncs once a day for two years with the default lifetimes and
// checks, every day, what keeps clients working: the served certificate
// is live and verifies against the bundle published the day before (so no
// renewal outruns the bundle), and the bundle holds at most two CAs.
func TestYears(t *testing.T) {
	clock := selfcerttest.NewClock()
	cs := selfcerttest.NewFakeAPI(t)
	pub := &publisher{}
	c := start(t, testConfig(cs, clock, pub), &selfcerttest.LogBuffer{})
	prev := pub.last(t)
	cas := map[string]bool{}
	certs := map[string]bool{}
	for d := 1; d <= 730; d++ {
		clock.Advance(day)
		if err := c.Sync(context.Background()); err != nil {
			t.Fatalf("day %d: %v", d, err)
		}
		leaf := servedLeaf(t, c)
		if err := selfcerttest.Verify(leaf, prev, clock.Now(), testDNSNames); err != nil {
			t.Fatalf("day %d: the served certificate does not verify against yesterday's bundle: %v", d, err)
		}
		bundle := pub.last(t)
		n := selfcerttest.Certs(t, bundle)
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

// TestRepairs checks what a manager does with a Secret it finds: another's
// is refused, a damaged one of its own is remade, one with other names is
// reissued.
func TestRepairs(t *testing.T) {
	clock := selfcerttest.NewClock()
	notOurs := []struct {
		name   string
		labels map[string]string
		flags  selfcert.Flags
		want   string
	}{
		{"no label", nil, selfcert.Flags{},
			"selfcert: invalid config: Secret keyshift-system/keyshift-controller-tls exists but is not keyshift-controller's (no label app.kubernetes.io/managed-by=keyshift-controller); delete it to let keyshift-controller make its own, or set SecretName to another name"},
		{"another owner's", map[string]string{selfcert.ManagedByLabel: "keyshift-injector"}, selfcert.Flags{SecretName: "--xds-tls-secret", Otherwise: "run with --xds-auth=none"},
			"selfcert: invalid config: Secret keyshift-system/keyshift-controller-tls exists but is not keyshift-controller's (no label app.kubernetes.io/managed-by=keyshift-controller); delete it to let keyshift-controller make its own, set --xds-tls-secret to another name, or run with --xds-auth=none"},
	}
	for _, tt := range notOurs {
		t.Run("not ours/"+tt.name, func(t *testing.T) {
			cs := selfcerttest.NewFakeAPI(t, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: testSecret, Namespace: testNS, Labels: tt.labels},
				Type:       corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte("x"), "tls.key": []byte("y")},
			})
			cfg := testConfig(cs, clock, &publisher{})
			cfg.Flags = tt.flags
			begin := time.Now()
			_, err := selfcert.Start(context.Background(), cfg, time.Hour, nil)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			var ce *selfcert.ConfigError
			if !errors.Is(err, selfcert.ErrConfig) || !errors.As(err, &ce) || time.Since(begin) > 5*time.Second {
				t.Errorf("a foreign Secret is not a config error refused at once (%v, %s)", err, time.Since(begin))
			}
			if selfcerttest.CountActions(cs, "update", "secrets") != 0 {
				t.Error("the foreign Secret was written")
			}
		})
	}
	t.Run("damaged", func(t *testing.T) {
		cs := selfcerttest.NewFakeAPI(t, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: testSecret, Namespace: testNS, ResourceVersion: "7",
				Labels: map[string]string{selfcert.ManagedByLabel: testOwner}},
			Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"tls.crt": []byte("garbage"), "tls.key": []byte("garbage"), "note": []byte("kept")},
		})
		c := start(t, testConfig(cs, clock, &publisher{}), &selfcerttest.LogBuffer{})
		sec := getSecret(t, cs)
		if err := selfcerttest.Verify(selfcerttest.Leaf(t, sec), sec.Data[selfcert.CABundleKey], clock.Now(), testDNSNames); err != nil {
			t.Errorf("remade certificate: %v", err)
		}
		if string(sec.Data["note"]) != "kept" {
			t.Error("a key the manager does not own was dropped")
		}
		if got := servedLeaf(t, c).SerialNumber; got.Cmp(selfcerttest.Leaf(t, sec).SerialNumber) != 0 {
			t.Error("the remade certificate is not served")
		}
	})
	t.Run("other names", func(t *testing.T) {
		cs := selfcerttest.NewFakeAPI(t)
		cfg := testConfig(cs, clock, &publisher{})
		start(t, cfg, &selfcerttest.LogBuffer{})
		cfg.DNSNames = []string{"keyshift-xds.keyshift-system.svc"}
		start(t, cfg, &selfcerttest.LogBuffer{})
		if got := selfcerttest.Leaf(t, getSecret(t, cs)).DNSNames; !slices.Equal(got, cfg.DNSNames) {
			t.Errorf("after renaming the Service the certificate names %v", got)
		}
	})
}

// flakySecrets fails the first fails Gets with err, then passes them on.
type flakySecrets struct {
	selfcert.SecretClient
	mu    sync.Mutex
	fails int
	err   error
	gets  int
}

func (s *flakySecrets) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error) {
	s.mu.Lock()
	s.gets++
	fail := s.gets <= s.fails
	s.mu.Unlock()
	if fail {
		return nil, s.err
	}
	return s.SecretClient.Get(ctx, name, opts)
}

// TestStartRetries checks Start waits out an API server that refuses for
// a while (RBAC applied after the Deployment), and gives up after
// StartTimeout with the reason.
func TestStartRetries(t *testing.T) {
	forbidden := apierrors.NewForbidden(corev1.Resource("secrets"), testSecret, errors.New("RBAC: not yet"))
	t.Run("recovers", func(t *testing.T) {
		cs := selfcerttest.NewFakeAPI(t)
		cfg := testConfig(cs, selfcerttest.NewClock(), &publisher{})
		flaky := &flakySecrets{SecretClient: cfg.Secrets, fails: 2, err: forbidden}
		cfg.Secrets = flaky
		logs := &selfcerttest.LogBuffer{}
		c, err := selfcert.Start(context.Background(), cfg, 20*time.Millisecond, jsonLogger(logs))
		if err != nil {
			t.Fatal(err)
		}
		if c.NotReady() != "" || flaky.gets != 3 {
			t.Errorf("after %d Gets: not ready: %q", flaky.gets, c.NotReady())
		}
		if n := strings.Count(logs.String(), "cannot get the TLS Secret yet; retrying"); n != 2 {
			t.Errorf("%d retries logged, want 2:\n%s", n, logs.String())
		}
	})
	t.Run("gives up", func(t *testing.T) {
		cs := selfcerttest.NewFakeAPI(t)
		cfg := testConfig(cs, selfcerttest.NewClock(), &publisher{})
		cfg.Secrets = &flakySecrets{SecretClient: cfg.Secrets, fails: 1 << 30, err: forbidden}
		cfg.StartTimeout = 100 * time.Millisecond
		begin := time.Now()
		_, err := selfcert.Start(context.Background(), cfg, 20*time.Millisecond, nil)
		if !apierrors.IsForbidden(err) || errors.Is(err, selfcert.ErrConfig) || !strings.HasPrefix(err.Error(), "selfcert: get Secret keyshift-system/keyshift-controller-tls: ") {
			t.Errorf("error %v, want the Forbidden", err)
		}
		if d := time.Since(begin); d > 2*time.Second {
			t.Errorf("gave up after %s", d)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		cs := selfcerttest.NewFakeAPI(t)
		cfg := testConfig(cs, selfcerttest.NewClock(), &publisher{})
		cfg.Secrets = &flakySecrets{SecretClient: cfg.Secrets, fails: 1 << 30, err: forbidden}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := selfcert.Start(ctx, cfg, time.Hour, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v, want the context's", err)
		}
	})
}

// TestPublish checks that a bundle that cannot be published holds
// readiness back but not the certificate, that Run retries until it is
// published, and that a later failure does not make the replica unready.
func TestPublish(t *testing.T) {
	ctx := context.Background()
	clock := selfcerttest.NewClock()
	cs := selfcerttest.NewFakeAPI(t)
	pub := &publisher{err: errors.New("configmaps is forbidden")}
	logs := &selfcerttest.LogBuffer{}
	c, err := selfcert.Start(ctx, testConfig(cs, clock, pub), 20*time.Millisecond, jsonLogger(logs))
	if err != nil {
		t.Fatal(err)
	}
	servedLeaf(t, c)
	if why := c.NotReady(); why != "the CA bundle of Secret keyshift-system/keyshift-controller-tls is not published yet (see the keyshift-controller log)" {
		t.Errorf("NotReady = %q", why)
	}
	if !strings.Contains(logs.String(), "configmaps is forbidden") || !strings.Contains(logs.String(), "CA bundle is not published yet") {
		t.Errorf("the failed publication was not logged:\n%s", logs.String())
	}
	if err := c.Sync(ctx); err == nil || err.Error() != "selfcert: publish the CA bundle: configmaps is forbidden" {
		t.Errorf("Sync = %v", err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	calls := pub.calls()
	waitFor(t, "Run to retry", func() bool { return pub.calls() > calls })
	pub.setErr(nil)
	waitFor(t, "the bundle published", func() bool { return c.NotReady() == "" })
	if !bytes.Equal(pub.last(t), getSecret(t, cs).Data[selfcert.CABundleKey]) {
		t.Error("published bundle is not ca.crt")
	}

	pub.setErr(errors.New("down again"))
	calls = pub.calls()
	waitFor(t, "another publication", func() bool { return pub.calls() > calls })
	if c.NotReady() != "" {
		t.Errorf("a later failure made the replica unready: %q", c.NotReady())
	}
}

// TestServeTLS serves GetCertificate on a real TLS listener to a client
// that trusts only Bundle() and checks the names, and follows a renewal
// made by Run without a restart.
func TestServeTLS(t *testing.T) {
	clock := selfcerttest.NewClock()
	cs := selfcerttest.NewFakeAPI(t)
	logs := &selfcerttest.LogBuffer{}
	c, err := selfcert.Start(context.Background(), testConfig(cs, clock, &publisher{}), 20*time.Millisecond, jsonLogger(logs))
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: c.GetCertificate, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.(*tls.Conn).Handshake()
			}()
		}
	}()
	bundle := c.Bundle()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		t.Fatal("Bundle() holds no certificate")
	}
	served := func() (string, error) {
		conn, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: roots, ServerName: testDNSNames[1], Time: clock.Now})
		if err != nil {
			return "", err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
	}
	first, err := served()
	if err != nil {
		t.Fatal(err)
	}
	if want := selfcerttest.Leaf(t, getSecret(t, cs)).SerialNumber.String(); first != want {
		t.Errorf("served %s, the Secret holds %s", first, want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	clock.Advance(61 * day)
	waitFor(t, "the renewed certificate served", func() bool {
		got, err := served()
		return err == nil && got != first
	})
	selfcerttest.CheckNoKeysInLogs(t, logs.String(), getSecret(t, cs))
}

func TestConfigValidate(t *testing.T) {
	valid := func() selfcert.Config {
		return selfcert.Config{Namespace: testNS, Owner: testOwner, DNSNames: testDNSNames}
	}
	tests := []struct {
		name string
		mod  func(*selfcert.Config)
		err  string
	}{
		{"defaults", func(*selfcert.Config) {}, ""},
		{"no namespace", func(c *selfcert.Config) { c.Namespace = "" },
			"selfcert: invalid config: no namespace (set Namespace)"},
		{"no namespace, flag named", func(c *selfcert.Config) { c.Namespace, c.Flags.Namespace = "", "POD_NAMESPACE" },
			"selfcert: invalid config: no namespace (set POD_NAMESPACE)"},
		{"bad namespace", func(c *selfcert.Config) { c.Namespace = "Keyshift" },
			`selfcert: invalid config: namespace "Keyshift": write a DNS-1123 label such as keyshift-system`},
		{"no owner", func(c *selfcert.Config) { c.Owner = "" },
			`selfcert: invalid config: owner "": write a DNS-1123 label such as keyshift-injector`},
		{"bad secret", func(c *selfcert.Config) { c.SecretName = "tls/secret" },
			`selfcert: invalid config: Secret name "tls/secret": write a Kubernetes object name such as keyshift-controller-tls`},
		{"no DNS names", func(c *selfcert.Config) { c.DNSNames = nil },
			"selfcert: invalid config: no DNS names for the serving certificate; write the Service's, such as keyshift-controller.keyshift-system.svc"},
		{"bad DNS name", func(c *selfcert.Config) { c.DNSNames = []string{"xds_server.svc"} },
			`selfcert: invalid config: DNS name "xds_server.svc": write a DNS name such as keyshift-controller.keyshift-system.svc`},
		{"cert outlives half the CA", func(c *selfcert.Config) { c.CertValidity = 200 * day },
			"selfcert: invalid config: certificate validity 4800h0m0s exceeds half the CA validity 8760h0m0s; write a shorter CertValidity or a longer CAValidity"},
		{"cert outlives half the CA, flags named", func(c *selfcert.Config) {
			c.CertValidity, c.Flags.CertValidity, c.Flags.CAValidity = 200*day, "--xds-cert-validity", "--xds-ca-validity"
		},
			"selfcert: invalid config: certificate validity 4800h0m0s exceeds half the CA validity 8760h0m0s; write a shorter --xds-cert-validity or a longer --xds-ca-validity"},
		{"cert shorter than the overlap allows", func(c *selfcert.Config) { c.CertValidity = 2 * time.Hour },
			"selfcert: invalid config: certificate validity 2h0m0s is under three times the CA overlap 1h0m0s; write a CertValidity of at least 3h0m0s"},
		{"negative", func(c *selfcert.Config) { c.CAOverlap = -time.Hour },
			"selfcert: invalid config: negative validity; write durations such as 8760h (CA) and 2160h (certificate)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mod(&c)
			checkConfigErr(t, c.Validate(), tt.err)
		})
	}

	cs := selfcerttest.NewFakeAPI(t)
	for _, tt := range []struct {
		name string
		mod  func(*selfcert.Config)
		err  string
	}{
		{"no client", func(c *selfcert.Config) { c.Secrets = nil }, "selfcert: invalid config: no Kubernetes client for Secrets"},
		{"no publisher", func(c *selfcert.Config) { c.PublishCA = nil }, "selfcert: invalid config: no PublishCA: say where the CA bundle goes"},
	} {
		t.Run("Start/"+tt.name, func(t *testing.T) {
			c := testConfig(cs, selfcerttest.NewClock(), &publisher{})
			tt.mod(&c)
			_, err := selfcert.Start(context.Background(), c, time.Hour, nil)
			checkConfigErr(t, err, tt.err)
			if len(cs.Actions()) != 0 {
				t.Errorf("Start reached the API server: %v", cs.Actions())
			}
		})
	}
}

func checkConfigErr(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
	var ce *selfcert.ConfigError
	if !errors.Is(err, selfcert.ErrConfig) || !errors.As(err, &ce) {
		t.Error("not a *ConfigError wrapping ErrConfig")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
