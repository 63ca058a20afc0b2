package rotation

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

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
