package loadtest

import (
	"debug/buildinfo"
	"fmt"
	"os"
	"slices"
	"strings"
)

// floorMains are the main packages whose binaries serve `bench-floor`:
// the sidecar alone and the keyshift command that includes it.
var floorMains = []string{
	"github.com/keyshift/keyshift/cmd/keyshift-sidecar",
	"github.com/keyshift/keyshift/cmd/keyshift",
}

// runtimeEnv are the variables that set the Go runtime a process runs
// under: the floor takes the sidecar's, so the collector paces both alike.
var runtimeEnv = []string{"GOGC", "GOMEMLIMIT", "GOMAXPROCS", "GODEBUG", "AUTOMEMLIMIT"}

// floorCommand is how to start the floor like for like with the sidecar
// that serves pid: the sidecar's own binary (/proc/PID/exe, which is the
// binary even when its file was replaced or lives in another mount
// namespace) with `bench-floor`, under the sidecar's Go runtime variables
// and this process's others. The same binary matters: its package state
// sets the live heap, and so how often the collector runs; the keyshift
// command's is larger than the lean sidecar's, and a floor run from it
// collects a third less often under the same load. A binary that is not
// keyshift's is never run: its build information is read first. The
// error says why the sidecar's binary cannot be used (another user's
// non-dumpable process, an in-process target, not a keyshift binary).
func floorCommand(pid int32) (cmd, env []string, err error) {
	if pid <= 0 || int(pid) == os.Getpid() {
		return nil, nil, fmt.Errorf("the sidecar is not a process of its own")
	}
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	if err := servesFloor(exe); err != nil {
		return nil, nil, err
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil, nil, fmt.Errorf("read its environment: %w", err)
	}
	return []string{exe, "bench-floor"}, mergeRuntimeEnv(os.Environ(), strings.Split(string(environ), "\x00")), nil
}

// servesFloor reads the build information of the binary at path, without
// running it, and says whether it is one of keyshift's.
func servesFloor(path string) error {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read its binary: %w", err)
	}
	if !slices.Contains(floorMains, info.Path) {
		return fmt.Errorf("its binary is %s, not keyshift's", info.Path)
	}
	return nil
}

// mergeRuntimeEnv is own without the Go runtime variables, plus theirs.
func mergeRuntimeEnv(own, theirs []string) []string {
	isRuntime := func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return slices.Contains(runtimeEnv, k)
	}
	var env []string
	for _, kv := range own {
		if !isRuntime(kv) {
			env = append(env, kv)
		}
	}
	for _, kv := range theirs {
		if isRuntime(kv) {
			env = append(env, kv)
		}
	}
	return env
}
