#!/usr/bin/env bash
# Analysis speed on a big dump: scripts/bench/pairs.c makes PAIRS malloc+free pairs (2 events
# each; default 5,000,000 pairs = 10 million events), traced by zmtrace and by heaptrack; then
# `zmtrace report` and `heaptrack_print` each read their own dump of that same run, REPS times,
# alternating. Prints the dump sizes, the median (min-max) wall time of each, and peak RSS.
#
#   scripts/analysis-speed.sh [PAIRS] [REPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pairs=${1:-5000000}
reps=${2:-3}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
zmtrace=$root/target/release/zmtrace
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -fomit-frame-pointer -pthread -o "$work/pairs" "$root/scripts/bench/pairs.c"
"$zmtrace" run -o "$work" -- "$work/pairs" "$pairs" 19 1 >/dev/null 2>&1
dump=$(ls "$work"/zmtrace.pairs.*.zmt)
events=$("$zmtrace" report --json "$dump" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])')
echo "zmtrace dump: $(du -h "$dump" | cut -f1), $events events"
have_heaptrack=0
if command -v heaptrack >/dev/null && command -v heaptrack_print >/dev/null; then
    heaptrack -o "$work/ht" "$work/pairs" "$pairs" 19 1 >/dev/null 2>&1 || true
    ht=$(ls "$work"/ht*.zst 2>/dev/null | head -1 || true)
    if [ -n "$ht" ]; then
        have_heaptrack=1
        echo "heaptrack data: $(du -h "$ht" | cut -f1)"
    fi
fi
measure() { # label command...
    /usr/bin/time -o "$work/t" -f "%e %M" "${@:2}" >/dev/null 2>&1
    echo "$1 $(tail -1 "$work/t")" >>"$work/times"
}
for _ in $(seq "$reps"); do
    measure zmtrace-report "$zmtrace" report "$dump"
    [ "$have_heaptrack" = 1 ] && measure heaptrack_print heaptrack_print "$ht"
done
python3 - "$work/times" <<'PY'
import sys, statistics as st, collections
t = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, secs, rss = line.split()
    t[name].append((float(secs), int(rss)))
for name, v in t.items():
    s = [x[0] for x in v]
    print(f"{name:16} {st.median(s):7.2f} s ({min(s):.2f}-{max(s):.2f}), peak RSS {max(x[1] for x in v)/1024:.0f} MiB")
if len(t) == 2:
    z = st.median(x[0] for x in t["zmtrace-report"]); h = st.median(x[0] for x in t["heaptrack_print"])
    print(f"heaptrack_print / zmtrace report: {h / z:.1f}x")
PY
