package rotation

import (
	"maps"
	"slices"
	"time"
)

// KeysetState is what the engine found the last time it reconciled one
// keyset: the outcome it published (the same text goes into the Secret's
// status annotation) and, while a version is pending, where that version
// stands with its readers. It is what `keyshift status --cluster` shows
// beside the stored document; the JSON names are part of the controller's
// /v1/status response.
type KeysetState struct {
	// Key is the store's key: namespace/secret in a cluster, the file
	// name in a directory.
	Key string `json:"key"`
	// Action, Versions and Reason are the last Outcome: Action is ""
	// (nothing due), "waiting", "blocked" or the step just taken.
	Action   string   `json:"action"`
	Versions []uint32 `json:"versions,omitempty"`
	Reason   string   `json:"reason,omitempty"`
	// Error is the error that pass ended with, if any.
	Error string `json:"error,omitempty"`
	// At is when that pass ran.
	At time.Time `json:"at"`
	// Pending is set while a version waits for its readers.
	Pending *PendingReaders `json:"pending,omitempty"`
}

// PendingReaders is the promotion count for a pending version: Ready of
// Readers have it (ACKed over xDS, or trusted to the mounted Secret).
type PendingReaders struct {
	Version uint32 `json:"version"`
	Readers int    `json:"readers"`
	Ready   int    `json:"ready"`
	// Waiting are the readers promotion still waits for (up to 10 named).
	Waiting []string `json:"waiting,omitempty"`
	// NACKs are sidecars that refused the version, with their reason.
	NACKs map[string]string `json:"nacks,omitempty"`
}

// maxNamed bounds the readers one state names, so a keyset read by
// thousands of pods does not make every status response huge.
const maxNamed = 10

// notePending records the reader count stepPending found for key's
// pending version v during the current Reconcile.
func (e *Engine) notePending(key string, v uint32, rc readerCount, nacks map[string]string) {
	p := &PendingReaders{Version: v, Readers: rc.total, Ready: rc.have, Waiting: rc.waiting[:min(len(rc.waiting), maxNamed)]}
	if len(nacks) > 0 {
		p.NACKs = map[string]string{}
		for _, n := range slices.Sorted(maps.Keys(nacks))[:min(len(nacks), maxNamed)] {
			p.NACKs[n] = nacks[n]
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pend == nil {
		e.pend = map[string]*PendingReaders{}
	}
	e.pend[key] = p
}

// record keeps the outcome of one Reconcile of key for States.
func (e *Engine) record(key string, out Outcome, err error) {
	st := KeysetState{Key: key, Action: out.Action, Versions: out.Versions, Reason: out.Reason, At: e.now()}
	if err != nil {
		st.Error = err.Error()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if out.Action == "waiting" || out.Action == "blocked" {
		st.Pending = e.pend[key]
	}
	delete(e.pend, key)
	if e.states == nil {
		e.states = map[string]KeysetState{}
	}
	e.states[key] = st
}

// forgetExcept drops the states of keysets no longer in the store.
func (e *Engine) forgetExcept(keys []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k := range e.states {
		if !slices.Contains(keys, k) {
			delete(e.states, k)
		}
	}
}

// States is what the engine last found for each keyset it reconciled,
// sorted by key. A replica that has not led since it started has none.
func (e *Engine) States() []KeysetState {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]KeysetState, 0, len(e.states))
	for _, k := range slices.Sorted(maps.Keys(e.states)) {
		out = append(out, e.states[k])
	}
	return out
}
