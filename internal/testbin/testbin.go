// Package testbin supports tests that run real server processes (Vault,
// local-kms): it finds the binaries the scripts in scripts/ build into
// ~/.cache/keyshift/bin, and collects their output. A missing binary fails
// the test with the command that builds it: a skipped test would read as a
// pass. Only an explicit opt-out skips.
package testbin

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Binary describes one server binary.
type Binary struct {
	// Name is the file name in ~/.cache/keyshift/bin ("vault").
	Name string
	// What names the server in messages ("Vault server").
	What string
	// BinEnv overrides the path ("KEYSHIFT_VAULT_BIN").
	BinEnv string
	// SkipEnv, set to 1, skips the test instead ("KEYSHIFT_SKIP_VAULT");
	// empty offers no way to skip.
	SkipEnv string
	// Install is how to build it, from the repository root.
	Install string
}

// Find returns the binary's path, or skips (SkipEnv=1) or fails the test.
func (b Binary) Find(t testing.TB) string {
	t.Helper()
	if b.SkipEnv != "" && os.Getenv(b.SkipEnv) == "1" {
		t.Skipf("%s=1: skipping tests against a real %s", b.SkipEnv, b.What)
	}
	bin := os.Getenv(b.BinEnv)
	if bin == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatalf("no home directory to find the %s binary in: %v", b.What, err)
		}
		bin = filepath.Join(home, ".cache", "keyshift", "bin", b.Name)
	}
	if _, err := os.Stat(bin); err != nil {
		skip := ""
		if b.SkipEnv != "" {
			skip = ", or " + b.SkipEnv + "=1 to skip"
		}
		t.Fatalf("%s binary %s not found (%v): run %s from the repository root, or set %s%s",
			b.What, bin, err, b.Install, b.BinEnv, skip)
	}
	return bin
}

// SyncBuffer collects output written by a server process or by concurrent
// goroutines (logs) while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// MetricValue scrapes a Prometheus text endpoint (url ends in /metrics)
// and returns the value of one series, written as it appears there
// (`name{label="v"}`), or 0 when it is absent.
func MetricValue(tb testing.TB, url, series string) float64 {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("%s: value %q: %v", series, v, err)
			}
			return f
		}
	}
	return 0
}
