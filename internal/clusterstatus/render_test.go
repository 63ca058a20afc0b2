package clusterstatus

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

// secret is a keyset Secret as the controller leaves it.
func secret(t *testing.T, ns, name string, ks *keyset.Keyset, status string) *corev1.Secret {
	t.Helper()
	b, err := json.Marshal(ks)
	if err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{kube.Label: "true"}},
		Data: map[string][]byte{kube.DataKey: b}}
	if status != "" {
		sec.Annotations = map[string]string{kube.StatusAnnotation: status, kube.StatusTimeAnnotation: "2026-03-01T11:00:00Z"}
	}
	return sec
}

// wrapped gives every version a wrapped key, as stored documents have.
func wrapped(ks *keyset.Keyset) *keyset.Keyset {
	for i := range ks.Versions {
		ks.Versions[i].WrappedKey = []byte("WRAPPED-KEY-MUST-NOT-SHOW")
	}
	return ks
}

func intp(n int) *int { return &n }

func TestRow(t *testing.T) {
	full := &keyset.Policy{RotationPeriod: keyset.Duration(30 * day), Retention: keyset.Duration(7 * day)}
	pending := wrapped(doc(full, ver(1, keyset.StateDecryptOnly, t0.Add(-40*day)), ver(2, keyset.StatePrimary, t0.Add(-10*day)), ver(3, keyset.StatePending, t0.Add(-time.Minute))))
	settled := wrapped(doc(full, ver(1, keyset.StateDecryptOnly, t0.Add(-day)), ver(2, keyset.StatePrimary, t0.Add(-day))))
	waiting := &rotation.KeysetState{Key: "shop/payments-keys", Action: "waiting", Versions: []uint32{3}, Reason: "1 of 2 pods have v3",
		Pending: &rotation.PendingReaders{Version: 3, Readers: 2, Ready: 1, Waiting: []string{"shop/web-2"}}}
	blocked := &rotation.KeysetState{Key: "shop/payments-keys", Action: "blocked", Versions: []uint32{3}, Reason: "not promoting v3: after 5m0s, 1 of 2 pods have not loaded it (shop/web-2)",
		Pending: &rotation.PendingReaders{Version: 3, Readers: 2, Ready: 1, Waiting: []string{"shop/web-2"}}}
	cases := []struct {
		name  string
		sec   *corev1.Secret
		st    *rotation.KeysetState
		known bool
		want  Row
	}{
		{"pending, the controller counts ACKs",
			secret(t, "shop", "payments-keys", pending, "waiting [3]: 1 of 2 pods have v3"), waiting, true,
			Row{Namespace: "shop", Name: "payments", Secret: "payments-keys", Primary: 2,
				Pending: &Pending{Version: 3, Acked: intp(1), Readers: intp(2), Waiting: []string{"shop/web-2"}},
				Next:    Step{Action: "promote", Version: 3, Text: "promote v3 when all ACK"}, LastOutcome: "waiting [3]: 1 of 2 pods have v3", LastOutcomeAt: "2026-03-01T11:00:00Z"}},
		{"blocked: the controller's reason",
			secret(t, "shop", "payments-keys", pending, "waiting [3]: 1 of 2 pods have v3"), blocked, true,
			Row{Namespace: "shop", Name: "payments", Secret: "payments-keys", Primary: 2,
				Pending: &Pending{Version: 3, Acked: intp(1), Readers: intp(2), Waiting: []string{"shop/web-2"}},
				Blocked: "not promoting v3: after 5m0s, 1 of 2 pods have not loaded it (shop/web-2)",
				Next:    Step{Action: "promote", Version: 3, Text: "promote v3 when all ACK"}, LastOutcome: "waiting [3]: 1 of 2 pods have v3", LastOutcomeAt: "2026-03-01T11:00:00Z"}},
		{"controller unreachable: counts unknown, the reason from the Secret",
			secret(t, "shop", "payments-keys", pending, "blocked [3]: not promoting v3: 1 sidecar(s) refused it (shop/web-2: unwrap failed)"), nil, false,
			Row{Namespace: "shop", Name: "payments", Secret: "payments-keys", Primary: 2, Pending: &Pending{Version: 3},
				Blocked: "not promoting v3: 1 sidecar(s) refused it (shop/web-2: unwrap failed)",
				Next:    Step{Action: "promote", Version: 3, Text: "promote v3 when all ACK"}, LastOutcome: "blocked [3]: not promoting v3: 1 sidecar(s) refused it (shop/web-2: unwrap failed)", LastOutcomeAt: "2026-03-01T11:00:00Z"}},
		{"the controller's count of an older pending version is not this one's",
			secret(t, "shop", "payments-keys", pending, ""), &rotation.KeysetState{Key: "shop/payments-keys", Action: "waiting", Pending: &rotation.PendingReaders{Version: 2, Readers: 2, Ready: 2}}, true,
			Row{Namespace: "shop", Name: "payments", Secret: "payments-keys", Primary: 2, Pending: &Pending{Version: 3},
				Next: Step{Action: "promote", Version: 3, Text: "promote v3 when all ACK"}}},
		{"the controller answered and is not blocked: an old blocked annotation is not shown",
			secret(t, "shop", "payments-keys", settled, "blocked [2]: not promoting v2: timeout"), &rotation.KeysetState{Key: "shop/payments-keys"}, true,
			Row{Namespace: "shop", Name: "payments", Secret: "payments-keys", Primary: 2,
				Next: Step{Action: "retire", Version: 1, At: at(t0.Add(6 * day)), Text: "retire v1 at 2026-03-07T12:00:00Z"}, LastOutcome: "blocked [2]: not promoting v2: timeout", LastOutcomeAt: "2026-03-01T11:00:00Z"}},
		{"a Secret that does not hold a keyset",
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "broken"}, Data: map[string][]byte{kube.DataKey: []byte("{")}}, nil, true,
			Row{Namespace: "shop", Name: "broken", Secret: "broken", Error: "keyset: invalid document: unexpected EOF"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if diff := cmp.Diff(c.want, row(c.sec, c.st, c.known, t0)); diff != "" {
				t.Fatalf("row (-want +got):\n%s", diff)
			}
		})
	}
}

func testReport() *Report {
	return &Report{
		Controller: ControllerInfo{Source: "pod keyshift-system/keyshift-controller-0", Identity: "keyshift-controller-0", Leading: true},
		Keysets: []Row{
			{Namespace: "shop", Name: "orders", Secret: "orders-keys", Primary: 7,
				Next: Step{Action: "rotate", At: at(t0.Add(29 * day)), Text: "rotate at 2026-03-30T12:00:00Z"}},
			{Namespace: "shop", Name: "payments", Secret: "payments-keys", Primary: 3,
				Pending: &Pending{Version: 4, Acked: intp(2), Readers: intp(3), Waiting: []string{"shop/web-2"}},
				Blocked: "not promoting v4: after 5m0s, 1 of 3 pods have not loaded it (shop/web-2)",
				Next:    Step{Action: "promote", Version: 4, Text: "promote v4 when all ACK"}},
			{Namespace: "web", Name: "sessions", Secret: "sessions", Primary: 2, Pending: &Pending{Version: 3},
				Next: Step{Action: "promote", Version: 3, Text: "promote v3 when all ACK"}},
			{Namespace: "web", Name: "tokens", Secret: "tokens", Primary: 1,
				Next: Step{Action: "retire", Version: 1, At: at(t0.Add(-time.Hour)), Due: true, Text: "retire v1 at 2026-03-01T11:00:00Z (due)"}},
			{Namespace: "web", Name: "broken", Secret: "broken", Error: "keyset: invalid document: unexpected end of JSON input"},
		},
	}
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	if err := Table(&b, testReport(), true, t0); err != nil {
		t.Fatal(err)
	}
	want := `NAMESPACE   NAME       PRIMARY   PENDING   ACKED     NEXT                                      BLOCKED
shop        orders     v7        -         -         rotate at 2026-03-30T12:00:00Z (in 29d)   -
shop        payments   v3        v4        2/3       promote v4 when all ACK                   not promoting v4: after 5m0s, 1 of 3 pods have not loaded it (shop/web-2)
web         sessions   v2        v3        ?         promote v3 when all ACK                   -
web         tokens     v1        -         -         retire v1 at 2026-03-01T11:00:00Z (due)   -
web         broken     ?         ?         ?         ?                                         secret broken: keyset: invalid document: unexpected end of JSON input
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Fatalf("table (-want +got):\n%s", diff)
	}

	// One namespace: no NAMESPACE column, as kubectl prints it.
	b.Reset()
	rep := testReport()
	rep.Keysets = rep.Keysets[:1]
	if err := Table(&b, rep, false, t0); err != nil {
		t.Fatal(err)
	}
	want = `NAME      PRIMARY   PENDING   ACKED     NEXT                                      BLOCKED
orders    v7        -         -         rotate at 2026-03-30T12:00:00Z (in 29d)   -
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Fatalf("table in one namespace (-want +got):\n%s", diff)
	}
}

func TestJSON(t *testing.T) {
	var b bytes.Buffer
	if err := JSON(&b, testReport()); err != nil {
		t.Fatal(err)
	}
	// Scripts read it back into the same shape, unknown counts as absent.
	var got Report
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(*testReport(), got); diff != "" {
		t.Fatalf("JSON round trip (-want +got):\n%s", diff)
	}
	var raw struct {
		Keysets []map[string]any `json:"keysets"`
	}
	if err := json.Unmarshal(b.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	wantPending := []any{
		nil,
		map[string]any{"version": 4.0, "acked": 2.0, "readers": 3.0, "waiting": []any{"shop/web-2"}},
		map[string]any{"version": 3.0},
		nil, nil,
	}
	var gotPending []any
	for _, k := range raw.Keysets {
		gotPending = append(gotPending, k["pending"])
	}
	if diff := cmp.Diff(wantPending, gotPending); diff != "" {
		t.Fatalf("pending as scripts see it (-want +got):\n%s", diff)
	}
}

// Wrapped keys never reach the output, in either form.
func TestNoWrappedKeyInOutput(t *testing.T) {
	ks := wrapped(doc(&keyset.Policy{RotationPeriod: keyset.Duration(day)}, ver(1, keyset.StatePrimary, t0)))
	rep := &Report{Keysets: []Row{row(secret(t, "shop", "k", ks, ""), nil, false, t0)}}
	var b bytes.Buffer
	if err := JSON(&b, rep); err != nil {
		t.Fatal(err)
	}
	if err := Table(&b, rep, true, t0); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "WRAPPED") || strings.Contains(b.String(), "V1JBUFBFRC") {
		t.Fatalf("a wrapped key in the output:\n%s", b.String())
	}
}

// FromURL over real HTTP: the controller's answer, its errors, and URLs
// refused up front.
func TestFromURL(t *testing.T) {
	want := ControllerStatus{Identity: "ctl-a", Leading: true, Time: t0, Keysets: []rotation.KeysetState{{Key: "shop/payments-keys", Action: "waiting", At: t0,
		Pending: &rotation.PendingReaders{Version: 2, Readers: 2, Ready: 1}}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case ControllerPath:
			_ = json.NewEncoder(w).Encode(want)
		case "/broken" + ControllerPath:
			_, _ = w.Write([]byte("<html>"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ctx := context.Background()

	src, err := FromURL(srv.URL+"/", srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	got, where, err := src(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&want, got); diff != "" || where != srv.URL+"/" {
		t.Fatalf("status from %s (-want +got):\n%s", where, diff)
	}
	for _, c := range []struct{ base, err string }{
		{srv.URL + "/nothing", "404 Not Found"},
		{srv.URL + "/broken", "controller status is not JSON"},
	} {
		src, err := FromURL(c.base, srv.Client())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := src(ctx); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: err = %v, want %q", c.base, err, c.err)
		}
	}
	for _, bad := range []string{"127.0.0.1:9496", "ftp://host/", "http://", "::"} {
		if _, err := FromURL(bad, srv.Client()); err == nil || !strings.Contains(err.Error(), "write the controller's metrics address as http://HOST:PORT") {
			t.Errorf("FromURL(%q) = %v", bad, err)
		}
	}
}

func TestContainerPort(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "keyshift-system", Name: "ctl"}, Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "controller", Ports: []corev1.ContainerPort{{Name: "xds", ContainerPort: 18000}, {Name: "metrics", ContainerPort: 9496}}}}}}
	for _, c := range []struct{ in, want, err string }{
		{"metrics", "9496", ""},
		{"9500", "9500", ""},
		{"9496x", "", `no container port named "9496x"`},
		{"health", "", `pod keyshift-system/ctl has no container port named "health"`},
	} {
		got, err := containerPort(pod, c.in)
		if got != c.want || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("containerPort(%q) = %q, %v; want %q, %q", c.in, got, err, c.want, c.err)
		}
	}
}
