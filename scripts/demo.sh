#!/usr/bin/env bash
# Builds zmtrace, compiles the `leaky` sample (-O2, no frame pointers) and traces it:
# prints the dump's path, the summary, and what dump-info reads back.
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
done
