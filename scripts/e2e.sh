#!/usr/bin/env bash
# e2e.sh: keyshift's end-to-end tests (test/e2e, build tag e2e), never skipped:
# whatever they need and is not cached is built first.
#
#   - against a real kube-apiserver + etcd: the injector and the controller
#     (TestInjectorAgainstRealAPIServer, TestControllerAgainstRealAPIServer);
#   - the Helm chart (charts/keyshift) against `kustomize build manifests`,
#     and as a server-side dry run against the real API server
#     (TestHelmChart, TestHelmChartAgainstRealAPIServer);
#   - on a real one-node cluster (scripts/cluster.sh: kubelet, containerd,
#     runc, CNI, kube-proxy, CoreDNS): the whole system installed from
#     manifests/ as a user installs it, then again with `helm install`
#     (TestNode). Needs root.
#
# Builds, when not cached in ~/.cache/keyshift/bin: the Kubernetes binaries
# (scripts/kube-build.sh), CoreDNS (scripts/coredns-build.sh), Helm
# (scripts/helm-build.sh) and local-kms (scripts/install-local-kms.sh);
# installs the Debian packages the node needs.
# Extra arguments go to `go test` (e.g. -run TestNode).
set -euo pipefail
cd "$(dirname "$0")/.."
GO="${GO:-go}"
export KEYSHIFT_BIN="${KEYSHIFT_BIN:-$HOME/.cache/keyshift/bin}"

./scripts/kube-build.sh
./scripts/coredns-build.sh
./scripts/helm-build.sh
./scripts/install-local-kms.sh
exec $GO test -tags e2e -count=1 -v -timeout 60m ./test/e2e/ "$@"
