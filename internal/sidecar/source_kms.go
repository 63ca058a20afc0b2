package sidecar

import (
	"context"
	"log/slog"
	"time"

	"github.com/keyshift/keyshift/internal/kms"
)

// kmsPoller is the fallback rotation notice: it asks the KMS for the KEK's
// primary version every interval and, when it changes, makes the keyset's
// file be reread at once, so a sidecar whose file events were missed
// still picks up the rewrapped document promptly. It makes no KMS call on
// the request path.
type kmsPoller struct {
	name     string
	from     reporter    // the loaded keyset names its KMS
	file     *fileSource // reread when the KEK changes
	loader   *loader
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger
	metrics  *Metrics
}

func (p *kmsPoller) run(ctx context.Context) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		doc := p.from.current(p.name)
		if doc == nil {
			continue
		}
		w, err := p.loader.wrapper(ctx, doc.KMS)
		if err != nil {
			continue
		}
		st, ok := w.(kms.KEKStatus)
		if !ok {
			return // this backend cannot tell; file and xDS remain
		}
		cctx, cancel := context.WithTimeout(ctx, p.timeout)
		v, err := st.PrimaryKEKVersion(cctx)
		cancel()
		if err != nil {
			p.metrics.kmsPoll(p.name, kms.Reason(err))
			p.log.Warn("KMS poll failed; serving the current keyring", "keyset", p.name, "reason", kms.Reason(err), "err", err)
			continue
		}
		p.metrics.kmsPoll(p.name, "ok")
		if last != "" && v != last {
			p.log.Info("KEK version changed in the KMS; rereading the keyset", "keyset", p.name, "from", last, "to", v)
			p.file.reread()
		}
		last = v
	}
}
