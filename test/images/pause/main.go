// Command pause is the pod sandbox process: it holds a pod's namespaces
// while the pod's containers come and go. It sleeps until SIGINT or SIGTERM,
// then exits 0, and as PID 1 of the pod it reaps every orphan that dies
// (SIGCHLD and a non-blocking wait4 loop), so no zombie outlives its parent.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited. Signals coalesce, so one
// SIGCHLD may stand for many children.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}
