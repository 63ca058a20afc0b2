package sidecar

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/socket"
)

// Key usage records: who used which key version for what, and how often it
// failed, aggregated per interval, as a KMS's own audit (CloudTrail, Vault
// audit devices) records each key use. A record names the caller (the
// pod, and the peer UID the kernel reported for the socket connection),
// the keyset, the version, the operation, a count and failures by reason;
// never plaintext, ciphertext or context values.

// usageKey is one line of a usage record.
type usageKey struct {
	peer    int64 // -1 when unknown
	keyset  string
	version uint32
	op      string
}

// usageCount is what one usageKey saw in the current interval.
type usageCount struct {
	ok     uint64
	failed map[string]uint64 // reason -> count
}

// usage aggregates calls until flushed. One short critical section per
// call (a map lookup): nothing on the hot path allocates once a key is
// known.
type usage struct {
	mu    sync.Mutex
	m     map[usageKey]*usageCount
	since time.Time
}

func newUsage(now time.Time) *usage {
	return &usage{m: map[usageKey]*usageCount{}, since: now}
}

// addN counts n calls with the same key and result (reason "" for
// success) at once: a batch's items mostly share both.
func (u *usage) addN(k usageKey, reason string, n uint64) {
	if u == nil || n == 0 {
		return
	}
	u.mu.Lock()
	c := u.m[k]
	if c == nil {
		c = &usageCount{}
		u.m[k] = c
	}
	if reason == "" {
		c.ok += n
	} else {
		if c.failed == nil {
			c.failed = map[string]uint64{}
		}
		c.failed[reason] += n
	}
	u.mu.Unlock()
}

// UsageRecord is one aggregated line: calls of one caller with one key
// version for one operation during [From, To).
type UsageRecord struct {
	From, To time.Time
	// PeerUID is the calling process's UID (-1 when it was not known,
	// e.g. ext_authz over TCP).
	PeerUID int64
	Keyset  string
	// Version is 0 when the call failed before a version was known (an
	// unparsable ciphertext, an unknown keyset).
	Version uint32
	Op      string
	OK      uint64
	Failed  map[string]uint64
}

// flush returns the records since the last flush, sorted, and starts a new
// interval at now.
func (u *usage) flush(now time.Time) []UsageRecord {
	u.mu.Lock()
	m, from := u.m, u.since
	u.m, u.since = map[usageKey]*usageCount{}, now
	u.mu.Unlock()
	out := make([]UsageRecord, 0, len(m))
	for k, c := range m {
		out = append(out, UsageRecord{From: from, To: now, PeerUID: k.peer, Keyset: k.keyset, Version: k.version, Op: k.op, OK: c.ok, Failed: maps.Clone(c.failed)})
	}
	slices.SortFunc(out, func(a, b UsageRecord) int {
		return cmp.Or(cmp.Compare(a.Keyset, b.Keyset), cmp.Compare(a.Version, b.Version), cmp.Compare(a.Op, b.Op), cmp.Compare(a.PeerUID, b.PeerUID))
	})
	return out
}

// callerUID is the peer UID of the call in ctx: SO_PEERCRED of its socket
// connection (gRPC or HTTP), or -1.
func callerUID(ctx context.Context) int64 {
	if p, ok := socket.FromContext(ctx); ok {
		return int64(p.UID)
	}
	return -1
}

// keyOf names the key version a ciphertext is under, as far as its header
// says; zero values when it cannot be parsed.
func keyOf(ciphertext []byte) (string, uint32) {
	h, _, err := envelope.Parse(ciphertext)
	if err != nil {
		return "", 0
	}
	return h.Keyset, h.Version
}
