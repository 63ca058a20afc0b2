package rotation

import (
	"context"
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

	"github.com/keyshift/keyshift/internal/audit"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
)

// Distributor pushes documents to readers and reports what they loaded.
// scope is the namespace that owns the keyset ("" outside a cluster): a
// document is served only to readers of that namespace, and only they
// count toward promotion.
type Distributor interface {
	Publish(ctx context.Context, scope string, ks *keyset.Keyset) error
	Status(scope, name string, version uint32) AckStatus
}

// AckStatus is what the sidecars reading one keyset have acknowledged.
type AckStatus struct {
	// Subscribers are the node IDs with an open stream asking for the keyset.
	Subscribers []string
	// Acked are the subscribers that ACKed the version or a later one.
	Acked []string
	// Waiting are subscribers that have not answered for the version yet.
	Waiting []string
	// NACKs maps subscribers that refused the version to their reason.
	NACKs map[string]string
}

// AllAcked reports whether every subscriber has the version. It is true
// with no subscribers at all: the streams open at one moment are not the
// pods that read the keyset (after a leader change few have reconnected),
// so the engine also checks its expected readers (countReaders).
func (a AckStatus) AllAcked() bool { return len(a.Waiting) == 0 && len(a.NACKs) == 0 }

// Scoper is optional on a Store whose keysets belong to namespaces: Scope
// returns the namespace of the keyset stored under key.
type Scoper interface {
	Scope(key string) string
}

// scope is the namespace of the keyset under key, "" for an unscoped store.
func (e *Engine) scope(key string) string {
	if s, ok := e.Store.(Scoper); ok {
		return s.Scope(key)
	}
	return ""
}

// label names a keyset in logs, metrics, Events and the audit trail:
// namespace/name when scoped (names are unique per namespace only).
func (e *Engine) label(key string, ks *keyset.Keyset) string {
	if sc := e.scope(key); sc != "" {
		return sc + "/" + ks.Name
	}
	return ks.Name
}

// servingSince is optional on a Distributor that serves only at times (the
// xDS server of a leader-elected controller serves only while it leads):
// it reports when it last began serving.
type servingSince interface {
	ServingSince() time.Time
}

// DefaultAckTimeout bounds the wait for ACKs when a policy sets none.
const DefaultAckTimeout = 5 * time.Minute

// Engine performs one keyset's lifecycle one persisted step at a time, so a
// crash between steps resumes from the stored document: check the pending
// version's ACKs and promote it; rewrap under a new KEK version; retire
// versions past retention; generate a new version when the primary is due.
type Engine struct {
	Store Store
	KMS   kms.Registry
	Dist  Distributor // nil when readers only mount the Secret
	// AuditKey seals each step's record into its keyset's audit chain,
	// which the Store (an AuditStore) keeps beside the keyset: a step's
	// record and the new chain head are written in the same
	// compare-and-swap as the step; a failed or blocked step's record by
	// one of its own, once per situation. Each record is also logged whole
	// ("audit_record") for the log pipeline. nil disables the trail.
	AuditKey *audit.Key
	// Audit, when set, gets a copy of each record (the --audit-log file).
	Audit   *audit.Log
	Metrics *Metrics // nil disables metrics
	Log     *slog.Logger
	// Actor names who acts in audit records.
	Actor string
	// Now is the clock (time.Now when nil); tests pass a fake one.
	Now func() time.Time
	// MinPendingAge is the least time a pending version waits before
	// promotion, for readers that only mount the Secret (the kubelet syncs
	// Secret volumes about once a minute). With every reader on xDS it can
	// be zero. With Readers set it applies only to expected readers that
	// have no xDS stream, and zero means such a reader is waited for.
	MinPendingAge time.Duration
	// Readers, when set, returns the xDS node IDs ("namespace/pod") of
	// the pods that should hold the keyset stored under key. Promotion
	// then waits for each of them, not only for whoever is connected at
	// the moment: after a leader change the new leader has few streams,
	// and zero subscribers must not read as "all acked" while pods use
	// the keyset. May be nil (readers are then the connected sidecars,
	// plus MinPendingAge for mounted-file readers).
	Readers func(ctx context.Context, key string) ([]string, error)
	// Event reports a step to people (Kubernetes Events); may be nil.
	Event func(keyset string, warning bool, reason, message string)
	// KMSPolicy, when set, says which KMS URIs each namespace's keysets
	// may name; a keyset naming another is neither rotated nor served.
	KMSPolicy *KMSPolicy
	// Poke, when it receives, starts a pass before the interval ends (a
	// keyset Secret changed: a revocation may have been requested).
	Poke <-chan struct{}
	// RevokeWait bounds how long a revocation of the primary waits for
	// every reader to load the new primary (DefaultRevokeWait when zero).
	RevokeWait time.Duration
	// Status publishes each keyset's latest outcome where operators look
	// (an annotation on the Secret); may be nil. It is called only when
	// the outcome changes.
	Status func(ctx context.Context, key string, out Outcome) error

	mu         sync.Mutex
	reported   map[string]string // key -> the failure or block last audited
	auditSeq   map[string]uint64 // key -> the newest record this engine stored
	lastStatus map[string]string
	states     map[string]KeysetState     // key -> the latest Reconcile, for States
	pend       map[string]*PendingReaders // key -> the count stepPending found in the Reconcile under way
	wrappers   *kms.Cache
	wake       time.Time // a pass a waiting step needs before the interval ends
}

// wrapper opens the keyset's KMS once per URI for the engine's lifetime.
func (e *Engine) wrapper(ctx context.Context, uri string) (kms.Wrapper, error) {
	e.mu.Lock()
	if e.wrappers == nil {
		e.wrappers = kms.NewCache(e.KMS)
	}
	c := e.wrappers
	e.mu.Unlock()
	return c.Open(ctx, uri)
}

// Outcome says what one Reconcile call did.
type Outcome struct {
	// Action is "" (nothing due), "add-pending", "promote", "rewrap",
	// "retire", "waiting" or "blocked".
	Action   string
	Versions []uint32
	Reason   string
}

// Done reports whether the keyset needs no further step now.
func (o Outcome) Done() bool {
	return o.Action == "" || o.Action == "waiting" || o.Action == "blocked"
}

func (e *Engine) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// Reconcile performs at most one lifecycle step for the keyset stored
// under key (a file name, or namespace/name of a Secret).
func (e *Engine) Reconcile(ctx context.Context, key string) (Outcome, error) {
	out, err := e.reconcile(ctx, key)
	if err == nil && (out.Action == "" || out.Action == "waiting") {
		e.clearReported(key) // the failure or block is over: audit the next one
	}
	e.publishStatus(ctx, key, out)
	e.record(key, out, err)
	return out, err
}

func (e *Engine) publishStatus(ctx context.Context, key string, out Outcome) {
	if e.Status == nil || out.Action == "" {
		return
	}
	text := out.String()
	e.mu.Lock()
	if e.lastStatus == nil {
		e.lastStatus = map[string]string{}
	}
	same := e.lastStatus[key] == text
	e.lastStatus[key] = text
	e.mu.Unlock()
	if same {
		return
	}
	if err := e.Status(ctx, key, out); err != nil {
		e.Log.Warn("publishing keyset status failed", "keyset", key, "err", err)
	}
}

// String is the outcome as one line: "blocked [2]: not promoting v2: ...".
func (o Outcome) String() string {
	return fmt.Sprintf("%s %v: %s", o.Action, o.Versions, o.Reason)
}

func (e *Engine) reconcile(ctx context.Context, key string) (Outcome, error) {
	ks, rev, err := e.Store.Get(ctx, key)
	if err != nil {
		return Outcome{}, err
	}
	if err := e.KMSPolicy.Check(e.scope(key), ks.KMS); err != nil {
		return e.fail(ctx, key, ks, "kms-policy", nil, err)
	}
	if e.Dist != nil {
		if err := e.Dist.Publish(ctx, e.scope(key), ks); err != nil {
			return Outcome{}, err
		}
	}
	e.Metrics.observe(e.label(key, ks), ks, e.now())
	w, err := e.wrapper(ctx, ks.KMS)
	if err != nil {
		return e.fail(ctx, key, ks, "open-kms", nil, err)
	}
	now := e.now()
	policy := keyset.Policy{}
	if ks.Policy != nil {
		policy = *ks.Policy
	}
	if ks.Revocation != nil {
		return e.stepRevoke(ctx, key, w, ks, rev, now)
	}
	if p := LatestPending(ks); p != 0 {
		return e.stepPending(ctx, key, ks, rev, p, policy, now)
	}
	if st, ok := w.(kms.KEKStatus); ok {
		cur, err := st.PrimaryKEKVersion(ctx)
		if err != nil {
			return e.fail(ctx, key, ks, "kek-status", nil, err)
		}
		next, done, err := Rewrap(ctx, w, ks, cur)
		if err != nil {
			return e.fail(ctx, key, ks, "rewrap", nil, err)
		}
		if len(done) > 0 {
			return e.commit(ctx, key, next, rev, "rewrap", done, "KEK version is now "+cur)
		}
	}
	if policy.Retention > 0 {
		for _, v := range ks.Versions {
			if v.State == keyset.StateDecryptOnly && now.Sub(v.StateChangedAt) >= time.Duration(policy.Retention) {
				next, err := ks.Retire(v.Version, now)
				if err != nil {
					return e.fail(ctx, key, ks, "retire", []uint32{v.Version}, err)
				}
				return e.commit(ctx, key, next, rev, "retire", []uint32{v.Version}, "decrypt-only for longer than the retention of "+time.Duration(policy.Retention).String())
			}
		}
	}
	if policy.RotationPeriod > 0 {
		p := ks.Primary()
		since := p.CreatedAt
		if p.PromotedAt != nil {
			since = *p.PromotedAt
		}
		if age := now.Sub(since); age >= time.Duration(policy.RotationPeriod) {
			return e.addPending(ctx, key, w, ks, rev, fmt.Sprintf("primary v%d is %s old (rotation period %s)", p.Version, age.Round(time.Second), time.Duration(policy.RotationPeriod)))
		}
	}
	return Outcome{}, nil
}

// Rotate adds a new pending version now, whatever the schedule says.
func (e *Engine) Rotate(ctx context.Context, key, reason string) (Outcome, error) {
	ks, rev, err := e.Store.Get(ctx, key)
	if err != nil {
		return Outcome{}, err
	}
	if err := e.KMSPolicy.Check(e.scope(key), ks.KMS); err != nil {
		return e.fail(ctx, key, ks, "kms-policy", nil, err)
	}
	if p := LatestPending(ks); p != 0 {
		return Outcome{Action: "blocked", Versions: []uint32{p}, Reason: fmt.Sprintf("v%d is already pending", p)}, nil
	}
	w, err := e.wrapper(ctx, ks.KMS)
	if err != nil {
		return e.fail(ctx, key, ks, "open-kms", nil, err)
	}
	return e.addPending(ctx, key, w, ks, rev, reason)
}

// MigrateKMS moves the keyset under key to the KMS key at uri (every
// wrapped key re-wrapped, previousKms recorded), as one audited step
// "migrate-kms". A KEK migration is never implicit: sidecars refuse a
// document under another KMS key that does not come from this step.
func (e *Engine) MigrateKMS(ctx context.Context, key, uri, reason string) (Outcome, error) {
	ks, rev, err := e.Store.Get(ctx, key)
	if err != nil {
		return Outcome{}, err
	}
	for _, u := range []string{ks.KMS, uri} {
		if err := e.KMSPolicy.Check(e.scope(key), u); err != nil {
			return e.fail(ctx, key, ks, "kms-policy", nil, err)
		}
	}
	from, err := e.wrapper(ctx, ks.KMS)
	if err != nil {
		return e.fail(ctx, key, ks, "open-kms", nil, err)
	}
	to, err := e.wrapper(ctx, uri)
	if err != nil {
		return e.fail(ctx, key, ks, "open-kms", nil, err)
	}
	next, err := MigrateKMS(ctx, from, to, ks, uri)
	if err != nil {
		return e.fail(ctx, key, ks, "migrate-kms", nil, err)
	}
	var versions []uint32
	for _, v := range next.Versions {
		if len(v.WrappedKey) > 0 {
			versions = append(versions, v.Version)
		}
	}
	return e.commit(ctx, key, next, rev, "migrate-kms", versions, fmt.Sprintf("KMS key %s -> %s: %s", redactURI(ks.KMS), redactURI(uri), reason))
}

func (e *Engine) addPending(ctx context.Context, key string, w kms.Wrapper, ks *keyset.Keyset, rev, reason string) (Outcome, error) {
	next, err := AddVersion(ctx, w, ks, e.now())
	if err != nil {
		return e.fail(ctx, key, ks, "generate", []uint32{ks.NextVersion()}, err)
	}
	return e.commit(ctx, key, next, rev, "add-pending", []uint32{next.Latest()}, reason)
}

func (e *Engine) stepPending(ctx context.Context, key string, ks *keyset.Keyset, rev string, p uint32, policy keyset.Policy, now time.Time) (Outcome, error) {
	v, _ := ks.Get(p)
	age := now.Sub(v.CreatedAt)
	timeout := time.Duration(policy.AckTimeout)
	if timeout <= 0 {
		timeout = DefaultAckTimeout
	}
	if e.Dist != nil {
		st := e.Dist.Status(e.scope(key), ks.Name, p)
		if len(st.NACKs) > 0 {
			rc := readerCount{total: len(st.Subscribers), have: len(st.Acked), waiting: slices.Concat(st.Waiting, slices.Sorted(maps.Keys(st.NACKs)))}
			e.Metrics.pending(e.label(key, ks), rc)
			e.notePending(key, p, rc, st.NACKs)
			nodes := make([]string, 0, len(st.NACKs))
			for n, r := range st.NACKs {
				nodes = append(nodes, n+": "+r)
			}
			sort.Strings(nodes)
			msg := fmt.Sprintf("not promoting v%d: %d sidecar(s) refused it (%s)", p, len(nodes), strings.Join(nodes, "; "))
			return e.block(ctx, key, ks, p, "nack", msg, msg)
		}
		var expected []string
		if e.Readers != nil {
			var err error
			if expected, err = e.Readers(ctx, key); err != nil {
				return e.fail(ctx, key, ks, "list-readers", []uint32{p}, err)
			}
		}
		rc := countReaders(expected, st, e.fileTrusted(v.CreatedAt, now))
		e.Metrics.pending(e.label(key, ks), rc)
		e.notePending(key, p, rc, nil)
		noun := "sidecars"
		if e.Readers != nil {
			noun = "pods"
		}
		if len(rc.waiting) > 0 {
			if age > timeout {
				return e.block(ctx, key, ks, p, "ack-timeout", fmt.Sprintf("ack-timeout v%d waiting for %v", p, rc.waiting),
					fmt.Sprintf("not promoting v%d: after %s, %d of %d %s have not loaded it (%s)",
						p, age.Round(time.Second), len(rc.waiting), rc.total, noun, nodeList(rc.waiting)))
			}
			reason := fmt.Sprintf("%d of %d %s have v%d", rc.have, rc.total, noun, p)
			if e.Readers != nil {
				reason += rc.detail(e.MinPendingAge)
			}
			return Outcome{Action: "waiting", Versions: []uint32{p}, Reason: reason}, nil
		}
		if e.Readers != nil {
			// Every pod that uses the keyset has it. Still wait out
			// MinPendingAge: a pod holding it over xDS only would lose it
			// if its sidecar restarted while no controller answers, until
			// the kubelet has written it into the pod's Secret volume too.
			if age < e.MinPendingAge {
				return Outcome{Action: "waiting", Versions: []uint32{p}, Reason: fmt.Sprintf("%d of %d pods have v%d; pending for %s of at least %s, for the kubelet to update every Secret volume",
					rc.have, rc.total, p, age.Round(time.Second), e.MinPendingAge)}, nil
			}
			return e.promote(ctx, key, ks, rev, p, now, fmt.Sprintf("every reader has it: %d of %d pods have v%d%s", rc.have, rc.total, p, rc.detail(e.MinPendingAge)))
		}
	}
	if age < e.MinPendingAge {
		return Outcome{Action: "waiting", Versions: []uint32{p}, Reason: fmt.Sprintf("v%d pending for %s of at least %s (mounted-file readers)", p, age.Round(time.Second), e.MinPendingAge)}, nil
	}
	return e.promote(ctx, key, ks, rev, p, now, "every reader has it")
}

func (e *Engine) promote(ctx context.Context, key string, ks *keyset.Keyset, rev string, p uint32, now time.Time, reason string) (Outcome, error) {
	next, err := ks.Promote(p, now)
	if err != nil {
		return e.fail(ctx, key, ks, "promote", []uint32{p}, err)
	}
	return e.commit(ctx, key, next, rev, "promote", []uint32{p}, reason)
}

// fileTrusted reports whether an expected reader without an xDS stream may
// be taken to hold a version created at created, through its mounted
// Secret. Its clock starts at creation or, with a distributor that began
// serving later (a new leader), at that moment: sidecars that were
// subscribed to the old leader get MinPendingAge to reconnect and ACK
// before their ACK is given up for the file. A zero MinPendingAge says
// every sidecar uses xDS, so none is trusted to the file.
func (e *Engine) fileTrusted(created, now time.Time) bool {
	if e.MinPendingAge <= 0 {
		return false
	}
	start := created
	if s, ok := e.Dist.(servingSince); ok && s.ServingSince().After(start) {
		start = s.ServingSince()
	}
	return now.Sub(start) >= e.MinPendingAge
}

// readerCount is where a pending version stands with its readers: the
// expected pods and every connected subscriber.
type readerCount struct {
	total   int      // readers
	have    int      // readers that ACKed it, or are trusted to the mounted Secret
	waiting []string // readers promotion still waits for
	noXDS   []string // expected readers with no xDS stream
	viaFile int      // of noXDS, those trusted to the mounted Secret
}

// countReaders applies the promotion rule: a reader has the version when
// it ACKed it over xDS, or, having no xDS stream, when the mounted Secret
// has had long enough (fileOK). A connected reader must ACK.
func countReaders(expected []string, st AckStatus, fileOK bool) readerCount {
	acked := toSet(st.Acked)
	subscribed := toSet(st.Subscribers)
	readers := toSet(expected)
	for n := range subscribed {
		readers[n] = true
	}
	rc := readerCount{total: len(readers)}
	for _, n := range slices.Sorted(maps.Keys(readers)) {
		switch {
		case acked[n]:
			rc.have++
		case subscribed[n]:
			rc.waiting = append(rc.waiting, n)
		case fileOK:
			rc.noXDS = append(rc.noXDS, n)
			rc.viaFile++
			rc.have++
		default:
			rc.noXDS = append(rc.noXDS, n)
			rc.waiting = append(rc.waiting, n)
		}
	}
	return rc
}

// detail says who is awaited and who has no xDS stream, for operators.
func (rc readerCount) detail(minPending time.Duration) string {
	var b strings.Builder
	if len(rc.waiting) > 0 {
		fmt.Fprintf(&b, "; waiting for %s", nodeList(rc.waiting))
	}
	if len(rc.noXDS) > 0 {
		fmt.Fprintf(&b, "; no xDS stream from %s", nodeList(rc.noXDS))
		switch {
		case rc.viaFile > 0:
			fmt.Fprintf(&b, " (trusted to the mounted Secret after %s)", minPending)
		case minPending > 0:
			fmt.Fprintf(&b, " (trusted to the mounted Secret after %s pending)", minPending)
		}
	}
	return b.String()
}

// nodeList names up to ten nodes, so a reason stays one readable line.
func nodeList(nodes []string) string {
	const most = 10
	if len(nodes) <= most {
		return strings.Join(nodes, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(nodes[:most], ", "), len(nodes)-most)
}

func toSet(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// commit stores next with the step's audit record, publishes it and
// reports the step.
func (e *Engine) commit(ctx context.Context, key string, next *keyset.Keyset, rev, action string, versions []uint32, reason string) (Outcome, error) {
	label := e.label(key, next)
	rec := e.newRecord(label, action, versions, "ok", reason)
	var trail *audit.Trail
	var err error
	if as := e.auditStore(); as != nil {
		var t audit.Trail
		if _, t, err = as.PutAudited(ctx, key, next, rev, e.AuditKey, rec); err == nil {
			trail = &t
		}
	} else {
		_, err = e.Store.Put(ctx, key, next, rev)
	}
	if err != nil {
		return e.fail(ctx, key, next, action, versions, err)
	}
	e.emit(key, rec, trail, false)
	if e.Dist != nil {
		if err := e.Dist.Publish(ctx, e.scope(key), next); err != nil {
			return Outcome{}, err
		}
	}
	e.Metrics.step(label, action)
	e.Metrics.observe(label, next, e.now())
	e.clearReported(key)
	return Outcome{Action: action, Versions: versions, Reason: reason}, nil
}

// fail reports a step that failed: audited and evented once per situation
// (the step, its versions and the kind of error), so a KMS outage seen on
// every pass is one record, not one every interval.
func (e *Engine) fail(ctx context.Context, key string, ks *keyset.Keyset, step string, versions []uint32, err error) (Outcome, error) {
	label := e.label(key, ks)
	kind := kms.Reason(err)
	situation := fmt.Sprintf("failed %s %v %s", step, versions, kind)
	if kind == "other" {
		situation += ": " + err.Error()
	}
	if e.firstReport(key, situation) {
		if e.note(ctx, key, label, step, versions, "failed", err.Error()) {
			e.setReported(key, situation)
		}
	} else {
		e.Log.Warn("keyset lifecycle step failed again (audited once)", "keyset", label, "action", step, "versions", versions, "reason", err.Error())
	}
	e.Metrics.failure(label, step, kind)
	return Outcome{Action: "blocked", Versions: versions, Reason: err.Error()}, err
}

// block reports a step that cannot go on: audited and evented once per
// distinct situation, while the returned reason stays current.
func (e *Engine) block(ctx context.Context, key string, ks *keyset.Keyset, v uint32, step, situation, reason string) (Outcome, error) {
	label := e.label(key, ks)
	situation = "blocked " + step + " " + situation
	if e.firstReport(key, situation) && e.note(ctx, key, label, step, []uint32{v}, "blocked", reason) {
		e.setReported(key, situation)
		e.Metrics.failure(label, step, step)
	}
	return Outcome{Action: "blocked", Versions: []uint32{v}, Reason: reason}, nil
}

// firstReport reports whether situation is not the one last audited for key.
func (e *Engine) firstReport(key, situation string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reported[key] != situation
}

func (e *Engine) setReported(key, situation string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.reported == nil {
		e.reported = map[string]string{}
	}
	e.reported[key] = situation
}

func (e *Engine) clearReported(key string) {
	e.mu.Lock()
	delete(e.reported, key)
	e.mu.Unlock()
}

// auditStore is the store that keeps the trail, nil without an audit key.
func (e *Engine) auditStore() AuditStore {
	if e.AuditKey == nil {
		return nil
	}
	as, _ := e.Store.(AuditStore)
	return as
}

func (e *Engine) newRecord(label, action string, versions []uint32, result, reason string) audit.Record {
	return audit.Record{Time: e.now(), Actor: e.Actor, Action: action, Keyset: label, Versions: versions, Result: result, Reason: reason}
}

// note records a step that changed nothing stored (a failure, a block)
// with a compare-and-swap of its own, and reports whether it was stored
// (always, without a trail). One that was not is retried on the next pass.
func (e *Engine) note(ctx context.Context, key, label, action string, versions []uint32, result, reason string) bool {
	rec := e.newRecord(label, action, versions, result, reason)
	as := e.auditStore()
	if as == nil {
		e.emit(key, rec, nil, true)
		return true
	}
	t, err := as.AppendAudit(ctx, key, e.AuditKey, rec)
	if err != nil {
		e.Log.Error("audit record not stored; retried on the next pass", "keyset", label, "action", action, "versions", versions, "result", result, "reason", reason, "err", err)
		return false
	}
	e.emit(key, rec, &t, true)
	return true
}

// emit reports a step whose record is stored (trail is the keyset's trail
// as stored, nil without one): a log line carrying the sealed record, the
// --audit-log copy and an Event. It checks the stored trail on the way, so
// a trail edited between two steps is reported at the next one.
func (e *Engine) emit(key string, rec audit.Record, trail *audit.Trail, warning bool) {
	log := e.Log.Info
	if warning {
		log = e.Log.Warn
	}
	attrs := []any{"keyset", rec.Keyset, "action", rec.Action, "versions", rec.Versions, "result", rec.Result, "reason", rec.Reason}
	if trail != nil {
		sealed, _ := trail.Last()
		line, err := json.Marshal(sealed)
		if err != nil {
			e.Log.Error("audit record not logged", "keyset", rec.Keyset, "err", err)
		}
		attrs = append(attrs, "seq", sealed.Seq, "audit_record", string(line))
		e.checkTrail(key, sealed, *trail)
		if e.Audit != nil {
			if err := e.Audit.Write(*trail); err != nil {
				e.Log.Error("audit file write failed", "keyset", rec.Keyset, "err", err)
			}
		}
	} else if e.AuditKey != nil {
		e.Log.Error("audit record not anchored: the store keeps no audit trail", "keyset", rec.Keyset)
	}
	log("keyset lifecycle step", attrs...)
	if e.Event != nil {
		e.Event(rec.Keyset, warning, rec.Action, fmt.Sprintf("%s %v: %s (%s)", rec.Action, rec.Versions, rec.Result, rec.Reason))
	}
}

// checkTrail reports a stored trail that does not verify, and a chain
// whose head went back behind a record this engine stored (the keyset's
// Secret restored from an old copy, or its trail replaced).
func (e *Engine) checkTrail(key string, sealed audit.Record, t audit.Trail) {
	if err := e.AuditKey.VerifyTrail(sealed.Keyset, t); err != nil {
		e.Log.Error("the keyset's stored audit trail does not verify: investigate (keyshift audit verify)", "keyset", sealed.Keyset, "err", err)
		e.Metrics.auditFailure(sealed.Keyset, auditBroken)
		if e.Event != nil {
			e.Event(sealed.Keyset, true, "audit-trail-broken", err.Error())
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.auditSeq == nil {
		e.auditSeq = map[string]uint64{}
	}
	if prev, ok := e.auditSeq[key]; ok && sealed.Seq <= prev {
		e.Log.Error("the keyset's audit chain went back: it was rolled back or replaced since this controller stored a later record", "keyset", sealed.Keyset, "seq", sealed.Seq, "stored_before", prev)
		e.Metrics.auditFailure(sealed.Keyset, auditRolledBack)
	}
	e.auditSeq[key] = sealed.Seq
}

// PublishAll hands every stored keyset to the distributor without taking
// any lifecycle step. A new leader calls it before it accepts xDS streams,
// so no sidecar is served a snapshot that lacks its keyset. A keyset that
// cannot be read or published is logged and left to the reconcile loop,
// so one broken Secret does not keep the others from being served; only
// failing to list is an error.
func (e *Engine) PublishAll(ctx context.Context) error {
	if e.Dist == nil {
		return nil
	}
	keys, err := e.Store.List(ctx)
	if err != nil {
		return err
	}
	for _, key := range keys {
		ks, _, err := e.Store.Get(ctx, key)
		if err == nil {
			err = e.KMSPolicy.Check(e.scope(key), ks.KMS)
		}
		if err == nil {
			err = e.Dist.Publish(ctx, e.scope(key), ks)
		}
		if err != nil {
			e.Log.Warn("keyset not published before serving", "keyset", key, "err", err)
		}
	}
	return nil
}

// ReconcileAll runs steps for every keyset until each is done for now.
func (e *Engine) ReconcileAll(ctx context.Context) error {
	keys, err := e.Store.List(ctx)
	if err != nil {
		return err
	}
	e.forgetExcept(keys)
	var errs []error
	for _, key := range keys {
		for range 10 { // bound the steps per pass
			out, err := e.Reconcile(ctx, key)
			if err != nil {
				if !errors.Is(err, ErrConflict) {
					errs = append(errs, err)
				}
				break
			}
			if out.Done() {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// Run reconciles every keyset every interval, and soon after wake fires
// (an xDS ACK or NACK), until ctx ends.
func (e *Engine) Run(ctx context.Context, interval time.Duration, wake func() <-chan struct{}) {
	for {
		if err := e.ReconcileAll(ctx); err != nil && ctx.Err() == nil {
			e.Log.Warn("reconcile pass had errors", "err", err)
		}
		var w <-chan struct{}
		if wake != nil {
			w = wake()
		}
		d := interval
		if t := e.nextWake(); !t.IsZero() {
			d = min(d, max(time.Until(t), 10*time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		case <-e.Poke:
		case <-w:
			// Let a burst of ACKs from many sidecars settle first.
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}
