#!/usr/bin/env bash
# Redis at SHUTDOWN NOSAVE: zmtrace's leak check against valgrind memcheck on the same load, and
# what heaptrack would call leaked (every block live at exit).
#
#   scripts/redis-leaks.sh [KEYS] [REQUESTS]     (defaults: 100000 keys, 5000 requests per test)
#
# The load is deterministic, so both runs end with the same keyspace: DEBUG POPULATE KEYS, then
# redis-benchmark -n REQUESTS -t set,get,lpush (no -r: one string key, one list of REQUESTS
# elements). Debian's redis-server is linked with jemalloc; memcheck replaces it with its own
# allocator (--soname-synonyms=somalloc=*jemalloc*), zmtrace leaves it in place.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
requests=${2:-5000}
cargo build --release --quiet
zmtrace=$PWD/target/release/zmtrace
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

serve() { # PORT COMMAND...: starts the server, waits for PING
    local port=$1
    shift
    "$@" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
        --daemonize no --enable-debug-command yes >"$work/server-$port.log" 2>&1 &
    for _ in $(seq 600); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return
        sleep 0.1
    done
    echo "the server on port $port did not start" >&2
    exit 1
}

load() { # PORT
    redis-cli -p "$1" debug populate "$keys" >/dev/null
    redis-benchmark -p "$1" -q -n "$requests" -t set,get,lpush >/dev/null
    echo "keys: $(redis-cli -p "$1" dbsize), list: $(redis-cli -p "$1" llen mylist)"
    redis-cli -p "$1" shutdown nosave >/dev/null 2>&1 || true
    wait
}

echo "== zmtrace"
mkdir "$work/dumps"
start=$(date +%s.%N)
serve 7411 "$zmtrace" run -o "$work/dumps" -- redis-server
load 7411
echo "run: $(echo "$(date +%s.%N) - $start" | bc) s"
dump=$(ls "$work"/dumps/zmtrace.redis-server.*.zmt | head -1)
"$zmtrace" dump-info "$dump" | sed -n '/^leak check/,/still reachable/p'
"$zmtrace" leaks "$dump" --json --top 0 |
    jq -r '"all live at exit (heaptrack): \(.leaked_bytes) bytes in \(.leaked_blocks) blocks",
           (.kinds | to_entries[] | "\(.key): \(.value.bytes) bytes in \(.value.blocks) blocks"),
           "suppressed: \(.suppressed.bytes) bytes in \(.suppressed.blocks) blocks"'

echo "== valgrind memcheck"
start=$(date +%s.%N)
serve 7412 valgrind --leak-check=full --soname-synonyms='somalloc=*jemalloc*' \
    --log-file="$work/memcheck.log" redis-server
load 7412
echo "run: $(echo "$(date +%s.%N) - $start" | bc) s"
grep -E "in use at exit|definitely lost:|indirectly lost:|possibly lost:|still reachable:" \
    "$work/memcheck.log" | sed 's/^==[0-9]*== *//'
