// Package local is a KMS kept in a file on disk, for laptops, demos and
// tests: `local:///path/to/kek`. The file holds one or more 256-bit KEK
// versions; it is created with mode 0600 on first use and refused if group
// or others can read it. Wrapping is AES-256-GCM under the primary KEK
// version. It is not for production: the KEK sits next to the workload.
package local

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/keyshift/keyshift/internal/kms"
)

// Scheme is the URI scheme this backend serves.
const Scheme = "local"

var (
	_ kms.Wrapper   = (*KMS)(nil)
	_ kms.KEKStatus = (*KMS)(nil)
)

// KMS wraps keys with KEKs stored in one file.
type KMS struct {
	path string
	mu   sync.Mutex
}

type kekFile struct {
	Primary  uint32       `json:"primary"`
	Versions []kekVersion `json:"versions"`
}

type kekVersion struct {
	Version   uint32    `json:"version"`
	Key       []byte    `json:"key"`
	CreatedAt time.Time `json:"createdAt"`
}

// Open is the kms.OpenFunc for local:///absolute/path URIs.
func Open(_ context.Context, u *url.URL) (kms.Wrapper, error) {
	if u.Host != "" || u.Path == "" || !filepath.IsAbs(u.Path) {
		return nil, fmt.Errorf("%w: %q: write local:///absolute/path/to/kek (three slashes)", kms.ErrBadURI, u.String())
	}
	return New(u.Path), nil
}

// New returns a local KMS backed by the KEK file at path. The file is
// created on the first Wrap if it does not exist.
func New(path string) *KMS { return &KMS{path: path} }

// String names the file, never the key.
func (k *KMS) String() string { return "local://" + k.path }

func (k *KMS) load(create bool) (*kekFile, error) {
	st, err := os.Stat(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		if !create {
			return nil, fmt.Errorf("local kms: %s: KEK file does not exist: %w", k.path, kms.ErrUserInduced)
		}
		return k.create()
	}
	if err != nil {
		return nil, fmt.Errorf("local kms: %s: %v: %w", k.path, err, kms.ErrUnavailable)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("local kms: %s has mode %#o; the KEK file must be readable by its owner only (chmod 600): %w", k.path, st.Mode().Perm(), kms.ErrUserInduced)
	}
	b, err := os.ReadFile(k.path)
	if err != nil {
		return nil, fmt.Errorf("local kms: %s: %v: %w", k.path, err, kms.ErrUnavailable)
	}
	var f kekFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("local kms: %s: KEK file is not valid JSON: %w", k.path, kms.ErrUserInduced)
	}
	if _, err := f.get(f.Primary); err != nil {
		return nil, fmt.Errorf("local kms: %s: primary KEK version %d is missing: %w", k.path, f.Primary, kms.ErrUserInduced)
	}
	return &f, nil
}

func (f *kekFile) get(v uint32) (kekVersion, error) {
	for _, kv := range f.Versions {
		if kv.Version == v && len(kv.Key) == 32 {
			return kv, nil
		}
	}
	return kekVersion{}, fmt.Errorf("local kms: KEK version %d not found: %w", v, kms.ErrUserInduced)
}

func (k *KMS) create() (*kekFile, error) {
	f := &kekFile{}
	f.addVersion()
	if err := os.MkdirAll(filepath.Dir(k.path), 0o700); err != nil {
		return nil, fmt.Errorf("local kms: %w", err)
	}
	if err := k.write(f, os.O_EXCL); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *kekFile) addVersion() {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	v := uint32(1)
	if n := len(f.Versions); n > 0 {
		v = f.Versions[n-1].Version + 1
	}
	f.Versions = append(f.Versions, kekVersion{Version: v, Key: key, CreatedAt: time.Now().UTC()})
	f.Primary = v
}

func (k *KMS) write(f *kekFile, excl int) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("local kms: %w", err)
	}
	tmp := k.path + ".tmp"
	if excl != 0 {
		// First creation: fail if someone else created the file meanwhile.
		fd, err := os.OpenFile(k.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("local kms: create %s: %w", k.path, err)
		}
		if _, err := fd.Write(b); err != nil {
			fd.Close()
			return fmt.Errorf("local kms: %w", err)
		}
		return fd.Close()
	}
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("local kms: %w", err)
	}
	if err := os.Rename(tmp, k.path); err != nil {
		return fmt.Errorf("local kms: %w", err)
	}
	return nil
}

// Wrap encrypts dek under the primary KEK version. The output is
// version (4 bytes, big-endian) || nonce (12) || AES-256-GCM(dek, aad).
func (k *KMS) Wrap(ctx context.Context, dek, aad []byte) (kms.WrappedKey, error) {
	if err := ctx.Err(); err != nil {
		return kms.WrappedKey{}, fmt.Errorf("local kms: %w: %w", kms.ErrUnavailable, err)
	}
	k.mu.Lock()
	f, err := k.load(true)
	k.mu.Unlock()
	if err != nil {
		return kms.WrappedKey{}, err
	}
	kv, err := f.get(f.Primary)
	if err != nil {
		return kms.WrappedKey{}, err
	}
	aead, err := gcm(kv.Key)
	if err != nil {
		return kms.WrappedKey{}, err
	}
	out := make([]byte, 4+12, 4+12+len(dek)+16)
	binary.BigEndian.PutUint32(out, kv.Version)
	if _, err := rand.Read(out[4:]); err != nil {
		return kms.WrappedKey{}, fmt.Errorf("local kms: %w", err)
	}
	out = aead.Seal(out, out[4:16], dek, aad)
	return kms.WrappedKey{Ciphertext: out, KEKVersion: strconv.FormatUint(uint64(kv.Version), 10)}, nil
}

// Unwrap decrypts a key wrapped by Wrap under any KEK version still in the file.
func (k *KMS) Unwrap(ctx context.Context, w kms.WrappedKey, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("local kms: %w: %w", kms.ErrUnavailable, err)
	}
	if len(w.Ciphertext) < 4+12+16 {
		return nil, fmt.Errorf("local kms: wrapped key of %d bytes is too short: %w", len(w.Ciphertext), kms.ErrCorrupt)
	}
	k.mu.Lock()
	f, err := k.load(false)
	k.mu.Unlock()
	if err != nil {
		return nil, err
	}
	kv, err := f.get(binary.BigEndian.Uint32(w.Ciphertext))
	if err != nil {
		return nil, err
	}
	aead, err := gcm(kv.Key)
	if err != nil {
		return nil, err
	}
	dek, err := aead.Open(nil, w.Ciphertext[4:16], w.Ciphertext[16:], aad)
	if err != nil {
		return nil, fmt.Errorf("local kms: wrapped key does not verify under KEK version %d: %w", kv.Version, kms.ErrCorrupt)
	}
	return dek, nil
}

// PrimaryKEKVersion reports the current KEK version.
func (k *KMS) PrimaryKEKVersion(context.Context) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f, err := k.load(false)
	if err != nil {
		return "", err
	}
	return strconv.FormatUint(uint64(f.Primary), 10), nil
}

// Rotate adds a new KEK version and makes it primary; older versions stay
// to unwrap existing keys.
func (k *KMS) Rotate(context.Context) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f, err := k.load(true)
	if err != nil {
		return "", err
	}
	f.addVersion()
	if err := k.write(f, 0); err != nil {
		return "", err
	}
	return strconv.FormatUint(uint64(f.Primary), 10), nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("local kms: %w", err)
	}
	return cipher.NewGCM(block)
}
