package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/rotation"
)

// AuditDataKey holds a keyset's newest audit records (JSON lines, at most
// audit.KeepRecords) in its Secret, and AuditHeadAnnotation the chain
// head, "SEQ:MAC" of the newest record. Both are written in the same
// Update as the step they record. Pods never see them: the injector
// mounts only keyset.json, and a change to them leaves that file as it is.
const (
	AuditDataKey        = "audit.jsonl"
	AuditHeadAnnotation = "keyshift.io/audit-head"
)

var _ rotation.AuditStore = (*SecretStore)(nil)

// trailOf reads the Secret's trail for appending: a damaged trail is
// appended to (verification still finds the damage) rather than stopping
// rotation.
func trailOf(sec *corev1.Secret) audit.Trail {
	t, _ := audit.ParseTrail(sec.Data[AuditDataKey], sec.Annotations[AuditHeadAnnotation])
	return t
}

// setTrail writes t into the Secret: records in the data, head annotated.
func setTrail(sec *corev1.Secret, t audit.Trail) error {
	b, err := t.MarshalRecords()
	if err != nil {
		return err
	}
	sec.Data[AuditDataKey] = b
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations[AuditHeadAnnotation] = t.Head.String()
	return nil
}

// PutAudited stores the keyset, rec sealed after the stored head, and the
// new head in one Update at rev: the API server's compare-and-swap on the
// resourceVersion stores all three or none.
func (s *SecretStore) PutAudited(ctx context.Context, key string, ks *keyset.Keyset, rev string, k *audit.Key, rec audit.Record) (string, audit.Trail, error) {
	b, err := ks.Marshal()
	if err != nil {
		return "", audit.Trail{}, err
	}
	var t audit.Trail
	newRev, err := s.update(ctx, key, rev, func(sec *corev1.Secret) error {
		t = trailOf(sec)
		if _, err := t.Append(k, rec); err != nil {
			return err
		}
		sec.Data[DataKey] = b
		return setTrail(sec, t)
	})
	return newRev, t, err
}

// AppendAudit stores rec sealed after the stored head, and the new head,
// leaving the keyset as it is; when the Secret changes between the read
// and the write it reads again (five times at most).
func (s *SecretStore) AppendAudit(ctx context.Context, key string, k *audit.Key, rec audit.Record) (audit.Trail, error) {
	for range 5 {
		var t audit.Trail
		_, err := s.update(ctx, key, anyRevision, func(sec *corev1.Secret) error {
			t = trailOf(sec)
			if _, err := t.Append(k, rec); err != nil {
				return err
			}
			return setTrail(sec, t)
		})
		if !errors.Is(err, rotation.ErrConflict) {
			return t, err
		}
	}
	return audit.Trail{}, fmt.Errorf("%w: %s: gave up storing an audit record after 5 conflicts", rotation.ErrConflict, key)
}

// AuditTrail reads the keyset's trail and head as the Secret holds them.
func (s *SecretStore) AuditTrail(ctx context.Context, key string) (rotation.StoredTrail, error) {
	ns, name, err := splitKey(key)
	if err != nil {
		return rotation.StoredTrail{}, err
	}
	sec, err := s.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return rotation.StoredTrail{}, fmt.Errorf("kube: get Secret %s: %w", key, err)
	}
	ks, err := keyset.Parse(sec.Data[DataKey])
	if err != nil {
		return rotation.StoredTrail{}, fmt.Errorf("kube: Secret %s: %w", key, err)
	}
	return rotation.StoredTrail{Keyset: ns + "/" + ks.Name, Records: sec.Data[AuditDataKey], Head: sec.Annotations[AuditHeadAnnotation]}, nil
}

// AuditKeyDataKey is the stored audit key's data key in its Secret.
const AuditKeyDataKey = "audit-key.json"

// AuditKeySecret keeps the controller's audit key in a Secret of the
// controller's own namespace (keyshift-system/keyshift-audit-key by
// default), which only its ServiceAccount may read; with --audit-kms the
// key in it is wrapped under a KMS key only the controller's identity may
// use. It is made with Create, so replicas starting together race safely.
type AuditKeySecret struct {
	Client          kubernetes.Interface
	Namespace, Name string
}

var _ audit.KeyHolder = AuditKeySecret{}

// String names the Secret.
func (a AuditKeySecret) String() string { return "Secret " + a.Namespace + "/" + a.Name }

// Load reads the stored key; ok is false when the Secret does not exist.
func (a AuditKeySecret) Load(ctx context.Context) ([]byte, bool, error) {
	sec, err := a.Client.CoreV1().Secrets(a.Namespace).Get(ctx, a.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("kube: get %s: %w", a, err)
	}
	b, ok := sec.Data[AuditKeyDataKey]
	if !ok {
		return nil, false, fmt.Errorf("%w: %s has no %s", audit.ErrBadKey, a, AuditKeyDataKey)
	}
	return b, true, nil
}

// Create makes the Secret; ErrKeyRace when another replica made it first.
func (a AuditKeySecret) Create(ctx context.Context, b []byte) error {
	_, err := a.Client.CoreV1().Secrets(a.Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: a.Name, Namespace: a.Namespace, Labels: map[string]string{
			"app.kubernetes.io/name": "keyshift-controller", "app.kubernetes.io/part-of": "keyshift",
		}},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{AuditKeyDataKey: b},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return audit.ErrKeyRace
	}
	if err != nil {
		return fmt.Errorf("kube: create %s: %w", a, err)
	}
	return nil
}

// Replace rewrites the stored key if it is still old.
func (a AuditKeySecret) Replace(ctx context.Context, old, b []byte) error {
	sec, err := a.Client.CoreV1().Secrets(a.Namespace).Get(ctx, a.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("kube: get %s: %w", a, err)
	}
	if !bytes.Equal(sec.Data[AuditKeyDataKey], old) {
		return audit.ErrKeyRace
	}
	sec.Data[AuditKeyDataKey] = b
	_, err = a.Client.CoreV1().Secrets(a.Namespace).Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return audit.ErrKeyRace
	}
	if err != nil {
		return fmt.Errorf("kube: update %s: %w", a, err)
	}
	return nil
}
