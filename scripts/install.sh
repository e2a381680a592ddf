#!/usr/bin/env bash
# Installs zmtrace without a package manager: builds it (release) and copies `zmtrace` into
# PREFIX/bin and the recorder library into PREFIX/lib/zmtrace/, where `zmtrace run` finds it.
#   scripts/install.sh [--prefix PREFIX]   (default: ~/.local)
# On Debian, `cargo deb -p zmtrace-cli` makes a package instead (README: Installing).
set -euo pipefail
prefix=$HOME/.local
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        *) echo "usage: $0 [--prefix PREFIX]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
cargo build --release --quiet
built=${CARGO_TARGET_DIR:-target}/release
install -D -m 755 "$built/zmtrace" "$prefix/bin/zmtrace"
install -D -m 644 "$built/libzmtrace.so" "$prefix/lib/zmtrace/libzmtrace.so"
echo "installed $prefix/bin/zmtrace and $prefix/lib/zmtrace/libzmtrace.so"
