package rotation

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/keyshift/keyshift/internal/keyset"
)

// Store holds keyset documents for the controller under keys (a file
// name, namespace/name of a Secret). Put is a compare-and-swap on the
// revision Get returned, so two writers never both win.
type Store interface {
	// List returns the key of every keyset the controller owns.
	List(ctx context.Context) ([]string, error)
	// Get returns the document and its revision.
	Get(ctx context.Context, key string) (*keyset.Keyset, string, error)
	// Put replaces the document if it is still at rev, returning the new revision.
	Put(ctx context.Context, key string, ks *keyset.Keyset, rev string) (string, error)
}

// ErrConflict: the document changed since it was read; read it again.
var ErrConflict = errors.New("rotation: keyset changed concurrently")

// FileStore keeps each keyset as DIR/<name>.json: for a controller run
// outside a cluster, and for tests.
type FileStore struct {
	Dir string
	mu  sync.Mutex
}

var _ Store = (*FileStore)(nil)

func (f *FileStore) path(name string) string { return filepath.Join(f.Dir, name+".json") }

// List names the keysets in the directory.
func (f *FileStore) List(context.Context) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(f.Dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range m {
		out = append(out, strings.TrimSuffix(filepath.Base(p), ".json"))
	}
	sort.Strings(out)
	return out, nil
}

// Get reads one keyset; the revision is the SHA-256 of the file.
func (f *FileStore) Get(_ context.Context, name string) (*keyset.Keyset, string, error) {
	b, err := os.ReadFile(f.path(name))
	if err != nil {
		return nil, "", fmt.Errorf("rotation: %w", err)
	}
	ks, err := keyset.Parse(b)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", f.path(name), err)
	}
	sum := sha256.Sum256(b)
	return ks, hex.EncodeToString(sum[:]), nil
}

// Put writes the keyset atomically if the file is still at rev.
func (f *FileStore) Put(ctx context.Context, key string, ks *keyset.Keyset, rev string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, cur, err := f.Get(ctx, key); err == nil && cur != rev {
		return "", fmt.Errorf("%w: %s", ErrConflict, key)
	}
	if err := keyset.WriteFile(f.path(key), ks); err != nil {
		return "", err
	}
	_, rev, err := f.Get(ctx, key)
	return rev, err
}
