#!/usr/bin/env bash
# Builds the real SPIRE server, agent and OIDC discovery provider, at the version go.mod pins
# (github.com/spiffe/spire v1.13.3, as Go tools), into target/spire/.
# Built once: reused while go.mod and go.sum are unchanged. The SPIRE
# integration tests (proxy/tests/spire.rs) call this; so does .ci/run.
#
# Needs the Go toolchain (1.26) and the Go module proxy. If either is
# missing, it says which and fails: nothing falls back to the project's own
# Workload API server.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${A2A_SPIRE_BIN:-$root/target/spire}"
version="v1.13.3"

if ! command -v go >/dev/null 2>&1; then
    echo "tools/spire/build.sh: the Go toolchain ('go') is not on PATH: install Go 1.26 to build SPIRE $version" >&2
    exit 1
fi
want="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1)"
stamp="$out/.built-from"
if [ -x "$out/spire-server" ] && [ -x "$out/spire-agent" ] && [ -x "$out/oidc-discovery-provider" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "tools/spire/build.sh: reusing SPIRE $version in $out (go.mod and go.sum unchanged)"
    exit 0
fi

mkdir -p "$out"
started=$(date +%s)
cd "$here"
# The go.mod's own toolchain, never one downloaded behind our back.
export GOTOOLCHAIN=local
# The version the binaries report (semver without the v: the datastore parses it).
ldflags="-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${version#v}"
if ! go mod download github.com/spiffe/spire; then
    echo "tools/spire/build.sh: the Go module proxy did not serve github.com/spiffe/spire@$version or one of its modules (see above)" >&2
    exit 1
fi
if ! go build -trimpath -ldflags "$ldflags" -o "$out/" \
    github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent \
    github.com/spiffe/spire/support/oidc-discovery-provider; then
    echo "tools/spire/build.sh: building SPIRE $version failed (see above)" >&2
    exit 1
fi
for bin in spire-server spire-agent; do
    got="$("$out/$bin" --version 2>&1 || true)"
    if [ "$got" != "${version#v}" ]; then
        echo "tools/spire/build.sh: $out/$bin --version says '$got', not ${version#v}" >&2
        exit 1
    fi
done
echo "$want" > "$stamp"
echo "tools/spire/build.sh: built SPIRE ${version#v} (server, agent, OIDC discovery provider) into $out in $(( $(date +%s) - started )) s"
