package keyset

import (
	"strings"
	"testing"
	"time"
)

// The successor check lets a version move on to revoked (from pending or
// decrypt-only) and from there to disabled, and never back.
func TestSuccessorRevoked(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	must := func(ks *Keyset, err error) *Keyset {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	base := must(New("payments", "local:///k", []byte("w1"), "1", now))
	base = must(base.AddPending([]byte("w2"), "1", now))
	base = must(base.Promote(2, now))
	base = must(base.AddPending([]byte("w3"), "1", now)) // v1 decrypt-only, v2 primary, v3 pending
	revoked1 := must(base.Revoke(1, now))
	revoked3 := must(base.Revoke(3, now))
	cases := []struct {
		name       string
		prev, next *Keyset
		err        string
	}{
		{"decrypt-only to revoked", base, revoked1, ""},
		{"pending to revoked", base, revoked3, ""},
		{"revoked to disabled", revoked1, must(revoked1.Retire(1, now)), ""},
		{"revoked back to decrypt-only", revoked1, base, "payments v1 moved back from revoked to decrypt-only"},
		{"revoked back to pending", revoked3, base, "payments v3 moved back from revoked to pending"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := CheckSuccessor(c.prev, c.next)
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("err = %v, want an error containing %q", err, c.err)
			}
		})
	}
}
