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

	"github.com/keyshift/keyshift/internal/audit"
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

// AuditStore is optional on a Store: it keeps each keyset's audit trail
// (its newest records and the chain head) beside the document, so a step
// and its record are stored by one write or not at all, every replica
// continues the same chain, and a restart loses nothing.
type AuditStore interface {
	// PutAudited is Put that, in the same compare-and-swap, appends rec
	// (sealed by k after the stored head) to the keyset's trail and moves
	// the head to it. It returns the new revision and the trail as stored.
	PutAudited(ctx context.Context, key string, ks *keyset.Keyset, rev string, k *audit.Key, rec audit.Record) (string, audit.Trail, error)
	// AppendAudit appends rec, sealed by k, to the keyset's trail without
	// changing the document (a failed or blocked step), and returns the
	// trail as stored.
	AppendAudit(ctx context.Context, key string, k *audit.Key, rec audit.Record) (audit.Trail, error)
	// AuditTrail returns the keyset's trail as stored, for verification.
	AuditTrail(ctx context.Context, key string) (StoredTrail, error)
}

// StoredTrail is a keyset's audit trail as its store holds it.
type StoredTrail struct {
	// Keyset names the chain as records do: the keyset's name, with its
	// namespace for a Secret (namespace/name).
	Keyset string
	// Records are the newest records as JSON lines; Head is "SEQ:MAC".
	Records []byte
	Head    string
}

// FileStore keeps each keyset as DIR/<name>.json: for a controller run
// outside a cluster, and for tests. Its audit trail is DIR/<name>.audit.jsonl
// (the newest records) with the head in DIR/<name>.audit-head, each file
// replaced whole. Files cannot change together as a Secret does: the trail
// and head are written before the document, so a crash between them leaves
// a record of a step that was not stored (the controller then takes it
// again), never a step without its record.
type FileStore struct {
	Dir string
	mu  sync.Mutex
}

var (
	_ Store      = (*FileStore)(nil)
	_ AuditStore = (*FileStore)(nil)
)

func (f *FileStore) path(name string) string { return filepath.Join(f.Dir, name+".json") }

// TrailPath and HeadPath are where the keyset name's audit trail and its
// head are kept.
func (f *FileStore) TrailPath(name string) string { return filepath.Join(f.Dir, name+".audit.jsonl") }

// HeadPath: see TrailPath.
func (f *FileStore) HeadPath(name string) string { return filepath.Join(f.Dir, name+".audit-head") }

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
	return f.put(ctx, key, ks, rev, nil)
}

// put writes the keyset if the file is still at rev, after the trail when
// there is one to write.
func (f *FileStore) put(ctx context.Context, key string, ks *keyset.Keyset, rev string, t *audit.Trail) (string, error) {
	if _, cur, err := f.Get(ctx, key); err == nil && cur != rev {
		return "", fmt.Errorf("%w: %s", ErrConflict, key)
	}
	if t != nil {
		if err := f.writeTrail(key, *t); err != nil {
			return "", err
		}
	}
	if err := keyset.WriteFile(f.path(key), ks); err != nil {
		return "", err
	}
	_, rev, err := f.Get(ctx, key)
	return rev, err
}

// PutAudited writes the trail with rec appended, its head, then the
// keyset, if the keyset file is still at rev; on a conflict nothing.
func (f *FileStore) PutAudited(ctx context.Context, key string, ks *keyset.Keyset, rev string, k *audit.Key, rec audit.Record) (string, audit.Trail, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.readTrail(key)
	if err != nil {
		return "", t, err
	}
	if _, err := t.Append(k, rec); err != nil {
		return "", t, err
	}
	rev, err = f.put(ctx, key, ks, rev, &t)
	return rev, t, err
}

// AppendAudit writes the trail with rec appended, and its head.
func (f *FileStore) AppendAudit(_ context.Context, key string, k *audit.Key, rec audit.Record) (audit.Trail, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.readTrail(key)
	if err != nil {
		return t, err
	}
	if _, err := t.Append(k, rec); err != nil {
		return t, err
	}
	return t, f.writeTrail(key, t)
}

// AuditTrail reads the keyset's trail and head as stored.
func (f *FileStore) AuditTrail(ctx context.Context, key string) (StoredTrail, error) {
	ks, _, err := f.Get(ctx, key)
	if err != nil {
		return StoredTrail{}, err
	}
	st := StoredTrail{Keyset: ks.Name}
	if st.Records, err = readOptional(f.TrailPath(key)); err != nil {
		return st, err
	}
	head, err := readOptional(f.HeadPath(key))
	st.Head = strings.TrimSpace(string(head))
	return st, err
}

// readTrail reads the trail for appending: a damaged trail is appended
// to (its damage stays for verification to find) rather than stopping
// the controller; only an unreadable file is an error.
func (f *FileStore) readTrail(key string) (audit.Trail, error) {
	recs, err := readOptional(f.TrailPath(key))
	if err != nil {
		return audit.Trail{}, err
	}
	head, err := readOptional(f.HeadPath(key))
	if err != nil {
		return audit.Trail{}, err
	}
	t, _ := audit.ParseTrail(recs, strings.TrimSpace(string(head)))
	return t, nil
}

// writeTrail replaces the trail, then the head.
func (f *FileStore) writeTrail(key string, t audit.Trail) error {
	b, err := t.MarshalRecords()
	if err != nil {
		return err
	}
	if err := audit.WriteFile(f.TrailPath(key), b); err != nil {
		return err
	}
	return audit.WriteFile(f.HeadPath(key), []byte(t.Head.String()+"\n"))
}

func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rotation: %w", err)
	}
	return b, nil
}
