package sidecar

import (
	"errors"
	"math"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// keepRuntime puts the collector settings back after a test that changes
// them, and clears the variables TuneRuntime reads.
func keepRuntime(t *testing.T) {
	gc, limit := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1)
	debug.SetGCPercent(gc)
	t.Cleanup(func() {
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
	})
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
}

func TestTuneRuntime(t *testing.T) {
	const container = 64 << 20 // the injector's default sidecar memory limit
	ratio := MemoryLimitRatio
	limit90 := int64(float64(container) * ratio) // 60,397,977
	for _, tc := range []struct {
		name      string
		env       map[string]string
		before    int // GC percent in force before, as the runtime read GOGC
		provider  memlimit.Provider
		wantGC    int
		fromEnv   bool
		wantLimit int64
		wantFrom  string
		wantErr   bool
	}{
		{name: "defaults under a container limit", before: 100, provider: memlimit.Limit(container),
			wantGC: GCPercent, wantLimit: limit90, wantFrom: "container limit"},
		{name: "no container limit", before: 100, provider: func() (uint64, error) { return 0, memlimit.ErrNoLimit },
			wantGC: GCPercent, wantFrom: "none"},
		{name: "not in a cgroup", before: 100, provider: func() (uint64, error) { return 0, memlimit.ErrNoCgroup },
			wantGC: GCPercent, wantFrom: "none"},
		{name: "GOGC wins", env: map[string]string{"GOGC": "57"}, before: 57, provider: memlimit.Limit(container),
			wantGC: 57, fromEnv: true, wantLimit: limit90, wantFrom: "container limit"},
		{name: "GOGC=off wins", env: map[string]string{"GOGC": "off"}, before: -1, provider: memlimit.Limit(container),
			wantGC: -1, fromEnv: true, wantLimit: limit90, wantFrom: "container limit"},
		{name: "GOMEMLIMIT wins", env: map[string]string{"GOMEMLIMIT": "40MiB"}, before: 100, provider: memlimit.Limit(container),
			wantGC: GCPercent, wantLimit: 40 << 20, wantFrom: "GOMEMLIMIT"},
		{name: "AUTOMEMLIMIT=off", env: map[string]string{"AUTOMEMLIMIT": "off"}, before: 100, provider: memlimit.Limit(container),
			wantGC: GCPercent, wantFrom: "none"},
		{name: "unreadable limit", before: 100, provider: func() (uint64, error) { return 0, errors.New("read memory.max: permission denied") },
			wantGC: GCPercent, wantFrom: "none", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keepRuntime(t)
			debug.SetGCPercent(tc.before)
			debug.SetMemoryLimit(math.MaxInt64)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if tc.wantFrom == "GOMEMLIMIT" {
				debug.SetMemoryLimit(tc.wantLimit) // as the runtime would have from the variable
			}
			rt, err := TuneRuntime(tc.provider)
			if (err != nil) != tc.wantErr {
				t.Fatalf("TuneRuntime: err %v, want error %v", err, tc.wantErr)
			}
			want := Runtime{GCPercent: tc.wantGC, GCFromEnv: tc.fromEnv, MemoryLimit: tc.wantLimit, MemoryLimitFrom: tc.wantFrom}
			if rt != want {
				t.Errorf("TuneRuntime = %+v, want %+v", rt, want)
			}
			// What it reports is what the runtime now runs with.
			if got := debug.SetGCPercent(tc.wantGC); got != tc.wantGC {
				t.Errorf("GC percent in force: %d, want %d", got, tc.wantGC)
			}
			limit := debug.SetMemoryLimit(-1)
			if tc.wantLimit == 0 && limit != math.MaxInt64 {
				t.Errorf("memory limit in force: %d, want none", limit)
			}
			if tc.wantLimit != 0 && limit != tc.wantLimit {
				t.Errorf("memory limit in force: %d, want %d", limit, tc.wantLimit)
			}
		})
	}
}
