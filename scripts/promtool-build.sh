#!/usr/bin/env bash
# Builds promtool (Prometheus's rules checker and rule unit-test runner) from
# the Go module proxy into ${KEYSHIFT_BIN:-$HOME/.cache/keyshift/bin}/promtool,
# for the tests in test/ops that run `promtool check rules` and `promtool test rules`
# on keyshift's alerting rules (ops/prometheus). Skips the build when that binary is there and
# its version stamp matches. Prints how long it took.
#
# Prometheus publishes its Go module as v0.3MM.P for Prometheus 3.MM.P:
# v0.316.0 is Prometheus 3.16.0. That go.mod has no replace lines and asks
# for Go 1.26.7, so a plain `go install pkg@version` builds it with the Go
# keyshift uses; the version is written into the binary the way Prometheus's
# own build does (github.com/prometheus/common/version), so `promtool
# --version` says which release it is.
#
# Cold, about 14 minutes of CPU (promtool links every service-discovery
# client: Kubernetes, AWS, Azure, GCP, ...): 68 minutes of wall time were
# measured on 2 cores shared with other builds; under a second when cached.
# FORCE=1 rebuilds.
set -euo pipefail

PROMETHEUS_MODULE=github.com/prometheus/prometheus
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
# v0.3MM.P -> 3.MM.P
minor_patch=${PROMETHEUS_MODULE_VERSION#v0.3}
PROMETHEUS_VERSION="3.$((10#${minor_patch%%.*})).${minor_patch#*.}"
BIN_DIR=${KEYSHIFT_BIN:-$HOME/.cache/keyshift/bin}
BIN=$BIN_DIR/promtool
STAMP=$BIN.build # records the module version that built $BIN
want_stamp="promtool ${PROMETHEUS_MODULE}@${PROMETHEUS_MODULE_VERSION} (Prometheus ${PROMETHEUS_VERSION})"

start=$(date +%s)
if [[ ${FORCE:-0} != 1 && -x $BIN && -f $STAMP && $(cat "$STAMP") == "$want_stamp" ]]; then
	echo "promtool-build: $BIN (Prometheus ${PROMETHEUS_VERSION}) already built; skipping"
	exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/keyshift-promtool.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Build outside any workspace and outside the keyshift module, so
# `go install pkg@version` resolves Prometheus's own go.mod.
cd "$work"
export GOWORK=off CGO_ENABLED=0
v=github.com/prometheus/common/version
ldflags="-s -w -X $v.Version=${PROMETHEUS_VERSION} -X $v.Branch=module-proxy"
ldflags+=" -X $v.Revision=${PROMETHEUS_MODULE_VERSION} -X $v.BuildUser=keyshift"
ldflags+=" -X $v.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"
mkdir -p "$BIN_DIR"
echo "promtool-build: building ${PROMETHEUS_MODULE}/cmd/promtool@${PROMETHEUS_MODULE_VERSION} (Prometheus ${PROMETHEUS_VERSION})..."
GOBIN="$work/bin" nice -n 10 go install -trimpath -ldflags "$ldflags" \
	"${PROMETHEUS_MODULE}/cmd/promtool@${PROMETHEUS_MODULE_VERSION}"
"$work/bin/promtool" --version | grep -q "version ${PROMETHEUS_VERSION} " || {
	echo "promtool-build: the built promtool does not report version ${PROMETHEUS_VERSION}:" >&2
	"$work/bin/promtool" --version >&2
	exit 1
}
mv "$work/bin/promtool" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$want_stamp" >"$STAMP"

end=$(date +%s)
echo "promtool-build: installed $BIN ($(du -h "$BIN" | cut -f1), Prometheus ${PROMETHEUS_VERSION}) in $((end - start))s"
