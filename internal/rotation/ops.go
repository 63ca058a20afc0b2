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
// version's AAD, and verifies that it unwraps to the same bytes and seals
// and opens a canary.
func generate(ctx context.Context, w kms.Wrapper, name string, n uint32) (kms.WrappedKey, error) {
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
		return kms.WrappedKey{}, fmt.Errorf("rotation: generate %s v%d: %w", name, n, err)
	}
	if err := verify(ctx, w, name, n, wk, dek); err != nil {
		return kms.WrappedKey{}, err
	}
	return wk, nil
}

func verify(ctx context.Context, w kms.Wrapper, name string, n uint32, wk kms.WrappedKey, dek []byte) error {
	got, err := w.Unwrap(ctx, wk, keyset.WrapAAD(name, n))
	if err != nil {
		return fmt.Errorf("%w: %s v%d: unwrap: %w", ErrVerify, name, n, err)
	}
	defer clear(got)
	if !bytes.Equal(got, dek) {
		return fmt.Errorf("%w: %s v%d: KMS unwrapped different bytes", ErrVerify, name, n)
	}
	k, err := envelope.NewKey(name, n, got)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrVerify, err)
	}
	canary := []byte("keyshift canary")
	ct, err := envelope.Seal(k, canary, nil, rand.Reader)
	if err != nil {
		return fmt.Errorf("%w: %s v%d: seal canary: %v", ErrVerify, name, n, err)
	}
	if pt, err := envelope.Open(k, ct, nil); err != nil || !bytes.Equal(pt, canary) {
		return fmt.Errorf("%w: %s v%d: canary round trip failed", ErrVerify, name, n)
	}
	return nil
}

// Create makes a new keyset whose version 1 is primary.
func Create(ctx context.Context, w kms.Wrapper, name, kmsURI string, now time.Time) (*keyset.Keyset, error) {
	if err := envelope.ValidateName(name); err != nil {
		return nil, err
	}
	wk, err := generate(ctx, w, name, 1)
	if err != nil {
		return nil, err
	}
	return keyset.New(name, kmsURI, wk.Ciphertext, wk.KEKVersion, now)
}

// AddVersion generates, verifies and adds a new pending version. It is
// not used to encrypt until promoted, so every reader can load it first.
func AddVersion(ctx context.Context, w kms.Wrapper, ks *keyset.Keyset, now time.Time) (*keyset.Keyset, error) {
	n := ks.NextVersion()
	wk, err := generate(ctx, w, ks.Name, n)
	if err != nil {
		return nil, err
	}
	return ks.AddPending(wk.Ciphertext, wk.KEKVersion, now)
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
