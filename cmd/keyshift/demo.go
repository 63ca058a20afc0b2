package main

import (
	"context"
	"flag"
	"io"
	"time"

	"github.com/keyshift/keyshift/internal/demo"
)

func runDemo(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	dir := fs.String("dir", "", "work directory (default: a temporary one, removed afterwards)")
	clients := fs.Int("clients", 8, "concurrent clients")
	duration := fs.Duration("duration", 3*time.Second, "how long traffic runs; the rotation happens a third of the way in")
	size := fs.Int("payload", 1024, "plaintext bytes per request")
	level := fs.String("log-level", "warn", "sidecar log level")
	keep := fs.Bool("keep", false, "keep the sidecar serving after the demo (for keyshift bench); use with --dir")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level, "text")
	if err != nil {
		return err
	}
	_, err = demo.Run(ctx, demo.Options{Dir: *dir, Clients: *clients, Duration: *duration, PayloadSize: *size, Logger: log, Keep: *keep}, stdout)
	return err
}
