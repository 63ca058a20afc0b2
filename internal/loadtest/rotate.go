package loadtest

import (
	"context"
	"fmt"
	"time"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/rotation"
	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// RotationTimes are how long one two-phase rotation took to reach the sidecar.
type RotationTimes struct {
	Version       uint32
	PendingLoaded time.Duration // file written with a pending version -> sidecar holds it
	PrimaryLoaded time.Duration // file written with it promoted -> sidecar encrypts with it
}

// FileRotation rotates the keyset file at path the two-phase way, as an
// operator would with `keyshift keyset rotate` then `promote`: add a
// pending version, wait until the sidecar behind api has loaded it, promote
// it, wait until the sidecar encrypts with it.
func FileRotation(path string, reg kms.Registry, api v1.CryptoClient) func(ctx context.Context) (RotationTimes, error) {
	return func(ctx context.Context) (RotationTimes, error) {
		ks, err := keyset.ReadFile(path)
		if err != nil {
			return RotationTimes{}, err
		}
		w, err := reg.Open(ctx, ks.KMS)
		if err != nil {
			return RotationTimes{}, err
		}
		next, err := rotation.AddVersion(ctx, w, ks, time.Now())
		if err != nil {
			return RotationTimes{}, err
		}
		v := next.Latest()
		rt := RotationTimes{Version: v}
		t := time.Now()
		if err := keyset.WriteFile(path, next); err != nil {
			return rt, err
		}
		if err := waitStatus(ctx, api, ks.Name, func(primary uint32, states map[uint32]string) bool { return states[v] == "pending" }); err != nil {
			return rt, err
		}
		rt.PendingLoaded = time.Since(t)
		promoted, err := next.Promote(v, time.Now())
		if err != nil {
			return rt, err
		}
		t = time.Now()
		if err := keyset.WriteFile(path, promoted); err != nil {
			return rt, err
		}
		if err := waitStatus(ctx, api, ks.Name, func(primary uint32, _ map[uint32]string) bool { return primary == v }); err != nil {
			return rt, err
		}
		rt.PrimaryLoaded = time.Since(t)
		return rt, nil
	}
}

func waitStatus(ctx context.Context, api v1.CryptoClient, name string, cond func(primary uint32, states map[uint32]string) bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := api.Status(ctx, &v1.StatusRequest{})
		if err == nil {
			for _, ks := range st.GetKeysets() {
				if ks.GetName() != name {
					continue
				}
				states := map[uint32]string{}
				for _, v := range ks.GetVersions() {
					states[v.GetVersion()] = v.GetState()
				}
				if cond(ks.GetPrimary(), states) {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return fmt.Errorf("loadtest: the sidecar did not pick up the rotation of %s within 10s", name)
}
