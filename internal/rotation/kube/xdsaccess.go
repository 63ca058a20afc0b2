package kube

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/injector/annotation"
	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/wire"
)

// DefaultXDSAudience is the audience of the projected ServiceAccount token
// a sidecar presents to the controller. A token for any other audience
// (the pod's API token, another system's) is refused, so a token meant for
// keyshift cannot be replayed elsewhere and the other way round.
const DefaultXDSAudience = wire.TokenAudience

// Extra keys the API server sets in a TokenReview of a pod-bound token.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// XDSAccess authenticates sidecars by their pod's projected ServiceAccount
// token and authorises them by their pod. A TokenReview checks the token
// (signature, expiry, audience) and that the pod it is bound to still
// exists with the same UID, so the token of a deleted pod is refused at
// once; the pod cache then says which keysets the pod may read: those its
// keyshift.io/keysets annotation names, in its own namespace.
//
// Tokens rather than client certificates: the kubelet already issues,
// renews and binds them to the pod, so no CA has to issue per-pod
// certificates, and revocation is the pod's deletion. The price is one
// TokenReview per stream (streams last until the token expires), which
// is not cached, so no window exists in which a revoked token still
// passes.
type XDSAccess struct {
	Client   kubernetes.Interface
	Audience string // DefaultXDSAudience when empty
	Pods     *PodReaders
	// OptIn, when set, limits access to pods of namespaces that opted in.
	OptIn *OptIn
}

// Access returns the xds.Access of a.
func (a *XDSAccess) Access() *xds.Access {
	return &xds.Access{Authenticate: a.Authenticate, Authorize: a.Authorize}
}

func (a *XDSAccess) audience() string {
	if a.Audience == "" {
		return DefaultXDSAudience
	}
	return a.Audience
}

// Authenticate checks the bearer token of a stream with a TokenReview.
func (a *XDSAccess) Authenticate(ctx context.Context) (xds.Identity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(wire.AuthorizationKey)
	if len(vals) != 1 {
		return xds.Identity{}, errors.New("no bearer token: a sidecar presents its pod's projected ServiceAccount token (audience " + a.audience() + ")")
	}
	tok, ok := wire.ParseBearer(vals[0])
	if !ok {
		return xds.Identity{}, errors.New("the authorization header is not a bearer token")
	}
	aud := a.audience()
	tr, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: []string{aud}},
	}, metav1.CreateOptions{})
	if err != nil {
		return xds.Identity{}, fmt.Errorf("token review failed: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		return xds.Identity{}, fmt.Errorf("token refused by the API server: %s", st.Error)
	}
	if !slices.Contains(st.Audiences, aud) {
		return xds.Identity{}, fmt.Errorf("token is not for audience %s", aud)
	}
	rest, ok := strings.CutPrefix(st.User.Username, "system:serviceaccount:")
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" {
		return xds.Identity{}, fmt.Errorf("token of %q is not a ServiceAccount's", st.User.Username)
	}
	pod, uid := first(st.User.Extra[extraPodName]), first(st.User.Extra[extraPodUID])
	if pod == "" || uid == "" {
		return xds.Identity{}, fmt.Errorf("token of %s/%s is not bound to a pod: mount a projected serviceAccountToken (audience %s), not a Secret-based token", ns, sa, aud)
	}
	return xds.Identity{Namespace: ns, Pod: pod, PodUID: uid, ServiceAccount: sa, Expires: expiry(tok)}, nil
}

func first(v authnv1.ExtraValue) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// expiry reads the exp claim of a JWT the TokenReview has verified; zero
// when absent.
func expiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(b, &claims) != nil || claims.Exp == 0 {
		return time.Time{}
	}
	return time.Unix(claims.Exp, 0)
}

// Authorize lets a pod read a keyset of its namespace that its
// keyshift.io/keysets annotation names. The pod is looked up by name and
// must carry the token's pod UID: a pod of the same name made later does
// not inherit the stream. Anyone who may create pods in a namespace may
// name any keyset there, as they may mount any Secret there: the
// namespace is the boundary, as for Secrets.
func (a *XDSAccess) Authorize(ctx context.Context, id xds.Identity, keyset string) error {
	if a.OptIn != nil && !a.OptIn.Has(ctx, id.Namespace) {
		return fmt.Errorf("namespace %s has not opted in to keyshift (label %s)", id.Namespace, a.OptIn.Selector())
	}
	pc := a.Pods.cacheFor(id.Namespace)
	if err := a.Pods.waitSynced(ctx, pc); err != nil {
		return err
	}
	pod, err := pc.lister.Pods(id.Namespace).Get(id.Pod)
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("pod %s not found", id.NodeID())
	}
	if err != nil {
		return err
	}
	if string(pod.UID) != id.PodUID {
		return fmt.Errorf("pod %s is not the pod the token was issued to", id.NodeID())
	}
	if pod.DeletionTimestamp != nil {
		return fmt.Errorf("pod %s is being deleted", id.NodeID())
	}
	if _, injected := pod.Annotations[annotation.Status]; !injected {
		return fmt.Errorf("pod %s was not injected by keyshift", id.NodeID())
	}
	for name := range keysetRefs(pod.Annotations[annotation.Keysets]) {
		if name != "" && name == keyset {
			return nil
		}
	}
	return fmt.Errorf("its %s annotation does not name keyset %s", annotation.Keysets, keyset)
}
