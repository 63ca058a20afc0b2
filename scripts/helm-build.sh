#!/usr/bin/env bash
# helm-build.sh: build Helm (helm.sh/helm/v3) from the Go module proxy into
# $KEYSHIFT_BIN/helm (default ~/.cache/keyshift/bin), for the chart in
# charts/keyshift and its tests (test/e2e/helm_test.go, TestNode).
#
# A plain `go install` builds it (Helm's go.mod has no replace lines); the
# link flags are those of Helm's own Makefile, so `helm version` names the
# release and the Kubernetes version Helm assumes without a cluster
# (`helm template`, `helm lint`: .Capabilities.KubeVersion and the
# deprecated-API check) is that of its client-go, not the v1.20 fallback.
#
# v3.22.0 is the newest v3 release; it builds with Go 1.26. Later runs find
# the binary and its version stamp and exit at once; FORCE=1 rebuilds.
# About 3-5 minutes cold on 2 cores, under nice.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${KEYSHIFT_CACHE:-$HOME/.cache/keyshift}"
KEYSHIFT_BIN="${KEYSHIFT_BIN:-$CACHE/bin}"
STAMP="$KEYSHIFT_BIN/.helm-version"
GO="${GO:-go}"
NICE="${NICE:-nice -n 10}"

if [[ "${FORCE:-0}" != 1 && -x "$KEYSHIFT_BIN/helm" && "$(cat "$STAMP" 2>/dev/null)" == "$HELM_VERSION" ]]; then
  echo "helm $HELM_VERSION already built in $KEYSHIFT_BIN"
  exit 0
fi
mkdir -p "$KEYSHIFT_BIN"
start=$(date +%s)

# Outside any module or workspace, so the keyshift go.mod plays no part.
work=$(mktemp -d "${TMPDIR:-/tmp}/keyshift-helmbuild.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0

echo "== resolving helm.sh/helm/v3@$HELM_VERSION"
gomod=$($GO mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[[ -f "$gomod" ]] || { echo "helm-build: could not download helm.sh/helm/v3@$HELM_VERSION" >&2; exit 1; }
# k8s.io/client-go v0.X.Y is Kubernetes 1.X (Helm's Makefile does the same).
client_go=$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -1)
[[ -n "$client_go" ]] || { echo "helm-build: no k8s.io/client-go in $gomod" >&2; exit 1; }

ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata="
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go"
done

echo "== building helm $HELM_VERSION (Kubernetes 1.$client_go capabilities)"
GOBIN="$work/bin" $NICE $GO install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$work/bin/helm" "$KEYSHIFT_BIN/helm"
echo "$HELM_VERSION" > "$STAMP"
"$KEYSHIFT_BIN/helm" version --short
echo "== helm built in $(( $(date +%s) - start ))s: $KEYSHIFT_BIN/helm"
