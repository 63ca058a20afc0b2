package rotation

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
)

// lyingKMS wraps the real local KMS but unwraps to different bytes, the
// failure verification exists to catch.
type lyingKMS struct{ *local.KMS }

func (l lyingKMS) Unwrap(ctx context.Context, w kms.WrappedKey, aad []byte) ([]byte, error) {
	dek, err := l.KMS.Unwrap(ctx, w, aad)
	if err == nil {
		dek[0] ^= 1
	}
	return dek, err
}

func TestCreateAndAddVersion(t *testing.T) {
	ctx := context.Background()
	k := local.New(filepath.Join(t.TempDir(), "kek.json"))
	ks, err := Create(ctx, k, "orders", "local:///x", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ks, err = AddVersion(ctx, k, ks, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if LatestPending(ks) != 2 || ks.Primary().Version != 1 {
		t.Fatalf("versions %v", ks.Versions)
	}
	v2, _ := ks.Get(2)
	// The wrapped key is bound to its keyset and version.
	if _, err := k.Unwrap(ctx, kms.WrappedKey{Ciphertext: v2.WrappedKey}, keyset.WrapAAD("orders", 3)); !errors.Is(err, kms.ErrCorrupt) {
		t.Fatalf("unwrap under another version's AAD: %v", err)
	}
	if _, err := AddVersion(ctx, lyingKMS{k}, ks, time.Now()); !errors.Is(err, ErrVerify) {
		t.Fatalf("lying KMS: %v, want ErrVerify", err)
	}
	if _, err := Create(ctx, k, "Bad Name", "local:///x", time.Now()); err == nil {
		t.Fatal("bad name accepted")
	}
}

// rewrappingKMS is the real local KMS with the optional kms.Rewrapper
// added, recording the keys it was asked to rewrap.
type rewrappingKMS struct {
	*local.KMS
	rewrapped []string // KEK versions of the keys it rewrapped
}

var _ kms.Rewrapper = (*rewrappingKMS)(nil)

func (r *rewrappingKMS) Rewrap(ctx context.Context, w kms.WrappedKey, aad []byte) (kms.WrappedKey, error) {
	r.rewrapped = append(r.rewrapped, w.KEKVersion)
	dek, err := r.Unwrap(ctx, w, aad)
	if err != nil {
		return kms.WrappedKey{}, err
	}
	defer clear(dek)
	return r.Wrap(ctx, dek, aad)
}

// TestRewrapUsesKMSRewrapper: a backend that rewraps inside the KMS is asked
// to, once per version not under the current KEK, and a backend that cannot
// gets the same result through Unwrap and Wrap.
func TestRewrapUsesKMSRewrapper(t *testing.T) {
	ctx := context.Background()
	k := local.New(filepath.Join(t.TempDir(), "kek.json"))
	ks, err := Create(ctx, k, "orders", "local:///x", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if ks, err = AddVersion(ctx, k, ks, time.Now()); err != nil {
		t.Fatal(err)
	}
	kek, err := k.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		w             kms.Wrapper
		wantRewrapped []string
	}{
		{name: "kms.Rewrapper", w: &rewrappingKMS{KMS: k}, wantRewrapped: []string{"1", "1"}},
		{name: "Unwrap and Wrap", w: k},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, done, err := Rewrap(ctx, tc.w, ks, kek)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]uint32{1, 2}, done); diff != "" {
				t.Errorf("rewrapped versions (-want +got):\n%s", diff)
			}
			for _, v := range next.Versions {
				if v.KEKVersion != kek {
					t.Errorf("v%d under KEK version %q, want %q", v.Version, v.KEKVersion, kek)
				}
			}
			var got []string
			if r, ok := tc.w.(*rewrappingKMS); ok {
				got = r.rewrapped
			}
			if diff := cmp.Diff(tc.wantRewrapped, got); diff != "" {
				t.Errorf("keys the KMS rewrapped, by KEK version (-want +got):\n%s", diff)
			}
		})
	}
}
