#!/usr/bin/env bash
# The README's picture of `zmtrace view`: Debian's redis-server traced by zmtrace through
# `redis-benchmark -n 20000 -t set,get,lpush`, its page written with `zmtrace view`, and a
# screenshot taken by headless Chromium. Needs redis-server, redis-tools and chromium.
#
#   scripts/viewer-screenshot.sh [OUT.png]      (default: viewer/screenshot-redis.png)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/viewer/screenshot-redis.png}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
zmtrace=$root/target/release/zmtrace
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 12000))
"$zmtrace" run -o "$work" -- redis-server --port "$port" --save "" --appendonly no --dir "$work" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-benchmark -p "$port" -q -n 20000 -t set,get,lpush >/dev/null 2>&1
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait "$pid" || true
dump=$(ls "$work"/zmtrace.redis-server.*.zmt)
"$zmtrace" view "$dump" -o "$work/redis.html"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1500 \
    --screenshot="$out" "file://$work/redis.html" 2>/dev/null
echo "$out"
