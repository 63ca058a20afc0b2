package sidecar

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
)

// Keyring is an immutable snapshot of every loaded keyset. It is built
// whole, validated, then swapped in with one atomic store: readers never
// lock and never see half a rotation.
type Keyring struct {
	sets map[string]*ringSet
}

// ringSet is one keyset's loaded versions.
type ringSet struct {
	doc     *keyset.Keyset
	primary *envelope.Key
	keys    map[uint32]*envelope.Key
	wrapped map[uint32][]byte // the wrapped key each entry of keys came from
	// revoked marks the entries of keys that are revoked: loaded for
	// Rewrap only, never to decrypt or verify.
	revoked  map[uint32]bool
	source   string
	loadedAt time.Time
}

// ErrKeysetRejected: a new document was refused; the running keyring is kept.
var ErrKeysetRejected = errors.New("sidecar: keyset document rejected")

func (r *Keyring) set(name string) (*ringSet, bool) {
	if r == nil {
		return nil, false
	}
	s, ok := r.sets[name]
	return s, ok
}

// holder owns the current Keyring. Writers serialise on mu; readers load
// the pointer without locking.
type holder struct {
	cur atomic.Pointer[Keyring]
	mu  sync.Mutex
	// wipeAfter is how long a key that left the keyring stays intact
	// before it is wiped, for calls that loaded the previous keyring.
	wipeAfter time.Duration
}

func (h *holder) load() *Keyring { return h.cur.Load() }

// replace swaps in a keyring where keyset name is s.
func (h *holder) replace(name string, s *ringSet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	next := &Keyring{sets: map[string]*ringSet{}}
	if old := h.cur.Load(); old != nil {
		maps.Copy(next.sets, old.sets)
	}
	var dropped []*envelope.Key
	if old, ok := next.sets[name]; ok {
		for v, k := range old.keys {
			if s.keys[v] != k {
				dropped = append(dropped, k)
			}
		}
	}
	next.sets[name] = s
	h.cur.Store(next)
	if len(dropped) > 0 {
		// Versions that were disabled, destroyed or replaced: their key
		// material goes once no call can still hold the old keyring.
		time.AfterFunc(h.wipeAfter, func() {
			for _, k := range dropped {
				k.Wipe()
			}
		})
	}
}

// loader turns keyset documents into ringSets: it unwraps new versions
// through the KMS, checks that version numbers were not reused and that
// nothing went backwards, and self-tests every key before use.
type loader struct {
	kms     *kms.Cache
	timeout time.Duration
}

func newLoader(reg kms.Registry, timeout time.Duration) *loader {
	return &loader{kms: kms.NewCache(reg), timeout: timeout}
}

func (l *loader) wrapper(ctx context.Context, uri string) (kms.Wrapper, error) {
	return l.kms.Open(ctx, uri)
}

// build loads doc, reusing keys from prev whose wrapped form is unchanged.
// On any error it returns nil and the caller keeps prev.
func (l *loader) build(ctx context.Context, doc *keyset.Keyset, prev *ringSet, source string) (*ringSet, error) {
	if prev != nil {
		if keyset.IsStaleCopy(prev.doc, doc) {
			return nil, errStale
		}
		if err := keyset.CheckSuccessor(prev.doc, doc); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrKeysetRejected, err)
		}
	}
	next := &ringSet{
		doc: doc.Clone(), keys: map[uint32]*envelope.Key{}, wrapped: map[uint32][]byte{},
		revoked: map[uint32]bool{}, source: source, loadedAt: time.Now(),
	}
	for _, v := range doc.Versions {
		if !v.State.Readable() {
			continue
		}
		var k *envelope.Key
		// Under a new KMS URI every version is unwrapped again: a key is
		// reused only when the same KMS key wraps the same bytes.
		if prev != nil && prev.doc.KMS == doc.KMS && bytes.Equal(prev.wrapped[v.Version], v.WrappedKey) {
			k = prev.keys[v.Version]
		} else {
			var err error
			if k, err = l.unwrap(ctx, doc, v); err != nil {
				return nil, err
			}
			if prev != nil {
				if old, ok := prev.keys[v.Version]; ok && !sameKey(old, k) {
					return nil, fmt.Errorf("%w: %s v%d now holds a different key; version numbers are never reused (rotate to add a new version)", ErrKeysetRejected, doc.Name, v.Version)
				}
			}
		}
		next.keys[v.Version] = k
		next.wrapped[v.Version] = v.WrappedKey
		switch v.State {
		case keyset.StatePrimary:
			next.primary = k
		case keyset.StateRevoked:
			next.revoked[v.Version] = true
		}
	}
	return next, nil
}

func (l *loader) unwrap(ctx context.Context, doc *keyset.Keyset, v keyset.Version) (*envelope.Key, error) {
	w, err := l.wrapper(ctx, doc.KMS)
	if err != nil {
		return nil, fmt.Errorf("%s v%d: %w", doc.Name, v.Version, err)
	}
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	dek, err := w.Unwrap(cctx, kms.WrappedKey{Ciphertext: v.WrappedKey, KEKVersion: v.KEKVersion}, keyset.WrapAAD(doc.Name, v.Version))
	if err != nil {
		return nil, fmt.Errorf("%s v%d: unwrap: %w", doc.Name, v.Version, err)
	}
	k, err := envelope.NewKey(doc.Name, v.Version, dek)
	clear(dek)
	if err != nil {
		return nil, fmt.Errorf("%w: %s v%d: %v", ErrKeysetRejected, doc.Name, v.Version, err)
	}
	if err := selfTest(k); err != nil {
		return nil, fmt.Errorf("%w: %s v%d: self-test: %v", ErrKeysetRejected, doc.Name, v.Version, err)
	}
	return k, nil
}

// selfTest seals and opens a random canary under k.
func selfTest(k *envelope.Key) error {
	canary := make([]byte, 32)
	if _, err := rand.Read(canary); err != nil {
		return err
	}
	ctx := map[string]string{"keyshift": "self-test"}
	ct, err := envelope.Seal(k, canary, ctx, rand.Reader)
	if err != nil {
		return err
	}
	pt, err := envelope.Open(k, ct, ctx)
	if err != nil {
		return err
	}
	if !bytes.Equal(pt, canary) {
		return errors.New("round trip returned different bytes")
	}
	return nil
}

// sameKey reports whether two keys seal identically: a ciphertext from one
// opens under the other.
func sameKey(a, b *envelope.Key) bool {
	seed := make([]byte, envelope.SeedSize+envelope.NonceSize)
	ct, err := envelope.Seal(a, nil, nil, bytes.NewReader(seed))
	if err != nil {
		return false
	}
	ct2, err := envelope.Seal(b, nil, nil, bytes.NewReader(seed))
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(ct, ct2) == 1
}

// errStale: the document is the loaded one or an older copy of it (a file
// the kubelet has not synced yet while xDS already delivered a newer one).
// It is ignored, not an error: the higher complete document wins.
var errStale = errors.New("sidecar: document is not newer than the loaded one")
