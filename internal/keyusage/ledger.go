// Package keyusage is the controller's side of key usage auditing: it
// takes the records sidecars report every interval (see xds.UsageSink),
// writes each as one structured log line (the durable sink, collected by
// the cluster's log pipeline like a KMS's own audit log), counts them in
// metrics, raises a Warning Event when decrypt failures of a keyset spike,
// and remembers, per key version, who encrypted under it: the list an
// operator needs after revoking a compromised version.
package keyusage

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyshift/keyshift/internal/xds"
	"github.com/keyshift/keyshift/internal/xds/usagev1"
)

// Holder is a caller that encrypted under a version, so may still hold
// data sealed under it. Callers are told apart by service account and
// process UID; LastPod is a pod they were seen in on LastSeen (the holder
// is stored once a day, not once per pod).
type Holder struct {
	ServiceAccount string `json:"serviceAccount"`
	PeerUID        int64  `json:"peerUid"`
	LastPod        string `json:"lastPod"`
	// FirstSeen and LastSeen are UTC dates (2006-01-02).
	FirstSeen string `json:"firstSeen"`
	LastSeen  string `json:"lastSeen"`
}

// Holders lists, per version number, who encrypted under it.
type Holders map[uint32][]Holder

// MaxHoldersPerVersion bounds the list kept per version; past it the
// holder seen longest ago is dropped (the log keeps every record).
const MaxHoldersPerVersion = 64

// Add records h under version v and reports whether the list changed: a
// new holder, a newer pod, or a later date.
func (hs Holders) Add(v uint32, h Holder) bool {
	list := hs[v]
	for i, old := range list {
		if old.ServiceAccount != h.ServiceAccount || old.PeerUID != h.PeerUID {
			continue
		}
		if old.LastPod == h.LastPod && old.LastSeen >= h.LastSeen {
			return false
		}
		list[i].LastPod = h.LastPod
		list[i].LastSeen = max(old.LastSeen, h.LastSeen)
		return true
	}
	list = append(list, h)
	if len(list) > MaxHoldersPerVersion {
		slices.SortStableFunc(list, func(a, b Holder) int { return cmp.Compare(b.LastSeen, a.LastSeen) })
		list = list[:MaxHoldersPerVersion]
	}
	hs[v] = list
	return true
}

// String lists the holders of one version on one line each.
func (h Holder) String() string {
	return fmt.Sprintf("serviceaccount %s uid %d (last pod %s, %s to %s)", h.ServiceAccount, h.PeerUID, h.LastPod, h.FirstSeen, h.LastSeen)
}

// HolderStore keeps each keyset's Holders durably (beside the keyset).
type HolderStore interface {
	// UpdateHolders applies change to the stored Holders of keyset name
	// in namespace, and stores them if change reports a change.
	UpdateHolders(ctx context.Context, namespace, name string, change func(Holders) bool) error
}

// Ledger is a xds.UsageSink.
type Ledger struct {
	Log *slog.Logger
	// Holders keeps who encrypted under which version; nil keeps nothing.
	Holders HolderStore
	// Event raises a Warning Event on the keyset (namespace/name).
	Event func(keyset string, warning bool, reason, message string)
	// SpikeThreshold is how many failed decrypts (and rewraps) of one
	// keyset within SpikeWindow, summed over its pods, raise a
	// DecryptFailureSpike Event; 0 never does.
	SpikeThreshold uint64
	SpikeWindow    time.Duration // 1m when zero
	Now            func() time.Time

	usage  *prometheus.CounterVec
	spikes *prometheus.CounterVec

	mu     sync.Mutex
	window map[string]*spikeWindow // keyset -> the current window
	known  map[string]string       // holder identity -> the pod and date last stored
}

type spikeWindow struct {
	start   time.Time
	failed  uint64
	reasons map[string]uint64
	pods    map[string]bool
	raised  bool
}

var _ xds.UsageSink = (*Ledger)(nil)

// Register adds the ledger's series to reg:
// keyshift_controller_key_usage_total{keyset,op,result} (result "ok" or a
// failure reason) and keyshift_controller_decrypt_failure_spikes_total.
func (l *Ledger) Register(reg prometheus.Registerer) {
	l.usage = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyshift_controller_key_usage_total", Help: "Key uses reported by sidecars, by keyset (namespace/name), operation and result (ok or the failure reason).",
	}, []string{"keyset", "op", "result"})
	l.spikes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyshift_controller_decrypt_failure_spikes_total", Help: "DecryptFailureSpike Events raised, by keyset.",
	}, []string{"keyset"})
	reg.MustRegister(l.usage, l.spikes)
}

func (l *Ledger) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Report takes one pod's records for an interval.
func (l *Ledger) Report(ctx context.Context, id xds.Identity, recs []*usagev1.Record) {
	now := l.now()
	pod := id.NodeID()
	holders := map[string]Holders{} // keyset -> holders seen in this report
	for _, r := range recs {
		label := ""
		if r.GetKeyset() != "" {
			label = id.Namespace + "/" + r.GetKeyset()
		}
		attrs := []any{"pod", pod, "service_account", id.ServiceAccount, "peer_uid", r.GetPeerUid(), "keyset", label,
			"version", r.GetVersion(), "op", r.GetOp(), "ok", r.GetOk(),
			"from", time.UnixMilli(r.GetFromUnixMs()).UTC().Format(time.RFC3339), "to", time.UnixMilli(r.GetToUnixMs()).UTC().Format(time.RFC3339)}
		if len(r.GetFailed()) > 0 {
			attrs = append(attrs, "failed", r.GetFailed())
		}
		l.Log.Info("key usage", attrs...)
		if l.usage != nil {
			if r.GetOk() > 0 {
				l.usage.WithLabelValues(label, r.GetOp(), "ok").Add(float64(r.GetOk()))
			}
			for reason, n := range r.GetFailed() {
				l.usage.WithLabelValues(label, r.GetOp(), reason).Add(float64(n))
			}
		}
		if label != "" && (r.GetOp() == "decrypt" || r.GetOp() == "rewrap") {
			l.countFailures(label, pod, r.GetFailed(), now)
		}
		if label != "" && r.GetOp() == "encrypt" && r.GetOk() > 0 && r.GetVersion() != 0 {
			hs := holders[r.GetKeyset()]
			if hs == nil {
				hs = Holders{}
				holders[r.GetKeyset()] = hs
			}
			day := now.UTC().Format(time.DateOnly)
			hs.Add(r.GetVersion(), Holder{ServiceAccount: id.ServiceAccount, PeerUID: r.GetPeerUid(), LastPod: pod, FirstSeen: day, LastSeen: day})
		}
	}
	for name, hs := range holders {
		l.storeHolders(ctx, id.Namespace, name, hs)
	}
}

// countFailures adds one record's failures to its keyset's window and
// raises the spike Event once per window.
func (l *Ledger) countFailures(label, pod string, failed map[string]uint64, now time.Time) {
	var n uint64
	for _, c := range failed {
		n += c
	}
	if n == 0 || l.SpikeThreshold == 0 {
		return
	}
	span := cmp.Or(l.SpikeWindow, time.Minute)
	l.mu.Lock()
	if l.window == nil {
		l.window = map[string]*spikeWindow{}
	}
	w := l.window[label]
	if w == nil || now.Sub(w.start) >= span {
		w = &spikeWindow{start: now, reasons: map[string]uint64{}, pods: map[string]bool{}}
		l.window[label] = w
	}
	w.failed += n
	for r, c := range failed {
		w.reasons[r] += c
	}
	w.pods[pod] = true
	raise := !w.raised && w.failed >= l.SpikeThreshold
	if raise {
		w.raised = true
	}
	var msg string
	total := w.failed
	if raise {
		msg = fmt.Sprintf("%d failed decrypts within %s (at least %d raise this), by reason: %s; from pods %s. Ciphertexts from elsewhere, a wrong context, a revoked version or tampering: see the controller's \"key usage\" log lines",
			total, span, l.SpikeThreshold, counts(w.reasons), strings.Join(slices.Sorted(maps.Keys(w.pods)), ", "))
	}
	l.mu.Unlock()
	if !raise {
		return
	}
	l.Log.Warn("decrypt failure spike", "keyset", label, "failed", total, "window", span)
	if l.spikes != nil {
		l.spikes.WithLabelValues(label).Inc()
	}
	if l.Event != nil {
		l.Event(label, true, "decrypt-failure-spike", msg)
	}
}

// counts writes "auth_failed 40, bad_context 2", largest first.
func counts(m map[string]uint64) string {
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// storeHolders merges seen into the stored holders of a keyset, skipping
// the write when this ledger already stored that holder on the same day:
// at most one write per holder, version and day, however many pods share
// the holder's service account (each of which reports every minute).
func (l *Ledger) storeHolders(ctx context.Context, ns, name string, seen Holders) {
	if l.Holders == nil {
		return
	}
	fresh := Holders{}
	l.mu.Lock()
	if l.known == nil {
		l.known = map[string]string{}
	}
	for v, list := range seen {
		for _, h := range list {
			if l.known[holderKey(ns, name, v, h)] != h.LastSeen {
				fresh.Add(v, h)
			}
		}
	}
	l.mu.Unlock()
	if len(fresh) == 0 {
		return
	}
	err := l.Holders.UpdateHolders(ctx, ns, name, func(stored Holders) bool {
		changed := false
		for v, list := range fresh {
			for _, h := range list {
				changed = stored.Add(v, h) || changed
			}
		}
		return changed
	})
	if err != nil {
		l.Log.Warn("key holders not stored; retried at the next report", "keyset", ns+"/"+name, "err", err)
		return
	}
	l.mu.Lock()
	for v, list := range fresh {
		for _, h := range list {
			l.known[holderKey(ns, name, v, h)] = h.LastSeen
		}
	}
	l.mu.Unlock()
}

func holderKey(ns, name string, v uint32, h Holder) string {
	return fmt.Sprintf("%s/%s/%d/%s/%d", ns, name, v, h.ServiceAccount, h.PeerUID)
}
