package controller

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/rotation/kube"
	"github.com/keyshift/keyshift/internal/xds"
)

// leaderPod is this replica's pod, to label while it leads; nil when
// PodName or PodNamespace is unset (a controller run outside the cluster).
func leaderPod(cfg Config, log *slog.Logger) *kube.LeaderPod {
	if cfg.PodName == "" || cfg.PodNamespace == "" {
		log.Warn("POD_NAME or POD_NAMESPACE unset: not labelling this pod " + kube.RoleLabel + "=" + kube.RoleLeader + ", so the xDS Service will not route sidecars here")
		return nil
	}
	return &kube.LeaderPod{Client: cfg.Kube, Namespace: cfg.PodNamespace, Name: cfg.PodName, Log: log}
}

// leadTerm is one replica's time as the acting controller. The order is
// the point: publish every keyset, then accept xDS streams (no subscriber
// is ever served a snapshot without its keyset), then take the leader
// label (the Service sends sidecars here only once it serves). On the way
// out the label goes first, then the streams are closed, so sidecars
// reconnect to the next leader.
type leadTerm struct {
	eng      *rotation.Engine
	xds      *xds.Server     // nil without xDS
	pod      *kube.LeaderPod // nil outside a cluster
	interval time.Duration
	log      *slog.Logger
	// acting, when set, is true while the engine runs in this term
	// (GET /v1/status).
	acting *atomic.Bool
}

// run leads until ctx ends.
func (t leadTerm) run(ctx context.Context) {
	var wake func() <-chan struct{}
	if t.xds != nil {
		if !t.publishAll(ctx) {
			return
		}
		t.xds.SetActive(true)
		defer t.xds.SetActive(false)
		wake = t.xds.Changed
	}
	var wg sync.WaitGroup
	if t.pod != nil {
		wg.Go(func() { t.pod.Hold(ctx) })
	}
	if t.acting != nil {
		t.acting.Store(true)
		defer t.acting.Store(false)
	}
	t.eng.Run(ctx, t.interval, wake)
	wg.Wait()
}

// publishAll retries Engine.PublishAll until it lists the store, and
// reports false if ctx ended first.
func (t leadTerm) publishAll(ctx context.Context) bool {
	for {
		err := t.eng.PublishAll(ctx)
		if err == nil {
			return true
		}
		t.log.Warn("loading keysets before serving xDS failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Second):
		}
	}
}
