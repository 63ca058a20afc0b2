package main

import (
	"context"
	"io"
	"slices"

	"github.com/keyshift/keyshift/cmd/internal/statuscmd"
)

// runStatusCommand is `keyshift status`: with --cluster, every keyset of
// the cluster through the kubeconfig (statuscmd, also the kubectl plugin);
// without it, the local sidecar's keysets over its socket (runStatus).
func runStatusCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if rest, ok := withoutClusterFlag(args); ok {
		return statuscmd.Run(ctx, "keyshift status --cluster", rest, stdout, stderr)
	}
	return runStatus(ctx, args, stdin, stdout, stderr)
}

// withoutClusterFlag reports whether args ask for --cluster, and returns
// them without the flag (--cluster=false asks for the socket). Arguments
// after "--" are not flags.
func withoutClusterFlag(args []string) ([]string, bool) {
	for i, a := range args {
		switch a {
		case "--cluster", "-cluster", "--cluster=true", "-cluster=true":
			return slices.Delete(slices.Clone(args), i, i+1), true
		case "--cluster=false", "-cluster=false":
			return slices.Delete(slices.Clone(args), i, i+1), false
		case "--":
			return args, false
		}
	}
	return args, false
}
