#!/usr/bin/env bash
# start-daprd.sh DIR: starts Dapr's sidecar (daprd, from
# scripts/install-daprd.sh) in the background as a peer for the load tool,
# set up as internal/loadtest/daprtest sets it up for tests: standalone,
# no app, placement, scheduler or sentry, metrics off, warnings only, one
# crypto component "keys" of type crypto.dapr.localstorage holding one
# random 256-bit AES key "bench-key" (used with A256KW), and its gRPC and
# HTTP APIs on Unix sockets in DIR. Returns once daprd reports healthy and
# leaves in DIR:
#
#   daprd.pid   its process id
#   address     the load tool's peer address, for --peer dapr="$(cat DIR/address)"
#   daprd.log   its output
#   keys/ resources/ dapr-bench-grpc.socket dapr-bench-http.socket
#
# start-daprd.sh stop DIR ends it (SIGTERM, then SIGKILL after 10s).
set -euo pipefail

BIN="${KEYSHIFT_DAPRD_BIN:-${KEYSHIFT_BIN:-$HOME/.cache/keyshift/bin}/daprd}"
APP_ID=bench COMPONENT=keys KEY=bench-key WRAP=A256KW

usage() { echo "usage: $0 DIR | $0 stop DIR" >&2; exit 2; }

stop() {
	local dir=$1 pid
	[[ -f $dir/daprd.pid ]] || { echo "start-daprd: no $dir/daprd.pid" >&2; exit 1; }
	pid=$(cat "$dir/daprd.pid")
	if kill -TERM "$pid" 2>/dev/null; then
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$dir/daprd.pid"
	echo "start-daprd: stopped daprd (pid $pid)"
}

[[ $# -ge 1 ]] || usage
if [[ $1 == stop ]]; then
	[[ $# -eq 2 ]] || usage
	stop "$2"
	exit 0
fi
[[ $# -eq 1 ]] || usage
[[ -x $BIN ]] || { echo "start-daprd: daprd missing: run scripts/install-daprd.sh" >&2; exit 1; }
mkdir -p "$1"
dir=$(cd "$1" && pwd)
sock=$dir/dapr-$APP_ID-grpc.socket
http=$dir/dapr-$APP_ID-http.socket
if ((${#sock} > 107)); then
	echo "start-daprd: $sock is longer than a Unix socket path may be; use a shorter DIR" >&2
	exit 1
fi
if [[ -f $dir/daprd.pid ]] && kill -0 "$(cat "$dir/daprd.pid")" 2>/dev/null; then
	echo "start-daprd: daprd already runs from $dir (pid $(cat "$dir/daprd.pid")); stop it first: $0 stop $dir" >&2
	exit 1
fi

mkdir -p "$dir/keys" "$dir/resources"
chmod 700 "$dir/keys"
# Dapr reads a key file that is neither JSON nor PEM as a symmetric key, raw
# or base64.
(umask 077 && head -c 32 /dev/urandom | base64 >"$dir/keys/$KEY")
cat >"$dir/resources/crypto.yaml" <<EOF
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: $COMPONENT
spec:
  type: crypto.dapr.localstorage
  version: v1
  metadata:
    - name: path
      value: "$dir/keys"
EOF
rm -f "$sock" "$http"

args=(--mode standalone --app-id "$APP_ID" --resources-path "$dir/resources" --unix-domain-socket "$dir"
	--dapr-internal-grpc-listen-address 127.0.0.1 --enable-metrics=false --log-level warn)
echo "$BIN ${args[*]}" >"$dir/command"
(cd "$dir" && exec "$BIN" "${args[@]}" </dev/null >"$dir/daprd.log" 2>&1) &
pid=$!
echo "$pid" >"$dir/daprd.pid"

# Healthy (HTTP /v1.0/healthz answers 204) once its components are loaded.
for _ in $(seq 600); do
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "start-daprd: daprd exited at start:" >&2
		cat "$dir/daprd.log" >&2
		rm -f "$dir/daprd.pid"
		exit 1
	fi
	if [[ -S $sock && -S $http ]] &&
		[[ $(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$http" http://localhost/v1.0/healthz 2>/dev/null) == 204 ]]; then
		echo "unix://$sock?component=$COMPONENT&key=$KEY&wrap=$WRAP" >"$dir/address"
		echo "start-daprd: daprd (pid $pid) serves $(cat "$dir/address")"
		exit 0
	fi
	sleep 0.1
done
echo "start-daprd: daprd not healthy after 60s:" >&2
cat "$dir/daprd.log" >&2
stop "$dir" >&2
exit 1
