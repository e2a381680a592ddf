#!/usr/bin/env bash
# The cost of the instrumented zmalloc with tracing off, against plain malloc and against a plain
# uninstrumented zmalloc with Redis's accounting: the same loop of alloc+free pairs, the three
# alternating in one process over REPS rounds, for both layouts. Prints the median ns per pair
# of each and the medians of the per-round ratios.
#
#   scripts/bench-zmalloc.sh [PAIRS] [REPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pairs=${1:-10000000}
reps=${2:-9}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p zmtrace-zmalloc
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p zmtrace-zmalloc \
    --features prefix-size --target-dir "$root/target/zmalloc-prefix"
for layout in usable prefix; do
    lib=$root/target/release/libzmalloc.a
    [ $layout = prefix ] && lib=$root/target/zmalloc-prefix/release/libzmalloc.a
    cc -O2 -I"$root/src/zmalloc/include" -o "$work/zpairs-$layout" "$root/scripts/bench/zpairs.c" "$lib" $libs
    "$work/zpairs-$layout" "$pairs" "$reps" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin]
m = [float(r[1]) for r in rows]; p = [float(r[3]) for r in rows]; z = [float(r[5]) for r in rows]
rm = [b / a for a, b in zip(m, z)]; rp = [b / a for a, b in zip(p, z)]
print(f"'"$layout"' layout: malloc {st.median(m):.2f} ns/pair, plain zmalloc {st.median(p):.2f}, "
      f"zmtrace zmalloc (tracing off) {st.median(z):.2f}; ratio to malloc {st.median(rm):.3f} "
      f"({min(rm):.3f}-{max(rm):.3f}), to plain zmalloc {st.median(rp):.3f} ({min(rp):.3f}-{max(rp):.3f})")'
done
