#!/usr/bin/env bash
# A profile-guided (PGO) release build of a2a-sidecar, trained on the
# bench's own scenarios (bench/README.md, "Profile-guided optimisation").
#
#   bench/pgo.sh [OUT]        default OUT: target/pgo/a2a-sidecar
#
# 1. an instrumented a2a-sidecar (`-Cprofile-generate`), with the features
#    of the build that ships (A2A_PGO_FEATURES, default: --no-default-features,
#    as docker/Dockerfile builds it);
# 2. the training: a2a-bench (a plain release build) runs its scenarios with
#    every sidecar served by that binary (A2A_BENCH_SIDECAR_BIN): inbound
#    with Layer 1 only, with every layer, with a PDP, the outbound chain, a
#    new connection per request, then the same over HTTP/2;
# 3. the profiles merged with rustc's own llvm-profdata (rustup's llvm-tools);
# 4. a2a-sidecar built again with `-Cprofile-use`, copied to OUT.
#
# The profile must come from the very features and flags of the final build:
# LLVM matches it to functions by their symbol names, which a change of
# features changes. Each build has its own target directory, so a second run
# only rebuilds what changed. About 20 minutes on 2 cores from a warm cache.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/pgo/a2a-sidecar}
read -r -a features <<<"${A2A_PGO_FEATURES:---no-default-features}"
data=target/pgo-data
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  rustup component add llvm-tools
fi

echo "== 1/4 instrumented a2a-sidecar" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PWD/$data" \
  cargo build --release --locked -p proxy "${features[@]}" --target-dir target/pgo-gen
# Build scripts ran instrumented too: their profiles are not the sidecar's.
rm -rf "$data" && mkdir -p "$data"

echo "== 2/4 training (a2a-bench scenarios served by it)" >&2
cargo build --release --locked -p bench
train() {
  A2A_BENCH_SIDECAR_BIN=target/pgo-gen/release/a2a-sidecar LLVM_PROFILE_FILE="$PWD/$data/%p.profraw" \
    target/release/a2a-bench --quick --repeat 1 "$@" >&2
}
train --only inbound-l1,inbound-all,inbound-pdp,chain,handshake
train --only inbound-all,chain --h2-streams 16
count=$(find "$data" -name '*.profraw' | wc -l)
[ "$count" -gt 0 ] || { echo "the training wrote no profile" >&2; exit 1; }

echo "== 3/4 merging $count profiles" >&2
"$profdata" merge -o "$data/merged.profdata" "$data"/*.profraw

echo "== 4/4 a2a-sidecar with the profile" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PWD/$data/merged.profdata" \
  cargo build --release --locked -p proxy "${features[@]}" --target-dir target/pgo
install -D -m 0755 target/pgo/release/a2a-sidecar "$out"
echo "$out" >&2
