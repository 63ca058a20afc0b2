package injector

import (
	"bytes"
	"context"
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
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/keyshift/keyshift/internal/selfcert/selfcerttest"
)

// These tests cover the injector's part of the self-managed certificate:
// its flags and names, the webhook configuration's caBundle, its metrics,
// the manifests and two real admission servers. The CA itself (renewal,
// overlap, replicas racing, repairs) is tested in internal/selfcert.

const testNS = "keyshift-system"

// The names the serving certificate must carry, as the API server dials it.
var testDNSNames = []string{"keyshift-injector.keyshift-system.svc", "keyshift-injector.keyshift-system.svc.cluster.local"}

const day = 24 * time.Hour

// ignoreManagedFields leaves out what the fake's field manager records.
var ignoreManagedFields = cmpopts.IgnoreFields(metav1.ObjectMeta{}, "ManagedFields")

// readManifest decodes the YAML documents of manifests/injector/name.
func readManifest(t *testing.T, name string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "manifests", "injector", name))
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
// newFakeAPI is client-go's fake clientset, with the API server's
// optimistic concurrency for Secrets, holding the manifests' webhook
// configuration and objs.
func newFakeAPI(t *testing.T, objs ...runtime.Object) *fake.Clientset {
	t.Helper()
	return selfcerttest.NewFakeAPI(t, append([]runtime.Object{manifestWebhook(t)}, objs...)...)
}

func testSelfConfig(cs *fake.Clientset, clock *selfcerttest.Clock) SelfSignedConfig {
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

// servedLeaf is the certificate s hands to a TLS handshake now.
func servedLeaf(t *testing.T, s *selfCert) *x509.Certificate {
	t.Helper()
	cert, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: testDNSNames[0]})
	if err != nil || cert == nil || cert.Leaf == nil {
		t.Fatalf("GetCertificate: %v, %v", cert, err)
	}
	return cert.Leaf
}

// TestSelfSignedCreate checks what the injector asks of package selfcert:
// a Secret labelled as the injector's, under the default name, with a
// certificate for the Service's names, its CA in every webhook's caBundle,
// readiness, and the metrics.
func TestSelfSignedCreate(t *testing.T) {
	clock := selfcerttest.NewClock()
	t0 := clock.Now()
	cs := newFakeAPI(t)
	logs := &syncBuffer{}
	m := NewMetrics()
	s := startSelfCert(t, testSelfConfig(cs, clock), logs, m)

	sec := getSecret(t, cs)
	wantLabels := map[string]string{ManagedByLabel: ManagedByValue, "app.kubernetes.io/name": "keyshift-injector", "app.kubernetes.io/part-of": "keyshift"}
	if diff := cmp.Diff(wantLabels, sec.Labels); diff != "" || sec.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret type %q, labels (-want +got):\n%s", sec.Type, diff)
	}
	cas := selfcerttest.Certs(t, sec.Data[CABundleKey])
	if len(cas) != 1 || !strings.HasPrefix(cas[0].Subject.CommonName, "keyshift-injector-ca@") || !cas[0].NotAfter.Equal(t0.Add(DefaultCAValidity)) {
		t.Fatalf("ca.crt: %d CAs, the first %s until %s", len(cas), cas[0].Subject.CommonName, cas[0].NotAfter)
	}
	leaf := selfcerttest.Leaf(t, sec)
	if !leaf.NotAfter.Equal(t0.Add(DefaultCertValidity)) || !slices.Equal(leaf.DNSNames, testDNSNames) {
		t.Errorf("serving certificate: NotAfter %s (want %s), names %v", leaf.NotAfter, t0.Add(DefaultCertValidity), leaf.DNSNames)
	}
	if err := selfcerttest.Verify(leaf, sec.Data[CABundleKey], t0, testDNSNames); err != nil {
		t.Errorf("serving certificate does not verify against ca.crt: %v", err)
	}
	if got := servedLeaf(t, s).SerialNumber; got.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("serving serial %s, the Secret's is %s", got, leaf.SerialNumber)
	}
	if got := webhookBundle(t, cs); !bytes.Equal(got, sec.Data[CABundleKey]) {
		t.Errorf("webhook caBundle is not the Secret's ca.crt")
	}
	if s.notReady() != "" {
		t.Errorf("not ready after the caBundle was set: %s", s.notReady())
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"Secret created", counterValue(m.secretWrites.WithLabelValues("created")), 1},
		{"TLS reloads ok", counterValue(m.tlsReloads.WithLabelValues("ok")), 1},
		{"caBundle patches ok", counterValue(m.caBundlePatches.WithLabelValues("ok")), 1},
		{"certificate expiry", gaugeValue(m.certExpiry), float64(leaf.NotAfter.Unix())},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}

	// A second pass with nothing due writes nothing: neither the Secret
	// nor the webhook configuration.
	before := len(cs.Actions())
	if err := s.sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, a := range cs.Actions()[before:] {
		if a.GetVerb() != "get" {
			t.Errorf("an idle sync did %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
	selfcerttest.CheckNoKeysInLogs(t, logs.String(), sec)
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

// TestSelfSignedCABundle checks the caBundle is put back when someone
// changes it, with a strategic merge patch that touches nothing else, and
// that a missing webhook configuration holds readiness back but not the
// certificate.
func TestSelfSignedCABundle(t *testing.T) {
	ctx := context.Background()
	clock := selfcerttest.NewClock()
	cs := newFakeAPI(t)
	if err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, DefaultWebhookConfig, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	m := NewMetrics()
	s := startSelfCert(t, testSelfConfig(cs, clock), logs, m)
	// Served without the webhook configuration (servedLeaf fails if not).
	servedLeaf(t, s)
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
	selfcerttest.CheckNoKeysInLogs(t, logs.String(), getSecret(t, cs))
}

// TestSelfSignedRepairs checks the injector's side of what it finds: a
// Secret that is not its own is refused with the flags that get around it,
// and renaming the Service reissues the certificate for the new names.
// (A damaged Secret, races and renewals: internal/selfcert.)
func TestSelfSignedRepairs(t *testing.T) {
	clock := selfcerttest.NewClock()
	t.Run("not ours", func(t *testing.T) {
		cs := newFakeAPI(t, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: DefaultTLSSecret, Namespace: testNS},
			Type:       corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": []byte("x"), "tls.key": []byte("y")},
		})
		start := time.Now()
		_, err := newSelfCert(context.Background(), testSelfConfig(cs, clock), time.Hour, slog.New(slog.DiscardHandler), NewMetrics())
		want := "injector: invalid config: self-managed certificate: Secret keyshift-system/keyshift-injector-tls exists but is not keyshift-injector's (no label app.kubernetes.io/managed-by=keyshift-injector); delete it to let keyshift-injector make its own, set --tls-secret to another name, or serve it as it is with --cert-mode=files"
		if err == nil || err.Error() != want {
			t.Fatalf("error %v, want %q", err, want)
		}
		if !errors.Is(err, ErrConfig) || time.Since(start) > 5*time.Second {
			t.Errorf("a foreign Secret is not a config error refused at once (%v, %s)", err, time.Since(start))
		}
		if selfcerttest.CountActions(cs, "update", "secrets") != 0 {
			t.Error("the foreign Secret was written")
		}
	})
	t.Run("another service name", func(t *testing.T) {
		cs := newFakeAPI(t)
		cfg := testSelfConfig(cs, clock)
		startSelfCert(t, cfg, &syncBuffer{}, NewMetrics())
		cfg.Service = "keyshift-webhook"
		s := startSelfCert(t, cfg, &syncBuffer{}, NewMetrics())
		want := []string{"keyshift-webhook.keyshift-system.svc", "keyshift-webhook.keyshift-system.svc.cluster.local"}
		if got := selfcerttest.Leaf(t, getSecret(t, cs)).DNSNames; !slices.Equal(got, want) {
			t.Errorf("after renaming the Service the certificate names %v", got)
		}
		if got := servedLeaf(t, s).DNSNames; !slices.Equal(got, want) {
			t.Errorf("after renaming the Service the served certificate names %v", got)
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
			`injector: invalid config: self-managed certificate: Secret name "tls/secret": write a Kubernetes object name such as keyshift-injector-tls`},
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
	clock := selfcerttest.NewClock()
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
			want = selfcerttest.Leaf(t, getSecret(t, cs)).SerialNumber.String()
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
	waitFor(t, "a second CA in the caBundle", func() bool { return len(selfcerttest.Certs(t, webhookBundle(t, cs))) == 2 })
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
	if got := selfcerttest.CountActions(cs, "create", "secrets"); got < 1 || got > 2 {
		t.Errorf("%d creates", got)
	}
	selfcerttest.CheckNoKeysInLogs(t, logs.String(), getSecret(t, cs))
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
