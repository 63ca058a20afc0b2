#!/usr/bin/env bash
# Builds a real Vault server for the Vault Transit backend's tests
# (internal/kms/vault) from the Go module proxy, into
# ${KEYSHIFT_BIN:-$HOME/.cache/keyshift/bin}/vault. Skips the build when the
# binary is already there. Prints how long it took.
#
# Vault v1.14.1 is the last Vault release under the MPL-2.0 licence (v1.14.2
# and later are BUSL). Its module zip lacks the nested modules its go.mod
# replaces with ./api and ./sdk, and the proxy serves no sdk cut from the
# v1.14.1 commit: the pseudo-version its go.mod requires predates APIs the
# server uses, and sdk v0.9.2 (four days after v1.14.1) adds a start-up check
# (framework: "CreateOperation but no ExistenceCheck") that a 1.14 system
# path fails. So the build uses sdk v0.9.2 with that one check turned off;
# nothing else is changed.
#
# About 10-20 minutes and 2-3 GB of module cache on 2 cores; runs under nice.
set -euo pipefail

VAULT_VERSION=v1.14.1
SDK_VERSION=v0.9.2
BUILD_ID=1 # bump when the build recipe changes
BIN_DIR=${KEYSHIFT_BIN:-$HOME/.cache/keyshift/bin}
BIN=$BIN_DIR/vault
STAMP=$BIN.build # records the recipe that built $BIN
want_stamp="vault ${VAULT_VERSION} sdk ${SDK_VERSION} build ${BUILD_ID}"

start=$(date +%s)
if [[ -x $BIN && -f $STAMP && $(cat "$STAMP") == "$want_stamp" ]] && "$BIN" version 2>/dev/null | grep -q "Vault ${VAULT_VERSION}"; then
	echo "install-vault: $BIN ($("$BIN" version)) already installed; skipping"
	exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/keyshift-vaultbuild.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# Build outside any workspace and outside the keyshift module.
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
dir=$(cd "$work" && go mod download -json "github.com/hashicorp/vault@${VAULT_VERSION}" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [[ -z $dir || ! -d $dir ]]; then
	echo "install-vault: could not download github.com/hashicorp/vault@${VAULT_VERSION}" >&2
	exit 1
fi
sdkdir=$(cd "$work" && go mod download -json "github.com/hashicorp/vault/sdk@${SDK_VERSION}" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
cp -r "$dir" "$work/src"
cp -r "$sdkdir" "$work/sdk"
chmod -R u+w "$work/src" "$work/sdk"

check='		if p.ExistenceCheck == nil {'
grep -qxF "$check" "$work/sdk/framework/backend.go" || {
	echo "install-vault: sdk ${SDK_VERSION} framework/backend.go changed; cannot apply the build patch" >&2
	exit 1
}
sed -i 's/^\t\tif p.ExistenceCheck == nil {$/\t\tif false \&\& p.ExistenceCheck == nil { \/\/ keyshift: check newer than Vault v1.14.1/' \
	"$work/sdk/framework/backend.go"

cd "$work/src"
for m in api api/auth/approle api/auth/kubernetes api/auth/userpass; do
	go mod edit -dropreplace "github.com/hashicorp/vault/$m"
done
go mod edit -replace=github.com/hashicorp/vault/sdk=../sdk

mkdir -p "$BIN_DIR"
echo "install-vault: building Vault ${VAULT_VERSION} (this takes a while)..."
nice -n 10 go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" .
mv "$BIN.tmp" "$BIN"
echo "$want_stamp" >"$STAMP"

end=$(date +%s)
echo "install-vault: installed $BIN ($("$BIN" version), $(du -h "$BIN" | cut -f1)) in $((end - start))s"
