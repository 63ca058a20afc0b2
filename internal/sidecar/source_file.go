package sidecar

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
)

// fileSource follows one keyset file. It watches the file's directory, not
// the file: Kubernetes updates a Secret volume by swapping the "..data"
// symlink, and editors and `keyshift keyset` replace files by rename; both
// show up as events on the directory. Every event (debounced) and every
// resync tick rereads the file; an unchanged document costs one hash.
type fileSource struct {
	name    string
	path    string
	to      reporter
	log     *slog.Logger
	metrics *Metrics
	resync  time.Duration
	// poke asks for a reread now (the KMS poller saw the KEK change).
	poke chan struct{}

	lastHash [32]byte
	loaded   bool
}

const (
	debounce   = 50 * time.Millisecond
	minBackoff = 250 * time.Millisecond
	maxBackoff = 30 * time.Second
)

func (f *fileSource) run(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		f.log.Error("cannot watch keyset file; falling back to resync polling", "keyset", f.name, "err", err)
	} else {
		defer w.Close()
		if err := w.Add(filepath.Dir(f.path)); err != nil {
			f.log.Error("cannot watch keyset directory; falling back to resync polling", "keyset", f.name, "dir", filepath.Dir(f.path), "err", err)
		}
	}
	var events <-chan fsnotify.Event
	var werrs <-chan error
	if w != nil {
		events, werrs = w.Events, w.Errors
	}
	timer := time.NewTimer(0) // first load now
	defer timer.Stop()
	resync := time.NewTicker(f.resync)
	defer resync.Stop()
	backoff := minBackoff
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			f.log.Debug("keyset directory event", "keyset", f.name, "file", filepath.Base(ev.Name), "op", ev.Op.String())
			resetTimer(timer, debounce)
		case err := <-werrs:
			f.log.Warn("file watch error", "keyset", f.name, "err", err)
		case <-resync.C:
			resetTimer(timer, 0)
		case <-f.poke:
			resetTimer(timer, 0)
		case <-timer.C:
			err := f.reload(ctx)
			if err == nil {
				backoff = minBackoff
				continue
			}
			f.to.failed(f.name, err)
			if !f.loaded || kms.Retryable(err) {
				// Not ready yet, or the KMS is briefly away: try again
				// without waiting for the file to change.
				resetTimer(timer, backoff)
				backoff = min(backoff*2, maxBackoff)
			}
		}
	}
}

// reread asks for a reread now, without waiting for a file event.
func (f *fileSource) reread() {
	select {
	case f.poke <- struct{}{}:
	default:
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

func (f *fileSource) reload(ctx context.Context) error {
	metrics := f.metrics
	source := "file"
	data, err := os.ReadFile(f.path)
	if err != nil {
		metrics.reload(f.name, source, "read_error")
		return fmt.Errorf("read %s: %w", f.path, err)
	}
	sum := sha256.Sum256(data)
	if f.loaded && bytes.Equal(sum[:], f.lastHash[:]) {
		metrics.reload(f.name, source, "unchanged")
		return nil
	}
	doc, err := keyset.Parse(data)
	if err != nil {
		metrics.reload(f.name, source, "invalid")
		return fmt.Errorf("%s: %w", f.path, err)
	}
	if doc.Name != f.name {
		metrics.reload(f.name, source, "invalid")
		return fmt.Errorf("%w: %s holds keyset %q, configured as %q", ErrKeysetRejected, f.path, doc.Name, f.name)
	}
	start := time.Now()
	changed, err := f.to.apply(ctx, doc, "file:"+f.path)
	if err != nil {
		metrics.reload(f.name, source, reloadReason(err))
		return err
	}
	if changed {
		metrics.reload(f.name, source, "ok")
	} else {
		metrics.reload(f.name, source, "stale")
	}
	f.lastHash, f.loaded = sum, true
	f.log.Debug("keyset file applied", "keyset", f.name, "duration", time.Since(start))
	return nil
}
