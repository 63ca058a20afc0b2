package loadtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

func ucredPID(c *net.UnixConn) (int32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) { cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return cred.Pid, nil
}

// RSSKiB reads VmRSS of pid from /proc.
func RSSKiB(pid int32) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// CPUSeconds reads user+system CPU time of pid from /proc.
func CPUSeconds(pid int32) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks, nil
}

type procSampler struct {
	pid     int32
	p       Proc
	cpu0    float64
	stopped chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
}

func newProcSampler(pid int32) *procSampler {
	s := &procSampler{pid: pid, stopped: make(chan struct{})}
	if pid == 0 {
		return s
	}
	s.p.PID = pid
	s.p.RSSStartKiB, _ = RSSKiB(pid)
	s.p.RSSMaxKiB = s.p.RSSStartKiB
	s.cpu0, _ = CPUSeconds(pid)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stopped:
				return
			case <-t.C:
				if r, err := RSSKiB(pid); err == nil {
					s.mu.Lock()
					s.p.RSSMaxKiB = max(s.p.RSSMaxKiB, r)
					s.mu.Unlock()
				}
			}
		}
	}()
	return s
}

func (s *procSampler) stop() *Proc {
	if s.pid == 0 {
		return nil
	}
	close(s.stopped)
	s.wg.Wait()
	s.p.RSSEndKiB, _ = RSSKiB(s.pid)
	s.p.RSSMaxKiB = max(s.p.RSSMaxKiB, s.p.RSSEndKiB)
	cpu1, _ := CPUSeconds(s.pid)
	s.p.CPUSeconds = cpu1 - s.cpu0
	return &s.p
}
