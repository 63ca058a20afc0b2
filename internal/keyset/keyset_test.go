package keyset

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func states(ks *Keyset) map[uint32]State {
	m := map[uint32]State{}
	for _, v := range ks.Versions {
		m[v.Version] = v.State
	}
	return m
}

func TestLifecycle(t *testing.T) {
	ks, err := New("payments", "local:///tmp/kek", []byte("w1"), "1", t0)
	if err != nil {
		t.Fatal(err)
	}
	step := func(f func(*Keyset) (*Keyset, error), want map[uint32]State) {
		t.Helper()
		next, err := f(ks)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, states(next)); diff != "" {
			t.Fatalf("states (-want +got):\n%s", diff)
		}
		ks = next
	}
	t1 := t0.Add(time.Hour)
	step(func(k *Keyset) (*Keyset, error) { return k.AddPending([]byte("w2"), "1", t1) },
		map[uint32]State{1: StatePrimary, 2: StatePending})
	step(func(k *Keyset) (*Keyset, error) { return k.Promote(2, t1) },
		map[uint32]State{1: StateDecryptOnly, 2: StatePrimary})
	step(func(k *Keyset) (*Keyset, error) { return k.Retire(1, t1) },
		map[uint32]State{1: StateDisabled, 2: StatePrimary})
	step(func(k *Keyset) (*Keyset, error) { return k.Retire(1, t1) },
		map[uint32]State{1: StateDestroyed, 2: StatePrimary})
	if v, _ := ks.Get(1); v.WrappedKey != nil {
		t.Fatal("destroyed version kept its wrapped key")
	}
	// A destroyed number is never reused.
	step(func(k *Keyset) (*Keyset, error) { return k.AddPending([]byte("w3"), "2", t1) },
		map[uint32]State{1: StateDestroyed, 2: StatePrimary, 3: StatePending})
	if p := ks.Primary(); p.Version != 2 || p.PromotedAt == nil || !p.PromotedAt.Equal(t1) {
		t.Fatalf("primary = %+v", p)
	}
}

func TestTransitionsRefused(t *testing.T) {
	ks, _ := New("payments", "local:///tmp/kek", []byte("w1"), "1", t0)
	ks, _ = ks.AddPending([]byte("w2"), "1", t0)
	destroyed, _ := ks.Retire(2, t0)
	destroyed, _ = destroyed.Retire(2, t0)
	cases := []struct {
		name string
		f    func() (*Keyset, error)
		want error
		msg  string
	}{
		{"retire primary", func() (*Keyset, error) { return ks.Retire(1, t0) }, ErrTransition, "promote another version"},
		{"promote primary", func() (*Keyset, error) { return ks.Promote(1, t0) }, ErrTransition, "only a pending version"},
		{"promote unknown", func() (*Keyset, error) { return ks.Promote(9, t0) }, ErrUnknownVersion, "no v9"},
		{"retire destroyed", func() (*Keyset, error) { return destroyed.Retire(2, t0) }, ErrTransition, "already destroyed"},
		{"promote destroyed", func() (*Keyset, error) { return destroyed.Promote(2, t0) }, ErrTransition, "is destroyed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.f()
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) || got != nil {
				t.Fatalf("got (%v, %v), want %v containing %q", got, err, c.want, c.msg)
			}
		})
	}
	// The original is untouched by any attempted transition.
	if diff := cmp.Diff(map[uint32]State{1: StatePrimary, 2: StatePending}, states(ks)); diff != "" {
		t.Fatalf("original mutated (-want +got):\n%s", diff)
	}
}

// Revoke: pending or decrypt-only → revoked, and Retire moves a revoked
// version on to disabled. Each result is compared whole against the input
// with only that version's state and time changed.
func TestRevoke(t *testing.T) {
	t1 := t0.Add(time.Hour)
	ks, _ := New("payments", "local:///tmp/kek", []byte("w1"), "1", t0)
	ks, _ = ks.AddPending([]byte("w2"), "1", t0)
	ks, _ = ks.Promote(2, t0)
	ks, _ = ks.AddPending([]byte("w3"), "1", t0) // v1 decrypt-only, v2 primary, v3 pending
	revoked, err := ks.Revoke(1, t1)
	if err != nil {
		t.Fatal(err)
	}
	with := func(from *Keyset, n uint32, s State) *Keyset {
		want := from.Clone()
		want.Versions[n-1].State, want.Versions[n-1].StateChangedAt = s, t1
		return want
	}
	cases := []struct {
		name string
		f    func() (*Keyset, error)
		want *Keyset
	}{
		{"decrypt-only to revoked", func() (*Keyset, error) { return ks.Revoke(1, t1) }, with(ks, 1, StateRevoked)},
		{"pending to revoked", func() (*Keyset, error) { return ks.Revoke(3, t1) }, with(ks, 3, StateRevoked)},
		{"revoked to disabled", func() (*Keyset, error) { return revoked.Retire(1, t1) }, with(revoked, 1, StateDisabled)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.f()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff(map[uint32]State{1: StateDecryptOnly, 2: StatePrimary, 3: StatePending}, states(ks)); diff != "" {
		t.Fatalf("original mutated (-want +got):\n%s", diff)
	}
	// The revoked document round-trips: readers parse the new state.
	b, err := revoked.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := Parse(b); err != nil || back.Versions[0].State != StateRevoked {
		t.Fatalf("Parse of a revoked version = %v, %v", back, err)
	}
}

func TestRevokeRefused(t *testing.T) {
	ks, _ := New("payments", "local:///tmp/kek", []byte("w1"), "1", t0)
	ks, _ = ks.AddPending([]byte("w2"), "1", t0)
	ks, _ = ks.Promote(2, t0) // v1 decrypt-only, v2 primary
	revoked, _ := ks.Revoke(1, t0)
	disabled, _ := revoked.Retire(1, t0)
	destroyed, _ := disabled.Retire(1, t0)
	cases := []struct {
		name string
		f    func() (*Keyset, error)
		want error
		msg  string
	}{
		{"primary", func() (*Keyset, error) { return ks.Revoke(2, t0) }, ErrTransition, "payments v2 is the primary; rotate and promote a new primary first, then revoke v2"},
		{"revoked", func() (*Keyset, error) { return revoked.Revoke(1, t0) }, ErrTransition, "payments v1 is already revoked"},
		{"disabled", func() (*Keyset, error) { return disabled.Revoke(1, t0) }, ErrTransition, "payments v1 is disabled"},
		{"destroyed", func() (*Keyset, error) { return destroyed.Revoke(1, t0) }, ErrTransition, "payments v1 is destroyed"},
		{"unknown", func() (*Keyset, error) { return ks.Revoke(9, t0) }, ErrUnknownVersion, "no v9"},
		{"promote revoked", func() (*Keyset, error) { return revoked.Promote(1, t0) }, ErrTransition, "only a pending version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.f()
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) || got != nil {
				t.Fatalf("got (%v, %v), want %v containing %q", got, err, c.want, c.msg)
			}
		})
	}
}

// The ranks order the lifecycle; a revoked version is loaded (Readable)
// but opens nothing (not Decryptable).
func TestStateRanks(t *testing.T) {
	type row struct {
		Rank                  int
		Readable, Decryptable bool
	}
	got := map[State]row{}
	for _, s := range []State{StatePending, StatePrimary, StateDecryptOnly, StateRevoked, StateDisabled, StateDestroyed, "active"} {
		got[s] = row{s.Rank(), s.Readable(), s.Decryptable()}
	}
	want := map[State]row{
		StatePending:     {0, true, true},
		StatePrimary:     {1, true, true},
		StateDecryptOnly: {2, true, true},
		StateRevoked:     {3, true, false},
		StateDisabled:    {4, false, false},
		StateDestroyed:   {5, false, false},
		"active":         {-1, false, false},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

func TestParseRejects(t *testing.T) {
	good := `{"name":"p","kms":"local:///k","versions":[{"version":1,"state":"primary","wrappedKey":"d3c=","createdAt":"2026-01-01T00:00:00Z","stateChangedAt":"2026-01-01T00:00:00Z"}]}`
	if _, err := Parse([]byte(good)); err != nil {
		t.Fatalf("good document refused: %v", err)
	}
	v := func(extra string) string {
		return `{"name":"p","kms":"local:///k","versions":[` + extra + `]}`
	}
	ver := func(n int, state, wrapped string) string {
		return `{"version":` + strconv.Itoa(n) + `,"state":"` + state + `","wrappedKey":"` + wrapped + `","createdAt":"2026-01-01T00:00:00Z","stateChangedAt":"2026-01-01T00:00:00Z"}`
	}
	cases := map[string]struct{ doc, msg string }{
		"not json":       {`{"name":`, "unexpected EOF"},
		"trailing":       {good + `{}`, "trailing data"},
		"unknown field":  {strings.Replace(good, `"kms"`, `"kmz":"x","kms"`, 1), `unknown field "kmz"`},
		"bad name":       {strings.Replace(good, `"p"`, `"P_x"`, 1), "DNS-1123"},
		"empty kms":      {strings.Replace(good, `local:///k`, ``, 1), "kms is empty"},
		"no versions":    {v(``), "no versions"},
		"two primaries":  {v(ver(1, "primary", "d3c=") + "," + ver(2, "primary", "d3c=")), "2 primary versions"},
		"no primary":     {v(ver(1, "pending", "d3c=")), "0 primary versions"},
		"reused version": {v(ver(1, "primary", "d3c=") + "," + ver(1, "pending", "d3c=")), "consecutive"},
		"descending":     {v(ver(2, "primary", "d3c=") + "," + ver(1, "pending", "d3c=")), "consecutive"},
		// A gap lets a forged document jump the numbering: v4294967295
		// made every later document look stale to a sidecar, and the
		// next version after it wrapped to 0.
		"gap":               {v(ver(1, "primary", "d3c=") + "," + ver(3, "pending", "d3c=")), "consecutive"},
		"top of uint32":     {v(ver(1, "primary", "d3c=") + "," + ver(4294967295, "pending", "d3c=")), "stop at"},
		"alone past max":    {v(ver(MaxVersionNumber+1, "primary", "d3c=")), "stop at"},
		"version zero":      {v(ver(0, "primary", "d3c=")), "start at 1"},
		"bad state":         {v(ver(1, "active", "d3c=")), `unknown state "active" (one of pending, primary, decrypt-only, revoked, disabled, destroyed)`},
		"missing key":       {v(ver(1, "primary", "")), "wrappedKey is empty"},
		"destroyed has key": {v(ver(1, "primary", "d3c=") + "," + ver(2, "destroyed", "d3c=")), "must not keep"},
		"bad base64":        {v(ver(1, "primary", "!!")), "illegal base64"},
		"too large":         {good + strings.Repeat(" ", MaxDocumentSize), "exceeds"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			ks, err := Parse([]byte(c.doc))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.msg) || ks != nil {
				t.Fatalf("Parse = (%v, %v), want ErrInvalid containing %q", ks, err, c.msg)
			}
		})
	}
}

func TestFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyset.json")
	ks, _ := New("orders", "local:///k", []byte{1, 2, 3}, "1", t0)
	ks, _ = ks.AddPending([]byte{4, 5, 6}, "1", t0)
	if err := WriteFile(path, ks); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ks, got); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	if err := WriteFile(path, &Keyset{Name: "x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid document written: %v", err)
	}
	if again, _ := ReadFile(path); again == nil {
		t.Fatal("a refused write damaged the file")
	}
}

func TestVersionStringHasNoKey(t *testing.T) {
	v := Version{Version: 3, State: StatePrimary, WrappedKey: []byte("SECRETWRAPPED"), KEKVersion: "7"}
	if s := v.String(); strings.Contains(s, "SECRET") || !strings.Contains(s, "v3") {
		t.Fatalf("String() = %q", s)
	}
}
