package kube

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keyshift/keyshift/internal/keyusage"
)

// HoldersAnnotation holds, on a keyset Secret, who encrypted under each
// version (keyusage.Holders as JSON): after a version is revoked, the
// callers whose data must be rewrapped. An annotation, so pods that mount
// the Secret see no change when it is updated.
const HoldersAnnotation = "keyshift.io/holders"

var _ keyusage.HolderStore = (*SecretStore)(nil)

// UpdateHolders changes the holders annotation of the Secret that holds
// keyset name in namespace, at the resourceVersion it read (retried on a
// conflict).
func (s *SecretStore) UpdateHolders(ctx context.Context, namespace, name string, change func(keyusage.Holders) bool) error {
	s.mu.Lock()
	key, ok := s.owners[namespace+"/"+name]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("kube: no keyset Secret holds %s/%s", namespace, name)
	}
	ns, secret, err := splitKey(key)
	if err != nil {
		return err
	}
	for range 3 {
		sec, err := s.Client.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("kube: get Secret %s: %w", key, err)
		}
		hs, err := HoldersOf(sec)
		if err != nil {
			if s.Log != nil {
				s.Log.Warn("holders annotation unreadable; starting it again", "secret", key, "err", err)
			}
			hs = keyusage.Holders{}
		}
		if !change(hs) {
			return nil
		}
		b, err := json.Marshal(hs)
		if err != nil {
			return err
		}
		if sec.Annotations == nil {
			sec.Annotations = map[string]string{}
		}
		sec.Annotations[HoldersAnnotation] = string(b)
		_, err = s.Client.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			if err != nil {
				return fmt.Errorf("kube: update Secret %s: %w", key, err)
			}
			return nil
		}
	}
	return fmt.Errorf("kube: Secret %s kept changing; holders not stored", key)
}

// HoldersOf reads the holders annotation of a keyset Secret.
func HoldersOf(sec *corev1.Secret) (keyusage.Holders, error) {
	hs := keyusage.Holders{}
	v, ok := sec.Annotations[HoldersAnnotation]
	if !ok {
		return hs, nil
	}
	if err := json.Unmarshal([]byte(v), &hs); err != nil {
		return keyusage.Holders{}, fmt.Errorf("annotation %s: %w", HoldersAnnotation, err)
	}
	return hs, nil
}

// Holders reads the holders of the keyset Secret under key.
func (s *SecretStore) Holders(ctx context.Context, key string) (keyusage.Holders, error) {
	ns, name, err := splitKey(key)
	if err != nil {
		return nil, err
	}
	sec, err := s.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("kube: get Secret %s: %w", key, err)
	}
	return HoldersOf(sec)
}
