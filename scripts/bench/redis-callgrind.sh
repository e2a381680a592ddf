#!/usr/bin/env bash
# Instructions per Redis request, untraced and in each recording mode, from callgrind (load-independent,
# unlike wall-clock on a shared machine). The counters are zeroed once the server answers and dumped
# right after redis-benchmark ends, so start-up and the exit leak check are left out: the figure is the
# steady request path (the server thread, the recorder's hooks and its writer thread).
#
#   scripts/bench/redis-callgrind.sh LIB [REQUESTS] [MODES...]
#       MODES: untraced event sampled allblocks (default: all four); sampling is 512 KiB with a fixed
#       seed (RCG_SEED, default 1): which blocks are sampled changes the hooks' paths, so compare at one seed.
# Prints, per mode, instructions per request, and keeps the callgrind files in $RCG_OUT (default /tmp/rcg).
set -euo pipefail
lib=$(realpath "$1"); requests=${2:-20000}; shift; shift || true
modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(untraced event sampled allblocks)
tests=${RCG_TESTS:-set,get,lpush,lpop}
out=${RCG_OUT:-/tmp/rcg}; mkdir -p "$out"
tools=${CALLGRIND_TOOLS:-/work/shared/tools}
senv="$out/static_env"; [ -x "$senv" ] || cc -O2 -static -o "$senv" "$tools/static_env.c"
for mode in "${modes[@]}"; do
    port=$((20000 + RANDOM % 12000)); dir="$out/$mode"; rm -rf "$dir"; mkdir -p "$dir"
    envs=()
    case $mode in
        untraced) ;;
        event) envs=(LD_PRELOAD="$lib" ZMTRACE_OUT="$dir") ;;
        sampled) envs=(LD_PRELOAD="$lib" ZMTRACE_OUT="$dir" ZMTRACE_SAMPLE=524288 ZMTRACE_SAMPLE_SEED="${RCG_SEED:-1}") ;;
        allblocks) envs=(LD_PRELOAD="$lib" ZMTRACE_OUT="$dir" ZMTRACE_SAMPLE=524288 ZMTRACE_SAMPLE_ALL=1 ZMTRACE_SAMPLE_SEED="${RCG_SEED:-1}") ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$dir/cg.%p" \
        "$senv" "${envs[@]}" redis-server --port "$port" --save "" --appendonly no --dir "$dir" \
        >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
    callgrind_control -z "$pid" >/dev/null 2>&1
    redis-benchmark -p "$port" -q -n "$requests" -P 16 -t "$tests" >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait "$pid" || true
    cg=$(ls -t "$dir"/cg.*.1 2>/dev/null | head -n 1 || true)
    [ -n "$cg" ] || cg=$(ls -S "$dir"/cg.* | head -n 1)
    total=$(callgrind_annotate "$cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
    nreq=$((requests * $(tr , "\n" <<<"$tests" | wc -l)))
    echo "$mode $total Ir, $((total / nreq)) per request ($cg)"
done
