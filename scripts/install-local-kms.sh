#!/usr/bin/env bash
# Builds local-kms (github.com/nsmithuk/local-kms, MIT), a real AWS KMS API
# server for the AWS KMS backend's tests (internal/kms/aws), from the Go
# module proxy into ${KEYSHIFT_BIN:-$HOME/.cache/keyshift/bin}/local-kms.
# Skips the build when that binary is already there and was built from the
# pinned version. Prints how long it took.
#
# About 25 s cold on 2 cores (empty module and build caches), under 10 s with
# the modules cached. The module has no replace directives, so a plain
# `go install pkg@version` works.
set -euo pipefail

LOCAL_KMS_MODULE=github.com/nsmithuk/local-kms
LOCAL_KMS_VERSION=v0.0.0-20260228092603-2a5e92d09ab6
BIN_DIR=${KEYSHIFT_BIN:-$HOME/.cache/keyshift/bin}
BIN=$BIN_DIR/local-kms

start=$(date +%s)
# `go version -m` reads the module version embedded in the binary, so a
# binary built from another version is rebuilt.
if [[ -x $BIN ]] && go version -m "$BIN" 2>/dev/null | grep -qE "^[[:space:]]+mod[[:space:]]+${LOCAL_KMS_MODULE}[[:space:]]+${LOCAL_KMS_VERSION}([[:space:]]|$)"; then
	echo "install-local-kms: $BIN (${LOCAL_KMS_VERSION}) already installed; skipping"
	exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/keyshift-localkms.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Build outside any workspace and outside the keyshift module, so
# `go install pkg@version` resolves local-kms's own go.mod.
cd "$work"
export GOWORK=off CGO_ENABLED=0
mkdir -p "$BIN_DIR"
echo "install-local-kms: building ${LOCAL_KMS_MODULE}@${LOCAL_KMS_VERSION}..."
GOBIN="$work/bin" nice -n 10 go install -trimpath \
	-ldflags "-s -w -X main.Version=${LOCAL_KMS_VERSION}" \
	"${LOCAL_KMS_MODULE}@${LOCAL_KMS_VERSION}"
mv "$work/bin/local-kms" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"

end=$(date +%s)
echo "install-local-kms: installed $BIN ($(du -h "$BIN" | cut -f1)) in $((end - start))s"
