package sidecarcmd

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// harden keeps the sidecar's memory, which holds every unwrapped data key
// of its keysets, out of core files and away from ptrace and /proc/PID/mem
// of other processes of the same user: no core dumps (RLIMIT_CORE 0) and
// not dumpable (PR_SET_DUMPABLE 0, which also makes /proc/PID owned by
// root). It fails the start rather than run without it.
func harden() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("sidecar: set core size 0: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("sidecar: set non-dumpable: %w", err)
	}
	return nil
}
