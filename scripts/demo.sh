#!/usr/bin/env bash
# Builds zmtrace, compiles the `leaky` sample (-O2, no frame pointers) and traces it: prints the
# dump's path and summary, what dump-info reads back, the leak and churn reports, and writes a
# flamegraph.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet
out=${1:-$root/target/demo}
mkdir -p "$out"
cc -O2 -g -fomit-frame-pointer -pthread -o "$out/leaky" samples/leaky.c
rm -f "$out"/zmtrace.*.zmt
target/release/zmtrace run -o "$out" -- "$out/leaky"
for dump in "$out"/zmtrace.*.zmt; do
    target/release/zmtrace dump-info "$dump"
    target/release/zmtrace leaks "$dump" --depth 4
    target/release/zmtrace churn "$dump" --depth 3 --top 3
    target/release/zmtrace flamegraph "$dump" --metric bytes -o "$out/bytes.svg"
    echo "flamegraph of the bytes allocated: $out/bytes.svg"
    target/release/zmtrace view "$dump" -o "$out/leaky.html"
    echo "the page of the run (open it in a browser): $out/leaky.html"
done
