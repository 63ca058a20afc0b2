package sidecar

import (
	"strings"
	"testing"
)

// keyshift_ready says on /metrics what /readyz says: 0 while a keyset is
// not loaded (its KMS is away at startup), 1 once it is. The alert on
// sidecars that are not ready (ops/prometheus) reads it.
func TestReadyMetricFollowsReadiness(t *testing.T) {
	e := newEnv(t, withoutWait())
	restoreKMS := e.restartWithoutKMS()
	readyLine := func() string {
		t.Helper()
		code, body := httpGet(t, e.metricsURL()+"/metrics")
		if code != 200 {
			t.Fatalf("/metrics = %d", code)
		}
		for line := range strings.SplitSeq(body, "\n") {
			if strings.HasPrefix(line, "keyshift_ready ") {
				return line
			}
		}
		t.Fatalf("no keyshift_ready series on /metrics:\n%s", body)
		return ""
	}
	if got := readyLine(); got != "keyshift_ready 0" {
		t.Fatalf("not ready: %q, want keyshift_ready 0", got)
	}
	restoreKMS()
	e.waitReady()
	if got := readyLine(); got != "keyshift_ready 1" {
		t.Fatalf("ready: %q, want keyshift_ready 1", got)
	}
}
