#!/usr/bin/env bash
# A profile-guided (PGO) release build of the production a2a-sidecar
# (without the `dev` feature, as docker/Dockerfile builds it), trained on
# the bench's own scenarios (bench/README.md, "Sixth session").
#
#   bench/pgo.sh [OUT]                  both steps; OUT default: target/pgo/a2a-sidecar
#   bench/pgo.sh profile PROFDATA       the profile only (the image's `pgo-profile` stage)
#   bench/pgo.sh build PROFDATA OUT     the final build from a profile (the image's `build` stage)
#
# profile: 1. an instrumented a2a-sidecar (`-Cprofile-generate`); 2. the
#   training: a2a-bench (a plain release build) runs its scenarios with every
#   sidecar but `rotation` served by that binary (A2A_BENCH_SIDECAR_BIN):
#   inbound with Layer 1 only, with every layer, with a PDP, a path scan
#   refused by Layer 2 (every decision new, every event to an audit sink on
#   stdout), the outbound chain, a new connection per request, then allowed
#   requests over HTTP/2 (see bench/README.md for what stays cold); 3. the
#   raw profiles merged with rustc's own llvm-profdata (rustup's llvm-tools).
# build: a2a-sidecar built again with `-Cprofile-use`; refused if the result
#   still carries the profiling runtime.
#
# Both builds have the same features and flags: LLVM matches the profile to
# functions by symbol name, and a feature changes every symbol of the crate.
# `--target` keeps the flags off build scripts and proc-macros. About 20
# minutes on 2 cores with a warm cargo cache (a new profile rebuilds every
# crate of the final build: rustc tracks the profile as an input).
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
if [ -n "${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
  echo "CARGO_ENCODED_RUSTFLAGS is set: cargo would ignore the PGO flags (RUSTFLAGS)" >&2
  exit 1
fi
# The build that ships: never the `dev` feature (docker/check.py checks these lines).
sidecar() {
  cargo build --release --locked -p proxy --no-default-features --target "$host" "$@"
}

profile() {
  local out=$1
  # The raw profiles, removed however the script ends.
  data=$(mktemp -d)
  trap 'rm -rf "$data"' EXIT
  echo "== 1/3 instrumented a2a-sidecar" >&2
  # The path in the flag stays the same from run to run (a new one would
  # rebuild everything); LLVM_PROFILE_FILE below says where profiles go.
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PWD/target/pgo-gen/profraw" sidecar --target-dir target/pgo-gen
  echo "== 2/3 training (a2a-bench scenarios served by it)" >&2
  cargo build --release --locked -p bench
  train() {
    A2A_BENCH_SIDECAR_BIN="target/pgo-gen/$host/release/a2a-sidecar" LLVM_PROFILE_FILE="$data/%m-%p.profraw" \
      target/release/a2a-bench --quick --repeat 1 "$@" >&2
  }
  train --only inbound-l1,inbound-all,inbound-pdp,inbound-deny,chain,handshake
  train --only inbound-all,chain --h2-streams 16
  # Each run starts the same five served sidecars (l1, all, pdp, deny,
  # caller): one missing profile is a sidecar that did not exit cleanly.
  local count
  count=$(find "$data" -name '*.profraw' | wc -l)
  if [ "$count" -ne 10 ]; then
    echo "the training wrote $count profiles, not 10 (a sidecar did not exit cleanly?)" >&2
    exit 1
  fi
  echo "== 3/3 merging $count profiles" >&2
  local profdata
  profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
  [ -x "$profdata" ] || rustup component add llvm-tools
  mkdir -p "$(dirname "$out")"
  "$profdata" merge -o "$out" "$data"/*.profraw
}

build() {
  local profdata out bin
  profdata=$(realpath "$1")
  out=$2
  echo "== a2a-sidecar with the profile $profdata" >&2
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profdata" sidecar --target-dir target/pgo
  bin=target/pgo/$host/release/a2a-sidecar
  # An instrumented binary (a flag gone wrong) names its profile's variable.
  if grep -q LLVM_PROFILE_FILE "$bin"; then
    echo "$bin carries the profiling runtime: not a final build" >&2
    exit 1
  fi
  install -D -m 0755 "$bin" "$out"
  echo "$out" >&2
}

case "${1:-}" in
  profile) profile "${2:?bench/pgo.sh profile PROFDATA}" ;;
  build) build "${2:?bench/pgo.sh build PROFDATA OUT}" "${3:?bench/pgo.sh build PROFDATA OUT}" ;;
  *)
    profile target/pgo-data/merged.profdata
    build target/pgo-data/merged.profdata "${1:-target/pgo/a2a-sidecar}"
    ;;
esac
