package kube

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Watch calls notify whenever a keyset Secret of a managed namespace
// changes, until ctx ends, so a request stored in one (a revocation) is
// acted on at once rather than at the next interval. Namespaces that opt in
// later are picked up within refresh. A watch that cannot be opened (no
// RoleBinding yet) is retried; the periodic pass still covers it.
func (s *SecretStore) Watch(ctx context.Context, refresh time.Duration, notify func()) {
	watched := map[string]bool{}
	for {
		nss := []string{s.Namespace}
		if s.Namespaces != nil {
			var err error
			if nss, err = s.Namespaces(ctx); err != nil {
				nss = nil
			}
		}
		for _, ns := range nss {
			if !watched[ns] {
				watched[ns] = true
				go s.watch(ctx, ns, notify)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(refresh):
		}
	}
}

// watch follows the labelled Secrets of one namespace ("" for all).
func (s *SecretStore) watch(ctx context.Context, ns string, notify func()) {
	for ctx.Err() == nil {
		w, err := s.Client.CoreV1().Secrets(ns).Watch(ctx, metav1.ListOptions{LabelSelector: Label + "=true"})
		if err == nil {
			for range w.ResultChan() {
				notify()
			}
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
