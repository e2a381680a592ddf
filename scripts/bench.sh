#!/usr/bin/env bash
# Per-call overhead on an allocation-heavy C program (scripts/bench/pairs.c: malloc+free pairs
# from a stack DEPTH frames deep, -O2 without frame pointers), untraced vs zmtrace vs heaptrack
# (where installed), interleaved A B C A B C… over REPS repetitions, with 1 and 2 threads.
# Prints medians (min-max) of ns per pair and the median of the per-repetition ratio to untraced.
#
#   scripts/bench.sh [REPS] [PAIRS] [DEPTH]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
reps=${1:-5}
pairs=${2:-1000000}
depth=${3:-19}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -fomit-frame-pointer -pthread -o "$work/pairs" "$root/scripts/bench/pairs.c"
modes=(untraced zmtrace)
command -v heaptrack >/dev/null && modes+=(heaptrack)
for threads in 1 2; do
    for rep in $(seq "$reps"); do
        for mode in "${modes[@]}"; do
            out="$work/$mode.$threads.$rep"
            mkdir -p "$out"
            case $mode in
                untraced) line=$("$work/pairs" "$pairs" "$depth" "$threads") ;;
                zmtrace) line=$("$root/target/release/zmtrace" run -o "$out" -- "$work/pairs" "$pairs" "$depth" "$threads" 2>/dev/null) ;;
                heaptrack) line=$(heaptrack -o "$out/ht" "$work/pairs" "$pairs" "$depth" "$threads" 2>/dev/null | grep "per pair") ;;
            esac
            echo "$threads $mode $rep ${line%% ns*}" >>"$work/results"
        done
    done
done
python3 - "$work/results" <<'PY'
import sys, statistics as st, collections
v = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    t, mode, rep, ns = line.split()
    v[(t, mode)][rep] = float(ns)
for t in sorted({k[0] for k in v}):
    base = v[(t, "untraced")]
    print(f"threads {t}:")
    for mode in ("untraced", "zmtrace", "heaptrack"):
        if (t, mode) not in v:
            continue
        xs = list(v[(t, mode)].values())
        line = f"  {mode:9} {st.median(xs):8.1f} ns/pair ({min(xs):.1f}-{max(xs):.1f})"
        if mode != "untraced":
            over = [v[(t, mode)][r] - base[r] for r in v[(t, mode)] if r in base]
            line += f"  overhead {st.median(over):.1f} ns/pair"
        print(line)
    if (t, "heaptrack") in v:
        r = [(v[(t, "zmtrace")][k] - base[k]) / (v[(t, "heaptrack")][k] - base[k]) for k in base]
        print(f"  zmtrace overhead / heaptrack overhead: median {st.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
PY
