#!/usr/bin/env bash
# Measures the figures in the README on this machine: sidecar footprint
# (startup to ready, RSS idle and at 1,000 encrypts/s, CPU per 1,000
# encrypts), throughput against the same-run baseline, and the latency
# timeline across three live rotations (docs/latency-rotations.png, drawn
# with gnuplot when it is installed: apt-get install gnuplot-nox).
# Everything runs on loopback/Unix sockets and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# Built as the Dockerfile builds them: static, trimmed, stripped.
export CGO_ENABLED=0
go build -trimpath -ldflags="-s -w" -o bin/keyshift ./cmd/keyshift
go build -trimpath -ldflags="-s -w" -o bin/keyshift-sidecar ./cmd/keyshift-sidecar
KS=bin/keyshift
W=$(mktemp -d /tmp/ksfig.XXXX)
trap 'kill $SPID $TPID 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir "$W/ks"
$KS keyset create --file "$W/ks/keyset.json" --name figures --kms "local://$W/kek.json" >/dev/null

# The footprint sidecar runs with GOMAXPROCS=1, what Go chooses in a pod
# whose sidecar has a CPU limit of one core or less.
t0=$(date +%s%N)
GOMAXPROCS=1 bin/keyshift-sidecar --socket "$W/ks.sock" --keyset "figures=$W/ks/keyset.json" --metrics-addr 127.0.0.1:19495 --log-level warn 2>"$W/sidecar.log" &
SPID=$!
until curl -sf http://127.0.0.1:19495/readyz >/dev/null 2>&1; do sleep 0.002; done
t1=$(date +%s%N)
startup_ms=$(( (t1 - t0) / 1000000 ))
sleep 2
rss_idle=$(awk '/VmRSS/ {print $2}' /proc/$SPID/status)

rss_file=$(awk '/Pss_File/ {print $2}' /proc/$SPID/smaps_rollup)
# The baseline echo inherits GOMAXPROCS=1 too, so CPU per call compares like with like.
GOMAXPROCS=1 $KS bench --socket "$W/ks.sock" --clients 4 --mix encrypt=1 --rate 1000 --duration 20s --json "$W/rate.json" >"$W/rate.txt"
rss_file_load=$(awk '/Pss_File/ {print $2}' /proc/$SPID/smaps_rollup)
kill $SPID
# The throughput sidecar uses every core, as does its baseline.
bin/keyshift-sidecar --socket "$W/kt.sock" --keyset "figures=$W/ks/keyset.json" --metrics-addr "" --log-level warn 2>>"$W/sidecar.log" &
TPID=$!
until [ -S "$W/kt.sock" ]; do sleep 0.01; done
sleep 0.5
$KS bench --socket "$W/kt.sock" --clients 16 --mix encrypt=1 --duration 10s --json "$W/full-enc.json" >"$W/full-enc.txt"
$KS bench --socket "$W/kt.sock" --clients 16 --mix encrypt=1,decrypt=1 --duration 10s --json "$W/full-mix.json" >"$W/full-mix.txt"
$KS bench --socket "$W/kt.sock" --clients 8 --mix encrypt=1,decrypt=1 --duration 12s --rate 4000 --rotate-file "$W/ks/keyset.json" --rotate-every 3s --floor=false --json "$W/rot.json" >"$W/rot.txt"

j() { python3 -c "import json,sys; d=json.load(open('$1')); print(eval('d'+sys.argv[1]))" "$2"; }
echo "| figure | value | command |"
echo "| --- | --- | --- |"
echo "| sidecar binary (\`keyshift-sidecar\`) | $(( $(stat -c %s bin/keyshift-sidecar) / 1048576 )) MiB | \`go build ./cmd/keyshift-sidecar\` |"
echo "| startup to ready (process exec to /readyz 200) | ${startup_ms} ms | \`scripts/figures.sh\` |"
echo "| RSS idle | $((rss_idle / 1024)) MiB, of which $((rss_file / 1024)) MiB are the binary's own file pages (shared by every pod on a node) | same |"
echo "| RSS at 1,000 encrypts/s of 1 KiB (max) | $(( $(j "$W/rate.json" "['sidecar']['rss_max_kib']") / 1024 )) MiB, of which $((rss_file_load / 1024)) MiB file pages | \`GOMAXPROCS=1 keyshift bench --mix encrypt=1 --rate 1000 --duration 20s\` |"
echo "| CPU per 1,000 encrypts at 1,000/s | $(printf %.3f "$(j "$W/rate.json" "['sidecar']['cpu_seconds_per_1000_calls']")") s; bare echo+AES-GCM in the same run: $(printf %.3f "$(j "$W/rate.json" "['baseline']['sidecar']['cpu_seconds_per_1000_calls']")") s | same |"
echo "| encrypt throughput, 16 clients, vs bare echo+AES-GCM | $(printf %.0f "$(j "$W/full-enc.json" "['calls_per_second']")") calls/s = $(printf %.2f "$(j "$W/full-enc.json" "['ratio_to_baseline']")") of baseline | \`keyshift bench --clients 16 --mix encrypt=1\` |"
echo "| encrypt+decrypt throughput, 16 clients, vs baseline | $(printf %.0f "$(j "$W/full-mix.json" "['calls_per_second']")") calls/s = $(printf %.2f "$(j "$W/full-mix.json" "['ratio_to_baseline']")") of baseline | \`keyshift bench --clients 16\` |"
echo "| p50 / p99 latency, 16 clients, encrypt | $(printf %.0f "$(j "$W/full-enc.json" "['latency_us']['P50']")") / $(printf %.0f "$(j "$W/full-enc.json" "['latency_us']['P99']")") µs (baseline $(printf %.0f "$(j "$W/full-enc.json" "['baseline']['latency_us']['P50']")") / $(printf %.0f "$(j "$W/full-enc.json" "['baseline']['latency_us']['P99']")") µs) | same |"
echo "| errors during 3 live rotations at 4,000 calls/s | $(j "$W/rot.json" "['errors_by_code']") over $(j "$W/rot.json" "['calls']") calls | \`keyshift bench --rate 4000 --rotate-every 3s --duration 12s\` |"

mkdir -p docs
python3 - "$W/rot.json" docs/latency-rotations.dat <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    f.write("# t_seconds p50_us p99_us calls errors\n")
    for w in d["timeline"]:
        f.write(f'{w["t_seconds"]:.2f} {w["p50_us"]:.1f} {w["p99_us"]:.1f} {w["calls"]} {w["errors"]}\n')
with open(sys.argv[2] + ".rot", "w") as f:
    for t in d.get("rotation_at_seconds", []):
        f.write(f"{t:.2f}\n")
PY
if command -v gnuplot >/dev/null; then
  gnuplot <<'GP'
set terminal pngcairo size 900,420 font "sans,10"
set output "docs/latency-rotations.png"
set title "keyshift sidecar: latency per 100 ms window across three live rotations (4,000 calls/s, 8 clients)"
set xlabel "seconds"
set ylabel "latency (µs)"
set key top left
set yrange [0:*]
rot = system("cat docs/latency-rotations.dat.rot")
do for [t in rot] { set arrow from t, graph 0 to t, graph 1 nohead dt 2 lc rgb "#888888" }
plot "docs/latency-rotations.dat" using 1:2 with lines lw 2 title "p50", \
     "docs/latency-rotations.dat" using 1:3 with lines lw 1 title "p99"
GP
  echo "plot: docs/latency-rotations.png (dashed lines: rotations)"
fi
rm -f docs/latency-rotations.dat.rot
