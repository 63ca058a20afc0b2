package keyset

import (
	"bytes"
	"fmt"
)

// A reader of keyset documents (the sidecar) gets them from more than one
// place (the mounted file, xDS) and at different times, so it must tell an
// old copy from a successor, and refuse a document no honest writer makes.

// IsStaleCopy reports whether doc is the same as, or an older copy of, cur: its
// versions are a prefix of cur's, none is further along its lifecycle, and
// where the states are all equal the wrapped keys are too (a KEK rewrap
// changes only wrapped keys and must load).
func IsStaleCopy(cur, doc *Keyset) bool {
	if doc.Name != cur.Name || doc.Latest() > cur.Latest() {
		return false
	}
	sameStates := len(doc.Versions) == len(cur.Versions)
	sameKeys := true
	for _, cv := range cur.Versions {
		dv, err := doc.Get(cv.Version)
		if err != nil {
			if cv.Version <= doc.Latest() {
				return false // a hole: not a copy of cur at any time
			}
			continue
		}
		if dv.State.Rank() > cv.State.Rank() {
			return false
		}
		if dv.State != cv.State {
			sameStates = false
		}
		if !bytes.Equal(dv.WrappedKey, cv.WrappedKey) {
			sameKeys = false
		}
	}
	return !sameStates || sameKeys
}

// CheckSuccessor refuses a document that would make data unreadable or
// slip in a key from elsewhere: a different keyset name, another KMS key
// without a recorded migration, a version that vanished, or a state that
// moved backwards (a stale file restored over a newer one, or a revoked
// version made decryptable again).
//
// The KMS URI is pinned because a document that keeps every old version
// and adds a primary wrapped under another KMS key would otherwise load:
// whoever can wrap under any key the pod's KMS role can use could choose
// the key the pod encrypts with. A migration names the old URI in
// previousKms, and the sidecar then unwraps every version under the new URI and
// requires the keys it already holds, which only someone able to unwrap
// them can arrange.
func CheckSuccessor(prev, next *Keyset) error {
	if prev.Name != next.Name {
		return fmt.Errorf("keyset name changed from %q to %q", prev.Name, next.Name)
	}
	if prev.KMS != next.KMS && next.PreviousKMS != prev.KMS {
		return fmt.Errorf("%s: the KMS key changed from %s to %s without a migration (previousKms must name the key it replaces; use keyshift keyset migrate-kms)", prev.Name, prev.KMS, next.KMS)
	}
	for _, pv := range prev.Versions {
		nv, err := next.Get(pv.Version)
		if err != nil {
			return fmt.Errorf("%s v%d disappeared from the document (retire versions, never delete them)", prev.Name, pv.Version)
		}
		if nv.State.Rank() < pv.State.Rank() {
			return fmt.Errorf("%s v%d moved back from %s to %s (is this an old copy of the document?)", prev.Name, pv.Version, pv.State, nv.State)
		}
	}
	return nil
}
