package annotation

import (
	"strings"
	"testing"
)

func TestKnown(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range Known() {
		if !strings.HasPrefix(k, Prefix) {
			t.Errorf("%s does not start with %s", k, Prefix)
		}
		if seen[k] {
			t.Errorf("%s listed twice", k)
		}
		seen[k] = true
	}
	if got := len(seen); got != 15 {
		t.Errorf("Known has %d annotations, want 15 (update this test with the list)", got)
	}
	a, b := Known(), Known()
	a[0] = "mutated"
	if b[0] != Inject {
		t.Error("Known returns a shared slice")
	}
}
