package kube

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/keyshift/keyshift/injector/annotation"
)

// ErrPodsNotSynced: the pod cache has not loaded yet, so the readers of a
// keyset are unknown and promotion must wait.
var ErrPodsNotSynced = errors.New("kube: pod cache not synced yet")

// PodReaders knows which pods read which keyset Secret: the injected pods
// whose keyshift.io/keysets annotation names the Secret. It watches pods
// (a cache, not a List per reconcile: a rotation reconciles on every ACK)
// and keeps of each pod only what that question needs, so the cache stays
// small in a large cluster.
type PodReaders struct {
	client kubernetes.Interface
	perNS  bool

	mu     sync.Mutex
	caches map[string]*podCache // by namespace; "" for the one cache when !perNS
	ctx    context.Context      // from Start

	// SyncTimeout bounds how long Readers waits for the first load (30 s
	// when zero).
	SyncTimeout time.Duration
}

// podCache is one pod watch.
type podCache struct {
	factory informers.SharedInformerFactory
	synced  cache.InformerSynced
	lister  listersv1.PodLister
}

func newPodCache(c kubernetes.Interface, namespace string) *podCache {
	f := informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithNamespace(namespace), informers.WithTransform(slimPod))
	pods := f.Core().V1().Pods()
	inf := pods.Informer()
	return &podCache{factory: f, synced: inf.HasSynced, lister: pods.Lister()}
}

// NewPodReaders returns a PodReaders over the pods of namespace ("" for
// every namespace, which takes list/watch on pods cluster-wide). Call
// Start.
func NewPodReaders(c kubernetes.Interface, namespace string) *PodReaders {
	return &PodReaders{client: c, caches: map[string]*podCache{"": newPodCache(c, namespace)}}
}

// NewPodReadersPerNamespace returns a PodReaders that watches the pods of
// a namespace from the first question about it on: the controller then
// needs pod access only in the namespaces that opted in. Call Start.
func NewPodReadersPerNamespace(c kubernetes.Interface) *PodReaders {
	return &PodReaders{client: c, perNS: true, caches: map[string]*podCache{}}
}

// Start begins watching pods until ctx ends. Every replica starts it, so a
// new leader does not wait for a cold cache.
func (p *PodReaders) Start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ctx = ctx
	for _, c := range p.caches {
		c.factory.Start(ctx.Done())
	}
}

// cacheFor returns the watch that holds namespace ns, starting it if new.
func (p *PodReaders) cacheFor(ns string) *podCache {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.perNS {
		return p.caches[""]
	}
	c, ok := p.caches[ns]
	if !ok {
		c = newPodCache(p.client, ns)
		p.caches[ns] = c
		if p.ctx != nil {
			c.factory.Start(p.ctx.Done())
		}
	}
	return c
}

// Readers returns the xDS node IDs ("namespace/pod") of the pods that
// should hold the keyset stored in the Secret key ("namespace/name"):
// pods in that namespace that the injector injected, that list the Secret
// in keyshift.io/keysets, and that run and are not being deleted. It
// fails closed: an unloaded cache is an error, never "no readers".
func (p *PodReaders) Readers(ctx context.Context, key string) ([]string, error) {
	ns, secret, err := splitKey(key)
	if err != nil {
		return nil, err
	}
	pc := p.cacheFor(ns)
	if err := p.waitSynced(ctx, pc); err != nil {
		return nil, err
	}
	pods, err := pc.lister.Pods(ns).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("kube: list pods in %s: %w", ns, err)
	}
	var out []string
	for _, pod := range pods {
		if readsSecret(pod, secret) {
			out = append(out, pod.Namespace+"/"+pod.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// waitSynced waits up to SyncTimeout for the first load of pc.
func (p *PodReaders) waitSynced(ctx context.Context, pc *podCache) error {
	if !waitCache(ctx, p.SyncTimeout, pc.synced) {
		return ErrPodsNotSynced
	}
	return nil
}

// waitCache waits up to d (30 s when zero) for an informer's first load
// and reports whether it completed.
func waitCache(ctx context.Context, d time.Duration, synced cache.InformerSynced) bool {
	if synced() {
		return true
	}
	if d <= 0 {
		d = 30 * time.Second
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return cache.WaitForCacheSync(wctx.Done(), synced)
}

// readsSecret reports whether pod is a live, injected reader of secret.
func readsSecret(pod *corev1.Pod, secret string) bool {
	if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
		return false
	}
	if _, injected := pod.Annotations[annotation.Status]; !injected {
		return false
	}
	for _, s := range keysetRefs(pod.Annotations[annotation.Keysets]) {
		if s != "" && s == secret {
			return true
		}
	}
	return false
}

// keysetRefs yields each keyset name and its Secret in a
// keyshift.io/keysets value: "NAME" or "NAME=SECRET", comma-separated;
// SECRET defaults to NAME. The injector has validated the value of every
// pod it injected; both the readers of a Secret and the keysets a pod may
// read over xDS come from this one parse.
func keysetRefs(v string) iter.Seq2[string, string] {
	return func(yield func(name, secret string) bool) {
		for item := range strings.SplitSeq(v, ",") {
			name, secret, ok := strings.Cut(strings.TrimSpace(item), "=")
			if !ok {
				secret = name
			}
			if !yield(strings.TrimSpace(name), strings.TrimSpace(secret)) {
				return
			}
		}
	}
}

// slimPod keeps of a pod only what readsSecret needs (and what the cache
// needs to key and update it).
func slimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a deletion tombstone
	}
	slim := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
			ResourceVersion: pod.ResourceVersion, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}
	for _, k := range []string{annotation.Status, annotation.Keysets} {
		if v, ok := pod.Annotations[k]; ok {
			if slim.Annotations == nil {
				slim.Annotations = map[string]string{}
			}
			slim.Annotations[k] = v
		}
	}
	return slim, nil
}
