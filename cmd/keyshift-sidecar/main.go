// Command keyshift-sidecar is `keyshift sidecar` alone: the binary the
// injector runs in every pod. It links only the sidecar and its KMS
// backends, not the controller's Kubernetes client or the xDS server, so a
// pod pays for neither in memory or start-up time. Flags are those of
// `keyshift sidecar`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/cmd/internal/sidecarcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := clikit.Exit("keyshift-sidecar", sidecarcmd.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr)
	stop()
	os.Exit(code)
}
