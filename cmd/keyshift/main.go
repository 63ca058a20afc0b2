// Command keyshift is one binary with subcommands: the per-pod sidecar,
// the tools people use by hand (encrypt, decrypt, rewrap, status, keyset)
// and the local demo. Each subcommand parses its flags, builds a logger
// and a signal context, and calls into a package.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/keyshift/keyshift/cmd/internal/clikit"
	"github.com/keyshift/keyshift/cmd/internal/sidecarcmd"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"sidecar", "serve the crypto API on a Unix socket for one pod", sidecarcmd.Run},
		{"encrypt", "encrypt stdin through the sidecar; prints base64 ciphertext", runEncrypt},
		{"decrypt", "decrypt a base64 ciphertext from stdin through the sidecar", runDecrypt},
		{"rewrap", "re-seal a base64 ciphertext from stdin under the primary version", runRewrap},
		{"status", "show the sidecar's keysets and versions; --cluster: every keyset's rotation in the cluster", runStatusCommand},
		{"keyset", "create|rotate|promote|retire|show a keyset file or Secret", runKeyset},
		{"controller", "rotate keysets on schedule and push them to sidecars over xDS", runController},
		{"injector", "serve the mutating admission webhook that injects the sidecar", runInjector},
		{"audit", "verify the controller's keyed, anchored audit trail", runAudit},
		{"demo", "run everything on this machine: sidecar, traffic, live rotation", runDemo},
		{"bench", "load a running sidecar: throughput, latency, errors, RSS/CPU, vs its floor and peers", runBench},
		{"bench-floor", "serve the bench's like-for-like floor on a socket (started by bench)", sidecarcmd.BenchFloor},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: keyshift <command> [flags]\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'keyshift <command> -h' for a command's flags.\n")
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return clikit.Exit("keyshift "+c.name, c.run(ctx, args[1:], stdin, stdout, stderr), stderr)
		}
	}
	fmt.Fprintf(stderr, "keyshift: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// errUsage: flags were wrong; the flag package already said how.
var errUsage = clikit.ErrUsage

func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	return clikit.Parse(fs, args, stderr)
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	return clikit.NewLogger(w, level, format)
}

func envOr(name, def string) string { return clikit.EnvOr(name, def) }
