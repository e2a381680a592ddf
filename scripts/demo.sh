#!/usr/bin/env bash
# The main job on a sample: builds zmtrace, compiles samples/demo.c (a small word counter that
# leaks memory of every class, grows a buffer by reallocs and makes temporaries; -O2, no frame
# pointers) and traces it. Prints the run's summary, what dump-info reads back, the leak report
# (lost first), the realloc churn, and writes a flamegraph and the page of the run.
#   scripts/demo.sh [OUTDIR]   (default: target/demo)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cc >/dev/null || { echo "demo.sh: needs a C compiler: apt-get install gcc" >&2; exit 2; }
cargo build --release --quiet
zmtrace=${CARGO_TARGET_DIR:-$root/target}/release/zmtrace
out=${1:-$root/target/demo}
mkdir -p "$out"
cc -O2 -g -fomit-frame-pointer -pthread -o "$out/demo" samples/demo.c
rm -f "$out"/zmtrace.*.zmt
"$zmtrace" run -o "$out" -- "$out/demo"
dump=$(ls "$out"/zmtrace.demo.*.zmt)
echo
"$zmtrace" dump-info "$dump"
echo
"$zmtrace" leaks "$dump" --depth 3
echo
"$zmtrace" churn "$dump" --depth 3 --top 3
"$zmtrace" flamegraph "$dump" --metric lost -o "$out/lost.svg"
echo "flamegraph of the bytes lost: $out/lost.svg"
"$zmtrace" view "$dump" -o "$out/demo.html"
echo "the page of the run (open it in a browser): $out/demo.html"
