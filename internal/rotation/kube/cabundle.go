package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DefaultCAConfigMap is the ConfigMap, in every namespace that holds
// keysets, with the CA bundle sidecars verify the controller's xDS
// certificate against (the injector mounts it into each sidecar). The
// bundle is public; a ConfigMap per namespace is what pods can mount, and
// the kubelet brings a renewed bundle into running pods (the pattern of
// Istio's istio-ca-root-cert).
const (
	DefaultCAConfigMap = "keyshift-xds-ca"
	CABundleKey        = "ca.crt"
)

// publishCA writes bundle into ConfigMap name of namespace ns, creating
// or updating it only where it differs, and never touches a ConfigMap
// that is not keyshift's.
func publishCA(ctx context.Context, c kubernetes.Interface, name, ns string, bundle []byte) error {
	cms := c.CoreV1().ConfigMaps(ns)
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
				"app.kubernetes.io/managed-by": "keyshift-controller", "app.kubernetes.io/part-of": "keyshift",
			}},
			Data: map[string]string{CABundleKey: string(bundle)},
		}, metav1.CreateOptions{FieldManager: "keyshift-controller"})
		if apierrors.IsAlreadyExists(err) {
			err = nil // another replica made it; the next pass checks it
		}
	case err != nil:
	case cm.Labels["app.kubernetes.io/managed-by"] != "keyshift-controller":
		err = fmt.Errorf("ConfigMap exists but is not keyshift's (no label app.kubernetes.io/managed-by=keyshift-controller); delete it")
	case !bytes.Equal([]byte(cm.Data[CABundleKey]), bundle):
		upd := cm.DeepCopy()
		if upd.Data == nil {
			upd.Data = map[string]string{}
		}
		upd.Data[CABundleKey] = string(bundle)
		_, err = cms.Update(ctx, upd, metav1.UpdateOptions{FieldManager: "keyshift-controller"})
		if apierrors.IsConflict(err) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("kube: CA bundle ConfigMap %s/%s: %w", ns, name, err)
	}
	return nil
}

// CAPublisher keeps the CA bundle ConfigMap in every namespace with
// keysets: in a namespace as soon as it is seen with a keyset (Ensure,
// from SecretStore.Listed), so sidecars of a new namespace need not wait
// for the certificate's next check, and at once in every namespace seen
// when the bundle changes (SetBundle). It remembers what it wrote and
// checks again every Recheck. Only the replica that lists keysets (the
// leader) sees namespaces; on the others SetBundle has nothing to do.
type CAPublisher struct {
	Client  kubernetes.Interface
	Name    string        // DefaultCAConfigMap when empty
	Recheck time.Duration // 10m when zero

	mu     sync.Mutex
	bundle []byte
	seen   []string             // the namespaces with keysets at the last Ensure
	done   map[string]time.Time // namespace -> when bundle was last ensured there
}

// SetBundle makes bundle the one to publish, and publishes it into every
// namespace seen with keysets.
func (p *CAPublisher) SetBundle(ctx context.Context, bundle []byte) error {
	p.mu.Lock()
	if !bytes.Equal(p.bundle, bundle) {
		p.bundle, p.done = bytes.Clone(bundle), map[string]time.Time{}
	}
	seen := p.seen
	p.mu.Unlock()
	return p.Ensure(ctx, seen)
}

// Ensure records namespaces as those with keysets and publishes the
// bundle into each not checked lately.
func (p *CAPublisher) Ensure(ctx context.Context, namespaces []string) error {
	recheck := p.Recheck
	if recheck <= 0 {
		recheck = 10 * time.Minute
	}
	name := p.Name
	if name == "" {
		name = DefaultCAConfigMap
	}
	p.mu.Lock()
	p.seen = namespaces
	bundle := p.bundle
	var due []string
	for _, ns := range namespaces {
		if at, ok := p.done[ns]; !ok || time.Since(at) > recheck {
			due = append(due, ns)
		}
	}
	p.mu.Unlock()
	if bundle == nil || len(due) == 0 {
		return nil
	}
	var errs []error
	for _, ns := range due {
		if err := publishCA(ctx, p.Client, name, ns, bundle); err != nil {
			errs = append(errs, err)
			continue
		}
		p.mu.Lock()
		if bytes.Equal(p.bundle, bundle) {
			p.done[ns] = time.Now()
		}
		p.mu.Unlock()
	}
	return errors.Join(errs...)
}
