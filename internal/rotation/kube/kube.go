// Package kube runs the rotation controller in a Kubernetes cluster:
// keysets live in Secrets (wrapped keys only, what pods mount), lifecycle
// steps become Events on those Secrets, and leader election makes sure two
// replicas never rotate the same keyset twice.
//
// A Secret is a keyset when it carries the label keyshift.io/keyset=true
// and its data key "keyset.json" holds the document (policy included).
// Annotated Secrets were chosen over a CRD: pods mount the Secret directly,
// there is no install-order problem, and RBAC stays one resource wide.
package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/rotation"
)

// Label marks a Secret as a keyset; DataKey is the document's key in it.
const (
	Label   = "keyshift.io/keyset"
	DataKey = "keyset.json"
)

// SecretStore is a rotation.Store over Secrets. Keys are "namespace/name";
// revisions are resourceVersions, so Put is the API server's optimistic
// concurrency.
type SecretStore struct {
	Client kubernetes.Interface
	// Namespace limits the store to one namespace; "" watches all.
	Namespace string
	// Namespaces, when set, lists the namespaces to manage (the ones that
	// opted in) and Namespace is ignored. A namespace whose Secrets the
	// controller may not list (no RoleBinding yet) is skipped and logged.
	Namespaces func(ctx context.Context) ([]string, error)
	// Log receives what List skips; nil discards.
	Log *slog.Logger
	// Listed, when set, is told after each List the namespaces that hold
	// keysets (the controller puts its CA bundle there).
	Listed func(ctx context.Context, namespaces []string)

	mu     sync.Mutex
	refs   map[string]*corev1.ObjectReference // namespace/keyset -> Secret, for events
	owners map[string]string                  // namespace/keyset -> key of the Secret that holds it
	warned map[string]bool                    // duplicates already reported, by Secret UID and resourceVersion
	rec    record.EventRecorder               // set by Events
}

var (
	_ rotation.Store  = (*SecretStore)(nil)
	_ rotation.Scoper = (*SecretStore)(nil)
)

// Scope is the namespace of the Secret under key: keysets belong to it,
// are served only to its pods, and their names are unique only within it.
func (s *SecretStore) Scope(key string) string {
	ns, _, _ := strings.Cut(key, "/")
	return ns
}

func splitKey(key string) (string, string, error) {
	ns, name, ok := strings.Cut(key, "/")
	if !ok || ns == "" || name == "" {
		return "", "", fmt.Errorf("kube: key %q: write namespace/name", key)
	}
	return ns, name, nil
}

// List returns namespace/name of every labelled Secret, leaving out
// duplicates: when two Secrets of one namespace hold the same keyset name,
// the older Secret (then the smaller name) holds it, whichever replica
// leads and in whatever order it reads them; the other is refused with a
// Warning Event on it until it is renamed or deleted.
func (s *SecretStore) List(ctx context.Context) ([]string, error) {
	secrets, err := s.listSecrets(ctx)
	if err != nil {
		return nil, err
	}
	sort.Slice(secrets, func(i, j int) bool {
		a, b := &secrets[i], &secrets[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	owners := map[string]string{}
	var keys []string
	for i := range secrets {
		sec := &secrets[i]
		key := sec.Namespace + "/" + sec.Name
		ks, err := keyset.Parse(sec.Data[DataKey])
		if err != nil {
			keys = append(keys, key) // Get reports why, as a failed step
			continue
		}
		label := sec.Namespace + "/" + ks.Name
		if owner, ok := owners[label]; ok {
			s.refuseDuplicate(sec, ks.Name, owner)
			continue
		}
		owners[label] = key
		keys = append(keys, key)
	}
	s.mu.Lock()
	s.owners = owners
	s.mu.Unlock()
	sort.Strings(keys)
	if s.Listed != nil {
		var nss []string
		for _, k := range keys {
			if ns := s.Scope(k); len(nss) == 0 || nss[len(nss)-1] != ns {
				nss = append(nss, ns)
			}
		}
		s.Listed(ctx, nss)
	}
	return keys, nil
}

// listSecrets lists the labelled Secrets of the managed namespaces.
func (s *SecretStore) listSecrets(ctx context.Context) ([]corev1.Secret, error) {
	opts := metav1.ListOptions{LabelSelector: Label + "=true"}
	if s.Namespaces == nil {
		l, err := s.Client.CoreV1().Secrets(s.Namespace).List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("kube: list keyset Secrets: %w", err)
		}
		return l.Items, nil
	}
	nss, err := s.Namespaces(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube: list opted-in namespaces: %w", err)
	}
	var out []corev1.Secret
	for _, ns := range nss {
		l, err := s.Client.CoreV1().Secrets(ns).List(ctx, opts)
		if err != nil {
			// One namespace's missing RoleBinding must not stop the others.
			if s.Log != nil {
				s.Log.Warn("namespace opted in but its keyset Secrets cannot be listed; bind the ClusterRole keyshift-controller-keysets to the controller's ServiceAccount there", "namespace", ns, "err", err)
			}
			continue
		}
		out = append(out, l.Items...)
	}
	return out, nil
}

// refuseDuplicate reports, once per change of the Secret, that it is not
// managed because an older Secret holds the same keyset.
func (s *SecretStore) refuseDuplicate(sec *corev1.Secret, name, owner string) {
	id := string(sec.UID) + "@" + sec.ResourceVersion
	s.mu.Lock()
	if s.warned == nil {
		s.warned = map[string]bool{}
	}
	seen := s.warned[id]
	s.warned[id] = true
	rec := s.rec
	s.mu.Unlock()
	if seen || rec == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Secret", APIVersion: "v1", Namespace: sec.Namespace, Name: sec.Name, UID: sec.UID, ResourceVersion: sec.ResourceVersion}
	rec.Event(ref, corev1.EventTypeWarning, "DuplicateKeyset", fmt.Sprintf("keyset %q is already held by the older Secret %s; this Secret is not managed or served until it is renamed or deleted", name, owner))
}

// Get reads one keyset Secret.
func (s *SecretStore) Get(ctx context.Context, key string) (*keyset.Keyset, string, error) {
	ns, name, err := splitKey(key)
	if err != nil {
		return nil, "", err
	}
	sec, err := s.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("kube: get Secret %s: %w", key, err)
	}
	ks, err := keyset.Parse(sec.Data[DataKey])
	if err != nil {
		return nil, "", fmt.Errorf("kube: Secret %s: %w", key, err)
	}
	label := ns + "/" + ks.Name
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs == nil {
		s.refs = map[string]*corev1.ObjectReference{}
	}
	if owner, ok := s.owners[label]; ok && owner != key {
		return nil, "", fmt.Errorf("kube: Secret %s holds keyset %q, already held by the older Secret %s; keyset names must be unique in a namespace: rename or delete one", key, ks.Name, owner)
	}
	s.refs[label] = &corev1.ObjectReference{Kind: "Secret", APIVersion: "v1", Namespace: ns, Name: name, UID: sec.UID, ResourceVersion: sec.ResourceVersion}
	return ks, revision(sec), nil
}

// revision is a Secret's revision as the store hands it out: its
// resourceVersion and a digest of its data. A write at a revision succeeds
// while the data is still what was read, even if the resourceVersion moved
// because only metadata changed meanwhile (the holders annotation, which
// the controller rewrites as usage reports arrive, or the status
// annotation); any change to the document, the audit trail or its head
// conflicts.
func revision(sec *corev1.Secret) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(sec.Data)) {
		fmt.Fprintf(h, "%d:%s%d:", len(k), k, len(sec.Data[k]))
		h.Write(sec.Data[k])
	}
	// The audit head is an annotation but part of the state a step
	// continues from.
	fmt.Fprintf(h, "head:%s", sec.Annotations[AuditHeadAnnotation])
	return sec.ResourceVersion + "/" + hex.EncodeToString(h.Sum(nil)[:12])
}

// sameData reports whether sec's data is still the data rev was read at.
func sameData(sec *corev1.Secret, rev string) bool {
	_, digest, ok := strings.Cut(rev, "/")
	_, now, _ := strings.Cut(revision(sec), "/")
	return ok && digest == now
}

// Put updates the Secret if it is still at rev. Its audit trail is left
// as it is (a step taken by hand, `keyshift keyset`, is not the
// controller's to record).
func (s *SecretStore) Put(ctx context.Context, key string, ks *keyset.Keyset, rev string) (string, error) {
	b, err := ks.Marshal()
	if err != nil {
		return "", err
	}
	return s.update(ctx, key, rev, func(sec *corev1.Secret) error {
		sec.Data[DataKey] = b
		return nil
	})
}

// anyRevision is update's rev for a change that does not depend on the
// document (an audit record of a failed step).
const anyRevision = "*"

// update reads the Secret, checks it is still at rev (or takes any with
// anyRevision), applies change and writes it back at the resourceVersion
// it read: the API server refuses the write (ErrConflict) if it changed
// meanwhile, so nothing change made is stored unless all of it is.
func (s *SecretStore) update(ctx context.Context, key, rev string, change func(*corev1.Secret) error) (string, error) {
	ns, name, err := splitKey(key)
	if err != nil {
		return "", err
	}
	sec, err := s.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("kube: get Secret %s: %w", key, err)
	}
	if rev != anyRevision && revision(sec) != rev && !sameData(sec, rev) {
		return "", fmt.Errorf("%w: Secret %s is at %s, read at %s", rotation.ErrConflict, key, revision(sec), rev)
	}
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	if err := change(sec); err != nil {
		return "", err
	}
	out, err := s.Client.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return "", fmt.Errorf("%w: %s", rotation.ErrConflict, key)
	}
	if err != nil {
		return "", fmt.Errorf("kube: update Secret %s: %w", key, err)
	}
	return revision(out), nil
}

// StatusAnnotation holds the controller's latest outcome for the keyset,
// e.g. "blocked [2]: not promoting v2: after 5m0s, 1 of 3 sidecars have
// not loaded it (ns/pod-b)", and StatusTimeAnnotation when it was set.
const (
	StatusAnnotation     = "keyshift.io/rotation-status"
	StatusTimeAnnotation = "keyshift.io/rotation-status-time"
)

// SetStatus writes the outcome into the Secret's annotations with a merge
// patch (data untouched, so pods see no change).
func (s *SecretStore) SetStatus(ctx context.Context, key string, out rotation.Outcome) error {
	ns, name, err := splitKey(key)
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		StatusAnnotation: out.String(), StatusTimeAnnotation: time.Now().UTC().Format(time.RFC3339),
	}}})
	if err != nil {
		return err
	}
	if _, err := s.Client.CoreV1().Secrets(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("kube: annotate Secret %s: %w", key, err)
	}
	return nil
}

// Create stores a new keyset Secret (for `keyshift keyset create --secret`).
func (s *SecretStore) Create(ctx context.Context, key string, ks *keyset.Keyset) error {
	ns, name, err := splitKey(key)
	if err != nil {
		return err
	}
	b, err := ks.Marshal()
	if err != nil {
		return err
	}
	_, err = s.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{Label: "true"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{DataKey: b},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("kube: create Secret %s: %w", key, err)
	}
	return nil
}

// Events returns an Engine.Event function that records Kubernetes Events
// on the keyset's Secret, and a stop function.
func (s *SecretStore) Events(log *slog.Logger) (func(keyset string, warning bool, reason, message string), func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.Client.CoreV1().Events("")})
	rec := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "keyshift-controller"})
	s.mu.Lock()
	s.rec = rec
	s.mu.Unlock()
	return func(name string, warning bool, reason, message string) {
		s.mu.Lock()
		ref := s.refs[name]
		s.mu.Unlock()
		if ref == nil {
			log.Warn("no Secret known for keyset; event dropped", "keyset", name)
			return
		}
		t := corev1.EventTypeNormal
		if warning {
			t = corev1.EventTypeWarning
		}
		rec.Event(ref, t, eventReason(reason), message)
	}, b.Shutdown
}

// eventReason turns "add-pending" into "AddPending", the Event convention.
func eventReason(action string) string {
	parts := strings.Split(action, "-")
	for i, p := range parts {
		if p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "")
}

// ErrLeadershipLost: this replica held the Lease and lost it before its
// context ended. The process should exit and restart, as client-go
// recommends.
var ErrLeadershipLost = errors.New("kube: leadership lost")

// LeaderConfig configures leader election over a Lease.
type LeaderConfig struct {
	Namespace, Name, Identity string
	LeaseDuration             time.Duration
}

// RunLeader runs lead while this process holds the Lease, and returns when
// ctx ends or leadership is lost (the process should then exit and restart,
// as client-go recommends). It returns only after lead has returned, so
// lead's clean-up (closing xDS streams, removing the leader label) is not
// cut short by the process exiting.
func RunLeader(ctx context.Context, c kubernetes.Interface, cfg LeaderConfig, log *slog.Logger, lead func(context.Context)) error {
	if cfg.Identity == "" {
		return errors.New("kube: leader election needs an identity (set --identity or POD_NAME)")
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 15 * time.Second
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.Name},
		Client:     c.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	lost := make(chan struct{})
	var term leaderTerm
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.LeaseDuration * 2 / 3,
		RetryPeriod:     cfg.LeaseDuration / 7,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				defer term.begin()()
				log.Info("became leader", "lease", cfg.Namespace+"/"+cfg.Name, "identity", cfg.Identity)
				lead(ctx)
			},
			OnStoppedLeading: func() {
				log.Info("stopped leading", "identity", cfg.Identity)
				close(lost)
			},
			OnNewLeader: func(id string) {
				if id != cfg.Identity {
					log.Info("another replica leads", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("kube: leader election: %w", err)
	}
	le.Run(ctx)
	term.wait()
	select {
	case <-lost:
		if ctx.Err() == nil {
			return ErrLeadershipLost
		}
	default:
	}
	return nil
}

// leaderTerm lets RunLeader wait for the lead callback, which client-go
// runs in a goroutine of its own and does not wait for.
type leaderTerm struct {
	mu   sync.Mutex
	done chan struct{}
}

// begin marks a term started and returns the function that ends it.
func (t *leaderTerm) begin() func() {
	d := make(chan struct{})
	t.mu.Lock()
	t.done = d
	t.mu.Unlock()
	return func() { close(d) }
}

// wait blocks until the term that began, if any, has ended.
func (t *leaderTerm) wait() {
	t.mu.Lock()
	d := t.done
	t.mu.Unlock()
	if d != nil {
		<-d
	}
}
