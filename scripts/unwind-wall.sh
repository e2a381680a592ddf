#!/usr/bin/env bash
# Wall-clock time per allocator call of the unwinder's workloads, with two preload libraries
# (e.g. main's and a branch's), interleaved: each repetition runs every workload with each
# library, untraced too, in turn; prints the median of each and the per-repetition ratio of B to
# A. The machine's load changes timings: say how loaded it was (uptime) with the figures.
#
#   scripts/unwind-wall.sh LIB_A LIB_B [REPS]     (default 5)
#
# Workloads: scripts/bench/mix.c (1 and 2 threads, 2M calls each, stacks 19-25 deep) and, when
# it is there, scripts/bench/randdepth.c (1 and 2 threads, 1M operations each), both of which
# print "NS ns per call".
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 LIB_A LIB_B [REPS]" >&2; exit 2; }
a=$(realpath "$1"); b=$(realpath "$2"); reps=${3:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cc -O2 -g -fomit-frame-pointer -pthread -o "$work/mix" "$root/scripts/bench/mix.c"
runs=("mix-1t:$work/mix 2000000 1" "mix-2t:$work/mix 2000000 2")
if [ -f "$root/scripts/bench/randdepth.c" ]; then
    cc -O2 -g -fomit-frame-pointer -pthread -o "$work/randdepth" "$root/scripts/bench/randdepth.c"
    runs+=("randdepth-1t:$work/randdepth 1000000 1" "randdepth-2t:$work/randdepth 1000000 2")
fi
echo "load before: $(uptime)" >&2
for r in $(seq "$reps"); do
    for spec in "${runs[@]}"; do
        name=${spec%%:*}; cmd=${spec#*:}
        for lib in none A B; do
            case $lib in none) pre=;; A) pre=$a;; B) pre=$b;; esac
            mkdir -p "$work/out"
            ns=$(env ${pre:+LD_PRELOAD=$pre} ZMTRACE_OUT="$work/out" $cmd | awk '/ns per call/ {print $1}')
            rm -rf "$work/out"
            echo "$r $name $lib $ns"
        done
    done
done > "$work/times"
echo "load after: $(uptime)" >&2
/usr/bin/python3 - "$work/times" <<'PY'
import sys, statistics, collections
t = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, name, lib, ns = line.split()
    t[name].setdefault(lib, {})[r] = float(ns)
print("| workload | untraced ns/call | A ns/call | B ns/call | B / A (median of per-repetition ratios) |")
print("|---|---|---|---|---|")
for name, d in t.items():
    med = {k: statistics.median(v.values()) for k, v in d.items()}
    ratios = [d["B"][r] / d["A"][r] for r in d["A"]]
    print(f"| {name} | {med['none']:.1f} | {med['A']:.1f} | {med['B']:.1f} | "
          f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)}) |")
PY
