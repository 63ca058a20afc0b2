// Command kubectl-keyshift is the kubectl plugin: put it on PATH and run
// `kubectl keyshift status` for the rotation state of every keyset, the
// same command as `keyshift status --cluster`. A binary of its own rather
// than a kubectl-keyshift link to keyshift: it links only the Kubernetes
// client and the status view (no KMS SDKs or sidecar: about 30% smaller,
// most of the rest is client-go), `go install` makes it under the name
// kubectl looks for, and keyshift needs no argv[0] dispatch.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/cmd/internal/statuscmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func usage(w io.Writer) {
	fmt.Fprint(w, "usage: kubectl keyshift status [-n NAMESPACE | -A] [-o table|json] [flags]\n\n"+
		"Every keyset's rotation: primary and pending version, how many pods have\n"+
		"the pending version, why the controller is blocked, and its next step.\n"+
		"Run 'kubectl keyshift status -h' for its flags.\n")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] != "status" {
		fmt.Fprintf(stderr, "kubectl keyshift: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	rest := args[1:]
	// `keyshift status --cluster` habits work here too.
	for i, a := range rest {
		if a == "--cluster" || a == "-cluster" {
			rest = append(rest[:i:i], rest[i+1:]...)
			break
		}
	}
	return clikit.Exit("kubectl keyshift status", statuscmd.Run(ctx, "kubectl keyshift status", rest, stdout, stderr), stderr)
}
