#!/usr/bin/env bash
# Peak resident memory (GNU time's %M, the traced process itself) untraced vs traced by zmtrace
# (libzmtrace.so preloaded, as `zmtrace run` does), median of REPS repetitions:
#   1. redis-server under redis-benchmark: SET/GET/INCR/LPUSH, then APPEND to 100 keys, BGSAVE
#      (the load of src/cli/tests/integration/redis.rs, REQUESTS per test instead of 20,000);
#   2. samples/threads.c: 8 threads x 1,000,000 allocator calls.
#
#   scripts/rss.sh [REPS] [REQUESTS]        (needs redis-server, redis-benchmark, /usr/bin/time)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
reps=${1:-3}
requests=${2:-100000}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
lib=$root/target/release/libzmtrace.so
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -g -fomit-frame-pointer -pthread -Wall -o "$work/threads" "$root/samples/threads.c"

# peak RSS in KiB of: [traced] program args...
peak() {
    local mode=$1 out=$work/out.$RANDOM
    shift
    mkdir -p "$out"
    if [ "$mode" = zmtrace ]; then
        /usr/bin/time -f %M -o "$out/rss" env LD_PRELOAD="$lib" ZMTRACE_OUT="$out" "$@" >/dev/null
    else
        /usr/bin/time -f %M -o "$out/rss" "$@" >/dev/null
    fi
    cat "$out/rss"
    rm -rf "$out"
}

redis_peak() { # mode
    local mode=$1 out=$work/redis.$RANDOM port=$((20000 + RANDOM % 12000))
    mkdir -p "$out"
    local server=(redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no
        --dir "$out" --daemonize no)
    if [ "$mode" = zmtrace ]; then
        /usr/bin/time -f %M -o "$out/rss" env LD_PRELOAD="$lib" ZMTRACE_OUT="$out" "${server[@]}" >"$out/log" 2>&1 &
    else
        /usr/bin/time -f %M -o "$out/rss" "${server[@]}" >"$out/log" 2>&1 &
    fi
    local pid=$!
    local up=
    for _ in $(seq 200); do
        if [ "$(timeout 5 redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then up=1; break; fi
        sleep 0.1
    done
    if [ -z "$up" ]; then
        echo "redis-server ($mode) did not start:" >&2; cat "$out/log" >&2; kill "$pid" 2>/dev/null; exit 1
    fi
    timeout 300 redis-benchmark -p "$port" -q -n "$requests" -P 16 -t set,get,incr,lpush >/dev/null
    timeout 300 redis-benchmark -p "$port" -q -n "$requests" -P 16 -r 100 \
        APPEND key:__rand_int__ 0123456789abcdef >/dev/null
    timeout 5 redis-cli -p "$port" bgsave >/dev/null
    for _ in $(seq 200); do
        timeout 5 redis-cli -p "$port" info persistence | grep -q 'rdb_bgsave_in_progress:0' && break
        sleep 0.1
    done
    timeout 5 redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait "$pid" || true
    cat "$out/rss"
    rm -rf "$out"
}

: >"$work/results"
for rep in $(seq "$reps"); do
    for mode in untraced zmtrace; do
        echo "redis $mode $(redis_peak "$mode")" >>"$work/results"
        echo "threads $mode $(peak "$mode" "$work/threads")" >>"$work/results"
    done
done

python3 - "$work/results" "$reps" "$requests" <<'PY'
import sys, statistics as st, collections
rows = [l.split() for l in open(sys.argv[1])]
kib = collections.defaultdict(list)
for prog, mode, v in rows:
    kib[(prog, mode)].append(int(v))
mib = lambda k: k / 1024
print(f"peak RSS, median of {sys.argv[2]} runs (min-max), MiB")
labels = {"redis": f"redis-server, redis-benchmark {sys.argv[3]} x set,get,incr,lpush,append + BGSAVE",
          "threads": "samples/threads.c, 8 threads x 1,000,000 calls"}
for prog in ("redis", "threads"):
    u, z = kib[(prog, "untraced")], kib[(prog, "zmtrace")]
    print(f"{labels[prog]}")
    print(f"  untraced {mib(st.median(u)):8.1f} ({mib(min(u)):.1f}-{mib(max(u)):.1f})")
    print(f"  zmtrace  {mib(st.median(z)):8.1f} ({mib(min(z)):.1f}-{mib(max(z)):.1f})")
    print(f"  difference {mib(st.median(z) - st.median(u)):+.1f} MiB")
PY
