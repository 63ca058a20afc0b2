package loadtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sidecarBinary builds cmd/keyshift-sidecar into the test's directory.
func sidecarBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "keyshift-sidecar")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/keyshift/keyshift/cmd/keyshift-sidecar").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/keyshift-sidecar: %v\n%s", err, out)
	}
	return bin
}

// sidecarProcess runs the built sidecar as a process of its own, with env
// added to this process's, on a fresh keyset; it returns the socket and
// the process.
func sidecarProcess(t *testing.T, env ...string) (string, *os.Process) {
	t.Helper()
	bin := sidecarBinary(t)
	sock, ksPath, _ := testKeyset(t)
	c := exec.Command(bin, "--socket", sock, "--keyset", "bench="+ksPath, "--metrics-addr", "", "--log-level", "warn")
	c.Env = append(os.Environ(), env...)
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	if err := waitServing(sock, 10*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	return sock, c.Process
}

// The floor runs the sidecar's own binary under the sidecar's Go runtime
// variables: against a real keyshift-sidecar process the run succeeds
// although the fallback command cannot serve, and the report says so.
func TestFloorRunsTheSidecarsBinary(t *testing.T) {
	sock, p := sidecarProcess(t, "GOGC=321", "GOMAXPROCS=1")
	t.Setenv("GOGC", "50")
	cmd, env, err := floorCommand(int32(p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/proc/" + strconv.Itoa(p.Pid) + "/exe", "bench-floor"}; !slices.Equal(cmd, want) {
		t.Fatalf("floor command %v, want %v", cmd, want)
	}
	for _, want := range []string{"GOGC=321", "GOMAXPROCS=1"} {
		if n := countPrefix(env, want); n != 1 {
			t.Fatalf("%s appears %d times in the floor's environment", want, n)
		}
	}
	if countPrefix(env, "GOGC=") != 1 || countPrefix(env, "PATH=") != 1 {
		t.Fatalf("the floor's environment keeps this process's GOGC or loses its PATH: %v", env)
	}

	rep, err := Run(context.Background(), Options{
		Socket: sock, Clients: 2, Count: 200, Mix: Mix{Encrypt: 1, Decrypt: 1},
		Floor: true, FloorCommand: []string{"false"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if f := rep.Floor; f == nil || f.Calls != 200 || len(f.Errors) != 0 || !strings.Contains(f.Describe, "running the sidecar's binary") {
		t.Fatalf("floor report %+v", f)
	}
}

// Where the sidecar's binary cannot serve the floor, the load tool says
// why and runs its own: an in-process sidecar, a binary that is not Go or
// not keyshift's (read, never run), a command that exits before serving.
func TestFloorFallsBack(t *testing.T) {
	if _, _, err := floorCommand(int32(os.Getpid())); err == nil || !strings.Contains(err.Error(), "not a process of its own") {
		t.Fatalf("in-process sidecar: %v", err)
	}
	if err := servesFloor("/bin/sh"); err == nil || !strings.Contains(err.Error(), "read its binary") {
		t.Fatalf("a binary that is not Go: %v", err)
	}
	if err := servesFloor(os.Args[0]); err == nil || !strings.Contains(err.Error(), "loadtest.test, not keyshift's") {
		t.Fatalf("a Go binary that is not keyshift's: %v", err)
	}
	bin := sidecarBinary(t)
	if err := servesFloor(bin); err != nil {
		t.Fatalf("keyshift-sidecar: %v", err)
	}
	path := filepath.Join(t.TempDir(), "f.sock")
	if _, err := spawnFloor(context.Background(), []string{"sh", "-c", "exit 2", "sh"}, nil, path); err == nil || !strings.Contains(err.Error(), "exited before serving the floor") {
		t.Fatalf("a command that exits: %v", err)
	}

	sock, _, _, _ := testSidecar(t)
	rep, err := Run(context.Background(), Options{
		Socket: sock, Clients: 2, Count: 100, Mix: Mix{Encrypt: 1},
		Floor: true, FloorCommand: []string{bin, "bench-floor"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if f := rep.Floor; f == nil || f.Calls != 100 || !strings.Contains(f.Describe, "not the sidecar's binary (the sidecar is not a process of its own)") {
		t.Fatalf("floor report %+v", f)
	}
}

func countPrefix(env []string, prefix string) int {
	n := 0
	for _, kv := range env {
		if strings.HasPrefix(kv, prefix) {
			n++
		}
	}
	return n
}
