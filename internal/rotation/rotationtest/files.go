// Package rotationtest keeps keyset files under a local file KMS for the
// tests of the parts that read them (the sidecar, ext_authz, the CLI), and
// changes them the way the controller does: a new version is added pending
// first and promoted in a second write.
package rotationtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
)

// Files are keyset files in one directory, each with v1 primary when made.
type Files struct {
	tb testing.TB
	// KEKPath is the local KMS key file; keysets name local://KEKPath.
	KEKPath string
	// KMS is that key.
	KMS *local.KMS
	// Paths maps each keyset name to its file.
	Paths map[string]string
}

// NewFiles writes NAME.json in dir for each name, under a new local KEK
// in dir.
func NewFiles(tb testing.TB, dir string, names ...string) *Files {
	tb.Helper()
	return newFiles(tb, dir, filepath.Join(dir, "kek.json"), names)
}

// NewStoreDir makes root/keysets, a keyset directory as the controller's
// --keyset-dir reads it (nothing else in it), with NAME.json for each
// name under a new local KEK at root/kek.json. It returns the keyset
// directory and the files.
func NewStoreDir(tb testing.TB, root string, names ...string) (string, *Files) {
	tb.Helper()
	dir := filepath.Join(root, "keysets")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	return dir, newFiles(tb, dir, filepath.Join(root, "kek.json"), names)
}

func newFiles(tb testing.TB, dir, kekPath string, names []string) *Files {
	tb.Helper()
	f := &Files{tb: tb, KEKPath: kekPath, Paths: map[string]string{}}
	f.KMS = local.New(f.KEKPath)
	for _, name := range names {
		ks, err := rotation.Create(context.Background(), f.KMS, name, "local://"+f.KEKPath, time.Now())
		if err != nil {
			tb.Fatal(err)
		}
		f.Paths[name] = filepath.Join(dir, name+".json")
		f.Write(name, ks)
	}
	return f
}

// Read is the current document of name.
func (f *Files) Read(name string) *keyset.Keyset {
	f.tb.Helper()
	ks, err := keyset.ReadFile(f.Paths[name])
	if err != nil {
		f.tb.Fatal(err)
	}
	return ks
}

// Write replaces name's file with ks (atomically, as keyset.WriteFile does).
func (f *Files) Write(name string, ks *keyset.Keyset) {
	f.tb.Helper()
	if err := keyset.WriteFile(f.Paths[name], ks); err != nil {
		f.tb.Fatal(err)
	}
}

// AddPending writes a new pending version of name and returns its number.
func (f *Files) AddPending(name string) uint32 {
	f.tb.Helper()
	ks, err := rotation.AddVersion(context.Background(), f.KMS, f.Read(name), time.Now())
	if err != nil {
		f.tb.Fatal(err)
	}
	f.Write(name, ks)
	return ks.Latest()
}

// Promote makes version n of name the primary.
func (f *Files) Promote(name string, n uint32) {
	f.tb.Helper()
	ks, err := f.Read(name).Promote(n, time.Now())
	if err != nil {
		f.tb.Fatal(err)
	}
	f.Write(name, ks)
}

// Revoke marks version n of name revoked.
func (f *Files) Revoke(name string, n uint32) {
	f.tb.Helper()
	ks, err := f.Read(name).Revoke(n, time.Now())
	if err != nil {
		f.tb.Fatal(err)
	}
	f.Write(name, ks)
}
