package sidecarcmd

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHarden runs harden in a child process (it changes the whole
// process) and checks what the kernel then reports for it.
func TestHarden(t *testing.T) {
	if os.Getenv("KEYSHIFT_HARDEN_CHILD") == "1" {
		if err := harden(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		d, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		var lim unix.Rlimit
		_ = unix.Getrlimit(unix.RLIMIT_CORE, &lim)
		fmt.Printf("dumpable=%d core=%d/%d\n", d, lim.Cur, lim.Max)
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHarden$")
	cmd.Env = append(os.Environ(), "KEYSHIFT_HARDEN_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "dumpable=0 core=0/0") {
		t.Fatalf("after harden: %s; want dumpable=0 core=0/0", out)
	}
}
