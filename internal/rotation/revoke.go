package rotation

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
)

// DefaultRevokeWait bounds how long a revocation waits for readers to load
// the new primary before promoting it anyway.
const DefaultRevokeWait = 10 * time.Second

// RequestRevoke returns a copy of ks asking the controller to revoke
// version v: the request `keyshift keyset revoke --secret` stores, which
// the leading controller carries out at its next pass (stepRevoke). It
// refuses a version that cannot be revoked.
func RequestRevoke(ks *keyset.Keyset, v uint32, reason string, now time.Time) (*keyset.Keyset, error) {
	if ks.Revocation != nil {
		return nil, fmt.Errorf("rotation: %s: revoking v%d is already requested (%s)", ks.Name, ks.Revocation.Version, ks.Revocation.RequestedAt.Format(time.RFC3339))
	}
	if err := revocable(ks, v); err != nil {
		return nil, err
	}
	next := ks.Clone()
	next.Revocation = &keyset.Revocation{Version: v, Reason: reason, RequestedAt: now.UTC()}
	return next, next.Validate()
}

// revocable reports whether version v may be revoked: it exists and is
// pending, primary or decrypt-only.
func revocable(ks *keyset.Keyset, v uint32) error {
	ver, err := ks.Get(v)
	if err != nil {
		return err
	}
	if !ver.State.Decryptable() {
		return fmt.Errorf("%w: %s v%d is %s; only a pending, primary or decrypt-only version can be revoked", keyset.ErrTransition, ks.Name, v, ver.State)
	}
	return nil
}

// RevokeNow revokes v in one document change, for a keyset no controller
// serves (a file read by sidecars through fsnotify): a primary is replaced
// by a new version promoted at once, with no wait for readers. It returns
// the new document and the new primary (0 when v was not the primary).
func RevokeNow(ctx context.Context, w kms.Wrapper, ks *keyset.Keyset, v uint32, now time.Time) (*keyset.Keyset, uint32, error) {
	if err := revocable(ks, v); err != nil {
		return nil, 0, err
	}
	next := ks
	var p uint32
	if ks.Primary().Version == v {
		if p = LatestPending(ks); p == 0 {
			var err error
			if next, err = AddVersion(ctx, w, ks, now); err != nil {
				return nil, 0, err
			}
			p = next.Latest()
		}
	}
	next, err := revoked(next, v, p, now)
	return next, p, err
}

// revoked is ks with pending version p promoted (unless p is 0) and then
// v revoked, the revocation request cleared: the document a revocation
// stores, by the controller or at once.
func revoked(ks *keyset.Keyset, v, p uint32, now time.Time) (*keyset.Keyset, error) {
	next := ks
	if p != 0 {
		var err error
		if next, err = ks.Promote(p, now); err != nil {
			return nil, err
		}
	}
	next, err := next.Revoke(v, now)
	if err != nil {
		return nil, err
	}
	next.Revocation = nil
	return next, next.Validate()
}

// stepRevoke carries out a stored revocation request, one persisted step
// at a time like every other step:
//   - a pending or decrypt-only version is revoked at once;
//   - for the primary, a new version is added as pending (unless one is),
//     pushed, and promoted as soon as every reader holds it or after
//     DefaultRevokeWait (RevokeWait) at the latest, whatever the ACKs, in
//     the same write that revokes the old primary. Readers that had not
//     loaded it by then cannot open what others seal under it until they
//     do; the step's record and Event name them.
//
// The request is cleared in the step that revokes.
func (e *Engine) stepRevoke(ctx context.Context, key string, w kms.Wrapper, ks *keyset.Keyset, rev string, now time.Time) (Outcome, error) {
	r := *ks.Revocation
	why := "revoke requested"
	if r.Reason != "" {
		why += ": " + r.Reason
	}
	if err := revocable(ks, r.Version); err != nil {
		next := ks.Clone()
		next.Revocation = nil
		return e.commit(ctx, key, next, rev, "revoke-refused", []uint32{r.Version}, err.Error())
	}
	if ks.Primary().Version != r.Version {
		next, err := revoked(ks, r.Version, 0, now)
		if err != nil {
			return e.fail(ctx, key, ks, "revoke", []uint32{r.Version}, err)
		}
		return e.commit(ctx, key, next, rev, "revoke", []uint32{r.Version}, why)
	}
	p := LatestPending(ks)
	if p == 0 {
		return e.addPending(ctx, key, w, ks, rev, fmt.Sprintf("new primary for revoking v%d (%s)", r.Version, why))
	}
	pv, _ := ks.Get(p)
	wait := e.RevokeWait
	if wait <= 0 {
		wait = DefaultRevokeWait
	}
	start := pv.CreatedAt
	if r.RequestedAt.After(start) {
		start = r.RequestedAt // a version already pending gets the whole wait too
	}
	deadline := start.Add(wait)
	var missing []string
	total := 0
	if e.Dist != nil {
		st := e.Dist.Status(e.scope(key), ks.Name, p)
		var expected []string
		if e.Readers != nil {
			var err error
			if expected, err = e.Readers(ctx, key); err != nil {
				e.Log.Warn("revoking without the list of pods that use the keyset", "keyset", e.label(key, ks), "err", err)
			}
		}
		rc := countReaders(expected, st, false)
		missing, total = rc.waiting, rc.total
		for n := range st.NACKs {
			if !slices.Contains(missing, n) {
				missing = append(missing, n)
			}
		}
		slices.Sort(missing)
		e.Metrics.pending(e.label(key, ks), rc)
		if len(missing) > 0 && now.Before(deadline) {
			e.wakeAt(deadline)
			return Outcome{Action: "waiting", Versions: []uint32{p}, Reason: fmt.Sprintf("revoking v%d: %d of %d pods have v%d; promoting it at %s at the latest; waiting for %s",
				r.Version, total-len(missing), total, p, deadline.UTC().Format(time.TimeOnly), nodeList(missing))}, nil
		}
	}
	next, err := revoked(ks, r.Version, p, now)
	if err != nil {
		return e.fail(ctx, key, ks, "revoke", []uint32{r.Version, p}, err)
	}
	switch {
	case e.Dist == nil:
		why += fmt.Sprintf("; v%d promoted at once (readers mount the document)", p)
	case len(missing) == 0:
		why += fmt.Sprintf("; every reader had v%d (%d pods)", p, total)
	default:
		why += fmt.Sprintf("; v%d promoted after %s without %d of %d pods (%s): until they load it they cannot open what others seal under it",
			p, wait, len(missing), total, nodeList(missing))
	}
	return e.commit(ctx, key, next, rev, "revoke", []uint32{r.Version, p}, why)
}

// wakeAt asks Run for a pass at t, sooner than its interval.
func (e *Engine) wakeAt(t time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.wake.IsZero() || t.Before(e.wake) {
		e.wake = t
	}
}

// nextWake is the pass Run owes a waiting step, and forgets it.
func (e *Engine) nextWake() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.wake
	e.wake = time.Time{}
	return t
}
