package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
)

func localKMS(t *testing.T) (kms.Registry, string) {
	t.Helper()
	return kms.Registry{local.Scheme: local.Open}, "local://" + filepath.Join(t.TempDir(), "audit-kek.json")
}

// The audit key under a KMS key: made once, stored wrapped (the file holds
// no plain key), bound to its purpose, and the same key on every load.
func TestLoadKeyWrapped(t *testing.T) {
	ctx := context.Background()
	reg, uri := localKMS(t)
	h := KeyFile{Path: filepath.Join(t.TempDir(), "audit-key.json")}
	k, info, err := LoadKey(ctx, h, reg, uri)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Created || info.KMS != uri || info.ID != k.ID() {
		t.Fatalf("info %+v", info)
	}
	b, _ := os.ReadFile(h.Path)
	var s storedKey
	if err := json.Unmarshal(b, &s); err != nil || len(s.Plain) != 0 || len(s.Wrapped) == 0 {
		t.Fatalf("stored %s (%v)", b, err)
	}
	w, _ := reg.Open(ctx, uri)
	secret, err := w.Unwrap(ctx, kms.WrappedKey{Ciphertext: s.Wrapped, KEKVersion: s.KEKVersion}, []byte(KeyAAD))
	if err != nil {
		t.Fatal(err)
	}
	for _, enc := range []string{string(secret), hex.EncodeToString(secret), base64.StdEncoding.EncodeToString(secret)} {
		if bytes.Contains(b, []byte(enc)) {
			t.Fatal("the key file holds the key in plain")
		}
	}
	if _, err := w.Unwrap(ctx, kms.WrappedKey{Ciphertext: s.Wrapped, KEKVersion: s.KEKVersion}, []byte("keyset payments v1")); err == nil {
		t.Fatal("the wrapped audit key unwraps for another purpose")
	}
	again, info, err := LoadKey(ctx, h, reg, uri)
	if err != nil || info.Created || again.ID() != k.ID() || !bytes.Equal(again.mac, k.mac) {
		t.Fatalf("reload: %+v %v", info, err)
	}
	if _, _, err := OpenKey(ctx, h, reg, uri); err != nil {
		t.Fatal(err)
	}
	// A wrapped key is never unwrapped into plain.
	if _, _, err := LoadKey(ctx, h, reg, ""); !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), "give that KMS URI") {
		t.Fatalf("LoadKey without the KMS URI: %v", err)
	}
}

// Without a KMS key the audit key is held in plain; given one later, the
// same key is wrapped under it, so existing chains go on verifying. A
// verifier that names the KMS key refuses a key held in plain (swapped).
func TestLoadKeyPlainThenWrapped(t *testing.T) {
	ctx := context.Background()
	reg, uri := localKMS(t)
	h := KeyFile{Path: filepath.Join(t.TempDir(), "audit-key.json")}
	k, info, err := LoadKey(ctx, h, reg, "")
	if err != nil || !info.Created || info.KMS != "" {
		t.Fatalf("%+v %v", info, err)
	}
	if st, _ := os.Stat(h.Path); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode())
	}
	if _, _, err := OpenKey(ctx, h, reg, uri); !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), "held in plain") {
		t.Fatalf("OpenKey naming a KMS key, of a plain key: %v", err)
	}
	w, info, err := LoadKey(ctx, h, reg, uri)
	if err != nil || info.RewrappedFrom != "plain" || w.ID() != k.ID() {
		t.Fatalf("re-wrap: %+v %v", info, err)
	}
	if b, _ := os.ReadFile(h.Path); bytes.Contains(b, []byte(`"key"`)) {
		t.Fatalf("still held in plain: %s", b)
	}
	if _, info, err := OpenKey(ctx, h, reg, uri); err != nil || info.ID != k.ID() {
		t.Fatalf("%+v %v", info, err)
	}
}

// Replicas starting together settle on one key.
func TestLoadKeyRace(t *testing.T) {
	reg, uri := localKMS(t)
	h := KeyFile{Path: filepath.Join(t.TempDir(), "audit-key.json")}
	w, _ := reg.Open(context.Background(), uri)
	if _, err := w.Wrap(context.Background(), make([]byte, 32), nil); err != nil { // the local KEK file, made once
		t.Fatal(err)
	}
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			k, _, err := LoadKey(context.Background(), h, reg, uri)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = k.ID()
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("replicas hold different keys: %v", ids)
		}
	}
}

func TestStoredKeyRefused(t *testing.T) {
	ctx := context.Background()
	reg, _ := localKMS(t)
	h := KeyFile{Path: filepath.Join(t.TempDir(), "audit-key.json")}
	if _, _, err := LoadKey(ctx, h, reg, ""); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(h.Path)
	var s storedKey
	json.Unmarshal(b, &s)
	for name, c := range map[string]struct {
		edit func(*storedKey)
		mode os.FileMode
		msg  string
	}{
		"another key under the ID": {func(s *storedKey) { s.Plain[0] ^= 1 }, 0o600, "names key"},
		"readable by others":       {func(*storedKey) {}, 0o644, "chmod 600"},
		"no key":                   {func(s *storedKey) { s.Plain = nil }, 0o600, "want a wrapped key"},
	} {
		t.Run(name, func(t *testing.T) {
			s := s
			s.Plain = bytes.Clone(s.Plain)
			c.edit(&s)
			nb, _ := json.Marshal(s)
			os.WriteFile(h.Path, nb, c.mode)
			os.Chmod(h.Path, c.mode)
			if _, _, err := LoadKey(ctx, h, reg, ""); !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want ErrBadKey containing %q", err, c.msg)
			}
		})
	}
}
