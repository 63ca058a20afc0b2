// Package demo runs keyshift end to end on one machine with the local KMS:
// it creates a keyset, starts a real sidecar on a Unix socket, drives
// encrypt/decrypt traffic, rotates the key while traffic flows, and checks
// that old and new ciphertexts decrypt and that no request failed.
package demo

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyshift/keyshift/internal/envelope"
	"github.com/keyshift/keyshift/internal/keyset"
	"github.com/keyshift/keyshift/internal/kms/local"
	"github.com/keyshift/keyshift/internal/kms/providers"
	"github.com/keyshift/keyshift/internal/loadtest"
	"github.com/keyshift/keyshift/internal/rotation"
	"github.com/keyshift/keyshift/internal/sidecar"
	"github.com/keyshift/keyshift/sidecar/client"
)

// Options tune the demo.
type Options struct {
	// Dir holds the KEK, keyset and socket; a temporary directory when empty
	// (removed afterwards).
	Dir string
	// Clients is the number of concurrent client goroutines.
	Clients int
	// Duration is how long traffic runs; the rotation happens in its middle.
	Duration time.Duration
	// PayloadSize is the plaintext size per request.
	PayloadSize int
	// Logger receives the sidecar's logs.
	Logger *slog.Logger
	// Keep leaves the sidecar serving after the summary until ctx ends, for
	// `keyshift bench` or curl against it.
	Keep bool
}

// Summary is what the demo measured.
type Summary struct {
	Requests, Failed             int64
	DuringRotation, FailedDuring int64
	ByVersion                    map[uint32]int64
	PendingLoaded, PrimaryLoaded time.Duration
	OldDecrypts, NewDecrypts     bool
	RewrapOK                     bool
	P50, P99                     time.Duration
	Elapsed                      time.Duration
}

// ErrFailed: the demo saw a failed request or an unreadable ciphertext.
var ErrFailed = errors.New("demo: failed")

// Run runs the demo, printing progress and a summary to out.
func Run(ctx context.Context, o Options, out io.Writer) (*Summary, error) {
	if o.Clients <= 0 {
		o.Clients = 8
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.PayloadSize <= 0 {
		o.PayloadSize = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "keyshift-demo-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	kekPath := filepath.Join(o.Dir, "kek.json")
	ksPath := filepath.Join(o.Dir, "keyset.json")
	sock := filepath.Join(o.Dir, "keyshift.sock")
	kmsURI := "local://" + kekPath
	kek := local.New(kekPath)

	fmt.Fprintf(out, "keyshift demo: local KMS, no cluster, no cloud\n")
	fmt.Fprintf(out, "  workdir   %s\n", o.Dir)
	ks, err := rotation.Create(ctx, kek, "demo", kmsURI, time.Now())
	if err != nil {
		return nil, err
	}
	if err := keyset.WriteFile(ksPath, ks); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "  keyset    demo v1 primary, wrapped by %s (KEK version %s)\n", kmsURI, ks.Primary().KEKVersion)

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	srv, err := sidecar.Start(sctx, sidecar.Config{
		Socket: sock, Keysets: map[string]string{"demo": ksPath}, KMS: providers.Registry(o.Logger),
		Logger: o.Logger, AllowedUIDs: []uint32{uint32(os.Getuid())},
	})
	if err != nil {
		return nil, err
	}
	defer func() { stop(); _ = srv.Wait() }()
	select {
	case <-srv.Ready():
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("%w: sidecar not ready after 10s", ErrFailed)
	}
	fmt.Fprintf(out, "  sidecar   ready on %s (gRPC + HTTP/JSON)\n", sock)
	c, err := client.Dial(sock)
	if err != nil {
		return nil, err
	}
	defer c.Close()

	sum := &Summary{ByVersion: map[uint32]int64{}}
	var rotating atomic.Bool
	var mu sync.Mutex
	var lat []time.Duration
	firstByVersion := map[uint32][]byte{}
	var requests, failed, during, failedDuring atomic.Int64
	tctx, tstop := context.WithTimeout(ctx, o.Duration)
	defer tstop()
	var wg sync.WaitGroup
	fmt.Fprintf(out, "  traffic   %d clients, encrypt+decrypt of %d-byte payloads for %s\n", o.Clients, o.PayloadSize, o.Duration)
	start := time.Now()
	for w := range o.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, o.PayloadSize)
			_, _ = rand.Read(payload)
			cctx := map[string]string{"client": fmt.Sprint(w)}
			local := make([]time.Duration, 0, 4096)
			byVer := map[uint32]int64{}
			defer func() {
				mu.Lock()
				lat = append(lat, local...)
				for v, n := range byVer {
					sum.ByVersion[v] += n
				}
				mu.Unlock()
			}()
			for tctx.Err() == nil {
				inRotation := rotating.Load()
				t0 := time.Now()
				ct, err := c.Encrypt(ctx, payload, cctx)
				t1 := time.Now()
				var pt []byte
				if err == nil {
					pt, err = c.Decrypt(ctx, ct, cctx)
				}
				t2 := time.Now()
				requests.Add(2)
				if inRotation {
					during.Add(2)
				}
				if err != nil || string(pt) != string(payload) {
					failed.Add(1)
					if inRotation {
						failedDuring.Add(1)
					}
					o.Logger.Error("demo request failed", "err", err)
					continue
				}
				local = append(local, t1.Sub(t0), t2.Sub(t1))
				v := versionOf(ct)
				byVer[v]++
				if byVer[v] == 1 && w == 0 {
					mu.Lock()
					if _, ok := firstByVersion[v]; !ok {
						firstByVersion[v] = ct
					}
					mu.Unlock()
				}
			}
		}()
	}

	time.Sleep(o.Duration / 3)
	rotating.Store(true)
	fmt.Fprintf(out, "  rotate    while traffic flows:\n")
	rt, err := loadtest.FileRotation(ksPath, providers.Registry(nil), c.API())(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFailed, err)
	}
	sum.PendingLoaded, sum.PrimaryLoaded = rt.PendingLoaded, rt.PrimaryLoaded
	fmt.Fprintf(out, "            v%d generated, verified, added as pending: loaded by the sidecar in %s\n", rt.Version, sum.PendingLoaded.Round(time.Microsecond))
	fmt.Fprintf(out, "            v%d promoted to primary: sidecar encrypting with it in %s (v1 now decrypt-only)\n", rt.Version, sum.PrimaryLoaded.Round(time.Microsecond))
	time.Sleep(50 * time.Millisecond) // let in-flight requests of the rotation window finish
	rotating.Store(false)
	wg.Wait()
	sum.Elapsed = time.Since(start)
	sum.Requests, sum.Failed = requests.Load(), failed.Load()
	sum.DuringRotation, sum.FailedDuring = during.Load(), failedDuring.Load()

	if ct, ok := firstByVersion[1]; ok {
		_, err := c.Decrypt(ctx, ct, map[string]string{"client": "0"})
		sum.OldDecrypts = err == nil
		re, rewrapped, err := c.Rewrap(ctx, ct, map[string]string{"client": "0"})
		sum.RewrapOK = err == nil && rewrapped && versionOf(re) == 2
	}
	if ct, ok := firstByVersion[2]; ok {
		_, err := c.Decrypt(ctx, ct, map[string]string{"client": "0"})
		sum.NewDecrypts = err == nil
	}
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		sum.P50, sum.P99 = lat[n/2], lat[n*99/100]
	}
	printSummary(out, sum)
	if sum.Failed != 0 || !sum.OldDecrypts || !sum.NewDecrypts || !sum.RewrapOK {
		return sum, ErrFailed
	}
	if o.Keep {
		fmt.Fprintf(out, "\nsidecar still serving on %s; Ctrl-C to stop. Try:\n", sock)
		fmt.Fprintf(out, "  keyshift bench --socket %s --rotate-file %s --rotate-every 2s\n", sock, ksPath)
		fmt.Fprintf(out, "  curl --unix-socket %s http://keyshift/v1/status\n", sock)
		<-ctx.Done()
	}
	return sum, nil
}

func versionOf(ct []byte) uint32 {
	h, _, err := envelope.Parse(ct)
	if err != nil {
		return 0
	}
	return h.Version
}

func printSummary(out io.Writer, s *Summary) {
	ok := func(b bool) string {
		if b {
			return "ok"
		}
		return "FAILED"
	}
	fmt.Fprintf(out, "summary\n")
	fmt.Fprintf(out, "  requests          %d in %s (%.0f/s), failed %d\n", s.Requests, s.Elapsed.Round(time.Millisecond), float64(s.Requests)/s.Elapsed.Seconds(), s.Failed)
	fmt.Fprintf(out, "  during rotation   %d requests, failed %d\n", s.DuringRotation, s.FailedDuring)
	fmt.Fprintf(out, "  ciphertexts       v1: %d, v2: %d\n", s.ByVersion[1], s.ByVersion[2])
	fmt.Fprintf(out, "  old (v1) decrypts %s; new (v2) decrypts %s; rewrap v1->v2 %s\n", ok(s.OldDecrypts), ok(s.NewDecrypts), ok(s.RewrapOK))
	fmt.Fprintf(out, "  latency per call  p50 %s, p99 %s\n", s.P50.Round(time.Microsecond), s.P99.Round(time.Microsecond))
	if s.Failed == 0 && s.OldDecrypts && s.NewDecrypts && s.RewrapOK {
		fmt.Fprintf(out, "PASS: rotated live with 0 failed requests\n")
	} else {
		fmt.Fprintf(out, "FAIL\n")
	}
}
