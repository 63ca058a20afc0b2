package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/keyshift/keyshift/internal/kms"
)

// KeyAAD binds a wrapped audit key to its purpose: a data key of a keyset,
// wrapped under the same KMS key by mistake, does not unwrap as one.
const KeyAAD = "keyshift.io/audit-key/v1"

// ErrKeyRace: the stored audit key changed while it was being created or
// re-wrapped (another replica was first); read it again.
var ErrKeyRace = errors.New("audit: the stored audit key changed meanwhile")

// KeyHolder is where the audit key is kept at rest: a Secret in the
// controller's namespace, or a file outside a cluster.
type KeyHolder interface {
	// Load returns the stored key, or ok false when none is stored yet.
	Load(ctx context.Context) (b []byte, ok bool, err error)
	// Create stores b when no key is stored yet, and fails with
	// ErrKeyRace when one is.
	Create(ctx context.Context, b []byte) error
	// Replace stores b in place of old, and fails with ErrKeyRace when
	// the stored key is no longer old.
	Replace(ctx context.Context, old, b []byte) error
	// String names the place in messages.
	String() string
}

// storedKey is the audit key at rest, as JSON. Under a KMS key it is
// wrapped, bound to KeyAAD; without one it is held in plain, protected
// only by who may read where it is kept.
type storedKey struct {
	Version    int    `json:"version"`
	KeyID      string `json:"keyId"`
	KMS        string `json:"kms,omitempty"`
	KEKVersion string `json:"kekVersion,omitempty"`
	Wrapped    []byte `json:"wrapped,omitempty"`
	Plain      []byte `json:"key,omitempty"`
}

// String is REDACTED: a stored key may hold the key in plain.
func (storedKey) String() string { return "REDACTED" }

// KeyInfo says which audit key was loaded and what happened to it.
type KeyInfo struct {
	// ID is the key's public ID, as records carry it.
	ID string
	// KMS is the URI of the KMS key that wraps it; "" when held in plain.
	KMS string
	// Created: no key was stored; this one was just made.
	Created bool
	// RewrappedFrom is the KMS URI ("plain" for a key held in plain) the
	// key was kept under before it was re-wrapped under KMS; "" otherwise.
	RewrappedFrom string
}

// LoadKey returns the audit key kept in h, creating it on first use: 32
// random bytes, wrapped under the KMS key at kmsURI (opened through reg)
// or, with kmsURI empty, held in plain. A key kept in plain or under
// another KMS key is re-wrapped under kmsURI: the same key, so every
// chain goes on verifying. A wrapped key is never unwrapped into plain:
// with kmsURI empty it is an error. Replicas racing to create or re-wrap
// the key settle on the first one stored.
func LoadKey(ctx context.Context, h KeyHolder, reg kms.Registry, kmsURI string) (*Key, KeyInfo, error) {
	for range 5 {
		b, ok, err := h.Load(ctx)
		if err != nil {
			return nil, KeyInfo{}, err
		}
		if !ok {
			secret := make([]byte, 32)
			if _, err := rand.Read(secret); err != nil {
				return nil, KeyInfo{}, fmt.Errorf("audit: %w", err)
			}
			k, nb, err := store(ctx, reg, kmsURI, secret)
			clear(secret)
			if err != nil {
				return nil, KeyInfo{}, err
			}
			if err := h.Create(ctx, nb); errors.Is(err, ErrKeyRace) {
				continue
			} else if err != nil {
				return nil, KeyInfo{}, err
			}
			return k, KeyInfo{ID: k.id, KMS: kmsURI, Created: true}, nil
		}
		s, err := parseStored(b, h)
		if err != nil {
			return nil, KeyInfo{}, err
		}
		if s.KMS == kmsURI {
			k, err := s.open(ctx, reg, h)
			return k, KeyInfo{ID: s.KeyID, KMS: s.KMS}, err
		}
		if kmsURI == "" {
			return nil, KeyInfo{}, fmt.Errorf("%w: the audit key in %s is wrapped under %s: give that KMS URI (--audit-kms); a wrapped key is never unwrapped into plain", ErrBadKey, h, s.KMS)
		}
		secret, err := s.secret(ctx, reg, h)
		if err != nil {
			return nil, KeyInfo{}, err
		}
		k, nb, err := store(ctx, reg, kmsURI, secret)
		clear(secret)
		if err != nil {
			return nil, KeyInfo{}, err
		}
		if err := h.Replace(ctx, b, nb); errors.Is(err, ErrKeyRace) {
			continue
		} else if err != nil {
			return nil, KeyInfo{}, err
		}
		from := s.KMS
		if from == "" {
			from = "plain"
		}
		return k, KeyInfo{ID: k.id, KMS: kmsURI, RewrappedFrom: from}, nil
	}
	return nil, KeyInfo{}, fmt.Errorf("%w (%s): gave up after 5 tries", ErrKeyRace, h)
}

// OpenKey reads the audit key kept in h, changing nothing (for
// verification). With kmsURI set the key must be wrapped under exactly
// that KMS key: a key swapped for one held in plain is refused.
func OpenKey(ctx context.Context, h KeyHolder, reg kms.Registry, kmsURI string) (*Key, KeyInfo, error) {
	b, ok, err := h.Load(ctx)
	if err != nil {
		return nil, KeyInfo{}, err
	}
	if !ok {
		return nil, KeyInfo{}, fmt.Errorf("%w: no audit key in %s", ErrBadKey, h)
	}
	s, err := parseStored(b, h)
	if err != nil {
		return nil, KeyInfo{}, err
	}
	if kmsURI != "" && s.KMS != kmsURI {
		under := s.KMS
		if under == "" {
			under = "no KMS key (held in plain)"
		}
		return nil, KeyInfo{}, fmt.Errorf("%w: the audit key in %s is kept under %s, not under %s", ErrBadKey, h, under, kmsURI)
	}
	k, err := s.open(ctx, reg, h)
	return k, KeyInfo{ID: s.KeyID, KMS: s.KMS}, err
}

// store seals secret for keeping: wrapped under kmsURI, or in plain.
func store(ctx context.Context, reg kms.Registry, kmsURI string, secret []byte) (*Key, []byte, error) {
	k, err := NewKey(secret)
	if err != nil {
		return nil, nil, err
	}
	s := storedKey{Version: 1, KeyID: k.id, KMS: kmsURI}
	if kmsURI == "" {
		s.Plain = secret
	} else {
		w, err := reg.Open(ctx, kmsURI)
		if err != nil {
			return nil, nil, fmt.Errorf("audit: open the audit KMS key: %w", err)
		}
		wk, err := w.Wrap(ctx, secret, []byte(KeyAAD))
		if err != nil {
			return nil, nil, fmt.Errorf("audit: wrap the audit key: %w", err)
		}
		s.Wrapped, s.KEKVersion = wk.Ciphertext, wk.KEKVersion
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, nil, fmt.Errorf("audit: %w", err)
	}
	return k, b, nil
}

func parseStored(b []byte, h KeyHolder) (storedKey, error) {
	var s storedKey
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("%w: %s does not hold an audit key: %v", ErrBadKey, h, err)
	}
	switch {
	case s.Version != 1:
		return s, fmt.Errorf("%w: %s: version %d, want 1", ErrBadKey, h, s.Version)
	case s.KMS == "" && len(s.Plain) == 0, s.KMS != "" && (len(s.Wrapped) == 0 || len(s.Plain) != 0):
		return s, fmt.Errorf("%w: %s: want a wrapped key with its KMS URI, or a key in plain", ErrBadKey, h)
	}
	return s, nil
}

// secret is the stored key in plain; the caller clears it.
func (s storedKey) secret(ctx context.Context, reg kms.Registry, h KeyHolder) ([]byte, error) {
	if s.KMS == "" {
		return bytes.Clone(s.Plain), nil
	}
	w, err := reg.Open(ctx, s.KMS)
	if err != nil {
		return nil, fmt.Errorf("audit: open the audit KMS key: %w", err)
	}
	secret, err := w.Unwrap(ctx, kms.WrappedKey{Ciphertext: s.Wrapped, KEKVersion: s.KEKVersion}, []byte(KeyAAD))
	if err != nil {
		return nil, fmt.Errorf("audit: unwrap the audit key of %s: %w", h, err)
	}
	return secret, nil
}

// open derives the MAC key and checks it is the key the ID names.
func (s storedKey) open(ctx context.Context, reg kms.Registry, h KeyHolder) (*Key, error) {
	secret, err := s.secret(ctx, reg, h)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	k, err := NewKey(secret)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h, err)
	}
	if k.id != s.KeyID {
		return nil, fmt.Errorf("%w: %s names key %q but holds key %q", ErrBadKey, h, s.KeyID, k.id)
	}
	return k, nil
}

// KeyFile keeps the audit key in a file (outside a cluster), mode 0600.
type KeyFile struct{ Path string }

var _ KeyHolder = KeyFile{}

// String names the file.
func (f KeyFile) String() string { return f.Path }

// Load reads the file, refusing one that group or others may read.
func (f KeyFile) Load(context.Context) ([]byte, bool, error) {
	st, err := os.Stat(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("audit: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, false, fmt.Errorf("%w: %s has mode %#o; the audit key file must be readable by its owner only (chmod 600)", ErrBadKey, f.Path, st.Mode().Perm())
	}
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, false, fmt.Errorf("audit: %w", err)
	}
	return b, true, nil
}

// Create writes the file whole, unless it exists.
func (f KeyFile) Create(_ context.Context, b []byte) error {
	tmp, err := writeTemp(f.Path, b)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, f.Path); errors.Is(err, fs.ErrExist) {
		return ErrKeyRace
	} else if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return syncDir(f.Path)
}

// Replace rewrites the file if it still holds old.
func (f KeyFile) Replace(ctx context.Context, old, b []byte) error {
	cur, ok, err := f.Load(ctx)
	if err != nil {
		return err
	}
	if !ok || !bytes.Equal(cur, old) {
		return ErrKeyRace
	}
	return WriteFile(f.Path, b)
}

// writeTemp writes b to a new file beside path, mode 0600, with fsync.
func writeTemp(path string, b []byte) (string, error) {
	t, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return "", fmt.Errorf("audit: %w", err)
	}
	_, err = t.Write(b)
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(t.Name())
		return "", fmt.Errorf("audit: write %s: %w", path, err)
	}
	return t.Name(), nil
}

func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: sync %s: %w", filepath.Dir(path), err)
	}
	return nil
}

// WriteFile replaces the file at path whole (mode 0600): a reader sees the
// old content or the new, never a mix, and it survives a crash once
// WriteFile returns.
func WriteFile(path string, b []byte) error {
	tmp, err := writeTemp(path, b)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return syncDir(path)
}
