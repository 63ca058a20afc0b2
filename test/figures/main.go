// Command figures writes the README's figure tables from what
// scripts/figures.sh measured: each figure is a NAME.json report of
// `keyshift bench` (or a NAME.txt of `go test -bench`) with the command
// that made it in NAME.cmd. No number in those tables is typed by hand.
//
//	go run ./test/figures -dir bin/figures -readme README.md [-soak bin/soak/soak.json]
//	go run ./test/figures -dir bin/figures-short -check README.md
//
// -readme replaces each block between <!-- figures:NAME --> and
// <!-- /figures:NAME --> with its table. -check changes nothing: it fails
// unless the README shows exactly the commands the run ran, every one of
// which succeeded with zero errors.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyshift/keyshift/internal/loadtest"
)

func main() {
	dir := flag.String("dir", "bin/figures", "what scripts/figures.sh measured")
	readme := flag.String("readme", "", "update the figure blocks of this README")
	check := flag.String("check", "", "check that this README shows exactly the commands measured in -dir")
	soak := flag.String("soak", "", "the soak's JSON (make soak), if there is one")
	flag.Parse()
	if err := run(*dir, *readme, *check, *soak); err != nil {
		fmt.Fprintln(os.Stderr, "figures:", err)
		os.Exit(1)
	}
}

func run(dir, readme, check, soak string) error {
	f, err := load(dir)
	if err != nil {
		return err
	}
	if check != "" {
		return checkReadme(check, f)
	}
	blocks, err := f.tables(soak)
	if err != nil {
		return err
	}
	if err := f.plotData(dir); err != nil {
		return err
	}
	if readme == "" {
		for _, name := range slices.Sorted(maps.Keys(blocks)) {
			fmt.Printf("<!-- figures:%s -->\n%s<!-- /figures:%s -->\n\n", name, blocks[name], name)
		}
		return nil
	}
	return rewrite(readme, blocks)
}

// figures is one run of scripts/figures.sh.
type figures struct {
	cmds    map[string]string
	reports map[string]*loadtest.Report
	benches map[string][]benchLine
	extra   map[string]map[string]float64
}

type benchLine struct {
	name    string
	metrics []metric
}

type metric struct {
	value float64
	unit  string
}

// benchRE splits a result line: the name without its -GOMAXPROCS suffix, then the metrics.
var benchRE = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

func load(dir string) (*figures, error) {
	f := &figures{cmds: map[string]string{}, reports: map[string]*loadtest.Report{}, benches: map[string][]benchLine{}, extra: map[string]map[string]float64{}}
	cmds, err := filepath.Glob(filepath.Join(dir, "*.cmd"))
	if err != nil || len(cmds) == 0 {
		return nil, fmt.Errorf("no figures in %s: run scripts/figures.sh", dir)
	}
	for _, c := range cmds {
		name := strings.TrimSuffix(filepath.Base(c), ".cmd")
		b, err := os.ReadFile(c)
		if err != nil {
			return nil, err
		}
		f.cmds[name] = strings.TrimSpace(string(b))
		if strings.HasPrefix(name, "gobench-") {
			lines, err := readBench(filepath.Join(dir, name+".txt"))
			if err != nil {
				return nil, err
			}
			f.benches[name] = lines
			continue
		}
		var r loadtest.Report
		if err := readJSON(filepath.Join(dir, name+".json"), &r); err != nil {
			return nil, err
		}
		f.reports[name] = &r
	}
	var fp map[string]float64
	if err := readJSON(filepath.Join(dir, "footprint.json"), &fp); err == nil {
		f.extra["footprint"] = fp
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return f, nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readBench(path string) ([]benchLine, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var out []benchLine
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		m := benchRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		bl := benchLine{name: m[1]}
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			bl.metrics = append(bl.metrics, metric{v, f[i+1]})
		}
		out = append(out, bl)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no benchmark results", path)
	}
	return out, sc.Err()
}

// need returns the named report or an error naming the missing figure.
func (f *figures) need(name string) (*loadtest.Report, error) {
	r := f.reports[name]
	if r == nil {
		return nil, fmt.Errorf("figure %s was not measured", name)
	}
	if n := r.Failed(); n > 0 {
		return nil, fmt.Errorf("figure %s: %d calls failed (%v)", name, n, r.Errors)
	}
	return r, nil
}

func peer(r *loadtest.Report, name string) *loadtest.Report {
	for _, p := range r.Peers {
		if p.Target == name {
			return p
		}
	}
	return nil
}

func (f *figures) cmd(name string) string { return "`" + f.cmds[name] + "`" }

func num(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64)
	if len(s) <= 3 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func us(v float64) string {
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return num(v)
}

func (f *figures) tables(soak string) (map[string]string, error) {
	out := map[string]string{}
	var b strings.Builder
	stamp := "Measured " + time.Now().UTC().Format("2006-01-02") + " by `make figures` (`scripts/figures.sh`) on this project's 2-core machine.\n\n"

	// The sidecar against its floor.
	b.WriteString(stamp)
	b.WriteString("| op | items per call | keyshift items/s | floor items/s | keyshift / floor | p50 / p99 µs, keyshift | p50 / p99 µs, floor | command |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, row := range []struct{ name, op, items string }{
		{"floor-encrypt-1", "encrypt", "1"}, {"floor-encrypt-100", "encrypt", "100"},
		{"floor-decrypt-1", "decrypt", "1"}, {"floor-decrypt-100", "decrypt", "100, sealed as one batch"},
		{"floor-decrypt-100-each", "decrypt", "100, sealed one by one"},
		{"floor-rewrap-1", "rewrap", "1"}, {"floor-rewrap-100", "rewrap", "100, sealed as one batch"},
		{"floor-rewrap-100-each", "rewrap", "100, sealed one by one"},
	} {
		r, err := f.need(row.name)
		if err != nil {
			return nil, err
		}
		if r.Floor == nil {
			return nil, fmt.Errorf("figure %s has no floor", row.name)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | **%.2f**%s | %s / %s | %s / %s | %s |\n", row.op, row.items, num(r.ItemsPerSec), num(r.Floor.ItemsPerSec), r.RatioToFloor, spread(r.Floor),
			us(r.Latency.P50), us(r.Latency.P99), us(r.Floor.Latency.P50), us(r.Floor.Latency.P99), f.cmd(row.name))
	}
	out["floor"] = b.String()
	b.Reset()

	// Batch against unary, from the same figures.
	b.WriteString("| op | keyshift items/s, 100 per call | 1 per call | batch / unary |\n| --- | --- | --- | --- |\n")
	for _, op := range []string{"encrypt", "decrypt", "rewrap"} {
		r1, r100 := f.reports["floor-"+op+"-1"], f.reports["floor-"+op+"-100"]
		fmt.Fprintf(&b, "| %s | %s | %s | **%.1fx** |\n", op, num(r100.ItemsPerSec), num(r1.ItemsPerSec), r100.ItemsPerSec/r1.ItemsPerSec)
	}
	out["batch"] = b.String()
	b.Reset()

	// Peers.
	b.WriteString(stamp)
	b.WriteString("| op | items per call | system | items/s | keyshift / this | p50 µs | p99 µs | p99.9 µs | command |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, fig := range []struct {
		name, op string
		n        int
	}{{"peers-1", "encrypt", 1}, {"peers-100", "encrypt", 100}, {"peers-decrypt-1", "decrypt", 1}, {"peers-decrypt-100", "decrypt", 100}} {
		r, err := f.need(fig.name)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "| %s | %d | keyshift | %s | | %s | %s | %s | %s |\n", fig.op, fig.n, num(r.ItemsPerSec), us(r.Latency.P50), us(r.Latency.P99), us(r.Latency.P999), f.cmd(fig.name))
		for _, p := range append([]*loadtest.Report{r.Floor}, r.Peers...) {
			if p == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %d | %s | %s | **%.2f**%s | %s | %s | %s | same |\n", fig.op, fig.n, label(p.Target), num(p.ItemsPerSec), p.KeyshiftOver, spread(p), us(p.Latency.P50), us(p.Latency.P99), us(p.Latency.P999))
		}
	}
	out["peers"] = b.String()
	b.Reset()

	// In the app itself: per-call times at one client.
	r, err := f.need("inapp")
	if err != nil {
		return nil, err
	}
	per := func(x *loadtest.Report) float64 { return 1e6 / x.CallsPerSec }
	ip, cd := peer(r, "in-process"), peer(r, "cached-dek")
	if ip == nil || cd == nil {
		return nil, errors.New("figure inapp lacks the in-process or cached-dek peer")
	}
	b.WriteString("| one client, encrypt and decrypt of 1 KiB | µs per call | p50 / p99 µs | keyshift / this |\n| --- | --- | --- | --- |\n")
	fmt.Fprintf(&b, "| keyshift sidecar over its socket | %.1f | %s / %s | |\n", per(r), us(r.Latency.P50), us(r.Latency.P99))
	if r.Floor != nil {
		fmt.Fprintf(&b, "| the floor (the same socket and server, no crypto) | %.1f | %s / %s | %.2f |\n", per(r.Floor), us(r.Floor.Latency.P50), us(r.Floor.Latency.P99), r.Floor.KeyshiftOver)
	}
	fmt.Fprintf(&b, "| the same envelope in process (the sidecar's Service, no socket) | %.1f | %s / %s | %.2f |\n", per(ip), us(ip.Latency.P50), us(ip.Latency.P99), ip.KeyshiftOver)
	fmt.Fprintf(&b, "| an app caching one data key (AES-256-GCM in process) | %.1f | %s / %s | %.2f |\n", per(cd), us(cd.Latency.P50), us(cd.Latency.P99), cd.KeyshiftOver)
	fmt.Fprintf(&b, "\nThe process boundary (socket, gRPC, two context switches) costs **%.1f µs per call** (%.1f µs over the socket, %.1f µs in process). Command: %s\n", per(r)-per(ip), per(r), per(ip), f.cmd("inapp"))
	out["inapp"] = b.String()
	b.Reset()

	// Across rotations, at a fixed rate.
	r, err = f.need("rotations")
	if err != nil {
		return nil, err
	}
	b.WriteString("| at 4,000 calls/s, 8 clients, a two-phase rotation every 3 s | value |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| calls, rotations, errors | %s calls, %d rotations, %d errors |\n", num(float64(r.Calls)), r.Rotations, r.Failed())
	fmt.Fprintf(&b, "| latency from each call's scheduled time (corrected): p50 / p99 / p99.9 / max | %s / %s / %s / %s µs |\n", us(r.Latency.P50), us(r.Latency.P99), us(r.Latency.P999), us(r.Latency.Max))
	if s := r.ServiceLatency; s != nil {
		fmt.Fprintf(&b, "| the same from the actual send (hides queueing): p50 / p99 / p99.9 | %s / %s / %s µs |\n", us(s.P50), us(s.P99), us(s.P999))
	}
	worst := 0.0
	for _, w := range r.Timeline {
		worst = max(worst, w.P999us)
	}
	fmt.Fprintf(&b, "| worst 100 ms window's p99.9 | %s µs |\n", us(worst))
	fmt.Fprintf(&b, "\nCommand: %s\n", f.cmd("rotations"))
	out["rotations"] = b.String()
	b.Reset()

	// Footprint.
	fp := f.extra["footprint"]
	r, err = f.need("footprint-rate")
	if err != nil {
		return nil, err
	}
	if fp == nil || r.Sidecar == nil || r.Floor == nil || r.Floor.Sidecar == nil {
		return nil, errors.New("footprint figures incomplete")
	}
	b.WriteString("| figure | value | command |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| sidecar binary (`keyshift-sidecar`, static, stripped) | %.0f MiB | `scripts/figures.sh` |\n", fp["binary_bytes"]/(1<<20))
	fmt.Fprintf(&b, "| startup to ready (exec to /readyz 200), GOMAXPROCS=1 | %.0f ms | same |\n", fp["startup_ms"])
	fmt.Fprintf(&b, "| RSS idle | %.0f MiB, of which %.0f MiB the binary's own file pages (shared by every pod on a node) | same |\n", fp["rss_idle_kib"]/1024, fp["rss_idle_file_kib"]/1024)
	fmt.Fprintf(&b, "| RSS at 1,000 encrypts/s of 1 KiB (max) | %.0f MiB, of which %.0f MiB file pages | %s |\n", float64(r.Sidecar.RSSMaxKiB)/1024, fp["rss_load_file_kib"]/1024, f.cmd("footprint-rate"))
	fmt.Fprintf(&b, "| CPU per 1,000 encrypts at 1,000/s | %.3f s; the floor in the same run: %.3f s | same |\n", r.Sidecar.CPUPer1000Ops, r.Floor.Sidecar.CPUPer1000Ops)
	out["footprint"] = b.String()
	b.Reset()

	// Benchmarks of the parts.
	b.WriteString("| benchmark | results | command |\n| --- | --- | --- |\n")
	for _, name := range slices.Sorted(maps.Keys(f.benches)) {
		for i, bl := range f.benches[name] {
			var ms []string
			for _, m := range bl.metrics {
				if m.unit == "B/op" || m.unit == "allocs/op" || m.unit == "MB/s" {
					continue
				}
				ms = append(ms, strconv.FormatFloat(m.value, 'g', 4, 64)+" "+m.unit)
			}
			c := "same"
			if i == 0 {
				c = f.cmd(name)
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s |\n", strings.TrimPrefix(bl.name, "Benchmark"), strings.Join(ms, ", "), c)
		}
	}
	out["gobench"] = b.String()
	b.Reset()

	if soak != "" {
		var s soakReport
		if err := readJSON(soak, &s); err == nil {
			fmt.Fprintf(&b, "| %s at %.0f calls/s, a rotation every %s | value |\n| --- | --- |\n", time.Duration(s.DurationS*float64(time.Second)).Round(time.Minute), s.Rate, s.RotateEvery)
			var errs int64
			for _, n := range s.Errors {
				errs += n
			}
			fmt.Fprintf(&b, "| calls, rotations, failed calls | %s, %d, %d |\n", num(float64(s.Calls)), s.Rotations, errs)
			fmt.Fprintf(&b, "| latency from each call's scheduled time: p50 / p99 / p99.9 / max | %s / %s / %s / %s µs |\n", us(s.Latency.P50), us(s.Latency.P99), us(s.Latency.P999), us(s.Latency.Max))
			for _, k := range []string{"rss_kib", "fds", "goroutines"} {
				fmt.Fprintf(&b, "| %s: start / end / max; least-squares slope after the warm-up | %s / %s / %s; **%+.1f per hour** |\n", soakLabel[k], num(s.Start[k]), num(s.End[k]), num(s.Max[k]), s.Slopes[k])
			}
			fmt.Fprintf(&b, "\nCommand: `make soak` (`scripts/soak.sh`, measured %s).\n", s.When)
			out["soak"] = b.String()
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	return out, nil
}

var soakLabel = map[string]string{"rss_kib": "RSS (KiB)", "fds": "open FDs", "goroutines": "goroutines"}

type soakReport struct {
	DurationS   float64            `json:"duration_s"`
	Rate        float64            `json:"rate"`
	RotateEvery string             `json:"rotate_every"`
	Rotations   int                `json:"rotations"`
	Calls       int64              `json:"calls"`
	Errors      map[string]int64   `json:"errors"`
	Slopes      map[string]float64 `json:"slopes_per_hour"`
	Start       map[string]float64 `json:"start"`
	End         map[string]float64 `json:"end"`
	Max         map[string]float64 `json:"max"`
	When        string             `json:"measured_at"`
	Latency     loadtest.Latency   `json:"latency_us"`
}

// spread is the range of a ratio over the rounds of its run.
func spread(p *loadtest.Report) string {
	if len(p.KeyshiftOverByRound) < 2 {
		return ""
	}
	return fmt.Sprintf(" (%.2f-%.2f)", slices.Min(p.KeyshiftOverByRound), slices.Max(p.KeyshiftOverByRound))
}

func label(target string) string {
	switch target {
	case "vault":
		return "Vault Transit 1.14"
	case "dapr":
		return "Dapr 1.14 crypto API"
	case "floor":
		return "floor (no crypto)"
	}
	return target
}

// plotData writes the rotations timeline for gnuplot.
func (f *figures) plotData(dir string) error {
	r := f.reports["rotations"]
	if r == nil {
		return nil
	}
	var b strings.Builder
	b.WriteString("# t_seconds p50_us p99_us p999_us calls errors\n")
	for _, w := range r.Timeline {
		fmt.Fprintf(&b, "%.2f %.1f %.1f %.1f %d %d\n", w.T, w.P50us, w.P99us, w.P999us, w.Calls, w.Errors)
	}
	if err := os.WriteFile(filepath.Join(dir, "rotations.dat"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	var rot strings.Builder
	for _, t := range r.RotationAt {
		fmt.Fprintf(&rot, "%.2f\n", t)
	}
	return os.WriteFile(filepath.Join(dir, "rotations.rot"), []byte(rot.String()), 0o644)
}

var blockRE = regexp.MustCompile(`(?s)<!-- figures:([a-z]+) -->\n.*?<!-- /figures:([a-z]+) -->`)

func rewrite(path string, blocks map[string]string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	var bad error
	out := blockRE.ReplaceAllStringFunc(string(b), func(m string) string {
		sm := blockRE.FindStringSubmatch(m)
		if sm[1] != sm[2] {
			bad = fmt.Errorf("figures block %s closed as %s", sm[1], sm[2])
			return m
		}
		t, ok := blocks[sm[1]]
		if !ok {
			return m // e.g. the soak when it was not run: keep the last one
		}
		seen[sm[1]] = true
		return "<!-- figures:" + sm[1] + " -->\n" + t + "<!-- /figures:" + sm[1] + " -->"
	})
	if bad != nil {
		return bad
	}
	for name := range blocks {
		if !seen[name] {
			return fmt.Errorf("%s has no <!-- figures:%s --> block", path, name)
		}
	}
	return os.WriteFile(path, []byte(out), 0o644)
}

var cmdRE = regexp.MustCompile("`((?:GOMAXPROCS=1 )?keyshift bench [^`]+|go test [^`]+-bench[^`]+)`")

// checkReadme fails unless every command in the README's figure blocks
// was run in this measurement, and every command run is in the README;
// every bench report in it must be free of errors.
func checkReadme(path string, f *figures) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	shown := map[string]bool{}
	for _, m := range blockRE.FindAllString(string(b), -1) {
		for _, c := range cmdRE.FindAllStringSubmatch(m, -1) {
			shown[c[1]] = true
		}
	}
	ran := map[string]bool{}
	for name, c := range f.cmds {
		ran[c] = true
		if r := f.reports[name]; r != nil && r.Failed() > 0 {
			return fmt.Errorf("%s: %d calls failed", c, r.Failed())
		}
	}
	var problems []string
	for c := range shown {
		if !ran[c] {
			problems = append(problems, "shown in the README but not run by scripts/figures.sh: "+c)
		}
	}
	for c := range ran {
		if !shown[c] {
			problems = append(problems, "run by scripts/figures.sh but not shown in the README: "+c)
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return errors.New(strings.Join(problems, "\n"))
	}
	fmt.Printf("figures: the README shows the %d commands this run ran, all without errors\n", len(ran))
	return nil
}
