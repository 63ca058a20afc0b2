// Package loadtest drives a running sidecar over its socket with many
// concurrent clients and reports throughput, latency percentiles, errors by
// gRPC code, the sidecar's memory and CPU from /proc, and a latency
// timeline across live rotations. It can run the same load against a bare
// gRPC echo with AES-GCM in its handler, so every figure is also a ratio
// against the physical limit of the design measured in the same run.
package loadtest

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	v1 "github.com/keyshift/keyshift/sidecar/api/v1"
)

// Mix weighs the operations; Batch > 1 sends batch calls of that many items.
type Mix struct {
	Encrypt, Decrypt, Rewrap int
	Batch                    int
}

// Options describe one run.
type Options struct {
	Socket   string
	Keyset   string
	Clients  int
	Payload  int
	Mix      Mix
	Duration time.Duration
	// Count stops the run after this many calls (0: run for Duration).
	Count int64
	// Rate caps total calls per second (0: as fast as possible).
	Rate float64
	// RotateEvery runs Rotate this often during the run (0: never).
	RotateEvery time.Duration
	Rotate      func(ctx context.Context) (RotationTimes, error)
	// Window is the timeline bucket (100ms when zero).
	Window time.Duration
	// Progress, when set, gets a one-line status every second.
	Progress io.Writer
	// Baseline also runs the load against a bare gRPC echo with AES-GCM.
	Baseline bool
	// EchoCommand starts the baseline as its own process, as the sidecar
	// is: it is run with the socket path appended and must serve StartEcho
	// there. Empty runs the echo inside this process.
	EchoCommand []string
}

// Latency percentiles in microseconds.
type Latency struct {
	P50, P90, P99, Max float64
}

// Proc is what /proc said about the sidecar process during the run.
type Proc struct {
	PID           int32   `json:"pid"`
	RSSStartKiB   int64   `json:"rss_start_kib"`
	RSSMaxKiB     int64   `json:"rss_max_kib"`
	RSSEndKiB     int64   `json:"rss_end_kib"`
	CPUSeconds    float64 `json:"cpu_seconds"`
	CPUPer1000Ops float64 `json:"cpu_seconds_per_1000_calls"`
}

// Window is one timeline bucket.
type Window struct {
	T      float64 `json:"t_seconds"`
	Calls  int     `json:"calls"`
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
	Errors int     `json:"errors"`
}

// Report is the result of one run.
type Report struct {
	Target      string           `json:"target"`
	Clients     int              `json:"clients"`
	Payload     int              `json:"payload_bytes"`
	Mix         Mix              `json:"mix"`
	Elapsed     float64          `json:"elapsed_seconds"`
	Calls       int64            `json:"calls"`
	CallsPerSec float64          `json:"calls_per_second"`
	Latency     Latency          `json:"latency_us"`
	Errors      map[string]int64 `json:"errors_by_code"`
	Rotations   int              `json:"rotations"`
	RotationAt  []float64        `json:"rotation_at_seconds,omitempty"`
	Sidecar     *Proc            `json:"sidecar,omitempty"`
	Timeline    []Window         `json:"timeline,omitempty"`
	Baseline    *Report          `json:"baseline,omitempty"`
	// RatioToBaseline is CallsPerSec over the baseline's.
	RatioToBaseline float64 `json:"ratio_to_baseline,omitempty"`
}

type sample struct {
	at  time.Duration // since start
	lat time.Duration
	err bool
}

// op is one call against a connection.
type op func(ctx context.Context, c *grpc.ClientConn) error

// Run performs the load described by o.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Clients <= 0 {
		o.Clients = 1
	}
	if o.Payload < 0 {
		o.Payload = 0
	}
	if o.Window <= 0 {
		o.Window = 100 * time.Millisecond
	}
	if o.Mix.Encrypt+o.Mix.Decrypt+o.Mix.Rewrap <= 0 {
		o.Mix.Encrypt = 1
	}
	if o.Duration <= 0 && o.Count <= 0 {
		o.Duration = 10 * time.Second
	}
	rep, err := run(ctx, o, o.Socket, false)
	if err != nil {
		return nil, err
	}
	if o.Baseline {
		dir, err := os.MkdirTemp("", "ksecho")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "echo.sock")
		stop, err := startBaseline(ctx, o.EchoCommand, path)
		if err != nil {
			return nil, err
		}
		bo := o
		bo.RotateEvery, bo.Progress = 0, nil
		base, err := run(ctx, bo, path, true)
		stop()
		if err != nil {
			return nil, err
		}
		base.Target, base.Timeline = "bare gRPC echo + AES-GCM (baseline)", nil
		if len(o.EchoCommand) == 0 {
			base.Target += ", in this process"
		} else {
			base.Target += ", its own process"
		}
		rep.Baseline = base
		if base.CallsPerSec > 0 {
			rep.RatioToBaseline = rep.CallsPerSec / base.CallsPerSec
		}
	}
	return rep, nil
}

func run(ctx context.Context, o Options, socket string, echo bool) (*Report, error) {
	conns := make([]*grpc.ClientConn, o.Clients)
	for i := range conns {
		c, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		defer c.Close()
		conns[i] = c
	}
	payload := make([]byte, o.Payload)
	_, _ = rand.Read(payload)
	ops, err := buildOps(ctx, o, conns[0], payload, echo)
	if err != nil {
		return nil, err
	}
	pid, err := peerPID(socket)
	if err != nil {
		return nil, err
	}
	if pid == int32(os.Getpid()) && echo {
		pid = 0 // an in-process baseline: /proc would count the load generator too
	}
	// Cancel rather than a deadline: a call cut off by the end of the run
	// must not count as a DeadlineExceeded error.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.Count <= 0 {
		defer time.AfterFunc(o.Duration, cancel).Stop()
	}

	rep := &Report{Target: socket, Clients: o.Clients, Payload: o.Payload, Mix: o.Mix, Errors: map[string]int64{}}
	var mu sync.Mutex
	var all []sample
	var issued, completed, failed atomic.Int64
	sampler := newProcSampler(pid)
	start := time.Now()
	var wg sync.WaitGroup
	var errMu sync.Mutex
	for i := range o.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]sample, 0, 1<<14)
			var interval time.Duration
			if o.Rate > 0 {
				interval = time.Duration(float64(o.Clients) / o.Rate * float64(time.Second))
			}
			next := time.Now()
			for n := 0; rctx.Err() == nil; n++ {
				if o.Count > 0 && issued.Add(1) > o.Count {
					break
				}
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						select {
						case <-rctx.Done():
						case <-time.After(d):
						}
					}
					next = next.Add(interval)
				}
				f := ops[(i+n)%len(ops)]
				t0 := time.Now()
				err := f(rctx, conns[i])
				s := sample{at: t0.Sub(start), lat: time.Since(t0)}
				if err != nil {
					if rctx.Err() != nil {
						break // the run ended under this call
					}
					s.err = true
					failed.Add(1)
					errMu.Lock()
					rep.Errors[status.Code(err).String()]++
					errMu.Unlock()
				}
				local = append(local, s)
				completed.Add(1)
			}
			mu.Lock()
			all = append(all, local...)
			mu.Unlock()
		}()
	}
	stopRot := make(chan struct{})
	rotDone := make(chan error, 1)
	go func() { rotDone <- rotateLoop(rctx, o, start, stopRot, rep) }()
	done := make(chan struct{})
	go progress(o.Progress, start, &completed, &failed, done)
	wg.Wait()
	cancel()
	close(stopRot)
	close(done)
	if err := <-rotDone; err != nil {
		return nil, err
	}
	rep.Elapsed = time.Since(start).Seconds()
	if p := sampler.stop(); p != nil {
		rep.Sidecar = p
	}
	summarize(rep, all, o.Window)
	if rep.Sidecar != nil && rep.Calls > 0 {
		rep.Sidecar.CPUPer1000Ops = rep.Sidecar.CPUSeconds / float64(rep.Calls) * 1000
	}
	return rep, nil
}

func rotateLoop(ctx context.Context, o Options, start time.Time, stop chan struct{}, rep *Report) error {
	if o.RotateEvery <= 0 || o.Rotate == nil {
		return nil
	}
	t := time.NewTicker(o.RotateEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return nil
		case <-t.C:
			at := time.Since(start).Seconds()
			if _, err := o.Rotate(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("loadtest: rotation: %w", err)
			}
			rep.Rotations++
			rep.RotationAt = append(rep.RotationAt, at)
		}
	}
}

func progress(w io.Writer, start time.Time, completed, failed *atomic.Int64, done chan struct{}) {
	if w == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-done:
			fmt.Fprintf(w, "\r%70s\r", "")
			return
		case <-t.C:
			n := completed.Load()
			fmt.Fprintf(w, "\r  %5.1fs  %9d calls  %8.0f calls/s  %d errors   ", time.Since(start).Seconds(), n, float64(n-last), failed.Load())
			last = n
		}
	}
}

func summarize(rep *Report, all []sample, window time.Duration) {
	slices.SortFunc(all, func(a, b sample) int { return int(a.at - b.at) })
	lats := make([]float64, 0, len(all))
	for _, s := range all {
		if !s.err {
			lats = append(lats, float64(s.lat.Nanoseconds())/1000)
		}
	}
	rep.Calls = int64(len(all))
	if rep.Elapsed > 0 {
		rep.CallsPerSec = float64(len(all)) / rep.Elapsed
	}
	rep.Latency = percentiles(lats)
	for i := 0; i < len(all); {
		w := int(all[i].at / window)
		var ls []float64
		errs := 0
		j := i
		for ; j < len(all) && int(all[j].at/window) == w; j++ {
			if all[j].err {
				errs++
			} else {
				ls = append(ls, float64(all[j].lat.Nanoseconds())/1000)
			}
		}
		p := percentiles(ls)
		rep.Timeline = append(rep.Timeline, Window{T: float64(w) * window.Seconds(), Calls: j - i, P50us: p.P50, P99us: p.P99, Errors: errs})
		i = j
	}
}

func percentiles(v []float64) Latency {
	if len(v) == 0 {
		return Latency{}
	}
	slices.Sort(v)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(v)))) - 1
		return v[max(0, min(i, len(v)-1))]
	}
	return Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: v[len(v)-1]}
}

// buildOps makes the weighted list of calls, preparing a ciphertext for
// decrypt and rewrap.
func buildOps(ctx context.Context, o Options, c *grpc.ClientConn, payload []byte, echo bool) ([]op, error) {
	if echo {
		req := &v1.EncryptRequest{Keyset: o.Keyset, Plaintext: payload}
		return []op{func(ctx context.Context, c *grpc.ClientConn) error {
			return c.Invoke(ctx, EchoMethod, req, new(v1.EncryptResponse))
		}}, nil
	}
	api := v1.NewCryptoClient(c)
	var ct []byte
	if o.Mix.Decrypt+o.Mix.Rewrap > 0 {
		r, err := api.Encrypt(ctx, &v1.EncryptRequest{Keyset: o.Keyset, Plaintext: payload})
		if err != nil {
			return nil, fmt.Errorf("loadtest: preparing a ciphertext: %w", err)
		}
		ct = r.GetCiphertext()
	}
	b := max(o.Mix.Batch, 1)
	enc, dec, rw := encOp(o.Keyset, payload, b), decOp(ct, b), rewrapOp(ct, b)
	var ops []op
	for range o.Mix.Encrypt {
		ops = append(ops, enc)
	}
	for range o.Mix.Decrypt {
		ops = append(ops, dec)
	}
	for range o.Mix.Rewrap {
		ops = append(ops, rw)
	}
	return ops, nil
}

// itemErrs fails a batch call with the first failed item's code.
func itemErrs[R interface{ GetError() *v1.ItemError }](results []R) error {
	for _, r := range results {
		if e := r.GetError(); e != nil {
			return status.Error(codes.Code(e.GetCode()), "batch item: "+e.GetMessage())
		}
	}
	return nil
}

func encOp(keyset string, payload []byte, batch int) op {
	if batch == 1 {
		req := &v1.EncryptRequest{Keyset: keyset, Plaintext: payload}
		return func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := v1.NewCryptoClient(c).Encrypt(ctx, req)
			return err
		}
	}
	req := &v1.EncryptBatchRequest{}
	for range batch {
		req.Items = append(req.Items, &v1.EncryptRequest{Keyset: keyset, Plaintext: payload})
	}
	return func(ctx context.Context, c *grpc.ClientConn) error {
		r, err := v1.NewCryptoClient(c).EncryptBatch(ctx, req)
		if err != nil {
			return err
		}
		return itemErrs(r.GetResults())
	}
}

func decOp(ct []byte, batch int) op {
	if batch == 1 {
		req := &v1.DecryptRequest{Ciphertext: ct}
		return func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := v1.NewCryptoClient(c).Decrypt(ctx, req)
			return err
		}
	}
	req := &v1.DecryptBatchRequest{}
	for range batch {
		req.Items = append(req.Items, &v1.DecryptRequest{Ciphertext: ct})
	}
	return func(ctx context.Context, c *grpc.ClientConn) error {
		r, err := v1.NewCryptoClient(c).DecryptBatch(ctx, req)
		if err != nil {
			return err
		}
		return itemErrs(r.GetResults())
	}
}

func rewrapOp(ct []byte, batch int) op {
	if batch == 1 {
		req := &v1.RewrapRequest{Ciphertext: ct}
		return func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := v1.NewCryptoClient(c).Rewrap(ctx, req)
			return err
		}
	}
	req := &v1.RewrapBatchRequest{}
	for range batch {
		req.Items = append(req.Items, &v1.RewrapRequest{Ciphertext: ct})
	}
	return func(ctx context.Context, c *grpc.ClientConn) error {
		r, err := v1.NewCryptoClient(c).RewrapBatch(ctx, req)
		if err != nil {
			return err
		}
		return itemErrs(r.GetResults())
	}
}

// peerPID asks the kernel which process serves the socket (SO_PEERCRED on
// the client side of a Unix connection names the server).
func peerPID(socket string) (int32, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return 0, fmt.Errorf("loadtest: %w", err)
	}
	defer c.Close()
	return ucredPID(c.(*net.UnixConn))
}

// startBaseline serves the echo at path, in a child process when cmd is set.
func startBaseline(ctx context.Context, cmd []string, path string) (func(), error) {
	if len(cmd) == 0 {
		return StartEcho(path, true)
	}
	c := exec.CommandContext(ctx, cmd[0], append(cmd[1:], path)...)
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("loadtest: start baseline: %w", err)
	}
	stop := func() { _ = c.Process.Kill(); _ = c.Wait() }
	for deadline := time.Now().Add(10 * time.Second); ; {
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			return stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("loadtest: baseline did not listen on %s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
