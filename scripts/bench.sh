#!/usr/bin/env bash
# The benchmark suite: every workload untraced, under zmtrace, under zmtrace --aggregate and under
# heaptrack, interleaved over the repetitions, as one table (see scripts/bench/suite.py for what
# each column means, scripts/bench/workloads.py for the workloads).
#
#   scripts/bench.sh [--reps N] [--only NAME,...] [--quick] [--callgrind] [--list] [--keep DIR]
#
#   scripts/bench.sh                  # the whole suite, 5 repetitions (about an hour)
#   scripts/bench.sh --quick          # the smoke run: a few thousand operations per workload, once
#   scripts/bench.sh --only randdepth # the workloads whose name starts so
#   scripts/bench.sh --callgrind      # instruction counts per operation and per frame walked
# ZMTRACE_SAMPLE=BYTES (e.g. 524288) adds a configuration `sampled`: zmtrace run --sample BYTES.
# ZMTRACE_FLOOR=1 adds the floors forward and forward+thread; ZMTRACE_BENCH_MODES=untraced,sampled,...
# keeps only the configurations named.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
# Debian's python3: the suite needs nothing beyond the standard library.
exec /usr/bin/python3 "$root/scripts/bench/suite.py" --root "$root" \
    --zmtrace "$root/target/release/zmtrace" "$@"
