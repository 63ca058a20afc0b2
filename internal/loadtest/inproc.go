package loadtest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/sidecar"
)

// openInProcess runs the sidecar's own Service inside the load tool and
// calls it directly: the same keyring, envelope, metrics and usage
// records, with no socket, no gRPC and no process boundary. The address
// is the keyset file (the one the sidecar under test serves). sidecar /
// in-process is what the process boundary costs.
func openInProcess(ctx context.Context, p PeerSpec, o Options) (*Target, error) {
	if p.Address == "" {
		return nil, errors.New("--peer in-process=KEYSET_FILE: name the keyset file")
	}
	if o.KMS == nil {
		return nil, errors.New("--peer in-process: no KMS registry")
	}
	doc, err := keyset.ReadFile(p.Address)
	if err != nil {
		return nil, err
	}
	name := doc.Name
	dir, err := os.MkdirTemp("", "ksinproc")
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	srv, err := sidecar.Start(sctx, sidecar.Config{Socket: filepath.Join(dir, "s.sock"), Keysets: map[string]string{name: p.Address},
		KMS: o.KMS, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		cancel()
		os.RemoveAll(dir)
		return nil, err
	}
	stop := func() { cancel(); _ = srv.Wait(); os.RemoveAll(dir) }
	select {
	case <-srv.Ready():
	case <-time.After(30 * time.Second):
		stop()
		return nil, fmt.Errorf("the in-process sidecar did not load %s within 30 s", p.Address)
	case <-ctx.Done():
		stop()
		return nil, ctx.Err()
	}
	svc := srv.Service()
	return &Target{
		Name:     "in-process",
		Describe: "the sidecar's Service (keyring, envelope, metrics, usage) called inside the load tool: no socket, no gRPC",
		Dial:     func(context.Context) (Conn, error) { return &inprocConn{svc: svc, keyset: name}, nil },
		Close:    stop,
	}, nil
}

type inprocConn struct {
	svc    *sidecar.Service
	keyset string
}

func (c *inprocConn) Close() error { return nil }

func firstErr(errs []error, err error) error {
	if err != nil {
		return err
	}
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func (c *inprocConn) Encrypt(ctx context.Context, pts [][]byte) ([][]byte, error) {
	if len(pts) == 1 {
		r, err := c.svc.Encrypt(ctx, c.keyset, pts[0], nil)
		return [][]byte{r.Ciphertext}, err
	}
	items := make([]sidecar.EncryptItem, len(pts))
	for i, p := range pts {
		items[i] = sidecar.EncryptItem{Keyset: c.keyset, Plaintext: p}
	}
	out, errs, err := c.svc.EncryptBatch(ctx, items)
	if err := firstErr(errs, err); err != nil {
		return nil, err
	}
	cts := make([][]byte, len(out))
	for i, r := range out {
		cts[i] = r.Ciphertext
	}
	return cts, nil
}

func cipherList(cts [][]byte) []sidecar.CipherItem {
	items := make([]sidecar.CipherItem, len(cts))
	for i, ct := range cts {
		items[i] = sidecar.CipherItem{Ciphertext: ct}
	}
	return items
}

func (c *inprocConn) Decrypt(ctx context.Context, cts [][]byte) error {
	if len(cts) == 1 {
		_, err := c.svc.Decrypt(ctx, cts[0], nil)
		return err
	}
	_, errs, err := c.svc.DecryptBatch(ctx, cipherList(cts))
	return firstErr(errs, err)
}

func (c *inprocConn) Rewrap(ctx context.Context, cts [][]byte) error {
	if len(cts) == 1 {
		_, err := c.svc.Rewrap(ctx, cts[0], nil)
		return err
	}
	_, errs, err := c.svc.RewrapBatch(ctx, cipherList(cts))
	return firstErr(errs, err)
}

// openCachedDEK is an application that encrypts in its own process with
// one data key it asked the KMS for once and then cached for the whole run
// (what the AWS Encryption SDK's caching materials manager does, with no
// age or message limit): per message one AES-256-GCM seal under that key,
// the wrapped key in the message header and bound as associated data. The
// address is the KMS key's URI. It is the fastest thing an app can do, and
// what it gives up is what keyshift adds: no key in the app, rotation
// without the app, versions and retirement, usage records.
func openCachedDEK(ctx context.Context, p PeerSpec, o Options) (*Target, error) {
	if o.KMS == nil {
		return nil, errors.New("--peer cached-dek: no KMS registry")
	}
	w, err := o.KMS.Open(ctx, p.Address)
	if err != nil {
		return nil, err
	}
	aad := []byte("keyshift-bench cached-dek")
	var dek []byte
	var wrapped kms.WrappedKey
	if g, ok := w.(kms.DataKeyGenerator); ok {
		dek, wrapped, err = g.GenerateDataKey(ctx, aad)
	} else {
		dek = make([]byte, 32)
		_, _ = rand.Read(dek)
		wrapped, err = w.Wrap(ctx, dek, aad)
	}
	if err != nil {
		return nil, fmt.Errorf("data key from %s: %w", p.Address, err)
	}
	aead, err := newGCM(dek)
	if err != nil {
		return nil, err
	}
	cache := &dekCache{w: w, aad: aad, keys: map[string]cipher.AEAD{string(wrapped.Ciphertext): aead}}
	header := binary.BigEndian.AppendUint16(nil, uint16(len(wrapped.Ciphertext)))
	header = append(header, wrapped.Ciphertext...)
	return &Target{
		Name:     "cached-dek",
		Describe: "an app with one data key from the KMS cached in its memory (AWS Encryption SDK caching), AES-256-GCM in process",
		Dial: func(context.Context) (Conn, error) {
			return &dekConn{cache: cache, aead: aead, header: header, kekVersion: wrapped.KEKVersion}, nil
		},
	}, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// dekCache maps a wrapped data key to its AEAD, asking the KMS on a miss.
type dekCache struct {
	w    kms.Wrapper
	aad  []byte
	mu   sync.RWMutex
	keys map[string]cipher.AEAD
}

func (d *dekCache) get(ctx context.Context, wrapped []byte, kekVersion string) (cipher.AEAD, error) {
	d.mu.RLock()
	a := d.keys[string(wrapped)]
	d.mu.RUnlock()
	if a != nil {
		return a, nil
	}
	dek, err := d.w.Unwrap(ctx, kms.WrappedKey{Ciphertext: wrapped, KEKVersion: kekVersion}, d.aad)
	if err != nil {
		return nil, err
	}
	if a, err = newGCM(dek); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.keys[string(wrapped)] = a
	d.mu.Unlock()
	return a, nil
}

type dekConn struct {
	cache      *dekCache
	aead       cipher.AEAD
	header     []byte
	kekVersion string
}

func (c *dekConn) Close() error { return nil }

func (c *dekConn) Encrypt(_ context.Context, pts [][]byte) ([][]byte, error) {
	out := make([][]byte, len(pts))
	for i, pt := range pts {
		ns := c.aead.NonceSize()
		msg := make([]byte, len(c.header)+ns, len(c.header)+ns+len(pt)+c.aead.Overhead())
		copy(msg, c.header)
		if _, err := rand.Read(msg[len(c.header):]); err != nil {
			return nil, err
		}
		out[i] = c.aead.Seal(msg, msg[len(c.header):], pt, c.header)
	}
	return out, nil
}

// ErrCachedDEKMessage is a message the cached-dek app cannot parse or open.
var ErrCachedDEKMessage = errors.New("cached-dek: message does not open")

func (c *dekConn) Decrypt(ctx context.Context, cts [][]byte) error {
	for _, m := range cts {
		if len(m) < 2 {
			return ErrCachedDEKMessage
		}
		n := int(binary.BigEndian.Uint16(m))
		ns := c.aead.NonceSize()
		if len(m) < 2+n+ns+c.aead.Overhead() {
			return ErrCachedDEKMessage
		}
		a, err := c.cache.get(ctx, m[2:2+n], c.kekVersion)
		if err != nil {
			return err
		}
		h := 2 + n
		if _, err := a.Open(nil, m[h:h+ns], m[h+ns:], m[:h]); err != nil {
			return ErrCachedDEKMessage
		}
	}
	return nil
}

func (c *dekConn) Rewrap(context.Context, [][]byte) error { return ErrUnsupported }
