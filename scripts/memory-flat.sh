#!/usr/bin/env bash
# Does the tracer's memory stay flat on a long-running server? (issue 17: "the tracer's memory
# stays flat over an hour-long run", estimated from a shorter run's growth.)
#
# For each mode, a steady-state workload runs for SECONDS while the resident memory is sampled
# every EVERY seconds:
#   - the traced program (VmRSS: the program plus the recorder inside it: live set, stack table,
#     unwinder caches, rings, all in the recorder's own mappings);
#   - the `zmtrace run` process (which also serves /debug/pprof/heap with --serve: a scrape every
#     SCRAPE seconds, so the replay it keeps across scrapes is measured too);
#   - the dump's size (disk, not memory: an event dump grows with the events by design).
# A line is fitted by least squares to the samples after the first WARMUP seconds; its slope is
# the growth per minute, extrapolated to an hour. RSS is not timing-sensitive: a busy machine
# changes how many requests are made, not whether memory grows per request.
#
# Modes: untraced (the baseline: the program's own growth), event (zmtrace run), aggregate
# (--aggregate), sampled (--sample 524288).
# Workloads: redis (redis-server under redis-benchmark in a loop, over a bounded key space:
# SET/GET/INCR/HSET/SADD/SPOP over 10,000 keys, LPUSH then as many LPOP); steady
# (samples/steady.c: malloc/free from three sites with a live set of 1,000 blocks).
#
#   scripts/memory-flat.sh [SECONDS] [WORKLOAD]      (default 180 redis)
#   MODES="event sampled" EVERY=5 WARMUP=30 SCRAPE=15 scripts/memory-flat.sh 600
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-180}
workload=${2:-redis}
every=${EVERY:-5}
warmup=${WARMUP:-30}
scrape=${SCRAPE:-15}
modes=${MODES:-untraced event aggregate sampled}
case $workload in
redis)
    for p in redis-server redis-benchmark redis-cli; do
        command -v $p >/dev/null || { echo "memory-flat: needs $p" >&2; exit 2; }
    done
    ;;
steady) ;;
*) echo "memory-flat: unknown workload $workload (redis or steady)" >&2; exit 2 ;;
esac
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
zm=$root/target/release/zmtrace
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
if [ "$workload" = steady ]; then
    cc -O2 -g -fomit-frame-pointer -pthread -Wall -o "$work/steady" "$root/samples/steady.c"
fi

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_mode() {
    local mode=$1
    local out=$work/$mode sport="" top prog load=""
    mkdir -p "$out"
    local cmd=()
    case $mode in
    untraced) ;;
    event | aggregate | sampled)
        sport=$(free_port)
        cmd=("$zm" run -o "$out" --serve "127.0.0.1:$sport")
        [ "$mode" = aggregate ] && cmd+=(--aggregate)
        [ "$mode" = sampled ] && cmd+=(--sample 524288)
        cmd+=(--)
        ;;
    *) echo "memory-flat: unknown mode $mode" >&2; exit 2 ;;
    esac
    local port
    port=$(free_port)
    if [ "$workload" = redis ]; then
        "${cmd[@]}" redis-server --port "$port" --save "" --appendonly no >"$out/log" 2>&1 &
    else
        "${cmd[@]}" "$work/steady" 100000000000 >"$out/log" 2>&1 &
    fi
    top=$!
    pids+=("$top")
    # The traced program: `zmtrace run`'s child (or the program itself, untraced).
    prog=$top
    if [ -n "$sport" ]; then
        for _ in $(seq 100); do
            prog=$(pgrep -P "$top" | head -1 || true)
            [ -n "$prog" ] && break
            sleep 0.1
        done
    fi
    if [ "$workload" = redis ]; then
        for _ in $(seq 100); do
            redis-cli -p "$port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
        (
            while :; do
                redis-benchmark -p "$port" -q -c 20 -P 8 -n 100000 -r 10000 \
                    -t set,get,incr,hset,sadd,spop,lpush,lpop >/dev/null 2>&1 || sleep 1
            done
        ) &
        load=$!
        pids+=("$load")
    fi
    local start now t last_scrape=-1000 took
    start=$(date +%s.%N)
    : >"$out/samples"
    while :; do
        now=$(date +%s.%N)
        t=$(python3 -c "print(f'{$now - $start:.1f}')")
        python3 -c "import sys; sys.exit(0 if $t < $secs else 1)" || break
        took=""
        if [ -n "$sport" ] && python3 -c "import sys; sys.exit(0 if $t - $last_scrape >= $scrape else 1)"; then
            took=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$sport/debug/pprof/heap" || echo fail)
            last_scrape=$t
        fi
        local dump_bytes=0
        for f in "$out"/zmtrace.*.zmt; do [ -e "$f" ] && dump_bytes=$(stat -c %s "$f"); done
        local zrss=0
        [ -n "$sport" ] && zrss=$(rss_kib "$top")
        echo "$t $(rss_kib "$prog") $zrss $dump_bytes ${took:--}" >>"$out/samples"
        sleep "$every"
    done
    [ -n "$load" ] && { kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true; }
    if [ "$workload" = redis ]; then
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$prog" 2>/dev/null || true
    else
        kill "$prog" 2>/dev/null || true
    fi
    wait "$top" 2>/dev/null || true
    # What the recording ended with (stacks interned, events), for saying what grew.
    for f in "$out"/zmtrace.*.zmt; do
        [ -e "$f" ] && "$zm" dump-info "$f" >"$out/info" 2>&1 || true
    done
}

for m in $modes; do
    echo "memory-flat: $m ($workload, ${secs}s)..." >&2
    run_mode "$m"
done

python3 - "$work" "$warmup" $modes <<'PY'
import os, sys
work, warmup, modes = sys.argv[1], float(sys.argv[2]), sys.argv[3:]

def fit(xs, ys):
    n = len(xs)
    if n < 2:
        return ys[0] if ys else 0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b

print(f"{'mode':10} {'what':14} {'at warm-up':>11} {'at end':>10} {'KiB/min':>9} {'1 h (fit)':>10}")
for m in modes:
    rows = [l.split() for l in open(os.path.join(work, m, "samples"))]
    rows = [r for r in rows if float(r[0]) >= warmup] or rows
    mins = [float(r[0]) / 60 for r in rows]
    for col, what in ((1, "program RSS"), (2, "zmtrace RSS"), (3, "dump")):
        ys = [float(r[col]) / (1024 if col == 3 else 1) for r in rows]  # KiB
        if not any(ys):
            continue
        a, b = fit(mins, ys)
        print(f"{m:10} {what:14} {ys[0]/1024:9.1f} M {ys[-1]/1024:8.1f} M {b:9.1f} {(a + b*60)/1024:8.1f} M")
    scrapes = [float(r[4]) for r in rows if r[4] not in ("-", "fail")]
    if scrapes:
        print(f"{m:10} {'scrape (s)':14} first {scrapes[0]:.3f}, last {scrapes[-1]:.3f}, max {max(scrapes):.3f} ({len(scrapes)} scrapes)")
    info = os.path.join(work, m, "info")
    if os.path.exists(info):
        for l in open(info):
            if any(k in l.lower() for k in ("stacks", "events", "modules")):
                print(f"{m:10} {'dump-info':14} {l.strip()}")
PY
