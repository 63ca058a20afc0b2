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
	socket := fs.String("socket", envOr(client.EnvSocket, client.DefaultSocket), "the sidecar's socket")
	keysetName := fs.String("keyset", "", "keyset to encrypt with (needed when the sidecar serves several)")
	clients := fs.Int("clients", 16, "concurrent clients, one connection each")
	payload := fs.Int("payload", 1024, "plaintext bytes per item")
	mix := fs.String("mix", "encrypt=1,decrypt=1", "operation weights")
	batch := fs.Int("batch", 1, "items per call (>1 uses the batch RPCs)")
	sealEach := fs.Bool("seal-each", false, "prepare the ciphertexts decrypt and rewrap send with one encrypt call per item, not one batch call (so no two share a seed)")
	duration := fs.Duration("duration", 10*time.Second, "how long to run each target, per round")
	count := fs.Int64("count", 0, "stop each target after this many calls instead")
	rate := fs.Float64("rate", 0, "cap on total calls per second (0: as fast as possible); latency then counts from each call's scheduled time")
	rotateEvery := fs.Duration("rotate-every", 0, "rotate the keyset this often during the sidecar's run (needs --rotate-file)")
	rotateFile := fs.String("rotate-file", "", "the keyset file the sidecar follows, rotated two-phase during the run")
	floor := fs.Bool("floor", true, "also run the same load against the like-for-like floor (the sidecar's server without the crypto), in this run")
	rounds := fs.Int("rounds", 1, "alternate the targets this many times and merge the rounds; each target runs right after every other equally often")
	warmup := fs.Duration("warmup", time.Second, "run each target this long, unmeasured, before the measured rounds (0: none)")
	var peers []loadtest.PeerSpec
	fs.Func("peer", "also run the same load against NAME=ADDRESS (repeatable): "+strings.Join(loadtest.PeerKinds(), ", "), func(s string) error {
		p, err := loadtest.ParsePeer(s)
		peers = append(peers, p)
		return err
	})
	jsonOut := fs.String("json", "", "write the full report (timeline included) as JSON here")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	m, err := parseMix(*mix, *batch)
	if err != nil {
		return err
	}
	m.SealEach = *sealEach
	o := loadtest.Options{Socket: *socket, Keyset: *keysetName, Clients: *clients, Payload: *payload, Mix: m,
		Duration: *duration, Count: *count, Rate: *rate, Floor: *floor, Peers: peers, Rounds: *rounds, Warmup: *warmup,
		KMS: providers.Registry(nil)}
	if exe, err := os.Executable(); err == nil {
		o.FloorCommand = []string{exe, "bench-floor"}
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
		o.RotateEvery, o.Rotate = *rotateEvery, loadtest.FileRotation(*rotateFile, o.KMS, c.API())
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
	if n := rep.Failed(); n > 0 {
		return fmt.Errorf("%d calls failed", n)
	}
	return nil
}

func printReport(w io.Writer, r *loadtest.Report) {
	fmt.Fprintf(w, "load         %d clients, %d-byte payloads, mix encrypt=%d,decrypt=%d,rewrap=%d, batch %d, %d round(s) of %.1fs",
		r.Clients, r.Payload, r.Mix.Encrypt, r.Mix.Decrypt, r.Mix.Rewrap, r.Mix.Batch, r.Rounds, r.Elapsed/float64(max(r.Rounds, 1)))
	if r.Mix.SealEach {
		fmt.Fprint(w, ", ciphertexts sealed one call per item")
	}
	if r.Rate > 0 {
		fmt.Fprintf(w, ", capped at %.0f calls/s (latency from each call's scheduled time)", r.Rate)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-11s %10s %10s %9s %9s %9s %9s %8s  %s\n", "target", "calls/s", "items/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "errors", "keyshift / this")
	for _, rr := range append([]*loadtest.Report{r, r.Floor}, r.Peers...) {
		if rr == nil {
			continue
		}
		ratio := "-"
		if rr != r && rr.KeyshiftOver > 0 {
			ratio = fmt.Sprintf("%.2f", rr.KeyshiftOver)
		}
		var errs int64
		for _, v := range rr.Errors {
			errs += v
		}
		fmt.Fprintf(w, "%-11s %10.0f %10.0f %9.0f %9.0f %9.0f %9.0f %8d  %s\n", rr.Target, rr.CallsPerSec, rr.ItemsPerSec,
			rr.Latency.P50, rr.Latency.P99, rr.Latency.P999, rr.Latency.Max, errs, ratio)
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "errors       %v\n", r.Errors)
	}
	if l := r.ServiceLatency; l != nil {
		fmt.Fprintf(w, "keyshift     from the actual send (hides queueing): p50 %.0fµs p99 %.0fµs p99.9 %.0fµs\n", l.P50, l.P99, l.P999)
	}
	if r.Rotations > 0 {
		fmt.Fprintf(w, "rotations    %d during the sidecar's run, at %v s\n", r.Rotations, r.RotationAt)
	}
	if p := r.Sidecar; p != nil {
		fmt.Fprintf(w, "sidecar      pid %d, RSS %d KiB at start, %d KiB max, CPU %.2fs (%.4fs per 1000 calls)\n", p.PID, p.RSSStartKiB, p.RSSMaxKiB, p.CPUSeconds, p.CPUPer1000Ops)
	}
	if f := r.Floor; f != nil {
		if p := f.Sidecar; p != nil {
			fmt.Fprintf(w, "floor        pid %d, CPU %.2fs (%.4fs per 1000 calls)\n", p.PID, p.CPUSeconds, p.CPUPer1000Ops)
		}
		fmt.Fprintf(w, "ratio        sidecar items/s are %.2f of the floor's\n", r.RatioToFloor)
	}
	for _, p := range append([]*loadtest.Report{r.Floor}, r.Peers...) {
		if p != nil {
			fmt.Fprintf(w, "  %-10s %s\n", p.Target+":", p.Describe)
		}
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
