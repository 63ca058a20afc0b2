package injector

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/keyshift/keyshift/internal/injector/injectortest"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testServer struct {
	base    string
	ops     string
	client  *http.Client
	ca      *injectortest.CA
	dir     string
	metrics *Metrics
	logs    *syncBuffer
	srv     *Server
	cancel  context.CancelFunc
}

// startServer runs the real admission server on 127.0.0.1 with a
// certificate from a fresh CA, and a client that trusts only that CA.
func startServer(t *testing.T, mod func(*ServerConfig)) *testServer {
	t.Helper()
	ca, err := injectortest.NewCA("keyshift test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueServer("127.0.0.1", "keyshift-injector.keyshift-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, err := leaf.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ts := &testServer{ca: ca, dir: dir, metrics: NewMetrics(), logs: logs}
	cfg := ServerConfig{
		Addr: "127.0.0.1:0", OpsAddr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile,
		Injector: testConfig(), Metrics: ts.metrics,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := Start(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}
	ts.srv, ts.cancel = srv, cancel
	t.Cleanup(func() {
		cancel()
		if err := srv.Wait(); err != nil {
			t.Errorf("server: %v", err)
		}
	})
	ts.base = "https://" + srv.Addr()
	ts.ops = "http://" + srv.OpsAddr()
	ts.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool()},
	}}
	return ts
}

func review(t *testing.T, uid string, op admissionv1.Operation, resource string, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	ns := ""
	if pod != nil {
		ns = pod.Namespace
	}
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID(uid),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: resource},
			Namespace: ns,
			Operation: op,
			Object:    runtime.RawExtension{Raw: raw},
		},
	}
	out, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (ts *testServer) post(t *testing.T, body []byte) (*http.Response, []byte) {
	t.Helper()
	resp, err := ts.client.Post(ts.base+"/mutate", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST /mutate: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

func compactGolden(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "golden", name))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// compactPatch is the patch the handler should send for pod.
func compactPatch(t *testing.T, pod *corev1.Pod) []byte {
	t.Helper()
	injected, err := Inject(pod, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, patchFor(t, pod, injected)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestAdmissionRoundTrip(t *testing.T) {
	ts := startServer(t, nil)
	jsonPatch := admissionv1.PatchTypeJSONPatch
	badPod := readPod(t, "minimal")
	badPod.Annotations["keyshift.io/keysets"] = "Payments"
	conflictPod := readPod(t, "minimal")
	conflictPod.Spec.Containers[0].Ports = append(conflictPod.Spec.Containers[0].Ports, corev1.ContainerPort{ContainerPort: 9495})
	badKMSEnv := readPod(t, "minimal")
	badKMSEnv.Annotations["keyshift.io/kms-env-from"] = "aws/credentials"
	// A value that must never reach a log line.
	secretPod := readPod(t, "minimal")
	secretPod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "DB_PASSWORD", Value: "s3cr3t-never-logged"}}

	tests := []struct {
		name string
		body []byte
		want *admissionv1.AdmissionResponse
	}{
		{
			name: "annotated pod gets the golden patch",
			body: review(t, "uid-1", admissionv1.Create, "pods", readPod(t, "minimal")),
			want: &admissionv1.AdmissionResponse{
				UID: "uid-1", Allowed: true, PatchType: &jsonPatch, Patch: compactGolden(t, "minimal.patch.json"),
				Warnings: []string{"container(s) app set no runAsUser, so any UID in the pod may call the keyshift socket; set runAsUser or keyshift.io/allowed-uids to restrict it"},
			},
		},
		{
			name: "full pod gets the golden patch",
			body: review(t, "uid-2", admissionv1.Create, "pods", readPod(t, "full")),
			want: &admissionv1.AdmissionResponse{UID: "uid-2", Allowed: true, PatchType: &jsonPatch, Patch: compactGolden(t, "full.patch.json")},
		},
		{
			name: "bad annotation is denied with its message",
			body: review(t, "uid-3", admissionv1.Create, "pods", badPod),
			want: &admissionv1.AdmissionResponse{UID: "uid-3", Allowed: false, Result: &metav1.Status{
				Status: "Failure", Code: 422, Reason: metav1.StatusReasonInvalid,
				Message: `keyshift: annotation keyshift.io/keysets="Payments": keyset name "Payments" is not lowercase letters, digits and inner '-' (at most 63); write NAME or NAME=SECRET, comma-separated, such as "payments,users=users-keyset"`,
			}},
		},
		{
			name: "bad kms-env-from is denied with its message",
			body: review(t, "uid-3b", admissionv1.Create, "pods", badKMSEnv),
			want: &admissionv1.AdmissionResponse{UID: "uid-3b", Allowed: false, Result: &metav1.Status{
				Status: "Failure", Code: 422, Reason: metav1.StatusReasonInvalid,
				Message: `keyshift: annotation keyshift.io/kms-env-from="aws/credentials": is not a Secret name; write the name of one Secret in the pod's namespace holding the sidecar's KMS settings, such as "kms-credentials" (lowercase letters, digits, '-' and '.')`,
			}},
		},
		{
			name: "conflict is denied with its message",
			body: review(t, "uid-4", admissionv1.Create, "pods", conflictPod),
			want: &admissionv1.AdmissionResponse{UID: "uid-4", Allowed: false, Result: &metav1.Status{
				Status: "Failure", Code: 422, Reason: metav1.StatusReasonInvalid,
				Message: `keyshift: container app uses port 9495, the keyshift sidecar's health port; set keyshift.io/ops-port to a free port such as 9496`,
			}},
		},
		{
			name: "pod without annotations passes untouched",
			body: review(t, "uid-5", admissionv1.Create, "pods", readPod(t, "not-annotated")),
			want: &admissionv1.AdmissionResponse{UID: "uid-5", Allowed: true},
		},
		{
			name: "already injected passes untouched",
			body: review(t, "uid-6", admissionv1.Create, "pods", readPod(t, "already-injected")),
			want: &admissionv1.AdmissionResponse{UID: "uid-6", Allowed: true},
		},
		{
			name: "update is not ours",
			body: review(t, "uid-7", admissionv1.Update, "pods", badPod),
			want: &admissionv1.AdmissionResponse{UID: "uid-7", Allowed: true},
		},
		{
			name: "other resources are not ours",
			body: review(t, "uid-8", admissionv1.Create, "configmaps", badPod),
			want: &admissionv1.AdmissionResponse{UID: "uid-8", Allowed: true},
		},
		{
			name: "object that is not a pod",
			body: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"uid-9","resource":{"version":"v1","resource":"pods"},"operation":"CREATE","object":"not a pod"}}`),
			want: &admissionv1.AdmissionResponse{UID: "uid-9", Allowed: false, Result: &metav1.Status{
				Status: "Failure", Code: 400, Reason: metav1.StatusReasonBadRequest,
				Message: "keyshift injector: the request's object is not a Pod: json: cannot unmarshal string into Go value of type v1.Pod",
			}},
		},
		{
			name: "secret values stay out of the logs",
			body: review(t, "uid-10", admissionv1.Create, "pods", secretPod),
			want: &admissionv1.AdmissionResponse{
				UID: "uid-10", Allowed: true, PatchType: &jsonPatch, Patch: compactPatch(t, secretPod),
				Warnings: []string{"container(s) app set no runAsUser, so any UID in the pod may call the keyshift socket; set runAsUser or keyshift.io/allowed-uids to restrict it"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, data := ts.post(t, tt.body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, data)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			var got admissionv1.AdmissionReview
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatalf("response is not an AdmissionReview: %v\n%s", err, data)
			}
			if got.APIVersion != "admission.k8s.io/v1" || got.Kind != "AdmissionReview" || got.Request != nil {
				t.Errorf("response envelope: apiVersion %q kind %q request %v", got.APIVersion, got.Kind, got.Request)
			}
			if diff := cmp.Diff(tt.want, got.Response); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
		})
	}
	if logs := ts.logs.String(); strings.Contains(logs, "s3cr3t") {
		t.Errorf("a pod's env value reached the log:\n%s", logs)
	}
	if got := counterValue(ts.metrics.admissions.WithLabelValues(ResultInjected)); got != 3 {
		t.Errorf("injected count %v, want 3", got)
	}
	if got := counterValue(ts.metrics.admissions.WithLabelValues(ResultDenied)); got != 3 {
		t.Errorf("denied count %v, want 3", got)
	}
}

func TestAdmissionBadRequests(t *testing.T) {
	ts := startServer(t, func(c *ServerConfig) { c.MaxRequestBytes = 4096 })
	ok := review(t, "u", admissionv1.Create, "pods", readPod(t, "not-annotated"))
	big := review(t, "u", admissionv1.Create, "pods", func() *corev1.Pod {
		p := readPod(t, "not-annotated")
		p.Annotations = map[string]string{"filler": strings.Repeat("x", 5000)}
		return p
	}())
	tests := []struct {
		name        string
		method, ct  string
		body        []byte
		code        int
		wantMessage string
	}{
		{"GET", http.MethodGet, "", nil, 405, "use POST with an AdmissionReview"},
		{"wrong content type", http.MethodPost, "text/plain", ok, 415, "Content-Type must be application/json"},
		{"no content type", http.MethodPost, "", ok, 415, "Content-Type must be application/json"},
		{"empty body", http.MethodPost, "application/json", nil, 400, "malformed AdmissionReview: unexpected end of JSON input"},
		{"not JSON", http.MethodPost, "application/json", []byte("<xml/>"), 400, "malformed AdmissionReview: invalid character '<' looking for beginning of value"},
		{"truncated", http.MethodPost, "application/json", ok[:len(ok)/2], 400, "malformed AdmissionReview: unexpected end of JSON input"},
		{"wrong type", http.MethodPost, "application/json", []byte(`{"request":"x","apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), 400,
			"malformed AdmissionReview: json: cannot unmarshal string into Go struct field AdmissionReview.request of type v1.AdmissionRequest"},
		{"empty object", http.MethodPost, "application/json", []byte(`{}`), 400, `want apiVersion admission.k8s.io/v1 kind AdmissionReview, got apiVersion "" kind ""`},
		{"v1beta1", http.MethodPost, "application/json", bytes.Replace(ok, []byte("admission.k8s.io/v1"), []byte("admission.k8s.io/v1beta1"), 1), 400,
			`want apiVersion admission.k8s.io/v1 kind AdmissionReview, got apiVersion "admission.k8s.io/v1beta1" kind "AdmissionReview"`},
		{"no request", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), 400, "AdmissionReview has no request"},
		{"no uid", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`), 400, "AdmissionReview request has no uid"},
		{"too large", http.MethodPost, "application/json", big, 413, "AdmissionReview larger than 4096 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, ts.base+"/mutate", bytes.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.ct != "" {
				req.Header.Set("Content-Type", tt.ct)
			}
			resp, err := ts.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code {
				t.Errorf("status %d, want %d (%s)", resp.StatusCode, tt.code, data)
			}
			if diff := cmp.Diff(tt.wantMessage+"\n", string(data)); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
	// The server is still fine.
	if resp, _ := ts.post(t, ok); resp.StatusCode != 200 {
		t.Fatalf("after bad requests: status %d", resp.StatusCode)
	}
	if got := counterValue(ts.metrics.admissions.WithLabelValues(ResultInvalid)); got != float64(len(tests)) {
		t.Errorf("invalid_request count %v, want %d", got, len(tests))
	}
}

func TestOpsEndpoints(t *testing.T) {
	ts := startServer(t, nil)
	ts.post(t, review(t, "u1", admissionv1.Create, "pods", readPod(t, "minimal")))
	for _, base := range []string{ts.base, ts.ops} {
		for _, p := range []string{"/healthz", "/readyz"} {
			resp, err := ts.client.Get(base + p)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "ok\n" {
				t.Errorf("GET %s%s: %d %q", base, p, resp.StatusCode, body)
			}
		}
		resp, err := ts.client.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`keyshift_injector_admissions_total{result="injected"} 1`,
			`keyshift_injector_admissions_total{result="denied"} 0`,
			`keyshift_injector_admission_duration_seconds_count{result="injected"} 1`,
			`keyshift_injector_tls_reloads_total{result="ok"} 1`,
			`keyshift_injector_tls_cert_not_after_seconds `,
			`go_goroutines `,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("%s/metrics lacks %q", base, want)
			}
		}
	}
	// The ops port is plain HTTP and has no /mutate.
	resp, err := ts.client.Post(ts.ops+"/mutate", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST ops /mutate: %d, want 404", resp.StatusCode)
	}
}

func TestTLSPolicy(t *testing.T) {
	ts := startServer(t, nil)
	host := strings.TrimPrefix(ts.base, "https://")
	if c, err := tls.Dial("tcp", host, &tls.Config{RootCAs: ts.ca.Pool(), MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
	other, err := injectortest.NewCA("someone else")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tls.Dial("tcp", host, &tls.Config{RootCAs: other.Pool()})
	var unknown x509.UnknownAuthorityError
	if !asError(err, &unknown) {
		t.Errorf("handshake trusting another CA: %v, want x509.UnknownAuthorityError", err)
	}
}

func asError(err error, target *x509.UnknownAuthorityError) bool {
	var tv *tls.CertificateVerificationError
	if e, ok := err.(*tls.CertificateVerificationError); ok {
		tv = e
	}
	if tv == nil {
		return false
	}
	u, ok := tv.Err.(x509.UnknownAuthorityError)
	if ok {
		*target = u
	}
	return ok
}

// servedSerial is the serial of the certificate the server presents now.
func (ts *testServer) servedSerial(t *testing.T) string {
	t.Helper()
	c, err := tls.Dial("tcp", strings.TrimPrefix(ts.base, "https://"), &tls.Config{RootCAs: ts.ca.Pool()})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestTLSReload swaps the certificate the way the kubelet updates a Secret
// volume (a new timestamped directory, then an atomic rename of the ..data
// symlink) and checks the server presents the new one without a restart,
// and keeps the old one when the new pair is broken.
func TestTLSReload(t *testing.T) {
	ca, err := injectortest.NewCA("reload CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	n := 0
	publish := func(certPEM, keyPEM []byte) {
		t.Helper()
		n++
		ts := fmt.Sprintf("..2026_01_01_00_00_0%d.000", n)
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM} {
			if err := os.WriteFile(filepath.Join(dir, ts, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"tls.crt", "tls.key"} {
			link := filepath.Join(dir, name)
			if _, err := os.Lstat(link); err != nil {
				if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	first, err := ca.IssueServer("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	publish(first.CertPEM, first.KeyPEM)

	ts := startServer(t, func(c *ServerConfig) {
		c.CertFile, c.KeyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
		c.CertPoll = time.Hour // only the file watch may pick the change up
	})
	ts.ca = ca
	ts.client.Transport.(*http.Transport).TLSClientConfig.RootCAs = ca.Pool()
	if got, want := ts.servedSerial(t), first.Cert.SerialNumber.String(); got != want {
		t.Fatalf("serving serial %s, want %s", got, want)
	}

	second, err := ca.IssueServer("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	publish(second.CertPEM, second.KeyPEM)
	waitFor(t, "the new certificate", func() bool { return ts.servedSerial(t) == second.Cert.SerialNumber.String() })

	// A broken pair (the key of another certificate) is refused; the
	// server keeps presenting the last good certificate.
	third, err := ca.IssueServer("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	publish(third.CertPEM, second.KeyPEM)
	waitFor(t, "the failed reload to be counted", func() bool {
		return counterValue(ts.metrics.tlsReloads.WithLabelValues("error")) >= 1
	})
	if got := ts.servedSerial(t); got != second.Cert.SerialNumber.String() {
		t.Errorf("after a broken pair the server presents %s, want the last good %s", got, second.Cert.SerialNumber)
	}
	if resp, _ := ts.post(t, review(t, "u", admissionv1.Create, "pods", readPod(t, "minimal"))); resp.StatusCode != 200 {
		t.Errorf("admission after reloads: %d", resp.StatusCode)
	}
	if !strings.Contains(ts.logs.String(), "TLS reload failed; keeping the current certificate") {
		t.Errorf("the failed reload was not logged")
	}
}

func TestCertFilesRequired(t *testing.T) {
	_, err := Start(context.Background(), ServerConfig{Addr: "127.0.0.1:0", Injector: testConfig()})
	if err == nil || !strings.Contains(err.Error(), "--tls-cert-file") {
		t.Fatalf("Start without TLS files: %v", err)
	}
	_, err = Start(context.Background(), ServerConfig{Addr: "127.0.0.1:0", Injector: Config{}, CertFile: "x", KeyFile: "y"})
	if err == nil || !strings.Contains(err.Error(), "no sidecar image") {
		t.Fatalf("Start without an image: %v", err)
	}
}

// TestGracefulShutdown cancels the server while a request is half sent:
// /readyz fails during the shutdown delay, the in-flight request still gets
// its answer, and then the server stops.
func TestGracefulShutdown(t *testing.T) {
	ts := startServer(t, func(c *ServerConfig) { c.ShutdownDelay = 500 * time.Millisecond })
	body := review(t, "inflight", admissionv1.Create, "pods", readPod(t, "minimal"))
	pr, pw := io.Pipe()
	type result struct {
		code int
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := ts.client.Post(ts.base+"/mutate", "application/json", pr)
		if err != nil {
			done <- result{err: err}
			return
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, data, err}
	}()
	if _, err := pw.Write(body[:100]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	ts.cancel()
	waitFor(t, "/readyz to fail", func() bool {
		resp, err := ts.client.Get(ts.ops + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if _, err := pw.Write(body[100:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	r := <-done
	if r.err != nil || r.code != 200 {
		t.Fatalf("in-flight request: %d %v", r.code, r.err)
	}
	var got admissionv1.AdmissionReview
	if err := json.Unmarshal(r.data, &got); err != nil || got.Response == nil || got.Response.UID != "inflight" || !got.Response.Allowed {
		t.Fatalf("in-flight response: %s (%v)", r.data, err)
	}
	if err := ts.srv.Wait(); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if _, err := (&http.Client{Timeout: time.Second}).Get(ts.ops + "/healthz"); err == nil {
		t.Error("ops port still answers after shutdown")
	}
}

func TestConcurrentAdmissions(t *testing.T) {
	ts := startServer(t, nil)
	want := compactGolden(t, "full.patch.json")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			uid := fmt.Sprintf("c-%d", i)
			resp, err := ts.client.Post(ts.base+"/mutate", "application/json", bytes.NewReader(review(t, uid, admissionv1.Create, "pods", readPod(t, "full"))))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			var got admissionv1.AdmissionReview
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				errs <- err
				return
			}
			if got.Response.UID != types.UID(uid) || !bytes.Equal(got.Response.Patch, want) {
				errs <- fmt.Errorf("request %s: wrong response uid %s or patch", uid, got.Response.UID)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FuzzHandler feeds arbitrary bodies to /mutate: the handler must never
// panic, and answers 200 with a review for the same uid, or 400.
func FuzzHandler(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","resource":{"version":"v1","resource":"pods"},"operation":"CREATE","object":{"metadata":{"annotations":{"keyshift.io/inject":"true","keyshift.io/keysets":"a"}},"spec":{"containers":[{"name":"c"}]}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"b","resource":{"version":"v1","resource":"pods"},"operation":"CREATE","object":{"metadata":{"annotations":{"keyshift.io/inject":"true"}},"spec":{"initContainers":[{"name":"keyshift"}]}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"c","resource":{"resource":"pods"},"operation":"CREATE","object":null}}`))
	f.Add([]byte(`[]`))
	h, err := NewHandler(testConfig(), nil, nil, 1<<20)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, _ := http.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := &recorder{header: http.Header{}}
		h.ServeHTTP(rec, req)
		switch rec.code {
		case http.StatusOK:
			var in, out admissionv1.AdmissionReview
			_ = json.Unmarshal(body, &in)
			if err := json.Unmarshal(rec.body.Bytes(), &out); err != nil || out.Response == nil || out.Response.UID != in.Request.UID {
				t.Fatalf("200 without a matching review: %s", rec.body.Bytes())
			}
		case http.StatusBadRequest:
		default:
			t.Fatalf("status %d", rec.code)
		}
	})
}

// recorder is a minimal http.ResponseWriter for the fuzz target.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(p)
}
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

// counterValue reads a counter without the testutil package (which would
// pull another module into go.mod).
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
