#!/usr/bin/env bash
# Measures every figure in the README's Figures section in one run on this
# machine and writes the tables from the JSON it measured
# (go run ./test/figures). Each figure is one command below, run exactly
# as the README shows it, against servers this script starts on loopback
# and Unix sockets and stops on exit:
#   $SOCK    the sidecar (bin/keyshift-sidecar, every core) serving $KEYSET
#   $KEYSET  a keyset file under the local file KMS key $KEK
#   $VAULT   a Vault 1.14 dev server's Transit key `bench` (aes256-gcm96);
#            VAULT_TOKEN is its root token
#   $DAPR    daprd 1.14 with a local-storage crypto component (key bench, A256KW)
# The sidecar, Vault and daprd get the same cores; the load tool runs beside
# them, and every ratio is between targets of the same command, alternating
# in rounds (--rounds), so drift falls on all alike.
#
#   scripts/figures.sh           measure, write bin/figures/*, update README.md
#   scripts/figures.sh --short   every command with short durations, README untouched
#                                (CI: proves every README command runs as written)
set -euo pipefail
cd "$(dirname "$0")/.."
short=false
[ "${1:-}" = --short ] && short=true
OUT=${FIGURES_OUT:-bin/figures}
$short && OUT=${FIGURES_OUT:-bin/figures-short}
rm -rf "$OUT"
mkdir -p "$OUT"

# Built as the Dockerfile builds them: static, trimmed, stripped.
export CGO_ENABLED=0
go build -trimpath -ldflags="-s -w" -o bin/keyshift ./cmd/keyshift
go build -trimpath -ldflags="-s -w" -o bin/keyshift-sidecar ./cmd/keyshift-sidecar
bash scripts/install-vault.sh
bash scripts/install-daprd.sh
export PATH="$PWD/bin:$HOME/.cache/keyshift/bin:$PATH"

W=$(mktemp -d /tmp/ksfig.XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -- "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

KEK=local://$W/kek.json
KEYSET=$W/keyset.json
SOCK=$W/keyshift.sock
keyshift keyset create --file "$KEYSET" --name bench --kms "$KEK" >/dev/null

# Footprint: a sidecar with GOMAXPROCS=1 (what Go picks under a CPU limit
# of one core or less): exec to /readyz, RSS idle.
FOOTPRINT_SOCK=$W/fp.sock
t0=$(date +%s%N)
GOMAXPROCS=1 keyshift-sidecar --socket "$FOOTPRINT_SOCK" --keyset "bench=$KEYSET" --metrics-addr 127.0.0.1:19495 --log-level warn 2>>"$W/sidecar.log" &
pids+=($!); FPID=$!
until curl -sf http://127.0.0.1:19495/readyz >/dev/null 2>&1; do sleep 0.002; done
t1=$(date +%s%N)
sleep 2
python3 - "$OUT/footprint.json" "$FPID" "$(( (t1 - t0) / 1000000 ))" "$(stat -c %s bin/keyshift-sidecar)" <<'PY'
import json, sys
out, pid, startup, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rss = int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")))
pss_file = int(next(l.split()[1] for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss_File:")))
json.dump({"startup_ms": startup, "binary_bytes": size, "rss_idle_kib": rss, "rss_idle_file_kib": pss_file}, open(out, "w"))
PY

# Vault 1.14 dev server with a Transit key.
VPORT=18207
vault server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:$VPORT >"$W/vault.log" 2>&1 &
pids+=($!)
export VAULT_ADDR=http://127.0.0.1:$VPORT VAULT_TOKEN=root
until vault status >/dev/null 2>&1; do sleep 0.1; done
vault secrets enable transit >/dev/null
vault write -f transit/keys/bench type=aes256-gcm96 >/dev/null
VAULT=$VAULT_ADDR/transit/bench

# daprd with a local-storage crypto component.
bash scripts/start-daprd.sh "$W/dapr"
pids+=("$(cat "$W/dapr/daprd.pid")")
DAPR=$(cat "$W/dapr/address")

# The sidecar under load: every core.
keyshift-sidecar --socket "$SOCK" --keyset "bench=$KEYSET" --metrics-addr "" --log-level warn 2>>"$W/sidecar.log" &
pids+=($!)
until [ -S "$SOCK" ]; do sleep 0.01; done
sleep 0.5

# fig NAME 'COMMAND': run COMMAND (a keyshift bench) as written, its JSON
# report into $OUT/NAME.json and the command's text beside it.
fig() {
  local name=$1 cmd=$2 run=$2
  if $short; then
    run="$(sed -E 's/--duration [0-9.]+[a-z]+/--duration 300ms/; s/--rounds [0-9]+/--rounds 1/' <<<"$cmd") --warmup 100ms"
  fi
  printf '%s\n' "$cmd" >"$OUT/$name.cmd"
  echo "figures: $name: $cmd" >&2
  eval "$run --json $OUT/$name.json" >"$OUT/$name.txt"
}

# gobench NAME 'COMMAND': a go test -bench command as written; its output into $OUT/NAME.txt.
gobench() {
  local name=$1 cmd=$2 run=$2
  if $short; then
    run=$(sed -E 's/-benchtime [0-9a-z.]+/-benchtime 1x/; s/-count [0-9]+/-count 1/' <<<"$cmd")
  fi
  printf '%s\n' "$cmd" >"$OUT/$name.cmd"
  echo "figures: $name: $cmd" >&2
  eval "$run" >"$OUT/$name.txt"
}

# Rounds come in whole squares of the bench's order (n targets: n rounds,
# 2n when n is odd), so each target follows every other equally often.
# The sidecar against its floor, per op and batch size.
for op in encrypt decrypt rewrap; do
  for b in 1 100; do
    fig "floor-$op-$b" "keyshift bench --socket \$SOCK --clients 16 --mix $op=1 --batch $b --rounds 6 --duration 3s"
  done
done
# Batches of ciphertexts sealed one call per item (no two share a seed).
for op in decrypt rewrap; do
  fig "floor-$op-100-each" "keyshift bench --socket \$SOCK --clients 16 --mix $op=1 --batch 100 --seal-each --rounds 6 --duration 3s"
done
# Against the peers, unary and batch, same payloads and clients; two
# squares for the four-target commands, whose single rounds spread the
# most (keyshift / floor 0.77-1.00 over four rounds in one run). Encrypt
# for all three; decrypt without Dapr, whose DecryptAlpha1 fails and then
# panics under concurrent streams (see the README).
fig peers-1 'keyshift bench --socket $SOCK --clients 16 --mix encrypt=1 --rounds 8 --duration 3s --peer vault=$VAULT --peer dapr=$DAPR'
fig peers-100 'keyshift bench --socket $SOCK --clients 16 --mix encrypt=1 --batch 100 --rounds 8 --duration 3s --peer vault=$VAULT --peer dapr=$DAPR'
fig peers-decrypt-1 'keyshift bench --socket $SOCK --clients 16 --mix decrypt=1 --rounds 6 --duration 3s --peer vault=$VAULT'
fig peers-decrypt-100 'keyshift bench --socket $SOCK --clients 16 --mix decrypt=1 --batch 100 --rounds 6 --duration 3s --peer vault=$VAULT'
# In the app itself: one client, so per-call times add up.
fig inapp 'keyshift bench --socket $SOCK --clients 1 --mix encrypt=1,decrypt=1 --rounds 4 --duration 3s --peer in-process=$KEYSET --peer cached-dek=$KEK'
# Latency across live rotations at a fixed rate, from each call's scheduled time.
fig rotations 'keyshift bench --socket $SOCK --clients 8 --mix encrypt=1,decrypt=1 --rate 4000 --duration 12s --rotate-file $KEYSET --rotate-every 3s --floor=false'
# Footprint under load: the GOMAXPROCS=1 sidecar at 1,000 encrypts/s; its floor gets GOMAXPROCS=1 too.
fig footprint-rate 'GOMAXPROCS=1 keyshift bench --socket $FOOTPRINT_SOCK --clients 4 --mix encrypt=1 --rate 1000 --duration 20s'
python3 - "$OUT/footprint.json" "$FPID" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["rss_load_file_kib"] = int(next(l.split()[1] for l in open(f"/proc/{sys.argv[2]}/smaps_rollup") if l.startswith("Pss_File:")))
json.dump(d, open(sys.argv[1], "w"))
PY

# Benchmarks of the parts (go test -bench), each next to its own baseline.
gobench gobench-socket "go test -run '^\$' -bench Socket1KiB -benchtime 2s ./internal/sidecar"
gobench gobench-kms "go test -run '^\$' -bench EncryptVsKMS -benchtime 2s ./internal/sidecar"
gobench gobench-envelope "go test -run '^\$' -bench . -benchtime 1s ./internal/envelope"
gobench gobench-xds "go test -run '^\$' -bench XDSPropagation50 -benchtime 20x ./internal/sidecar"
gobench gobench-extauthz "go test -run '^\$' -bench ExtAuthzCheck -benchtime 2s ./internal/sidecar/extauthz"
gobench gobench-usage "go test -run '^\$' -bench UsageCost -count 5 ./internal/sidecar"

if $short; then
  go run ./test/figures -dir "$OUT" -check README.md
  # The README's load-testing commands, as written (the bench's duration
  # shortened): the demo kept serving in the background, the bench against it.
  mapfile -t lt < <(awk '/^## Load testing/{f=1} f&&/^```sh/{b=1;next} b&&/^```/{exit} b' README.md |
    sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | sed -E 's/ +# .*$//')
  [ "${#lt[@]}" = 2 ] || { echo "figures: expected the demo and a bench command in the README's Load testing block, got ${#lt[@]}" >&2; exit 1; }
  rm -rf /tmp/keyshift-demo
  setsid bash -c "${lt[0]}" >"$W/demo.log" 2>&1 &
  DEMO=$!
  pids+=(-$DEMO)
  for _ in $(seq 600); do [ -S /tmp/keyshift-demo/keyshift.sock ] && grep -q PASS "$W/demo.log" && break; sleep 0.1; done
  echo "figures: README: ${lt[1]}" >&2
  eval "$(sed -E 's/--duration [0-9.]+[a-z]+/--duration 1s/' <<<"${lt[1]}")" >"$OUT/readme-load.txt"
  kill -- -$DEMO; wait $DEMO 2>/dev/null || true
  rm -rf /tmp/keyshift-demo
  echo "figures: the README's load-testing commands ran as written"
else
  go run ./test/figures -dir "$OUT" -readme README.md -soak bin/soak/soak.json
  if command -v gnuplot >/dev/null; then
    gnuplot -e "dat='$OUT/rotations.dat'; rot='$OUT/rotations.rot'" scripts/latency-rotations.gp
    echo "plot: docs/latency-rotations.png (dashed lines: rotations)"
  else
    echo "gnuplot missing (apt-get install gnuplot-nox): docs/latency-rotations.png not redrawn" >&2
    exit 1
  fi
fi
