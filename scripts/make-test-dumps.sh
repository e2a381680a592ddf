#!/usr/bin/env bash
# Remakes the dumps that the report crate's expected-output tests read (src/report/tests/data/):
# samples/leaky.c, demo.c, churn.c and diffable.c (twice: 10 and 25) recorded by `zmtrace run`,
# and leaky.c again with --aggregate. The sample binaries are kept next to the dumps (bin/): the
# tests symbolize the samples' own frames from them, whatever the machine, and every other module
# (libc, the loader) by the symbolizer's fallback, module+offset (see tests/expected.rs).
#
# After remaking them, bless the expected files and read the diff:
#   ZMTRACE_BLESS=1 cargo test -p zmtrace-report --test expected && git diff src/report/tests
set -euo pipefail
cd "$(dirname "$0")/.."
data=src/report/tests/data
cargo build -q
zmtrace=target/debug/zmtrace
mkdir -p "$data/bin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The tests' own flags (src/cli/tests/integration/common/mod.rs, SAMPLE_CFLAGS).
for s in leaky demo churn diffable; do
    # Source paths relative to the repository (samples/leaky.c), wherever it is checked out.
    cc -O2 -g -fomit-frame-pointer -pthread -Wall -ffile-prefix-map="$PWD"=. \
        -o "$data/bin/$s" "samples/$s.c"
done
# record NAME [zmtrace run options] -- PROGRAM ARGS: one run, its only dump as $data/NAME.zmt.
record() {
    local name=$1
    shift
    rm -rf "$tmp/run"
    mkdir "$tmp/run"
    "$zmtrace" run -o "$tmp/run" "$@" 2>/dev/null
    local dumps=("$tmp"/run/*.zmt)
    [ ${#dumps[@]} -eq 1 ] || { echo "$name: ${#dumps[@]} dumps" >&2; exit 1; }
    mv "${dumps[0]}" "$data/$name.zmt"
}
record leaky -- "$data/bin/leaky"
record demo -- "$data/bin/demo"
record churn -- "$data/bin/churn"
record diffable-10 -- "$data/bin/diffable" 10
record diffable-25 -- "$data/bin/diffable" 25
record leaky-aggregated --aggregate -- "$data/bin/leaky"
ls -l "$data" "$data/bin"
