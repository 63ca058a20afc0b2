package sidecar

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/debug"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// GCPercent is the sidecar's GOGC when the environment sets none. The
// sidecar's live heap is a few MiB (keys, metrics, gRPC buffers), so at
// Go's default of 100 it collects every few MiB allocated, about every
// 400 calls of 1 KiB under load, and each cycle's fixed cost is a large
// share of a small heap's. 200 halves the collections for a heap goal a
// few MiB larger; the memory limit below bounds it.
const GCPercent = 200

// MemoryLimitRatio is the share of the container's memory limit the
// sidecar gives the Go runtime as its soft memory limit (GOMEMLIMIT)
// when the environment sets none: near the limit the runtime collects
// harder instead of growing into an OOM kill, and the rest is headroom
// for what the runtime does not count (the binary's pages, the kernel's
// socket buffers).
const MemoryLimitRatio = 0.9

// Runtime is what TuneRuntime set, for the start-up log.
type Runtime struct {
	// GCPercent is the GOGC in force; GCFromEnv says GOGC chose it.
	GCPercent int
	GCFromEnv bool
	// MemoryLimit is the soft memory limit in bytes, 0 when there is none;
	// MemoryLimitFrom says where it came from: "GOMEMLIMIT",
	// "container limit" or "none".
	MemoryLimit     int64
	MemoryLimitFrom string
}

// TuneRuntime sets the Go runtime's garbage collector for a sidecar: GOGC
// GCPercent and a soft memory limit of MemoryLimitRatio of limit(), the
// container's memory limit (memlimit.FromCgroup in production). GOGC and
// GOMEMLIMIT in the environment win, as Go users expect; AUTOMEMLIMIT=off
// turns the memory limit off. The sidecar and the bench's floor both call
// it, so they run under the same collector.
func TuneRuntime(limit memlimit.Provider) (Runtime, error) {
	var r Runtime
	if os.Getenv("GOGC") != "" {
		// The runtime read it at start; read it back (-1 for off).
		r.GCFromEnv = true
		r.GCPercent = debug.SetGCPercent(-1)
		debug.SetGCPercent(r.GCPercent)
	} else {
		debug.SetGCPercent(GCPercent)
		r.GCPercent = GCPercent
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		r.MemoryLimit, r.MemoryLimitFrom = debug.SetMemoryLimit(-1), "GOMEMLIMIT"
		return r, nil
	}
	n, err := memlimit.Set(memlimit.WithProvider(limit), memlimit.WithRatio(MemoryLimitRatio))
	r.MemoryLimitFrom = "none"
	switch {
	case errors.Is(err, memlimit.ErrNoLimit) || errors.Is(err, memlimit.ErrNoCgroup):
	case err != nil:
		return r, fmt.Errorf("sidecar: memory limit: %w", err)
	case n > 0 && n < math.MaxInt64: // AUTOMEMLIMIT=off leaves none
		r.MemoryLimit, r.MemoryLimitFrom = n, "container limit"
	}
	return r, nil
}
