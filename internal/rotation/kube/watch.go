package kube

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// Watch calls notify whenever a keyset Secret of a managed namespace
// changes, until ctx ends, so a request stored in one (a revocation) is
// acted on at once rather than at the next interval. Namespaces that opt in
// later are picked up within refresh, and those that opt out are no
// longer watched. A watch that cannot be opened (no RoleBinding yet) is
// retried; the periodic pass still covers it.
func (s *SecretStore) Watch(ctx context.Context, refresh time.Duration, notify func()) {
	watched := map[string]context.CancelFunc{}
	for {
		nss := []string{s.Namespace}
		if s.Namespaces != nil {
			var err error
			if nss, err = s.Namespaces(ctx); err != nil {
				nss = nil // keep the watches as they are until it lists again
				for ns := range watched {
					nss = append(nss, ns)
				}
			}
		}
		keep := map[string]bool{}
		for _, ns := range nss {
			keep[ns] = true
			if watched[ns] == nil {
				wctx, cancel := context.WithCancel(ctx)
				watched[ns] = cancel
				go s.watchNamespace(wctx, ns, notify)
			}
		}
		for ns, cancel := range watched {
			if !keep[ns] {
				cancel()
				delete(watched, ns)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(refresh):
		}
	}
}

// watchNamespace follows the labelled Secrets of one namespace ("" for all).
func (s *SecretStore) watchNamespace(ctx context.Context, ns string, notify func()) {
	for ctx.Err() == nil {
		w, err := s.Client.CoreV1().Secrets(ns).Watch(ctx, metav1.ListOptions{LabelSelector: Label + "=true"})
		if err == nil {
			follow(ctx, w.ResultChan(), notify)
			w.Stop()
		} else if s.Log != nil {
			s.Log.Debug("watching keyset Secrets failed; retrying", "namespace", ns, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// follow calls notify for each event until the watch ends or ctx does.
func follow(ctx context.Context, events <-chan watch.Event, notify func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				return
			}
			notify()
		}
	}
}
