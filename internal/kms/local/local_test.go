package local

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyshift/keyshift/internal/kms"
)

func TestWrapUnwrapRotate(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "kek.json")
	reg := kms.Registry{Scheme: Open}
	w, err := reg.Open(ctx, "local://"+path)
	if err != nil {
		t.Fatal(err)
	}
	dek := bytes.Repeat([]byte{7}, 32)
	wk, err := w.Wrap(ctx, dek, []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file mode = %v, %v; want 0600", st.Mode(), err)
	}
	if wk.KEKVersion != "1" || bytes.Contains(wk.Ciphertext, dek) {
		t.Fatalf("wrapped = kek %q", wk.KEKVersion)
	}
	got, err := w.Unwrap(ctx, wk, []byte("aad"))
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("Unwrap = %v", err)
	}
	if _, err := w.Unwrap(ctx, wk, []byte("other")); !errors.Is(err, kms.ErrCorrupt) {
		t.Fatalf("wrong aad: %v, want ErrCorrupt", err)
	}
	v, err := w.(*KMS).Rotate(ctx)
	if err != nil || v != "2" {
		t.Fatalf("Rotate = %q, %v", v, err)
	}
	if p, _ := w.(kms.KEKStatus).PrimaryKEKVersion(ctx); p != "2" {
		t.Fatalf("primary = %q", p)
	}
	wk2, _ := w.Wrap(ctx, dek, nil)
	if wk2.KEKVersion != "2" {
		t.Fatalf("after rotate wrapped under %q", wk2.KEKVersion)
	}
	if got, err := w.Unwrap(ctx, wk, []byte("aad")); err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("old KEK version no longer unwraps: %v", err)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cases := []struct {
		name string
		uri  string
		prep func(path string)
		want error
		msg  string
	}{
		{"relative path", "local://kek", nil, kms.ErrBadURI, "three slashes"},
		{"unknown scheme", "gcs://x", nil, kms.ErrUnknownScheme, `"gcs"`},
		{"no scheme", "/tmp/kek", nil, kms.ErrBadURI, "no scheme"},
		{"missing file on unwrap", "local://" + filepath.Join(dir, "missing"), nil, kms.ErrUserInduced, "does not exist"},
		{"world readable", "local://" + filepath.Join(dir, "open"), func(p string) { os.WriteFile(p, []byte("{}"), 0o644) }, kms.ErrUserInduced, "chmod 600"},
		{"corrupt file", "local://" + filepath.Join(dir, "corrupt"), func(p string) { os.WriteFile(p, []byte("{garbage"), 0o600) }, kms.ErrUserInduced, "not valid JSON"},
	}
	reg := kms.Registry{Scheme: Open}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, err := reg.Open(ctx, c.uri)
			if err == nil {
				if c.prep != nil {
					u, _ := kms.ParseURI(c.uri)
					c.prep(u.Path)
				}
				_, err = w.Unwrap(ctx, kms.WrappedKey{Ciphertext: make([]byte, 40)}, nil)
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, c.want, c.msg)
			}
			if kms.Reason(err) == "" {
				t.Fatal("no reason label")
			}
		})
	}
	w := New(filepath.Join(dir, "k"))
	if _, err := w.Wrap(ctx, make([]byte, 32), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Unwrap(ctx, kms.WrappedKey{Ciphertext: []byte("short")}, nil); !errors.Is(err, kms.ErrCorrupt) {
		t.Fatalf("short: %v", err)
	}
	if _, err := w.Unwrap(ctx, kms.WrappedKey{Ciphertext: append([]byte{0, 0, 0, 9}, make([]byte, 40)...)}, nil); !errors.Is(err, kms.ErrUserInduced) {
		t.Fatalf("unknown KEK version: %v", err)
	}
}
