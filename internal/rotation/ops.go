// Package rotation owns how keyset versions are made and moved through
// their lifecycle: generating a data key through the KMS, verifying it
// before anyone depends on it, and the promote/retire steps. The CLI's
// `keyshift keyset` commands and the controller both call it.
package rotation

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
)

// ErrVerify: a freshly generated version failed its checks and was not added.
var ErrVerify = errors.New("rotation: verification failed")

// generate mints a DEK for keyset name, version n, wrapped with the
// version's AAD, verifies that it unwraps to the same bytes and seals and
// opens a canary, and returns the wrapped key with the version's stored
// canary ciphertext.
func generate(ctx context.Context, w kms.Wrapper, name string, n uint32) (kms.WrappedKey, []byte, error) {
	aad := keyset.WrapAAD(name, n)
	var dek []byte
	var wk kms.WrappedKey
	var err error
	if g, ok := w.(kms.DataKeyGenerator); ok {
		dek, wk, err = g.GenerateDataKey(ctx, aad)
	} else {
		dek = make([]byte, envelope.KeySize)
		if _, err = rand.Read(dek); err == nil {
			wk, err = w.Wrap(ctx, dek, aad)
		}
	}
	defer clear(dek)
	if err != nil {
		return kms.WrappedKey{}, nil, fmt.Errorf("rotation: generate %s v%d: %w", name, n, err)
	}
	got, err := w.Unwrap(ctx, wk, aad)
	if err != nil {
		return kms.WrappedKey{}, nil, fmt.Errorf("%w: %s v%d: unwrap: %w", ErrVerify, name, n, err)
	}
	defer clear(got)
	if !bytes.Equal(got, dek) {
		return kms.WrappedKey{}, nil, fmt.Errorf("%w: %s v%d: KMS unwrapped different bytes", ErrVerify, name, n)
	}
	k, err := envelope.NewKey(name, n, got)
	if err != nil {
		return kms.WrappedKey{}, nil, fmt.Errorf("%w: %v", ErrVerify, err)
	}
	canary, err := envelope.Seal(k, keyset.CanaryPlaintext(name, n), nil, rand.Reader)
	if err != nil {
		return kms.WrappedKey{}, nil, fmt.Errorf("%w: %s v%d: seal canary: %v", ErrVerify, name, n, err)
	}
	if err := openCanary(k, canary); err != nil {
		return kms.WrappedKey{}, nil, err
	}
	return wk, canary, nil
}

func openCanary(k *envelope.Key, canary []byte) error {
	pt, err := envelope.Open(k, canary, nil)
	if err != nil || !bytes.Equal(pt, keyset.CanaryPlaintext(k.Name(), k.Version())) {
		return fmt.Errorf("%w: %s v%d: stored canary does not decrypt", ErrVerify, k.Name(), k.Version())
	}
	return nil
}

// VerifyReadable unwraps every version still loaded by readers and opens
// its stored canary, proving the KMS still yields the same data keys.
func VerifyReadable(ctx context.Context, w kms.Wrapper, ks *keyset.Keyset) error {
	for _, v := range ks.Versions {
		if !v.State.Readable() {
			continue
		}
		if err := verifyVersion(ctx, w, ks.Name, v); err != nil {
			return err
		}
	}
	return nil
}

func verifyVersion(ctx context.Context, w kms.Wrapper, name string, v keyset.Version) error {
	dek, err := w.Unwrap(ctx, kms.WrappedKey{Ciphertext: v.WrappedKey, KEKVersion: v.KEKVersion}, keyset.WrapAAD(name, v.Version))
	if err != nil {
		return fmt.Errorf("%w: %s v%d: unwrap: %w", ErrVerify, name, v.Version, err)
	}
	k, err := envelope.NewKey(name, v.Version, dek)
	clear(dek)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrVerify, err)
	}
	if len(v.Canary) == 0 {
		return nil // made before canaries existed: the unwrap is the check
	}
	return openCanary(k, v.Canary)
}

// Create makes a new keyset whose version 1 is primary.
func Create(ctx context.Context, w kms.Wrapper, name, kmsURI string, now time.Time) (*keyset.Keyset, error) {
	if err := envelope.ValidateName(name); err != nil {
		return nil, err
	}
	wk, canary, err := generate(ctx, w, name, 1)
	if err != nil {
		return nil, err
	}
	ks, err := keyset.New(name, kmsURI, wk.Ciphertext, wk.KEKVersion, now)
	if err != nil {
		return nil, err
	}
	ks.Versions[0].Canary = canary
	return ks, nil
}

// AddVersion verifies every readable version, then generates, verifies
// and adds a new pending version. It is not used to encrypt until
// promoted, so every reader can load it first.
func AddVersion(ctx context.Context, w kms.Wrapper, ks *keyset.Keyset, now time.Time) (*keyset.Keyset, error) {
	if err := VerifyReadable(ctx, w, ks); err != nil {
		return nil, err
	}
	n := ks.NextVersion()
	wk, canary, err := generate(ctx, w, ks.Name, n)
	if err != nil {
		return nil, err
	}
	next, err := ks.AddPending(wk.Ciphertext, wk.KEKVersion, now)
	if err != nil {
		return nil, err
	}
	next.Versions[len(next.Versions)-1].Canary = canary
	return next, nil
}

// Rewrap re-wraps every readable version not wrapped by currentKEK, and
// verifies each through its canary. It returns ks itself when nothing
// needed rewrapping, and the versions it rewrapped.
func Rewrap(ctx context.Context, w kms.Wrapper, ks *keyset.Keyset, currentKEK string) (*keyset.Keyset, []uint32, error) {
	next := ks.Clone()
	var done []uint32
	for i, v := range next.Versions {
		if !v.State.Readable() || v.KEKVersion == currentKEK {
			continue
		}
		aad := keyset.WrapAAD(ks.Name, v.Version)
		old := kms.WrappedKey{Ciphertext: v.WrappedKey, KEKVersion: v.KEKVersion}
		var wk kms.WrappedKey
		var err error
		if r, ok := w.(kms.Rewrapper); ok {
			wk, err = r.Rewrap(ctx, old, aad)
		} else {
			var dek []byte
			if dek, err = w.Unwrap(ctx, old, aad); err == nil {
				wk, err = w.Wrap(ctx, dek, aad)
				clear(dek)
			}
		}
		if err != nil {
			return nil, nil, fmt.Errorf("rotation: rewrap %s v%d: %w", ks.Name, v.Version, err)
		}
		next.Versions[i].WrappedKey, next.Versions[i].KEKVersion = wk.Ciphertext, wk.KEKVersion
		if err := verifyVersion(ctx, w, ks.Name, next.Versions[i]); err != nil {
			return nil, nil, err
		}
		done = append(done, v.Version)
	}
	if len(done) == 0 {
		return ks, nil, nil
	}
	return next, done, next.Validate()
}

// LatestPending is the highest pending version, or 0.
func LatestPending(ks *keyset.Keyset) uint32 {
	var n uint32
	for _, v := range ks.Versions {
		if v.State == keyset.StatePending {
			n = v.Version
		}
	}
	return n
}

// MigrateKMS re-wraps every version that still has a wrapped key under the
// KMS key to, unwrapping with from, and records the old URI in
// previousKms: the one way a keyset changes KMS key. Sidecars accept the
// result because every version unwraps under the new key to the key they
// hold; a document that merely names another KMS is refused. Each
// readable version is verified through its canary under the new key.
func MigrateKMS(ctx context.Context, from, to kms.Wrapper, ks *keyset.Keyset, uri string) (*keyset.Keyset, error) {
	if uri == ks.KMS {
		return nil, fmt.Errorf("rotation: %s is already under %s", ks.Name, uri)
	}
	if p := LatestPending(ks); p != 0 {
		return nil, fmt.Errorf("rotation: %s v%d is pending; promote or retire it before migrating the KMS key", ks.Name, p)
	}
	next := ks.Clone()
	next.KMS, next.PreviousKMS = uri, ks.KMS
	for i, v := range next.Versions {
		if len(v.WrappedKey) == 0 {
			continue // destroyed
		}
		aad := keyset.WrapAAD(ks.Name, v.Version)
		dek, err := from.Unwrap(ctx, kms.WrappedKey{Ciphertext: v.WrappedKey, KEKVersion: v.KEKVersion}, aad)
		if err != nil {
			return nil, fmt.Errorf("rotation: migrate %s v%d: unwrap under %s: %w", ks.Name, v.Version, ks.KMS, err)
		}
		wk, err := to.Wrap(ctx, dek, aad)
		clear(dek)
		if err != nil {
			return nil, fmt.Errorf("rotation: migrate %s v%d: wrap under %s: %w", ks.Name, v.Version, uri, err)
		}
		next.Versions[i].WrappedKey, next.Versions[i].KEKVersion = wk.Ciphertext, wk.KEKVersion
		if v.State.Readable() {
			if err := verifyVersion(ctx, to, ks.Name, next.Versions[i]); err != nil {
				return nil, err
			}
		}
	}
	return next, next.Validate()
}
