package kube

import (
	"context"
	"fmt"
	"sort"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultOptInLabel marks a namespace whose keysets the controller
// manages. Opting in is two objects in the namespace's hands: this label,
// and a RoleBinding of the ClusterRole keyshift-controller-keysets to the
// controller's ServiceAccount, which grants what managing keysets there
// takes (RBAC cannot narrow Secrets to a label, so it is every Secret of
// that namespace, and of no other).
const DefaultOptInLabel = "keyshift.io/keysets=enabled"

// OptIn watches the namespaces that opt in (by a label selector).
type OptIn struct {
	selector string
	factory  informers.SharedInformerFactory
	synced   cache.InformerSynced
	lister   listersv1.NamespaceLister
}

// NewOptIn watches namespaces matching selector. Call Start.
func NewOptIn(c kubernetes.Interface, selector string) (*OptIn, error) {
	if _, err := labels.Parse(selector); err != nil {
		return nil, fmt.Errorf("kube: namespace selector %q: %w", selector, err)
	}
	f := informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = selector
	}))
	ns := f.Core().V1().Namespaces()
	inf := ns.Informer()
	return &OptIn{selector: selector, factory: f, synced: inf.HasSynced, lister: ns.Lister()}, nil
}

// Selector is the label selector of opted-in namespaces.
func (o *OptIn) Selector() string { return o.selector }

// Start watches until ctx ends.
func (o *OptIn) Start(ctx context.Context) { o.factory.Start(ctx.Done()) }

func (o *OptIn) wait(ctx context.Context) error {
	if !waitCache(ctx, 0, o.synced) {
		return fmt.Errorf("kube: namespace cache not synced yet")
	}
	return nil
}

// List returns the opted-in namespaces, sorted.
func (o *OptIn) List(ctx context.Context) ([]string, error) {
	if err := o.wait(ctx); err != nil {
		return nil, err
	}
	l, err := o.lister.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(l))
	for _, n := range l {
		if n.DeletionTimestamp == nil {
			out = append(out, n.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Has reports whether namespace ns opted in.
func (o *OptIn) Has(ctx context.Context, ns string) bool {
	if o.wait(ctx) != nil {
		return false
	}
	n, err := o.lister.Get(ns)
	return err == nil && n.DeletionTimestamp == nil
}
