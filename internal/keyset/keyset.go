// Package keyset owns the keyset document: a named, versioned list of data
// keys, each stored only wrapped by a KMS key, with a one-way lifecycle
// (pending → primary → decrypt-only → revoked → disabled → destroyed, where
// revoked is the emergency step for a compromised key and may be skipped).
// It validates
// documents and performs state transitions as pure functions on copies; it
// never sees a plaintext key.
package keyset

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/keyshift/keyshift/internal/envelope"
)

// State is where a version is in its lifecycle.
type State string

// The lifecycle states, in the only order a version moves through them. A
// version may skip states (decrypt-only → disabled) but never goes back.
const (
	// StatePending: distributed to every reader, decrypts, never encrypts.
	StatePending State = "pending"
	// StatePrimary: the one version that encrypts. Exactly one per keyset.
	StatePrimary State = "primary"
	// StateDecryptOnly: a former primary kept to read old data.
	StateDecryptOnly State = "decrypt-only"
	// StateRevoked: a version whose key is known or suspected compromised.
	// It never encrypts and readers refuse to decrypt under it, so
	// ciphertexts forged with the stolen key are not accepted and
	// applications notice; it stays loaded for Rewrap only, so its data
	// can be moved under the primary. Retire moves it on to disabled.
	StateRevoked State = "revoked"
	// StateDisabled: kept in the document but loaded by nobody.
	StateDisabled State = "disabled"
	// StateDestroyed: the wrapped key is gone; the number stays reserved.
	StateDestroyed State = "destroyed"
)

// Rank orders states along the lifecycle: pending 0, primary 1,
// decrypt-only 2, revoked 3, disabled 4, destroyed 5, and -1 for an
// unknown state. A version's rank never decreases.
func (s State) Rank() int {
	switch s {
	case StatePending:
		return 0
	case StatePrimary:
		return 1
	case StateDecryptOnly:
		return 2
	case StateRevoked:
		return 3
	case StateDisabled:
		return 4
	case StateDestroyed:
		return 5
	}
	return -1
}

// Readable reports whether readers load a version in state s: pending,
// primary, decrypt-only and revoked. The controller keeps verifying and
// rewrapping these under new KEK versions. A revoked version is loaded
// for Rewrap only; see Decryptable.
func (s State) Readable() bool {
	return s.Decryptable() || s == StateRevoked
}

// Decryptable reports whether readers open ciphertexts (and verify MACs)
// under a version in state s: pending, primary and decrypt-only. A
// revoked version is Readable but not Decryptable.
func (s State) Decryptable() bool {
	return s == StatePending || s == StatePrimary || s == StateDecryptOnly
}

// Limits on a document.
const (
	// MaxDocumentSize bounds a keyset file: 1 MiB, a Secret's limit.
	MaxDocumentSize = 1 << 20
	// MaxVersions bounds how many versions (destroyed ones included) a keyset holds.
	MaxVersions = 1000
	// MaxWrappedKeySize bounds one wrapped key.
	MaxWrappedKeySize = 8192
)

// Errors. Each is wrapped with the detail that names the offending field.
var (
	// ErrInvalid: the document breaks a rule (the message says which).
	ErrInvalid = errors.New("keyset: invalid document")
	// ErrTransition: the requested state change is not allowed.
	ErrTransition = errors.New("keyset: transition not allowed")
	// ErrUnknownVersion: no such version in the keyset.
	ErrUnknownVersion = errors.New("keyset: unknown version")
)

// Keyset is the document. It may live in a Secret, a ConfigMap or a file in
// git: it holds wrapped keys only.
type Keyset struct {
	// Name is a DNS-1123 label; it is written into every ciphertext.
	Name string `json:"name"`
	// KMS is the URI of the KEK that wraps every version (local:///path, aws-kms://...).
	KMS string `json:"kms"`
	// PreviousKMS is the URI the keyset was under before an explicit KMS
	// migration (every version rewrapped under KMS). Sidecars accept a
	// document under a new KMS URI only when it names, here, the URI they
	// hold, and only if every version they hold unwraps to the same key.
	PreviousKMS string `json:"previousKms,omitempty"`
	// Versions are sorted by number, ascending; numbers are never reused.
	Versions []Version `json:"versions"`
	// Policy tells the controller when to rotate and retire. Sidecars
	// ignore it. Absent means manual rotation only.
	Policy *Policy `json:"policy,omitempty"`
	// Revocation asks the controller to revoke a version at once
	// (`keyshift keyset revoke`); the step that revokes clears it.
	// Sidecars ignore it.
	Revocation *Revocation `json:"revoke,omitempty"`
}

// Revocation is a request to revoke a version whose key is known or
// suspected compromised.
type Revocation struct {
	Version     uint32    `json:"version"`
	Reason      string    `json:"reason,omitempty"`
	RequestedAt time.Time `json:"requestedAt"`
}

// Policy is a keyset's rotation schedule.
type Policy struct {
	// RotationPeriod is the primary's maximum age before a new version is
	// generated ("720h"). Zero disables scheduled rotation.
	RotationPeriod Duration `json:"rotationPeriod,omitempty"`
	// Retention is how long a former primary stays decrypt-only before it
	// is disabled ("2160h"). Zero keeps old versions decrypt-only forever.
	Retention Duration `json:"retention,omitempty"`
	// AckTimeout bounds the wait for every reader to load a pending
	// version; on timeout the controller does not promote and says why.
	// "5m" when zero.
	AckTimeout Duration `json:"ackTimeout,omitempty"`
}

// Duration is a time.Duration written as "720h" in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string such as "720h" or "90m".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"720h\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w (write for example \"720h\")", s, err)
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = Duration(v)
	return nil
}

// Version is one data key version.
type Version struct {
	// Version is the number written into ciphertexts, 1 or more.
	Version uint32 `json:"version"`
	// State is the lifecycle state.
	State State `json:"state"`
	// WrappedKey is the DEK wrapped by the KMS; empty once destroyed.
	WrappedKey []byte `json:"wrappedKey,omitempty"`
	// KEKVersion is the KMS key version that wrapped WrappedKey.
	KEKVersion string `json:"kekVersion,omitempty"`
	// CreatedAt is when the version was generated.
	CreatedAt time.Time `json:"createdAt"`
	// PromotedAt is when the version became primary, if it has.
	PromotedAt *time.Time `json:"promotedAt,omitempty"`
	// StateChangedAt is when State last changed.
	StateChangedAt time.Time `json:"stateChangedAt"`
	// Canary is a ciphertext of CanaryPlaintext sealed under this version
	// when it was made; verification opens it to prove the stored wrapped
	// key still yields the same data key. Dropped when destroyed.
	Canary []byte `json:"canary,omitempty"`
}

// CanaryPlaintext is what a version's Canary decrypts to.
func CanaryPlaintext(name string, version uint32) []byte {
	return []byte("keyshift canary " + name + " v" + strconv.FormatUint(uint64(version), 10))
}

// String shows the version's number and state, never key bytes.
func (v Version) String() string {
	return fmt.Sprintf("v%d(%s, kek %s)", v.Version, v.State, v.KEKVersion)
}

// WrapAAD is the associated data a version's DEK is wrapped with, so a
// wrapped key cannot be moved to another keyset or version.
func WrapAAD(name string, version uint32) []byte {
	return []byte("keyshift keyset " + name + " v" + strconv.FormatUint(uint64(version), 10))
}

// Parse decodes and validates a document. Unknown fields are refused so a
// typo never silently drops a setting.
func Parse(data []byte) (*Keyset, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrInvalid, len(data), MaxDocumentSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var ks Keyset
	if err := dec.Decode(&ks); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the document", ErrInvalid)
	}
	if err := ks.Validate(); err != nil {
		return nil, err
	}
	return &ks, nil
}

// Validate checks every rule of the document.
func (ks *Keyset) Validate() error {
	if err := envelope.ValidateName(ks.Name); err != nil {
		return fmt.Errorf("%w: name: %v", ErrInvalid, err)
	}
	if ks.KMS == "" {
		return fmt.Errorf("%w: %s: kms is empty (write a KMS URI such as local:///path/to/kek)", ErrInvalid, ks.Name)
	}
	if len(ks.Versions) == 0 {
		return fmt.Errorf("%w: %s: no versions", ErrInvalid, ks.Name)
	}
	if len(ks.Versions) > MaxVersions {
		return fmt.Errorf("%w: %s: %d versions exceeds %d", ErrInvalid, ks.Name, len(ks.Versions), MaxVersions)
	}
	primaries := 0
	var prev uint32
	for i, v := range ks.Versions {
		where := fmt.Sprintf("%s: versions[%d] (v%d)", ks.Name, i, v.Version)
		switch {
		case v.Version == 0:
			return fmt.Errorf("%w: %s: version numbers start at 1", ErrInvalid, where)
		case v.Version > MaxVersionNumber:
			return fmt.Errorf("%w: %s: version numbers stop at %d", ErrInvalid, where, MaxVersionNumber)
		case i > 0 && v.Version != prev+1:
			return fmt.Errorf("%w: %s: versions must be consecutive (follows v%d; a new version is always the latest plus one)", ErrInvalid, where, prev)
		case v.State.Rank() < 0:
			return fmt.Errorf("%w: %s: unknown state %q (one of pending, primary, decrypt-only, revoked, disabled, destroyed)", ErrInvalid, where, v.State)
		case len(v.Canary) > MaxWrappedKeySize:
			return fmt.Errorf("%w: %s: canary of %d bytes exceeds %d", ErrInvalid, where, len(v.Canary), MaxWrappedKeySize)
		case v.State == StateDestroyed && len(v.WrappedKey) != 0:
			return fmt.Errorf("%w: %s: a destroyed version must not keep its wrapped key", ErrInvalid, where)
		case v.State != StateDestroyed && len(v.WrappedKey) == 0:
			return fmt.Errorf("%w: %s: wrappedKey is empty", ErrInvalid, where)
		case len(v.WrappedKey) > MaxWrappedKeySize:
			return fmt.Errorf("%w: %s: wrappedKey of %d bytes exceeds %d", ErrInvalid, where, len(v.WrappedKey), MaxWrappedKeySize)
		case v.CreatedAt.IsZero():
			return fmt.Errorf("%w: %s: createdAt is missing", ErrInvalid, where)
		}
		if v.State == StatePrimary {
			primaries++
		}
		prev = v.Version
	}
	if primaries != 1 {
		return fmt.Errorf("%w: %s: %d primary versions, want exactly 1", ErrInvalid, ks.Name, primaries)
	}
	if r := ks.Revocation; r != nil {
		if _, err := ks.Get(r.Version); err != nil || r.RequestedAt.IsZero() || len(r.Reason) > 1024 {
			return fmt.Errorf("%w: %s: revoke names v%d, which it must hold, with requestedAt and a reason of at most 1024 bytes", ErrInvalid, ks.Name, r.Version)
		}
	}
	if p := ks.Policy; p != nil && (p.RotationPeriod < 0 || p.Retention < 0 || p.AckTimeout < 0) {
		return fmt.Errorf("%w: %s: policy durations must not be negative", ErrInvalid, ks.Name)
	}
	return nil
}

// Marshal validates and encodes the document as indented JSON.
func (ks *Keyset) Marshal() ([]byte, error) {
	if err := ks.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(ks, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("keyset: encode: %w", err)
	}
	return append(b, '\n'), nil
}

// Clone returns a deep copy.
func (ks *Keyset) Clone() *Keyset {
	c := *ks
	if ks.Policy != nil {
		p := *ks.Policy
		c.Policy = &p
	}
	if ks.Revocation != nil {
		r := *ks.Revocation
		c.Revocation = &r
	}
	c.Versions = make([]Version, len(ks.Versions))
	for i, v := range ks.Versions {
		v.WrappedKey = slices.Clone(v.WrappedKey)
		v.Canary = slices.Clone(v.Canary)
		if v.PromotedAt != nil {
			t := *v.PromotedAt
			v.PromotedAt = &t
		}
		c.Versions[i] = v
	}
	return &c
}

// Primary returns the primary version.
func (ks *Keyset) Primary() Version {
	for _, v := range ks.Versions {
		if v.State == StatePrimary {
			return v
		}
	}
	return Version{}
}

// Latest is the highest version number ever used.
func (ks *Keyset) Latest() uint32 {
	if len(ks.Versions) == 0 {
		return 0
	}
	return ks.Versions[len(ks.Versions)-1].Version
}

// Get returns version n.
func (ks *Keyset) Get(n uint32) (Version, error) {
	for _, v := range ks.Versions {
		if v.Version == n {
			return v, nil
		}
	}
	return Version{}, fmt.Errorf("%w: %s has no v%d", ErrUnknownVersion, ks.Name, n)
}

// New makes a keyset whose version 1 is primary.
func New(name, kmsURI string, wrapped []byte, kekVersion string, now time.Time) (*Keyset, error) {
	now = now.UTC()
	ks := &Keyset{Name: name, KMS: kmsURI, Versions: []Version{{
		Version: 1, State: StatePrimary, WrappedKey: wrapped, KEKVersion: kekVersion,
		CreatedAt: now, PromotedAt: &now, StateChangedAt: now,
	}}}
	if err := ks.Validate(); err != nil {
		return nil, err
	}
	return ks, nil
}

// NextVersion is the number the next added version gets.
func (ks *Keyset) NextVersion() uint32 { return ks.Latest() + 1 }

// MaxVersionNumber bounds version numbers. Versions are consecutive and a
// keyset holds at most MaxVersions of them, so a valid document never
// comes near it; the bound keeps a forged document from pushing the
// numbering to the top of uint32, where the next version would wrap to 0.
const MaxVersionNumber = 1 << 24

// AddPending returns a copy with a new pending version numbered
// NextVersion(). Wrap its DEK with WrapAAD(ks.Name, ks.NextVersion()).
func (ks *Keyset) AddPending(wrapped []byte, kekVersion string, now time.Time) (*Keyset, error) {
	if len(ks.Versions) >= MaxVersions || ks.Latest() >= MaxVersionNumber {
		return nil, fmt.Errorf("%w: %s already has %d versions; destroy and compact old ones first", ErrTransition, ks.Name, len(ks.Versions))
	}
	now = now.UTC()
	c := ks.Clone()
	c.Versions = append(c.Versions, Version{
		Version: ks.NextVersion(), State: StatePending, WrappedKey: slices.Clone(wrapped),
		KEKVersion: kekVersion, CreatedAt: now, StateChangedAt: now,
	})
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Promote returns a copy where pending version n is primary and the former
// primary is decrypt-only.
func (ks *Keyset) Promote(n uint32, now time.Time) (*Keyset, error) {
	v, err := ks.Get(n)
	if err != nil {
		return nil, err
	}
	if v.State != StatePending {
		return nil, fmt.Errorf("%w: %s v%d is %s; only a pending version can be promoted (rotate to add one)", ErrTransition, ks.Name, n, v.State)
	}
	now = now.UTC()
	c := ks.Clone()
	for i := range c.Versions {
		switch c.Versions[i].Version {
		case n:
			c.Versions[i].State = StatePrimary
			c.Versions[i].PromotedAt = &now
			c.Versions[i].StateChangedAt = now
		default:
			if c.Versions[i].State == StatePrimary {
				c.Versions[i].State = StateDecryptOnly
				c.Versions[i].StateChangedAt = now
			}
		}
	}
	return c, c.Validate()
}

// Revoke returns a copy where pending or decrypt-only version n is
// revoked: its key is known or suspected compromised, so readers stop
// decrypting under it at once but keep it for Rewrap. The primary cannot be
// revoked: promote a new primary first (the old one becomes decrypt-only),
// then revoke it.
func (ks *Keyset) Revoke(n uint32, now time.Time) (*Keyset, error) {
	v, err := ks.Get(n)
	if err != nil {
		return nil, err
	}
	switch v.State {
	case StatePending, StateDecryptOnly:
	case StatePrimary:
		return nil, fmt.Errorf("%w: %s v%d is the primary; rotate and promote a new primary first, then revoke v%d", ErrTransition, ks.Name, n, n)
	case StateRevoked:
		return nil, fmt.Errorf("%w: %s v%d is already revoked", ErrTransition, ks.Name, n)
	default:
		return nil, fmt.Errorf("%w: %s v%d is %s; nothing opens it any more, so there is nothing to revoke", ErrTransition, ks.Name, n, v.State)
	}
	return ks.withState(n, StateRevoked, now)
}

// withState returns a validated copy where version n is in state s since
// now; a destroyed version loses its wrapped key and canary.
func (ks *Keyset) withState(n uint32, s State, now time.Time) (*Keyset, error) {
	c := ks.Clone()
	for i := range c.Versions {
		if v := &c.Versions[i]; v.Version == n {
			v.State, v.StateChangedAt = s, now.UTC()
			if s == StateDestroyed {
				v.WrappedKey, v.Canary = nil, nil
			}
		}
	}
	return c, c.Validate()
}

// Retire returns a copy where version n has moved one step further:
// decrypt-only, revoked or pending → disabled, disabled → destroyed (its
// wrapped key is dropped). The primary cannot be retired: promote another
// version first.
func (ks *Keyset) Retire(n uint32, now time.Time) (*Keyset, error) {
	v, err := ks.Get(n)
	if err != nil {
		return nil, err
	}
	var next State
	switch v.State {
	case StatePending, StateDecryptOnly, StateRevoked:
		next = StateDisabled
	case StateDisabled:
		next = StateDestroyed
	case StatePrimary:
		return nil, fmt.Errorf("%w: %s v%d is the primary; promote another version before retiring it", ErrTransition, ks.Name, n)
	default:
		return nil, fmt.Errorf("%w: %s v%d is already %s", ErrTransition, ks.Name, n, v.State)
	}
	return ks.withState(n, next, now)
}

// ReadFile reads and validates a keyset file.
func ReadFile(path string) (*Keyset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keyset: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("keyset: read %s: %w", path, err)
	}
	ks, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ks, nil
}

// WriteFile validates ks and replaces path atomically (write a temporary
// file in the same directory, fsync, rename), so a watcher never reads half
// a document.
func WriteFile(path string, ks *Keyset) error {
	b, err := ks.Marshal()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("keyset: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("keyset: write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("keyset: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keyset: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keyset: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("keyset: %w", err)
	}
	return nil
}
