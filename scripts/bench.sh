#!/usr/bin/env bash
# The benchmark suite: allocation-heavy C workloads (scripts/bench/mix.c with 1 and 2 threads, a
# deep-stack variant, scripts/bench/pairs.c), each untraced, under zmtrace, under zmtrace
# --aggregate and under heaptrack (where installed), interleaved over REPS repetitions; then dump
# sizes, analysis time and peak RSS. See scripts/bench/suite.py for what each line means.
# Redis is measured by scripts/redis-throughput.sh.
#
#   scripts/bench.sh [REPS] [CALLS_PER_THREAD]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
reps=${1:-5}
calls=${2:-1000000}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -fomit-frame-pointer -pthread -o "$work/mix" "$root/scripts/bench/mix.c"
cc -O2 -fomit-frame-pointer -pthread -o "$work/pairs" "$root/scripts/bench/pairs.c"
python3 "$root/scripts/bench/suite.py" "$root" "$work" "$root/target/release/zmtrace" "$reps" "$calls"
