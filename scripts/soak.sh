#!/usr/bin/env bash
# soak.sh: the real sidecar binary under steady load with live rotations for
# a long while, watching for leaks. Builds bin/keyshift and
# bin/keyshift-sidecar as figures.sh does, creates a keyset with the local
# KMS in a temp dir, starts the sidecar (metrics on loopback) and runs
#
#   keyshift bench --clients 8 --mix encrypt=1,decrypt=1 --rate 1000
#     --duration $SOAK_DURATION --rotate-file KEYSET --rotate-every $SOAK_ROTATE_EVERY
#
# sampling the sidecar's RSS (VmRSS), open FDs (/proc/PID/fd) and goroutines
# (go_goroutines on /metrics) every $SOAK_SAMPLE. At the end it fits a
# least-squares slope per hour to each series after a warm-up (the first 10%
# of the run or 2 minutes, whichever is less) and writes $SOAK_OUT/soak.json.
#
#   SOAK_DURATION      how long the bench runs (default 30m)
#   SOAK_ROTATE_EVERY  a two-phase rotation this often (default 1m)
#   SOAK_SAMPLE        sampling interval (default 10s)
#   SOAK_OUT           output directory (default bin/soak): samples.csv,
#                      idle.csv (before and after the load), bench.json,
#                      bench.txt, sidecar.log, soak.json
# Durations are Go durations (90s, 1m30s, 2h).
#
# Fails (non-zero) if the bench reports any error, rotated fewer times than
# the run allows, the sidecar dies or stops answering /metrics, or it does
# not stop cleanly on SIGTERM at the end. The slopes are reported, not
# judged: read them. Everything runs on loopback and a Unix socket; the trap
# stops the sidecar and the bench and removes the temp dir on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${SOAK_DURATION:-30m}
ROTATE=${SOAK_ROTATE_EVERY:-1m}
SAMPLE=${SOAK_SAMPLE:-10s}
OUT=${SOAK_OUT:-bin/soak}
RATE=1000
CLIENTS=8

# Go duration -> seconds; fails on anything else.
secs() {
	python3 - "$1" <<'PY'
import re, sys
s = sys.argv[1]
units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", s)
if not parts or "".join(n + u for n, u in parts) != s:
    sys.exit(f"soak: {s!r} is not a Go duration (like 90s, 1m30s, 2h)")
print(f"{sum(float(n) * units[u] for n, u in parts):g}")
PY
}
duration_s=$(secs "$DURATION")
rotate_s=$(secs "$ROTATE")
sample_s=$(secs "$SAMPLE")

export CGO_ENABLED=0
go build -trimpath -ldflags="-s -w" -o bin/keyshift ./cmd/keyshift
go build -trimpath -ldflags="-s -w" -o bin/keyshift-sidecar ./cmd/keyshift-sidecar

mkdir -p "$OUT"
rm -f "$OUT"/{samples.csv,idle.csv,bench.json,bench.txt,sidecar.log,soak.json}
W=$(mktemp -d /tmp/kssoak.XXXX)
SPID="" BPID=""
cleanup() {
	for p in $BPID $SPID; do kill "$p" 2>/dev/null || true; done
	for p in $BPID $SPID; do wait "$p" 2>/dev/null || true; done
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# alive PID: the process exists and is not a zombie.
alive() {
	local st
	st=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
	[[ -n $st && $st != Z && $st != X ]]
}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics=http://127.0.0.1:$port/metrics

mkdir "$W/ks"
bin/keyshift keyset create --file "$W/ks/keyset.json" --name soak --kms "local://$W/kek.json" >/dev/null
bin/keyshift-sidecar --socket "$W/ks.sock" --keyset "soak=$W/ks/keyset.json" --metrics-addr "127.0.0.1:$port" --log-level warn 2>"$OUT/sidecar.log" &
SPID=$!
for ((i = 0; ; i++)); do
	curl -sf --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
	if ! alive "$SPID" || ((i >= 300)); then
		echo "soak: the sidecar did not become ready; its log ($OUT/sidecar.log):" >&2
		cat "$OUT/sidecar.log" >&2
		exit 1
	fi
	sleep 0.1
done

start=$(date +%s%N)
echo "t_seconds,rss_kib,fds,goroutines" >"$OUT/samples.csv"
echo "phase,t_seconds,rss_kib,fds,goroutines" >"$OUT/idle.csv"
died=""
# sample [PHASE]: one row of samples.csv (under load), or of idle.csv with
# PHASE (before, after), or a reason in $died.
sample() {
	local t rss fds m g f
	t=$(( ($(date +%s%N) - start) / 1000000 ))
	if ! alive "$SPID"; then died="the sidecar died (pid $SPID, at ${t} ms)"; return 1; fi
	rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SPID/status")
	f=("/proc/$SPID/fd/"*)
	fds=${#f[@]}
	if ! m=$(curl -sf --max-time 10 "$metrics"); then
		alive "$SPID" && died="the sidecar did not answer $metrics (at ${t} ms)" || died="the sidecar died (pid $SPID, at ${t} ms)"
		return 1
	fi
	g=$(awk '$1 == "go_goroutines" {print $2}' <<<"$m")
	if [[ -z $rss || -z $g ]]; then died="incomplete sample at ${t} ms: rss=$rss goroutines=$g"; return 1; fi
	if [[ -n ${1:-} ]]; then
		printf '%s,%d.%03d,%s,%s,%s\n' "$1" $((t / 1000)) $((t % 1000)) "$rss" "$fds" "$g" >>"$OUT/idle.csv"
	else
		printf '%d.%03d,%s,%s,%s\n' $((t / 1000)) $((t % 1000)) "$rss" "$fds" "$g" >>"$OUT/samples.csv"
	fi
}

# Only samples taken while the bench runs go into the series; the idle
# sidecar just before and a few seconds after it (connections closed) go to
# idle.csv: what the load leaves behind shows there.
sample before || { echo "soak: $died" >&2; exit 1; }
echo "soak: $DURATION at $RATE calls/s, $CLIENTS clients, rotating every $ROTATE, sampling every $SAMPLE; sidecar pid $SPID, metrics $metrics, output $OUT/"
bin/keyshift bench --socket "$W/ks.sock" --clients "$CLIENTS" --mix encrypt=1,decrypt=1 --rate "$RATE" \
	--duration "$DURATION" --rotate-file "$W/ks/keyset.json" --rotate-every "$ROTATE" --floor=false \
	--json "$OUT/bench.json" >"$OUT/bench.txt" 2>&1 &
BPID=$!
while [[ -z $died ]]; do
	sleep "$sample_s"
	alive "$BPID" || break
	sample || break
done
if [[ -n $died ]]; then
	echo "soak: $died; stopping the bench" >&2
	kill "$BPID" 2>/dev/null || true
fi
brc=0
wait "$BPID" || brc=$?
BPID=""

# The sidecar must still be up, and stop cleanly when asked.
src=0
if [[ -z $died ]]; then
	sleep 3
	sample after || true
fi
if [[ -z $died ]]; then
	if alive "$SPID"; then
		kill -TERM "$SPID"
		wait "$SPID" || src=$?
		((src == 0)) || died="the sidecar exited $src on SIGTERM at the end"
	else
		died="the sidecar died before the end of the run"
	fi
fi
SPID=""

rc=0
python3 - "$OUT" "$brc" "$duration_s" "$rotate_s" "$RATE" "$died" <<'PY' || rc=$?
import csv, json, os, sys

out, brc, duration_s, rotate_s, rate, died = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
series = ("rss_kib", "fds", "goroutines")
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(os.path.join(out, "samples.csv")))]
idle = {r.pop("phase"): {k: float(v) for k, v in r.items()} for r in csv.DictReader(open(os.path.join(out, "idle.csv")))}
try:
    bench = json.load(open(os.path.join(out, "bench.json")))
except (OSError, ValueError) as e:
    bench = None
    print(f"soak: no bench report: {e}", file=sys.stderr)

def slope_per_hour(pts):
    # least squares of value against time; None with fewer than 2 distinct times
    n = len(pts)
    if n < 2:
        return None
    mx = sum(t for t, _ in pts) / n
    my = sum(v for _, v in pts) / n
    sxx = sum((t - mx) ** 2 for t, _ in pts)
    if sxx == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in pts) / sxx * 3600

span = rows[-1]["t_seconds"] if rows else 0.0
warmup = min(0.1 * span, 120.0)
kept = [r for r in rows if r["t_seconds"] >= warmup]
num = lambda v: int(v) if float(v).is_integer() else v
report = {
    "duration_s": bench["elapsed_seconds"] if bench else None,
    "rate": rate,
    "rotate_every": f"{rotate_s:g}s",
    "measured_at": __import__("datetime").datetime.now(__import__("datetime").timezone.utc).strftime("%Y-%m-%d"),
    "latency_us": bench.get("latency_us") if bench else None,
    "rotations": bench["rotations"] if bench else None,
    "calls": bench["calls"] if bench else None,
    "errors": (bench.get("errors_by_code") or {}) if bench else None,
    "samples": len(rows),
    "warmup_s": round(warmup, 1),
    "slopes_per_hour": {k: (None if (s := slope_per_hour([(r["t_seconds"], r[k]) for r in kept])) is None else round(s, 2)) for k in series},
    "start": {k: num(rows[0][k]) for k in series} if rows else None,
    "end": {k: num(rows[-1][k]) for k in series} if rows else None,
    "max": {k: num(max(r[k] for r in rows)) for k in series} if rows else None,
    "idle_before": {k: num(idle["before"][k]) for k in series} if "before" in idle else None,
    "idle_after": {k: num(idle["after"][k]) for k in series} if "after" in idle else None,
}
failures = []
if died:
    failures.append(died)
if bench is None:
    failures.append("the bench wrote no report")
else:
    if report["errors"]:
        failures.append(f"the bench reported errors: {report['errors']}")
    want = int(duration_s // rotate_s) - 1 if rotate_s > 0 else 0  # the last tick may land on the end of the run
    if rotate_s > 0 and report["rotations"] < max(want, 1 if rotate_s < duration_s else 0):
        failures.append(f"only {report['rotations']} rotations in {duration_s:g}s at one per {rotate_s:g}s")
if brc != 0:
    failures.append(f"the bench exited {brc}")
if len(kept) < 3:
    failures.append(f"only {len(kept)} samples after the warm-up: too few for a slope")
report["failures"] = failures
with open(os.path.join(out, "soak.json"), "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")

print()
print(open(os.path.join(out, "bench.txt")).read().rstrip())
print()
print(f"sidecar over {span:.0f}s, {len(rows)} samples; slope fitted after a {warmup:.0f}s warm-up ({len(kept)} samples)")
cols = ("idle_before", "start", "end", "max", "idle_after")
print(f"{'':12}{'idle before':>12}{'start':>10}{'end':>10}{'max':>10}{'idle after':>12}{'slope/hour':>14}")
for k in series:
    s = report["slopes_per_hour"][k]
    ib, st, en, mx, ia = (report[x][k] if report[x] else "-" for x in cols)
    print(f"{k:12}{ib:>12}{st:>10}{en:>10}{mx:>10}{ia:>12}{'-' if s is None else f'{s:+.1f}':>14}")
print(f"{report['calls']} calls, {report['rotations']} rotations, errors {report['errors']}")
print(f"written: {out}/soak.json, samples.csv, idle.csv, bench.json, bench.txt, sidecar.log")
if failures:
    print("SOAK FAILED: " + "; ".join(failures), file=sys.stderr)
    sys.exit(1)
print("soak: ok")
PY
exit "$rc"
