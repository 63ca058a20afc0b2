// Command keyshift is one binary with subcommands: the per-pod sidecar,
// the tools people use by hand (encrypt, decrypt, rewrap, status, keyset)
// and the local demo. Each subcommand parses its flags, builds a logger
// and a signal context, and calls into a package.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"sidecar", "serve the crypto API on a Unix socket for one pod", runSidecar},
		{"encrypt", "encrypt stdin through the sidecar; prints base64 ciphertext", runEncrypt},
		{"decrypt", "decrypt a base64 ciphertext from stdin through the sidecar", runDecrypt},
		{"rewrap", "re-seal a base64 ciphertext from stdin under the primary version", runRewrap},
		{"status", "show the sidecar's keysets and versions", runStatus},
		{"keyset", "create|rotate|promote|retire|show a keyset file or Secret", runKeyset},
		{"controller", "rotate keysets on schedule and push them to sidecars over xDS", runController},
		{"audit", "verify the controller's hash-chained audit trail", runAudit},
		{"demo", "run everything on this machine: sidecar, traffic, live rotation", runDemo},
		{"bench", "load a running sidecar: throughput, latency, errors, RSS/CPU, vs a baseline", runBench},
		{"bench-echo", "serve the bench baseline on a socket (started by bench)", runBenchEcho},
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
			err := c.run(ctx, args[1:], stdin, stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			default:
				fmt.Fprintf(stderr, "keyshift %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "keyshift: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// errUsage: flags were wrong; the flag package already said how.
var errUsage = errors.New("usage")

func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %v\n", fs.Args())
		return errUsage
	}
	return nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: write debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: write json or text", format)
	}
}
