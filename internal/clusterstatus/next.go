package clusterstatus

import (
	"fmt"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/rotation"
)

// Step is the next lifecycle step the controller will take for a keyset,
// as its document and policy say.
type Step struct {
	// Action is "revoke", "promote", "retire", "rotate", or "" when
	// nothing is scheduled (no rotation period, nothing to retire).
	Action string `json:"action"`
	// Version is the version the step acts on (0 for rotate: the new
	// version's number is given when it is made).
	Version uint32 `json:"version,omitempty"`
	// At is when the step falls due; nil for a step that waits on a
	// condition (promotion waits for every reader).
	At *time.Time `json:"at,omitempty"`
	// Due: At has passed; the controller takes the step at its next pass.
	Due bool `json:"due,omitempty"`
	// Text says it in one line: "promote v4 when all ACK",
	// "retire v2 at 2026-03-01T00:00:00Z", "rotate at ...".
	Text string `json:"text"`
}

// Next is the step the controller takes next for ks at now. It follows
// the order of rotation.Engine's reconcile: a requested revocation first,
// then a pending version's promotion (nothing else happens while one is
// pending), then retiring a decrypt-only version past its retention and
// generating a version when the primary is older than the rotation
// period, whichever falls due first (retire first when both are due, as
// the engine does). A KEK rewrap is left out: it follows the KMS, which
// the document does not show.
func Next(ks *keyset.Keyset, now time.Time) Step {
	if r := ks.Revocation; r != nil {
		at := r.RequestedAt
		return Step{Action: "revoke", Version: r.Version, At: &at, Due: true,
			Text: fmt.Sprintf("revoke v%d (requested at %s)", r.Version, stamp(at))}
	}
	if p := rotation.LatestPending(ks); p != 0 {
		return Step{Action: "promote", Version: p, Text: fmt.Sprintf("promote v%d when all ACK", p)}
	}
	policy := keyset.Policy{}
	if ks.Policy != nil {
		policy = *ks.Policy
	}
	var best *Step
	consider := func(s Step) {
		// Due steps all happen at the next pass, in the engine's order
		// (the order considered here); otherwise the earliest comes first.
		eff, beff := s.At, (*time.Time)(nil)
		if best != nil {
			beff = best.At
		}
		if s.Due {
			eff = &now
		}
		if best != nil && best.Due {
			beff = &now
		}
		if best == nil || eff.Before(*beff) {
			best = &s
		}
	}
	if policy.Retention > 0 {
		for _, v := range ks.Versions {
			if v.State == keyset.StateDecryptOnly {
				at := v.StateChangedAt.Add(time.Duration(policy.Retention))
				consider(step("retire", v.Version, at, now, fmt.Sprintf("retire v%d", v.Version)))
			}
		}
	}
	if policy.RotationPeriod > 0 {
		p := ks.Primary()
		since := p.CreatedAt
		if p.PromotedAt != nil {
			since = *p.PromotedAt
		}
		consider(step("rotate", 0, since.Add(time.Duration(policy.RotationPeriod)), now, "rotate"))
	}
	if best == nil {
		return Step{Text: "none (manual rotation only)"}
	}
	return *best
}

func step(action string, v uint32, at, now time.Time, what string) Step {
	s := Step{Action: action, Version: v, At: &at, Due: !at.After(now), Text: what + " at " + stamp(at)}
	if s.Due {
		s.Text += " (due)"
	}
	return s
}

// stamp is a time as the status shows it: UTC, to the second.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
