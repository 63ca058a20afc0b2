// Package clusterstatus is one view of every keyset's rotation in a
// cluster, for `keyshift status --cluster` and `kubectl keyshift status`:
// it reads the keyset Secrets (the document, and the outcome the
// controller annotates them with) and the leading controller's
// GET /v1/status (ACK counts of pending versions, blocked reasons), works
// out each keyset's next step, and renders a table or JSON. It only
// reads, and it never prints a wrapped key.
package clusterstatus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
)

// Report is the whole view: where the controller's state came from, and
// one row per keyset Secret.
type Report struct {
	Controller ControllerInfo `json:"controller"`
	Keysets    []Row          `json:"keysets"`
}

// ControllerInfo says whether the controller's state is in the report.
// Without it (Error set) ACK counts are unknown and a blocked reason is
// the one last written on the Secret.
type ControllerInfo struct {
	// Source is where the state was read: "pod NS/NAME" through the API
	// server, or a URL.
	Source   string `json:"source,omitempty"`
	Identity string `json:"identity,omitempty"`
	Leading  bool   `json:"leading"`
	Error    string `json:"error,omitempty"`
}

// Row is one keyset.
type Row struct {
	Namespace string `json:"namespace"`
	// Name is the keyset's name (what ciphertexts carry); Secret the
	// Secret that holds it.
	Name   string `json:"name"`
	Secret string `json:"secret"`
	// Primary is the version that encrypts (0 in a document that cannot
	// be read).
	Primary uint32   `json:"primary"`
	Pending *Pending `json:"pending,omitempty"`
	// Blocked is why the controller is not taking the next step, if it
	// is not.
	Blocked string `json:"blocked,omitempty"`
	Next    Step   `json:"next"`
	// LastOutcome is the controller's latest outcome as annotated on the
	// Secret, and LastOutcomeAt when it was written.
	LastOutcome   string `json:"lastOutcome,omitempty"`
	LastOutcomeAt string `json:"lastOutcomeAt,omitempty"`
	// Error is set when the Secret does not hold a valid keyset.
	Error string `json:"error,omitempty"`
}

// Pending is a pending version and, when the controller reported it, how
// many of its readers have it.
type Pending struct {
	Version uint32 `json:"version"`
	// Acked of Readers have the version (ACKed over xDS, or trusted to the
	// mounted Secret); nil when the controller's count is not known.
	Acked   *int              `json:"acked,omitempty"`
	Readers *int              `json:"readers,omitempty"`
	Waiting []string          `json:"waiting,omitempty"`
	NACKs   map[string]string `json:"nacks,omitempty"`
}

// ControllerSource fetches the leading controller's status and says where
// from.
type ControllerSource func(ctx context.Context) (*ControllerStatus, string, error)

// Options say what to collect.
type Options struct {
	Client kubernetes.Interface
	// Namespace lists one namespace's keysets; "" lists every namespace.
	Namespace string
	// Controller reads the controller's state; nil leaves it out.
	Controller ControllerSource
	Now        time.Time
}

// Collect reads the keyset Secrets and the controller's state. Failing to
// list Secrets is an error; failing to reach the controller is reported
// in Report.Controller and leaves ACK counts unknown.
func Collect(ctx context.Context, o Options) (*Report, error) {
	l, err := o.Client.CoreV1().Secrets(o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: kube.Label + "=true"})
	if err != nil {
		return nil, fmt.Errorf("clusterstatus: list keyset Secrets: %w", err)
	}
	rep := &Report{Keysets: []Row{}}
	states := map[string]rotation.KeysetState{}
	if o.Controller == nil {
		rep.Controller.Error = "not asked"
	} else if st, src, err := o.Controller(ctx); err != nil {
		rep.Controller = ControllerInfo{Source: src, Error: err.Error()}
	} else {
		rep.Controller = ControllerInfo{Source: src, Identity: st.Identity, Leading: st.Leading}
		if !st.Leading {
			rep.Controller.Error = "this replica does not lead; it has no rotation state"
		}
		for _, k := range st.Keysets {
			states[k.Key] = k
		}
	}
	known := rep.Controller.Error == ""
	for i := range l.Items {
		sec := &l.Items[i]
		st, ok := states[sec.Namespace+"/"+sec.Name]
		var stp *rotation.KeysetState
		if ok {
			stp = &st
		}
		rep.Keysets = append(rep.Keysets, row(sec, stp, known, o.Now))
	}
	sort.Slice(rep.Keysets, func(i, j int) bool {
		a, b := rep.Keysets[i], rep.Keysets[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Secret < b.Secret
	})
	return rep, nil
}

// row is one Secret's row: the document for versions and the next step,
// the controller's state st (nil when it has none for this Secret) for
// the ACK count and a blocked reason; known says the controller answered,
// so the Secret's annotation is not needed for the reason.
func row(sec *corev1.Secret, st *rotation.KeysetState, known bool, now time.Time) Row {
	r := Row{Namespace: sec.Namespace, Name: sec.Name, Secret: sec.Name,
		LastOutcome: sec.Annotations[kube.StatusAnnotation], LastOutcomeAt: sec.Annotations[kube.StatusTimeAnnotation]}
	ks, err := keyset.Parse(sec.Data[kube.DataKey])
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Name = ks.Name
	r.Primary = ks.Primary().Version
	r.Next = Next(ks, now)
	if p := rotation.LatestPending(ks); p != 0 {
		r.Pending = &Pending{Version: p}
		if st != nil && st.Pending != nil && st.Pending.Version == p {
			r.Pending.Acked, r.Pending.Readers = &st.Pending.Ready, &st.Pending.Readers
			r.Pending.Waiting, r.Pending.NACKs = st.Pending.Waiting, st.Pending.NACKs
		}
	}
	switch {
	case st != nil:
		if st.Action == "blocked" {
			r.Blocked = st.Reason
			if r.Blocked == "" {
				r.Blocked = st.Error
			}
		}
	case !known:
		// The Secret keeps the last outcome the controller published; it
		// may be older than the controller's, but it is what there is.
		if rest, ok := strings.CutPrefix(r.LastOutcome, "blocked "); ok {
			if _, reason, ok := strings.Cut(rest, ": "); ok {
				r.Blocked = reason
			}
		}
	}
	return r
}

// FromURL reads the controller's status from base (its metrics address,
// for example http://127.0.0.1:9496 through `kubectl port-forward`).
func FromURL(base string, hc *http.Client) (ControllerSource, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("clusterstatus: controller URL %q: write the controller's metrics address as http://HOST:PORT", base)
	}
	full := strings.TrimSuffix(u.String(), "/") + ControllerPath
	return func(ctx context.Context) (*ControllerStatus, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, full, nil)
		if err != nil {
			return nil, base, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, base, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusSize))
		if err != nil {
			return nil, base, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, base, fmt.Errorf("GET %s: %s", full, resp.Status)
		}
		st, err := decode(body)
		return st, base, err
	}, nil
}

// maxStatusSize bounds the controller's answer (a few hundred bytes per
// keyset).
const maxStatusSize = 16 << 20

func decode(body []byte) (*ControllerStatus, error) {
	var st ControllerStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("controller status is not JSON: %w", err)
	}
	return &st, nil
}

// ErrNoLeader: no controller pod carries the leader label.
var ErrNoLeader = errors.New("no controller pod is labelled " + kube.RoleLabel + "=" + kube.RoleLeader)

// ViaLeaderPod reads the controller's status through the API server's
// proxy to the leading controller's pod (the one labelled
// keyshift.io/controller-role=leader in namespace), on its container port
// named port. It needs only a kubeconfig whose user may list pods and get
// pods/proxy there; only the leader counts ACKs, so the proxy goes to that
// pod, not to a Service that may pick a follower.
func ViaLeaderPod(client kubernetes.Interface, namespace, port string) ControllerSource {
	return func(ctx context.Context) (*ControllerStatus, string, error) {
		pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: kube.RoleLabel + "=" + kube.RoleLeader})
		if err != nil {
			return nil, "namespace " + namespace, fmt.Errorf("finding the leading controller: %w", err)
		}
		if len(pods.Items) == 0 {
			return nil, "namespace " + namespace, fmt.Errorf("%w in namespace %s", ErrNoLeader, namespace)
		}
		pod := &pods.Items[0]
		src := "pod " + pod.Namespace + "/" + pod.Name
		num, err := containerPort(pod, port)
		if err != nil {
			return nil, src, err
		}
		body, err := client.CoreV1().Pods(namespace).ProxyGet("http", pod.Name, num, ControllerPath, nil).DoRaw(ctx)
		if err != nil {
			return nil, src, fmt.Errorf("GET %s through the API server: %w", ControllerPath, err)
		}
		st, err := decode(body)
		return st, src, err
	}
}

// containerPort is the number of pod's container port named name (or
// name itself when it is a number).
func containerPort(pod *corev1.Pod, name string) (string, error) {
	if n, err := strconv.ParseUint(name, 10, 16); err == nil && n > 0 {
		return name, nil
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return fmt.Sprint(p.ContainerPort), nil
			}
		}
	}
	return "", fmt.Errorf("pod %s/%s has no container port named %q; pass --controller-port with its metrics port", pod.Namespace, pod.Name, name)
}
