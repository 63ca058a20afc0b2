package clusterstatus

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/rotation"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const day = 24 * time.Hour

// doc builds a keyset document from (version, state, since) triples: the
// state's StateChangedAt (and PromotedAt for the primary) is since.
func doc(policy *keyset.Policy, vs ...keyset.Version) *keyset.Keyset {
	return &keyset.Keyset{Name: "payments", KMS: "local:///kek", Policy: policy, Versions: vs}
}

func ver(n uint32, s keyset.State, since time.Time) keyset.Version {
	v := keyset.Version{Version: n, State: s, CreatedAt: since, StateChangedAt: since}
	if s == keyset.StatePrimary {
		v.PromotedAt = &since
	}
	return v
}

func at(t time.Time) *time.Time { return &t }

func TestNext(t *testing.T) {
	full := &keyset.Policy{RotationPeriod: keyset.Duration(30 * day), Retention: keyset.Duration(7 * day)}
	cases := []struct {
		name string
		ks   *keyset.Keyset
		want Step
	}{
		{"no policy: nothing scheduled",
			doc(nil, ver(1, keyset.StatePrimary, t0)),
			Step{Text: "none (manual rotation only)"}},
		{"rotation period: rotate when the primary is that old",
			doc(full, ver(1, keyset.StatePrimary, t0.Add(-day))),
			Step{Action: "rotate", At: at(t0.Add(29 * day)), Text: "rotate at 2026-03-30T12:00:00Z"}},
		{"primary older than the period: due",
			doc(full, ver(1, keyset.StatePrimary, t0.Add(-31*day))),
			Step{Action: "rotate", At: at(t0.Add(-day)), Due: true, Text: "rotate at 2026-02-28T12:00:00Z (due)"}},
		{"a pending version waits for its readers, whatever else is due",
			doc(full, ver(1, keyset.StateDecryptOnly, t0.Add(-60*day)), ver(2, keyset.StatePrimary, t0.Add(-40*day)), ver(3, keyset.StatePending, t0)),
			Step{Action: "promote", Version: 3, Text: "promote v3 when all ACK"}},
		{"retire before rotate when retention ends first",
			doc(full, ver(1, keyset.StateDecryptOnly, t0.Add(-2*day)), ver(2, keyset.StatePrimary, t0.Add(-2*day))),
			Step{Action: "retire", Version: 1, At: at(t0.Add(5 * day)), Text: "retire v1 at 2026-03-06T12:00:00Z"}},
		{"rotate before retire when the period ends first",
			doc(full, ver(1, keyset.StateDecryptOnly, t0.Add(-day)), ver(2, keyset.StatePrimary, t0.Add(-29*day))),
			Step{Action: "rotate", At: at(t0.Add(day)), Text: "rotate at 2026-03-02T12:00:00Z"}},
		{"both due: retire first, as the engine does",
			doc(full, ver(1, keyset.StateDecryptOnly, t0.Add(-8*day)), ver(2, keyset.StatePrimary, t0.Add(-40*day))),
			Step{Action: "retire", Version: 1, At: at(t0.Add(-day)), Due: true, Text: "retire v1 at 2026-02-28T12:00:00Z (due)"}},
		{"the earliest of several decrypt-only versions",
			doc(&keyset.Policy{Retention: keyset.Duration(7 * day)}, ver(1, keyset.StateDecryptOnly, t0.Add(-3*day)), ver(2, keyset.StateDecryptOnly, t0.Add(-6*day)), ver(3, keyset.StatePrimary, t0.Add(-6*day))),
			Step{Action: "retire", Version: 2, At: at(t0.Add(day)), Text: "retire v2 at 2026-03-02T12:00:00Z"}},
		{"disabled versions are not retired again",
			doc(&keyset.Policy{Retention: keyset.Duration(7 * day)}, ver(1, keyset.StateDisabled, t0.Add(-30*day)), ver(2, keyset.StatePrimary, t0.Add(-30*day))),
			Step{Text: "none (manual rotation only)"}},
		{"a requested revocation comes first",
			func() *keyset.Keyset {
				ks := doc(full, ver(1, keyset.StatePrimary, t0.Add(-day)), ver(2, keyset.StatePending, t0))
				ks.Revocation = &keyset.Revocation{Version: 1, RequestedAt: t0.Add(-time.Minute)}
				return ks
			}(),
			Step{Action: "revoke", Version: 1, At: at(t0.Add(-time.Minute)), Due: true, Text: "revoke v1 (requested at 2026-03-01T11:59:00Z)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if diff := cmp.Diff(c.want, Next(c.ks, t0)); diff != "" {
				t.Fatalf("Next (-want +got):\n%s", diff)
			}
		})
	}
}

// The step Next names is the one the real engine takes: nothing just
// before Next's time, that step at it, for each step of a lifecycle.
func TestNextAgreesWithTheEngine(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek.json")
	store := &rotation.FileStore{Dir: filepath.Join(dir, "keysets")}
	if err := os.Mkdir(store.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	now := t0
	ks, err := rotation.Create(ctx, local.New(kek), "payments", "local://"+kek, now)
	if err != nil {
		t.Fatal(err)
	}
	ks.Policy = &keyset.Policy{RotationPeriod: keyset.Duration(30 * day), Retention: keyset.Duration(7 * day)}
	if err := keyset.WriteFile(filepath.Join(store.Dir, "payments.json"), ks); err != nil {
		t.Fatal(err)
	}
	// No distributor: readers mount the file, so a pending version is
	// promoted at the engine's next pass.
	eng := &rotation.Engine{Store: store, KMS: kms.Registry{local.Scheme: local.Open}, Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }}
	engineAction := map[string]string{"rotate": "add-pending", "retire": "retire", "promote": "promote"}
	var taken []string
	for range 6 {
		cur, _, err := store.Get(ctx, "payments")
		if err != nil {
			t.Fatal(err)
		}
		next := Next(cur, now)
		if next.At != nil {
			now = next.At.Add(-time.Second)
			if out, err := eng.Reconcile(ctx, "payments"); err != nil || out.Action != "" {
				t.Fatalf("a second before %q: the engine did %+v, %v", next.Text, out, err)
			}
			now = *next.At
		}
		out, err := eng.Reconcile(ctx, "payments")
		if err != nil {
			t.Fatal(err)
		}
		if want := engineAction[next.Action]; out.Action != want || (next.Version != 0 && out.Versions[0] != next.Version) {
			t.Fatalf("Next said %q; the engine did %+v", next.Text, out)
		}
		taken = append(taken, next.Action)
	}
	if diff := cmp.Diff([]string{"rotate", "promote", "retire", "rotate", "promote", "retire"}, taken); diff != "" {
		t.Fatalf("steps (-want +got):\n%s", diff)
	}
}
