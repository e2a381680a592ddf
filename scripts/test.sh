#!/usr/bin/env bash
# The tests, on any Debian machine with the Rust toolchain: checks that every program the tests
# drive is installed, installs what is missing when run as root (apt-get), or else prints the one
# command that installs it and exits 2. Then runs `cargo test --workspace --no-fail-fast` (every failure, not the first) with any arguments
# given instead of `--workspace` (e.g. `scripts/test.sh -p zmtrace-format`). .ci/run calls exactly
# this, with no arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need: "package:what-proves-it-is-there" (a command on PATH, or a file).
needs=(
    "gcc:cc"                                   # the C samples
    "g++:c++"                                  # the C++ sample
    "libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a" # the statically linked program run refuses
    "redis-server:redis-server"                # the Redis end-to-end tests
    "redis-tools:redis-cli"
    "redis-tools:redis-benchmark"
    "libjemalloc2:/usr/lib/x86_64-linux-gnu/libjemalloc.so.2" # a program linked with jemalloc
    "chromium:chromium"                        # the viewer's page, driven in headless Chromium
    "valgrind:valgrind"                        # leak classes compared with memcheck's
    "gawk:gawk"                                # a Debian program's leaks against memcheck's
    "golang-go:go"                             # go tool pprof reads the pprof exports
)
missing=()
for n in "${needs[@]}"; do
    pkg=${n%%:*} what=${n#*:}
    if [[ $what == /* ]]; then [ -e "$what" ] && continue; else command -v "$what" >/dev/null && continue; fi
    [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "scripts/test.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "scripts/test.sh: packages the tests need are missing: ${missing[*]}; install them with:" >&2
        echo "  sudo apt-get install -y ${missing[*]}" >&2
        exit 2
    fi
fi
# The Debian package's test makes the package with cargo-deb (crates.io, no root needed).
command -v cargo-deb >/dev/null || cargo install --quiet --locked cargo-deb
if [ $# -eq 0 ]; then
    exec cargo test --workspace --no-fail-fast
fi
exec cargo test "$@"
