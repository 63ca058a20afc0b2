package kube

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/selfcert/selfcerttest"
)

const auditKey = "shop/keyset-payments"

// auditRig is a keyset Secret on client-go's fake API (with the API
// server's compare-and-swap on resourceVersion) and engines over it.
type auditRig struct {
	t      *testing.T
	c      *fake.Clientset
	store  *SecretStore
	key    *audit.Key
	kmsReg kms.Registry
	now    time.Time
}

func newAuditRig(t *testing.T) *auditRig {
	t.Helper()
	r := &auditRig{t: t, c: selfcerttest.NewFakeAPI(t), kmsReg: kms.Registry{local.Scheme: local.Open}, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r.store = &SecretStore{Client: r.c}
	k, err := audit.NewKey(bytes.Repeat([]byte{3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	r.key = k
	kek := filepath.Join(t.TempDir(), "kek.json")
	ks, err := rotation.Create(context.Background(), local.New(kek), "payments", "local://"+kek, r.now)
	if err != nil {
		t.Fatal(err)
	}
	ks.Policy = &keyset.Policy{RotationPeriod: keyset.Duration(time.Hour)}
	if err := r.store.Create(context.Background(), auditKey, ks); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *auditRig) engine(actor string) *rotation.Engine {
	return &rotation.Engine{Store: r.store, KMS: r.kmsReg, AuditKey: r.key, Log: slog.New(slog.DiscardHandler), Actor: actor,
		Now: func() time.Time { return r.now }}
}

func (r *auditRig) secret() *corev1.Secret {
	r.t.Helper()
	sec, err := r.c.CoreV1().Secrets("shop").Get(context.Background(), "keyset-payments", metav1.GetOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	return sec
}

// verify checks the Secret's trail as `keyshift audit verify --secret` does.
func (r *auditRig) verify() (audit.Trail, error) {
	st, err := r.store.AuditTrail(context.Background(), auditKey)
	if err != nil {
		r.t.Fatal(err)
	}
	return r.key.VerifyStored(st.Keyset, st.Records, st.Head)
}

// steps runs add-pending and promote n times, checking after each that
// the keyset, the new record and the head were stored together.
func (r *auditRig) steps(e *rotation.Engine, n int) {
	r.t.Helper()
	for range n {
		for _, want := range []string{"add-pending", "promote"} {
			if want == "add-pending" {
				r.now = r.now.Add(time.Hour)
			}
			before := r.secret()
			out, err := e.Reconcile(context.Background(), auditKey)
			if err != nil || out.Action != want {
				r.t.Fatalf("%+v %v, want %s", out, err, want)
			}
			after := r.secret()
			tr, err := r.verify()
			if err != nil {
				r.t.Fatal(err)
			}
			last, _ := tr.Last()
			ks, _ := keyset.Parse(after.Data[DataKey])
			if bytes.Equal(before.Data[DataKey], after.Data[DataKey]) || last.Action != want || last.Keyset != "shop/payments" ||
				after.Annotations[AuditHeadAnnotation] != tr.Head.String() || ks.Latest() != out.Versions[0] && want == "add-pending" {
				r.t.Fatalf("after %s: keyset v%d, last record %+v, head %q", want, ks.Latest(), last, after.Annotations[AuditHeadAnnotation])
			}
		}
	}
}

// writeBehind changes the Secret as another writer would, from inside a
// reactor (which runs under the fake's lock, so through its tracker): the
// Update under way then meets a new resourceVersion.
func (r *auditRig) writeBehind(change func(*corev1.Secret)) {
	gvr := corev1.SchemeGroupVersion.WithResource("secrets")
	obj, err := r.c.Tracker().Get(gvr, "shop", "keyset-payments")
	if err != nil {
		r.t.Error(err)
		return
	}
	sec := obj.(*corev1.Secret).DeepCopy()
	change(sec)
	sec.ResourceVersion += "-changed"
	if err := r.c.Tracker().Update(gvr, sec, "shop"); err != nil {
		r.t.Error(err)
	}
}

// setTrailLines is an edit by someone with write access to the Secret.
func (r *auditRig) setTrailLines(lines []string, head string) {
	r.t.Helper()
	sec := r.secret()
	sec.Data[AuditDataKey] = []byte(strings.Join(lines, "\n") + "\n")
	sec.Annotations[AuditHeadAnnotation] = head
	if _, err := r.c.CoreV1().Secrets("shop").Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
		r.t.Fatal(err)
	}
}

func trailLines(sec *corev1.Secret) []string {
	return strings.Split(strings.TrimSuffix(string(sec.Data[AuditDataKey]), "\n"), "\n")
}

var macField = regexp.MustCompile(`"mac":"([0-9a-f]*)"`)

// unkeyedRehash edits a record and recomputes its digest as an unkeyed
// chain would: what anyone with write access could do before.
func unkeyedRehash(line string) (string, string) {
	edited := strings.Replace(line, `"result":"ok"`, `"result":"failed"`, 1)
	sum := sha256.Sum256([]byte(macField.ReplaceAllString(edited, `"mac":""`)))
	mac := hex.EncodeToString(sum[:])
	return macField.ReplaceAllString(edited, `"mac":"`+mac+`"`), mac
}

// The trail in the keyset Secret: each step's record and the head written
// with the step; an edit of the last record (its digest recomputed, the
// head moved to it), reordered records, a removed record and a cut-off
// tail are each found and named.
func TestSecretTrailTamperingIsFound(t *testing.T) {
	r := newAuditRig(t)
	r.steps(r.engine("controller/a"), 2)
	orig := r.secret()
	lines, head := trailLines(orig), orig.Annotations[AuditHeadAnnotation]
	if len(lines) != 4 || !strings.HasPrefix(head, "4:") {
		t.Fatalf("trail %q head %q", lines, head)
	}
	forged, forgedMAC := unkeyedRehash(lines[3])
	cases := []struct {
		name  string
		lines []string
		head  string
		msg   string
	}{
		{"last record edited, digest recomputed, head moved", []string{lines[0], lines[1], lines[2], forged}, "4:" + forgedMAC, "record 4 of shop/payments was altered"},
		{"reordered", []string{lines[0], lines[2], lines[1], lines[3]}, head, "record 2 of shop/payments comes after record 3: records were reordered"},
		{"removed", []string{lines[0], lines[1], lines[3]}, head, "records 3..3 are missing between record 2 and record 4"},
		{"tail cut off", lines[:3], head, "the head names record 4, the last record present is 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r.setTrailLines(c.lines, c.head)
			if _, err := r.verify(); !errors.Is(err, audit.ErrBroken) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want ErrBroken containing %q", err, c.msg)
			}
		})
	}
	r.setTrailLines(lines, head)
	if _, err := r.verify(); err != nil {
		t.Fatalf("the trail put back: %v", err)
	}
}

// A second engine (the next leader, or the same controller restarted with
// nothing on disk) continues the chain from the head in the Secret; a
// blocked step's record is anchored by an Update of its own, retried when
// the Secret changes meanwhile, and leaves keyset.json as it is.
func TestSecretChainContinuesAcrossLeaders(t *testing.T) {
	r := newAuditRig(t)
	r.steps(r.engine("controller/a"), 1)
	b := r.engine("controller/b")
	r.steps(b, 1)
	// A blocked promotion, while another writer (the status annotation)
	// changes the Secret between the read and the write once.
	b.Dist = stuckDist{}
	r.now = r.now.Add(time.Hour)
	if out, err := b.Reconcile(context.Background(), auditKey); err != nil || out.Action != "add-pending" {
		t.Fatalf("%+v %v", out, err)
	}
	doc := r.secret().Data[DataKey]
	interfere := true
	r.c.PrependReactor("update", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		if interfere {
			interfere = false
			r.writeBehind(func(sec *corev1.Secret) { sec.Annotations[StatusAnnotation] = "changed meanwhile" })
		}
		return false, nil, nil
	})
	r.now = r.now.Add(2 * rotation.DefaultAckTimeout)
	if out, err := b.Reconcile(context.Background(), auditKey); err != nil || out.Action != "blocked" {
		t.Fatalf("%+v %v", out, err)
	}
	if interfere || !bytes.Equal(doc, r.secret().Data[DataKey]) {
		t.Fatal("no concurrent write happened, or the blocked step's record changed keyset.json")
	}
	tr, err := r.verify()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, rec := range tr.Records {
		got = append(got, rec.Actor+" "+rec.Action+" "+rec.Result)
	}
	want := "controller/a add-pending ok|controller/a promote ok|controller/b add-pending ok|controller/b promote ok|controller/b add-pending ok|controller/b ack-timeout blocked"
	if strings.Join(got, "|") != want {
		t.Fatalf("trail %v", got)
	}
}

// stuckDist has one connected sidecar that never loads anything.
type stuckDist struct{}

func (stuckDist) Publish(context.Context, string, *keyset.Keyset) error { return nil }
func (stuckDist) Status(string, string, uint32) rotation.AckStatus {
	return rotation.AckStatus{Subscribers: []string{"shop/pod-a"}, Waiting: []string{"shop/pod-a"}}
}

// A Put at a stale resourceVersion, or one the API server refuses because
// the Secret changed between the read and the write, stores neither the
// step nor its record nor the head.
func TestSecretConflictStoresNeitherStepNorHead(t *testing.T) {
	for _, late := range []bool{false, true} {
		r := newAuditRig(t)
		r.steps(r.engine("controller/a"), 1)
		ctx := context.Background()
		ks, rev, err := r.store.Get(ctx, auditKey)
		if err != nil {
			t.Fatal(err)
		}
		// Another writer changes the Secret's data (its annotations alone
		// would not conflict: see TestPutIgnoresMetadataOnlyChanges).
		other := r.secret()
		other.Data["someone"] = []byte("else")
		if late {
			// The other write lands between PutAudited's read and its Update.
			once := true
			r.c.PrependReactor("update", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
				if once {
					once = false
					r.writeBehind(func(sec *corev1.Secret) { sec.Data["someone"] = []byte("else") })
				}
				return false, nil, nil
			})
		} else if _, err := r.c.CoreV1().Secrets("shop").Update(ctx, other, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		before := r.secret()
		next := ks.Clone()
		next.Policy = nil
		_, _, err = r.store.PutAudited(ctx, auditKey, next, rev, r.key, audit.Record{Actor: "b", Action: "retire", Keyset: "shop/payments", Result: "ok"})
		if !errors.Is(err, rotation.ErrConflict) {
			t.Fatalf("late %v: %v, want ErrConflict", late, err)
		}
		after := r.secret()
		if !bytes.Equal(before.Data[DataKey], after.Data[DataKey]) || !bytes.Equal(before.Data[AuditDataKey], after.Data[AuditDataKey]) ||
			before.Annotations[AuditHeadAnnotation] != after.Annotations[AuditHeadAnnotation] {
			t.Fatalf("late %v: the refused write stored something: head %q -> %q", late, before.Annotations[AuditHeadAnnotation], after.Annotations[AuditHeadAnnotation])
		}
		if _, err := r.verify(); err != nil {
			t.Fatal(err)
		}
	}
}

// The audit key Secret: made once by whichever replica is first (Create),
// the same key for every replica; under a KMS key it holds no plain key.
func TestAuditKeySecret(t *testing.T) {
	c := selfcerttest.NewFakeAPI(t)
	reg := kms.Registry{local.Scheme: local.Open}
	uri := "local://" + filepath.Join(t.TempDir(), "audit-kek.json")
	w, _ := reg.Open(context.Background(), uri)
	if _, err := w.Wrap(context.Background(), make([]byte, 32), nil); err != nil {
		t.Fatal(err)
	}
	h := AuditKeySecret{Client: c, Namespace: "keyshift-system", Name: "keyshift-audit-key"}
	ids := make([]string, 4)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			k, _, err := audit.LoadKey(context.Background(), h, reg, uri)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = k.ID()
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id == "" || id != ids[0] {
			t.Fatalf("replicas hold different keys: %v", ids)
		}
	}
	sec, err := c.CoreV1().Secrets("keyshift-system").Get(context.Background(), "keyshift-audit-key", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b := sec.Data[AuditKeyDataKey]; !bytes.Contains(b, []byte(`"wrapped"`)) || bytes.Contains(b, []byte(`"key"`)) || sec.Labels[Label] != "" {
		t.Fatalf("audit key Secret %s, labels %v", b, sec.Labels)
	}
	if n := selfcerttest.CountActions(c, "create", "secrets"); n < 1 {
		t.Fatalf("%d creates", n)
	}
	if _, info, err := audit.OpenKey(context.Background(), h, reg, uri); err != nil || info.ID != ids[0] {
		t.Fatalf("%+v %v", info, err)
	}
}
