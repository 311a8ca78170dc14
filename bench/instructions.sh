#!/usr/bin/env bash
# Instructions per request of one sidecar: repeatable where CPU time on a
# shared machine is not (bench/README.md, "Instructions per request"). Two
# runs under callgrind that differ only in their request counts; the
# sidecar's totals, differenced, divided by the difference.
#
#   bench/instructions.sh [SCENARIO [SIDECAR]]     default: inbound-all all
#
# SIDECAR is the bench's config name for the process to count (`all` serves
# inbound-all, `l1` inbound-l1 and handshake, `pdp` inbound-pdp, `deny`
# inbound-deny, `caller` the outbound half of chain). Needs valgrind and a
# profiling build:
#   cargo build --profile profiling -p bench
# A2A_BENCH_BIN, LOW and HIGH override the binary and the two request counts.
set -euo pipefail
scenario=${1:-inbound-all}
sidecar=${2:-all}
bin=${A2A_BENCH_BIN:-target/profiling/a2a-bench}
low=${LOW:-1000}
high=${HIGH:-21000}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
[ -x "$bin" ] || { echo "$bin is missing: cargo build --profile profiling -p bench" >&2; exit 1; }
out=$(mktemp -d)
for n in "$low" "$high"; do
  A2A_BENCH_SIDECAR_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$out/%q{A2A_BENCH_SIDECAR}.$n --log-file=$out/%q{A2A_BENCH_SIDECAR}.$n.log" \
    "$bin" --only "$scenario" --requests "$n" --warmup-ms 0 --repeat 1 --connections 8 >/dev/null
done
total() {
  local file="$out/$sidecar.$1"
  [ -f "$file" ] || { echo "no count for sidecar '$sidecar' ($(ls "$out"))" >&2; exit 1; }
  awk '/^(summary|totals):/ { print $2; exit }' "$file"
}
a=$(total "$low")
b=$(total "$high")
echo "$scenario ($sidecar): $(( (b - a) / (high - low) )) instructions per request (callgrind files in $out)"
