// Package loadtest drives a running sidecar over its socket with many
// concurrent clients and reports throughput, latency percentiles, errors by
// gRPC code, the sidecar's memory and CPU from /proc, and a latency
// timeline across live rotations. In the same run it drives the same load
// against the like-for-like floor (the sidecar's own server without the
// crypto, sidecar.ServeFloor) and against peers (Vault Transit, Dapr's crypto API,
// the envelope in process, an app caching one data key), so every figure is
// a ratio measured like for like.
package loadtest

import (
	"context"
	"crypto/rand"
	"errors"
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

	"google.golang.org/grpc/status"

	"github.com/keyshift/keyshift/internal/kms"
	"github.com/keyshift/keyshift/internal/sidecar"
)

// Mix weighs the operations; Batch > 1 sends batch calls of that many items.
type Mix struct {
	Encrypt, Decrypt, Rewrap int
	Batch                    int
	// SealEach prepares the ciphertexts that decrypt and rewrap send with
	// one encrypt call per item instead of one batch call, so no two share
	// a seed (records written one by one and read back in bulk).
	SealEach bool `json:",omitempty"`
}

// Options describe one run.
type Options struct {
	Socket   string
	Keyset   string
	Clients  int
	Payload  int
	Mix      Mix
	Duration time.Duration
	// Count stops each target's run after this many calls (0: run for
	// Duration).
	Count int64
	// Rate caps total calls per second (0: as fast as possible). Latency
	// is then measured from when each call was due, not from when it was
	// sent, so a call that waited behind a slow one counts its wait
	// (coordinated omission corrected, as HdrHistogram does).
	Rate float64
	// RotateEvery runs Rotate this often during the sidecar's run (0: never).
	RotateEvery time.Duration
	Rotate      func(ctx context.Context) (RotationTimes, error)
	// Window is the timeline bucket (100ms when zero).
	Window time.Duration
	// Progress, when set, gets a one-line status every second.
	Progress io.Writer
	// Floor also runs the load against the like-for-like floor.
	Floor bool
	// FloorCommand starts the floor as its own process, as the sidecar
	// is, when the sidecar's own binary cannot (floorCommand): it is run
	// with the socket path appended and must serve sidecar.ServeFloor
	// there. Empty serves the floor inside this process.
	FloorCommand []string
	// Peers also run the same load against these systems.
	Peers []PeerSpec
	// Rounds alternates the targets this many times, each running
	// Duration (or Count) per round, and merges the rounds (1 when zero):
	// drift on a busy machine then falls on every target alike.
	Rounds int
	// Warmup runs each target this long, unmeasured and without
	// rotations, before the measured rounds, so no target pays for the
	// load tool's own start (connections, heap growth) or for being
	// first. 0: none.
	Warmup time.Duration
	// KMS opens the KMS URIs peers name (in-process envelope, cached data key).
	KMS kms.Registry
}

// Latency percentiles in microseconds.
type Latency struct {
	P50, P90, P99, P999, Max float64
}

// Proc is what /proc said about the serving process during the run.
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
	P999us float64 `json:"p999_us"`
	Errors int     `json:"errors"`
}

// Report is the result of one run against one target; the sidecar's
// report carries the floor's and the peers'.
type Report struct {
	Target      string  `json:"target"`
	Describe    string  `json:"describe,omitempty"`
	Clients     int     `json:"clients"`
	Payload     int     `json:"payload_bytes"`
	Mix         Mix     `json:"mix"`
	Rate        float64 `json:"rate,omitempty"`
	Rounds      int     `json:"rounds"`
	Elapsed     float64 `json:"elapsed_seconds"`
	Calls       int64   `json:"calls"`
	CallsPerSec float64 `json:"calls_per_second"`
	// ItemsPerSec is CallsPerSec times the batch size.
	ItemsPerSec float64 `json:"items_per_second"`
	// Latency is from when each call was due: with Rate, from its
	// scheduled send time; without, from its send.
	Latency Latency `json:"latency_us"`
	// ServiceLatency (Rate runs only) is from the actual send, which
	// hides queueing; it is reported beside Latency, never instead.
	ServiceLatency *Latency         `json:"service_latency_us,omitempty"`
	Errors         map[string]int64 `json:"errors_by_code"`
	Rotations      int              `json:"rotations"`
	RotationAt     []float64        `json:"rotation_at_seconds,omitempty"`
	Sidecar        *Proc            `json:"process,omitempty"`
	Timeline       []Window         `json:"timeline,omitempty"`
	Floor          *Report          `json:"floor,omitempty"`
	Peers          []*Report        `json:"peers,omitempty"`
	// RatioToFloor is the sidecar's ItemsPerSec over the floor's.
	RatioToFloor float64 `json:"ratio_to_floor,omitempty"`
	// KeyshiftOver, on a peer's report, is the sidecar's ItemsPerSec over
	// this peer's, in the same run.
	KeyshiftOver float64 `json:"keyshift_over_this,omitempty"`
	// RoundItemsPerSec is ItemsPerSec in each round, in order.
	RoundItemsPerSec []float64 `json:"round_items_per_second,omitempty"`
	// KeyshiftOverByRound, on a peer's report, is KeyshiftOver for each
	// round alone: its spread is how far one figure can be trusted.
	KeyshiftOverByRound []float64 `json:"keyshift_over_this_by_round,omitempty"`
}

// Failed counts the failed calls against every target of the run.
func (r *Report) Failed() int64 {
	var n int64
	for _, rr := range append([]*Report{r, r.Floor}, r.Peers...) {
		if rr == nil {
			continue
		}
		for _, v := range rr.Errors {
			n += v
		}
	}
	return n
}

type sample struct {
	at  time.Duration // since start, when the call was due
	lat time.Duration // from due to done
	svc time.Duration // from sent to done
	err bool
}

// op is one call on one connection.
type op func(ctx context.Context, c Conn) error

// Run performs the load described by o against the sidecar at o.Socket,
// then (alternating, for o.Rounds) against the floor and each peer.
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
	o.Mix.Batch = max(o.Mix.Batch, 1)
	if o.Duration <= 0 && o.Count <= 0 {
		o.Duration = 10 * time.Second
	}
	o.Rounds = max(o.Rounds, 1)
	main, err := SocketTarget("keyshift", "the sidecar over its Unix socket (gRPC)", o.Socket, o.Keyset)
	if err != nil {
		return nil, err
	}
	targets := []*Target{main}
	defer func() {
		for _, t := range targets {
			if t.Close != nil {
				t.Close()
			}
		}
	}()
	if o.Floor {
		t, err := startFloor(ctx, o.FloorCommand, main.PID)
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	for _, p := range o.Peers {
		t, err := openPeer(ctx, p, o)
		if err != nil {
			return nil, fmt.Errorf("loadtest: peer %s: %w", p.Kind, err)
		}
		targets = append(targets, t)
	}
	runs := make([]*runner, len(targets))
	for i, t := range targets {
		if runs[i], err = newRunner(ctx, o, t, i == 0); err != nil {
			return nil, fmt.Errorf("loadtest: %s: %w", t.Name, err)
		}
		defer runs[i].close()
	}
	if o.Warmup > 0 {
		for _, r := range runs {
			if err := r.warm(ctx, o.Warmup); err != nil {
				return nil, fmt.Errorf("loadtest: %s: warm-up: %w", r.t.Name, err)
			}
		}
	}
	for _, order := range schedule(len(runs), o.Rounds) {
		for _, i := range order {
			if err := runs[i].round(ctx); err != nil {
				return nil, fmt.Errorf("loadtest: %s: %w", runs[i].t.Name, err)
			}
		}
	}
	rep := runs[0].report()
	for _, r := range runs[1:] {
		pr := r.report()
		pr.Timeline = nil
		if pr.ItemsPerSec > 0 {
			pr.KeyshiftOver = rep.ItemsPerSec / pr.ItemsPerSec
		}
		for i, ips := range pr.RoundItemsPerSec {
			if ips > 0 && i < len(rep.RoundItemsPerSec) {
				pr.KeyshiftOverByRound = append(pr.KeyshiftOverByRound, rep.RoundItemsPerSec[i]/ips)
			}
		}
		if r.t.Name == "floor" {
			rep.Floor, rep.RatioToFloor = pr, pr.KeyshiftOver
			continue
		}
		rep.Peers = append(rep.Peers, pr)
	}
	return rep, nil
}

// schedule is the order of the targets in each round. Its rounds are the
// rows of a Williams design (a Latin square balanced for carry-over):
// each round runs every target once; over one square (n rounds, 2n when n
// is odd) each target runs in every position and right after every other
// target equally often. What one target leaves behind on the machine (a
// peer's garbage collection, its process winding down) then falls on
// every other target alike, not always on the one that follows it.
// Rounds beyond one square repeat it.
func schedule(n, rounds int) [][]int {
	// First row 0, 1, n-1, 2, n-2, ...; row k adds k to each entry.
	first := make([]int, n)
	for j := 1; j < n; j++ {
		if j%2 == 1 {
			first[j] = (j + 1) / 2
		} else {
			first[j] = n - j/2
		}
	}
	var square [][]int
	for k := range n {
		row := make([]int, n)
		for j := range n {
			row[j] = (first[j] + k) % n
		}
		square = append(square, row)
	}
	if n%2 == 1 {
		// For odd n the mirrored rows balance the successions.
		for k := range n {
			row := slices.Clone(square[k])
			slices.Reverse(row)
			square = append(square, row)
		}
	}
	out := make([][]int, rounds)
	for k := range out {
		out[k] = square[k%len(square)]
	}
	return out
}

// warm runs the load for d and keeps nothing of it but its errors: any
// failed call fails the run, as it would have failed the measurement.
func (r *runner) warm(ctx context.Context, d time.Duration) error {
	w := &runner{o: r.o, t: r.t, conns: r.conns, ops: r.ops, errors: map[string]int64{}}
	w.o.Duration, w.o.Count, w.o.Progress = d, 0, nil
	if err := w.round(ctx); err != nil {
		return err
	}
	if len(w.errors) > 0 {
		return fmt.Errorf("%d calls failed: %v", len(w.errors), w.errors)
	}
	return nil
}

// runner holds one target's connections and what its rounds measured.
type runner struct {
	o       Options
	t       *Target
	rotate  bool
	conns   []Conn
	ops     []op
	samples []sample
	offset  time.Duration
	errors  map[string]int64
	proc    *Proc
	rep     Report
}

func newRunner(ctx context.Context, o Options, t *Target, rotate bool) (*runner, error) {
	r := &runner{o: o, t: t, rotate: rotate, errors: map[string]int64{}}
	for range o.Clients {
		c, err := t.Dial(ctx)
		if err != nil {
			r.close()
			return nil, err
		}
		r.conns = append(r.conns, c)
	}
	payload := make([]byte, o.Payload)
	_, _ = rand.Read(payload)
	var err error
	if r.ops, err = buildOps(ctx, o.Mix, r.conns[0], payload); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *runner) close() {
	for _, c := range r.conns {
		_ = c.Close()
	}
}

// round runs the load once for Duration (or Count calls).
func (r *runner) round(ctx context.Context) error {
	o := r.o
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.Count <= 0 {
		// Cancel rather than a deadline: a call cut off by the end of the
		// run must not count as a DeadlineExceeded error.
		defer time.AfterFunc(o.Duration, cancel).Stop()
	}
	var mu sync.Mutex
	var all []sample
	var issued, completed, failed atomic.Int64
	sampler := newProcSampler(r.t.PID)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range o.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]sample, 0, 1<<14)
			var interval time.Duration
			if o.Rate > 0 {
				interval = time.Duration(float64(o.Clients) / o.Rate * float64(time.Second))
			}
			// Clients start spread over one interval, not all at once.
			next := start.Add(interval * time.Duration(i) / time.Duration(o.Clients))
			for k := 0; rctx.Err() == nil; k++ {
				if o.Count > 0 && issued.Add(1) > o.Count {
					break
				}
				due := time.Now()
				if interval > 0 {
					due = next
					if d := time.Until(next); d > 0 {
						select {
						case <-rctx.Done():
						case <-time.After(d):
						}
						if rctx.Err() != nil {
							break
						}
					}
					next = next.Add(interval)
				}
				f := r.ops[(i+k)%len(r.ops)]
				t0 := time.Now()
				err := f(rctx, r.conns[i])
				done := time.Now()
				s := sample{at: due.Sub(start), lat: done.Sub(due), svc: done.Sub(t0)}
				if err != nil {
					if rctx.Err() != nil {
						break // the run ended under this call
					}
					s.err = true
					failed.Add(1)
					mu.Lock()
					r.errors[errorCode(err)]++
					mu.Unlock()
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
	go func() {
		if !r.rotate {
			rotDone <- nil
			return
		}
		rotDone <- rotateLoop(rctx, o, start, r.offset, stopRot, &r.rep)
	}()
	done := make(chan struct{})
	go progress(o.Progress, r.t.Name, start, &completed, &failed, done)
	wg.Wait()
	cancel()
	close(stopRot)
	close(done)
	if err := <-rotDone; err != nil {
		return err
	}
	elapsed := time.Since(start)
	if p := sampler.stop(); p != nil {
		if r.proc == nil {
			r.proc = p
		} else {
			r.proc.RSSMaxKiB = max(r.proc.RSSMaxKiB, p.RSSMaxKiB)
			r.proc.RSSEndKiB = p.RSSEndKiB
			r.proc.CPUSeconds += p.CPUSeconds
		}
	}
	for i := range all {
		all[i].at += r.offset
	}
	r.samples = append(r.samples, all...)
	r.offset += elapsed
	r.rep.RoundItemsPerSec = append(r.rep.RoundItemsPerSec, float64(len(all))*float64(o.Mix.Batch)/elapsed.Seconds())
	return nil
}

// errorCode names an error by its gRPC code, or its text for other systems.
func errorCode(err error) string {
	if errors.Is(err, ErrUnsupported) {
		return "Unsupported"
	}
	if st, ok := status.FromError(err); ok {
		return st.Code().String()
	}
	return "Error"
}

func (r *runner) report() *Report {
	rep := &r.rep
	o := r.o
	rep.Target, rep.Describe = r.t.Name, r.t.Describe
	rep.Clients, rep.Payload, rep.Mix, rep.Rate, rep.Rounds = o.Clients, o.Payload, o.Mix, o.Rate, o.Rounds
	rep.Elapsed = r.offset.Seconds()
	rep.Errors = r.errors
	rep.Sidecar = r.proc
	summarize(rep, r.samples, o.Window, o.Rate > 0)
	rep.ItemsPerSec = rep.CallsPerSec * float64(o.Mix.Batch)
	if rep.Sidecar != nil && rep.Calls > 0 {
		rep.Sidecar.CPUPer1000Ops = rep.Sidecar.CPUSeconds / float64(rep.Calls) * 1000
	}
	return rep
}

func rotateLoop(ctx context.Context, o Options, start time.Time, offset time.Duration, stop chan struct{}, rep *Report) error {
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
			at := (time.Since(start) + offset).Seconds()
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

func progress(w io.Writer, name string, start time.Time, completed, failed *atomic.Int64, done chan struct{}) {
	if w == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-done:
			fmt.Fprintf(w, "\r%80s\r", "")
			return
		case <-t.C:
			n := completed.Load()
			fmt.Fprintf(w, "\r  %-10s %5.1fs  %9d calls  %8.0f calls/s  %d errors   ", name, time.Since(start).Seconds(), n, float64(n-last), failed.Load())
			last = n
		}
	}
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func summarize(rep *Report, all []sample, window time.Duration, rated bool) {
	slices.SortFunc(all, func(a, b sample) int { return int(a.at - b.at) })
	lats := make([]float64, 0, len(all))
	svcs := make([]float64, 0, len(all))
	for _, s := range all {
		if !s.err {
			lats = append(lats, micros(s.lat))
			svcs = append(svcs, micros(s.svc))
		}
	}
	rep.Calls = int64(len(all))
	if rep.Elapsed > 0 {
		rep.CallsPerSec = float64(len(all)) / rep.Elapsed
	}
	rep.Latency = percentiles(lats)
	if rated {
		l := percentiles(svcs)
		rep.ServiceLatency = &l
	}
	rep.Timeline = nil
	for i := 0; i < len(all); {
		w := int(all[i].at / window)
		var ls []float64
		errs := 0
		j := i
		for ; j < len(all) && int(all[j].at/window) == w; j++ {
			if all[j].err {
				errs++
			} else {
				ls = append(ls, micros(all[j].lat))
			}
		}
		p := percentiles(ls)
		rep.Timeline = append(rep.Timeline, Window{T: float64(w) * window.Seconds(), Calls: j - i, P50us: p.P50, P99us: p.P99, P999us: p.P999, Errors: errs})
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
	return Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: v[len(v)-1]}
}

// buildOps makes the weighted list of calls, preparing ciphertexts for
// decrypt and rewrap with the target's own Encrypt.
func buildOps(ctx context.Context, m Mix, c Conn, payload []byte) ([]op, error) {
	pts := make([][]byte, m.Batch)
	for i := range pts {
		pts[i] = payload
	}
	var cts [][]byte
	if m.Decrypt+m.Rewrap > 0 {
		var err error
		if cts, err = prepare(ctx, c, pts, m.SealEach); err != nil {
			return nil, fmt.Errorf("preparing ciphertexts: %w", err)
		}
		if err := c.Decrypt(ctx, cts); err != nil {
			return nil, fmt.Errorf("the prepared ciphertexts do not decrypt: %w", err)
		}
	}
	if m.Rewrap > 0 {
		if err := c.Rewrap(ctx, cts); err != nil {
			return nil, fmt.Errorf("rewrap: %w (leave rewrap out of --mix for this target)", err)
		}
	}
	enc := func(ctx context.Context, c Conn) error { _, err := c.Encrypt(ctx, pts); return err }
	dec := func(ctx context.Context, c Conn) error { return c.Decrypt(ctx, cts) }
	rw := func(ctx context.Context, c Conn) error { return c.Rewrap(ctx, cts) }
	var ops []op
	for range m.Encrypt {
		ops = append(ops, enc)
	}
	for range m.Decrypt {
		ops = append(ops, dec)
	}
	for range m.Rewrap {
		ops = append(ops, rw)
	}
	return ops, nil
}

// prepare seals pts with c, in one call or one call per item.
func prepare(ctx context.Context, c Conn, pts [][]byte, each bool) ([][]byte, error) {
	if !each {
		return c.Encrypt(ctx, pts)
	}
	cts := make([][]byte, len(pts))
	for i := range pts {
		ct, err := c.Encrypt(ctx, pts[i:i+1])
		if err != nil {
			return nil, err
		}
		cts[i] = ct[0]
	}
	return cts, nil
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

// startFloor serves the floor on a socket of its own: in a child process,
// as the sidecar is its own process, running the binary of the sidecar
// at sidecarPID when it can (floorCommand) and fallback when it cannot;
// inside this process when fallback is empty. The target's description
// says which.
func startFloor(ctx context.Context, fallback []string, sidecarPID int32) (*Target, error) {
	dir, err := os.MkdirTemp("", "ksfloor")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "floor.sock")
	describe := "the sidecar's own server (listener, peer check, gRPC options, interceptors) with no crypto behind it"
	var stop func()
	if len(fallback) == 0 {
		fctx, cancel := context.WithCancel(ctx)
		wait, err := sidecar.ServeFloor(fctx, path)
		if err != nil {
			cancel()
			os.RemoveAll(dir)
			return nil, err
		}
		stop = func() { cancel(); wait() }
		describe += ", in this process"
	} else {
		cmd, env, why := floorCommand(sidecarPID)
		if why == nil {
			if stop, why = spawnFloor(ctx, cmd, env, path); why == nil {
				describe += ", its own process running the sidecar's binary under the sidecar's Go runtime variables"
			}
		}
		if why != nil {
			if stop, err = spawnFloor(ctx, fallback, nil, path); err != nil {
				os.RemoveAll(dir)
				return nil, err
			}
			describe += fmt.Sprintf(", its own process running %s, not the sidecar's binary (%v)", fallback[0], why)
		}
	}
	t, err := SocketTarget("floor", describe, path, "")
	if err != nil {
		stop()
		os.RemoveAll(dir)
		return nil, err
	}
	if t.PID == int32(os.Getpid()) {
		t.PID = 0 // in process: /proc would count the load generator too
	}
	t.Close = func() { stop(); os.RemoveAll(dir) }
	return t, nil
}

// spawnFloor runs cmd with the socket path appended (env nil: this
// process's) and waits until it serves there; a command that exits first,
// or serves nothing within 10 s, is an error.
func spawnFloor(ctx context.Context, cmd, env []string, path string) (stop func(), err error) {
	c := exec.CommandContext(ctx, cmd[0], append(cmd[1:], path)...)
	c.Env = env
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("loadtest: start the floor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	stop = func() { _ = c.Process.Kill(); <-exited }
	if err := waitServing(path, 10*time.Second, exited); err != nil {
		if !errors.Is(err, errExited) {
			stop()
		}
		return nil, fmt.Errorf("loadtest: %s: %w", cmd[0], err)
	}
	return stop, nil
}

// errExited: the process that was to serve exited first.
var errExited = errors.New("exited before serving the floor")

// waitServing waits until something accepts connections at path, for at
// most timeout, or until exited (nil: no process to watch) delivers.
func waitServing(path string, timeout time.Duration, exited <-chan error) error {
	for deadline := time.Now().Add(timeout); ; {
		if conn, err := net.Dial("unix", path); err == nil {
			return conn.Close()
		}
		select {
		case err := <-exited:
			return fmt.Errorf("%w: %v", errExited, err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing serves at %s after %s", path, timeout)
		}
	}
}
