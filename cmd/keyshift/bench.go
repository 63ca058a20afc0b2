package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/loadtest"
	"github.com/keyshift/keyshift/sidecar/client"
)

func parseMix(s string, batch int) (loadtest.Mix, error) {
	m := loadtest.Mix{Batch: batch}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 0 {
			return m, fmt.Errorf("--mix %q: write weights like encrypt=3,decrypt=1,rewrap=1", s)
		}
		switch k {
		case "encrypt":
			m.Encrypt = n
		case "decrypt":
			m.Decrypt = n
		case "rewrap":
			m.Rewrap = n
		default:
			return m, fmt.Errorf("--mix: unknown operation %q (encrypt, decrypt, rewrap)", k)
		}
	}
	if m.Encrypt+m.Decrypt+m.Rewrap == 0 {
		return m, fmt.Errorf("--mix %q: at least one weight must be positive", s)
	}
	return m, nil
}

func runBench(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	socket := fs.String("socket", envOr(client.EnvSocket, "/var/run/keyshift/keyshift.sock"), "the sidecar's socket")
	keysetName := fs.String("keyset", "", "keyset to encrypt with (needed when the sidecar serves several)")
	clients := fs.Int("clients", 16, "concurrent clients, one connection each")
	payload := fs.Int("payload", 1024, "plaintext bytes per item")
	mix := fs.String("mix", "encrypt=1,decrypt=1", "operation weights")
	batch := fs.Int("batch", 1, "items per call (>1 uses the batch RPCs)")
	duration := fs.Duration("duration", 10*time.Second, "how long to run")
	count := fs.Int64("count", 0, "stop after this many calls instead")
	rate := fs.Float64("rate", 0, "cap on total calls per second (0: as fast as possible)")
	rotateEvery := fs.Duration("rotate-every", 0, "rotate the keyset this often during the run (needs --rotate-file)")
	rotateFile := fs.String("rotate-file", "", "the keyset file the sidecar follows, rotated two-phase during the run")
	baseline := fs.Bool("floor", true, "also run the same load against the like-for-like floor (the sidecar's server without the crypto), in this run")
	jsonOut := fs.String("json", "", "write the full report (timeline included) as JSON here")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	m, err := parseMix(*mix, *batch)
	if err != nil {
		return err
	}
	o := loadtest.Options{Socket: *socket, Keyset: *keysetName, Clients: *clients, Payload: *payload, Mix: m,
		Duration: *duration, Count: *count, Rate: *rate, Baseline: *baseline}
	if exe, err := os.Executable(); err == nil {
		o.EchoCommand = []string{exe, "bench-echo"}
	}
	if isTerminal(stderr) {
		o.Progress = stderr
	}
	if *rotateEvery > 0 {
		if *rotateFile == "" {
			return fmt.Errorf("--rotate-every needs --rotate-file (the keyset file the sidecar follows)")
		}
		c, err := client.Dial(*socket)
		if err != nil {
			return err
		}
		defer c.Close()
		o.RotateEvery, o.Rotate = *rotateEvery, loadtest.FileRotation(*rotateFile, providers.Registry(nil), c.API())
	}
	rep, err := loadtest.Run(ctx, o)
	if err != nil {
		return err
	}
	printReport(stdout, rep)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if n := totalErrors(rep); n > 0 {
		return fmt.Errorf("%d calls failed", n)
	}
	return nil
}

func totalErrors(r *loadtest.Report) int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

func printReport(w io.Writer, r *loadtest.Report) {
	fmt.Fprintf(w, "target       %s\n", r.Target)
	fmt.Fprintf(w, "load         %d clients, %d-byte payloads, mix %+v, %.1fs\n", r.Clients, r.Payload, r.Mix, r.Elapsed)
	fmt.Fprintf(w, "throughput   %d calls, %.0f calls/s\n", r.Calls, r.CallsPerSec)
	fmt.Fprintf(w, "latency      p50 %.0fµs  p90 %.0fµs  p99 %.0fµs  max %.0fµs\n", r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max)
	fmt.Fprintf(w, "errors       %d %v\n", totalErrors(r), r.Errors)
	if r.Rotations > 0 {
		fmt.Fprintf(w, "rotations    %d during the run, at %v s\n", r.Rotations, r.RotationAt)
	}
	if p := r.Sidecar; p != nil {
		fmt.Fprintf(w, "sidecar      pid %d, RSS %d KiB at start, %d KiB max, CPU %.2fs (%.4fs per 1000 calls)\n", p.PID, p.RSSStartKiB, p.RSSMaxKiB, p.CPUSeconds, p.CPUPer1000Ops)
	}
	if b := r.Baseline; b != nil {
		fmt.Fprintf(w, "baseline     %s: %.0f calls/s, p50 %.0fµs p99 %.0fµs\n", b.Target, b.CallsPerSec, b.Latency.P50, b.Latency.P99)
		fmt.Fprintf(w, "ratio        sidecar throughput is %.2f of the baseline's\n", r.RatioToBaseline)
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// runBenchEcho serves the load tool's baseline (a bare gRPC echo with
// AES-GCM in its handler) on the socket path given as its argument, until
// killed. `keyshift bench` starts it so the baseline runs in its own
// process, as the sidecar does.
func runBenchEcho(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: keyshift bench-echo SOCKET")
		return errUsage
	}
	stop, err := loadtest.StartEcho(args[0], true)
	if err != nil {
		return err
	}
	defer stop()
	<-ctx.Done()
	return nil
}
