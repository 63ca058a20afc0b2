// Package clikit holds what every keyshift command line shares: flag
// parsing with usage errors, the slog logger from --log-level and
// --log-format, and environment defaults.
package clikit

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
)

// ErrUsage: flags were wrong; the flag package already said how.
var ErrUsage = errors.New("usage")

// Parse parses args into fs, refusing stray arguments.
func Parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return ErrUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %v\n", fs.Args())
		return ErrUsage
	}
	return nil
}

// NewLogger builds the logger for --log-level and --log-format.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
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

// EnvOr is the environment variable name, or def when it is unset.
func EnvOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Exit turns a command's error into an exit code, printing it.
func Exit(name string, err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
}

// LogFlags adds --log-level and --log-format to fs and returns the function
// that builds the logger once fs is parsed.
func LogFlags(fs *flag.FlagSet, level, levelHelp string) func(w io.Writer) (*slog.Logger, error) {
	lv := fs.String("log-level", level, levelHelp)
	format := fs.String("log-format", "json", "json or text")
	return func(w io.Writer) (*slog.Logger, error) { return NewLogger(w, *lv, *format) }
}
