package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// RoleLabel on a controller pod says which replica leads; the xDS Service
// selects RoleLabel=RoleLeader, so sidecars reach the one replica that
// publishes keysets and counts their ACKs. A label, not readiness: a
// follower that is never ready would stall Deployment rollouts and, with
// the PodDisruptionBudget, node drains.
const (
	RoleLabel  = "keyshift.io/controller-role"
	RoleLeader = "leader"
)

// LeaderPod puts RoleLabel on this replica's pod while it leads.
type LeaderPod struct {
	Client kubernetes.Interface
	// Namespace and Name are this replica's pod (POD_NAMESPACE, POD_NAME).
	Namespace, Name string
	Log             *slog.Logger
	// Every is how often Hold re-asserts the label (15 s when zero), which
	// also retries after an API error and undoes a stale leader that
	// labelled itself late.
	Every time.Duration
}

// Claim labels this pod the leader, then removes the label from every
// other pod in the namespace that still has it (a crashed or partitioned
// old leader). It labels itself first so the Service is never left
// without an endpoint by its own doing.
func (l *LeaderPod) Claim(ctx context.Context) error {
	if err := l.patch(ctx, l.Name, RoleLeader); err != nil {
		return err
	}
	pods, err := l.Client.CoreV1().Pods(l.Namespace).List(ctx, metav1.ListOptions{LabelSelector: RoleLabel + "=" + RoleLeader})
	if err != nil {
		return fmt.Errorf("kube: list leader-labelled pods: %w", err)
	}
	var errs []error
	for _, p := range pods.Items {
		if p.Name == l.Name {
			continue
		}
		if err := l.patch(ctx, p.Name, ""); err != nil {
			errs = append(errs, err)
			continue
		}
		l.Log.Info("removed the leader label from a former leader", "pod", l.Namespace+"/"+p.Name)
	}
	return errors.Join(errs...)
}

// Release removes the label from this pod.
func (l *LeaderPod) Release(ctx context.Context) error { return l.patch(ctx, l.Name, "") }

// Hold claims the label at once and every Every until ctx ends, then
// releases it (with a context of its own, since ctx is done by then). A
// failed claim is logged and retried: the replica keeps leading, but
// sidecars reach it only once the label is on.
func (l *LeaderPod) Hold(ctx context.Context) {
	every := l.Every
	if every <= 0 {
		every = 15 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := l.Claim(ctx); err != nil && ctx.Err() == nil {
			l.Log.Error("labelling this pod the xDS leader failed; sidecars cannot reach it until it succeeds", "pod", l.Namespace+"/"+l.Name, "err", err)
		}
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := l.Release(rctx); err != nil {
				l.Log.Warn("removing the leader label failed; the next leader removes it", "pod", l.Namespace+"/"+l.Name, "err", err)
			}
			return
		case <-t.C:
		}
	}
}

// patch sets RoleLabel on pod to value, or removes it when value is "".
// A merge patch touches only that label; a pod already gone is no error.
func (l *LeaderPod) patch(ctx context.Context, pod, value string) error {
	var v any // null removes the label
	if value != "" {
		v = value
	}
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{RoleLabel: v}}})
	if err != nil {
		return err
	}
	_, err = l.Client.CoreV1().Pods(l.Namespace).Patch(ctx, pod, types.MergePatchType, b, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) && value == "" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kube: label pod %s/%s %s=%q: %w", l.Namespace, pod, RoleLabel, value, err)
	}
	return nil
}
