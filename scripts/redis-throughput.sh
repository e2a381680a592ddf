#!/usr/bin/env bash
# Redis throughput untraced, under zmtrace (event dump), zmtrace --aggregate and heaptrack,
# interleaved A B C D A B C D… over REPS repetitions. Prints, per command, the median requests/s
# of each and the median of the per-repetition ratio to the untraced run; the dump sizes (zmtrace's
# event dump, its aggregated dump, heaptrack's file); and the tracer's own memory (the server's
# peak RSS over untraced, plus heaptrack_interpret's). With BENCH_JSON=FILE it also writes every
# figure there, for scripts/bench.sh (which prints them in its table).
#
#   scripts/redis-throughput.sh [REPS] [REQUESTS] [PIPELINE]
#       ZMTRACE_SAMPLE=524288 adds a mode `sampled` (zmtrace run --sample 524288) and a mode
#       `allblocks` (the same with --all-blocks: every block tracked, for exact leak classes)
#       (needs redis-server, redis-tools, heaptrack)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
reps=${1:-5}
requests=${2:-100000}
pipeline=${3:-16}
tests=set,get,incr,lpush
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
zmtrace=$root/target/release/zmtrace
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 12000))

for p in redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools heaptrack:heaptrack; do
    command -v "${p%%:*}" >/dev/null || { echo "${p%%:*} is missing: apt-get install ${p#*:}" >&2; exit 1; }
done
modes=(untraced zmtrace aggregate heaptrack)
# ZMTRACE_SAMPLE=BYTES adds a mode "sampled": `zmtrace run --sample BYTES` (e.g. 524288). Taken
# out of the environment: the recorder reads it too, and the other modes must not sample.
sample=${ZMTRACE_SAMPLE:-}
unset ZMTRACE_SAMPLE
[ -n "$sample" ] && modes=(untraced zmtrace aggregate sampled allblocks heaptrack)

run_one() { # mode rep
    local mode=$1 rep=$2 out="$work/$1.$2"
    mkdir -p "$out"
    local server=(redis-server --port "$port" --save "" --appendonly no --dir "$out")
    case $mode in
        untraced) "${server[@]}" >"$out/log" 2>&1 & ;;
        zmtrace) "$zmtrace" run -o "$out" -- "${server[@]}" >"$out/log" 2>&1 & ;;
        aggregate) "$zmtrace" run --aggregate -o "$out" -- "${server[@]}" >"$out/log" 2>&1 & ;;
        sampled) "$zmtrace" run --sample "$sample" -o "$out" -- "${server[@]}" >"$out/log" 2>&1 & ;;
        allblocks) "$zmtrace" run --sample "$sample" --all-blocks -o "$out" -- "${server[@]}" >"$out/log" 2>&1 & ;;
        heaptrack) heaptrack -o "$out/heaptrack" "${server[@]}" >"$out/log" 2>&1 & ;;
    esac
    local pid=$!
    local up=""
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && { up=1; break; }; sleep 0.1; done
    # redis-benchmark with no server spins at full CPU for ever (seen: a server that did not start
    # in 10 s left the script hanging); say what happened instead.
    if [ -z "$up" ]; then
        echo "redis-throughput: $mode repetition $rep: redis-server on port $port did not answer in 10 s:" >&2
        tail -5 "$out/log" >&2
        exit 1
    fi
    redis-benchmark -p "$port" -q -n "$requests" -P "$pipeline" -t "$tests" 2>/dev/null | tr '\r' '\n' |
        awk -v m="$mode" -v r="$rep" '/requests per second/ {sub(":","",$1); print m, r, $1, $2}' >>"$work/results"
    # Peak RSS (VmHWM, KiB) of this run's server (the process started, or its child under a
    # tracer: other servers may run on this machine), and of heaptrack's interpreter process.
    local hwm=0 interp=0 spid=$pid ipid
    [ "$mode" != untraced ] && spid=$(pgrep -P "$pid" -x redis-server || true)
    [ -n "$spid" ] && hwm=$(awk '/VmHWM/ {print $2}' "/proc/$spid/status")
    ipid=$(pgrep -P "$pid" -x heaptrack_inter || true)
    [ "$mode" = heaptrack ] && [ -n "$ipid" ] && interp=$(awk '/VmHWM/ {print $2}' "/proc/$ipid/status")
    echo "$mode $hwm $interp" >>"$work/rss"
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait "$pid" 2>/dev/null || true
    if [ "$mode" = zmtrace ] || [ "$mode" = aggregate ] || [ "$mode" = sampled ] || [ "$mode" = allblocks ]; then
        du -b "$out"/zmtrace.*.zmt | awk -v m="$mode" '{s+=$1} END {print m "-dump-bytes", s}' >>"$work/sizes"
    fi
    if [ "$mode" = heaptrack ]; then du -b "$out"/heaptrack*.zst | awk '{s+=$1} END {print "heaptrack-bytes", s}' >>"$work/sizes"; fi
    [ "$mode" = untraced ] || rm -rf "$out"
}

load=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$reps"); do
    for mode in "${modes[@]}"; do run_one "$mode" "$rep"; done
done
echo "redis-benchmark -n $requests -P $pipeline -t $tests, $reps repetitions; load average at start $load, at end $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${BENCH_JSON:-}" ]; then
    python3 - "$work" "$BENCH_JSON" "$requests" "$pipeline" "$tests" <<'PY'
import json, sys
work, out = sys.argv[1], sys.argv[2]
rps = {}
for l in open(f"{work}/results"):
    mode, rep, test, v = l.split()
    rps.setdefault(test, {}).setdefault(mode, {})[rep] = float(v)
sizes = {}
for l in open(f"{work}/sizes"):
    k, v = l.split()
    sizes.setdefault(k.replace("-dump-bytes", "").replace("-bytes", ""), []).append(int(v))
rss = {}
for l in open(f"{work}/rss"):
    mode, hwm, interp = l.split()
    rss.setdefault(mode, []).append([int(hwm) * 1024, int(interp) * 1024])
json.dump({"rps": rps, "sizes": sizes, "rss": rss, "requests": int(sys.argv[3]),
           "pipeline": int(sys.argv[4]), "tests": sys.argv[5]}, open(out, "w"))
PY
fi

python3 - "$work/results" <<'PY'
import sys, statistics as st, collections
rows = [l.split() for l in open(sys.argv[1])]
rps = collections.defaultdict(dict)          # (test, mode) -> rep -> rps
for mode, rep, test, v in rows:
    rps[(test, mode)][rep] = float(v)
tests = sorted({t for t, _ in rps})
modes = [m for m in ("untraced", "zmtrace", "aggregate", "sampled", "allblocks", "heaptrack") if any(m == k[1] for k in rps)]
print(f"{'command':8} " + " ".join(f"{m+' rps (min-max)':>32}" for m in modes) + "  ratio to untraced (median of per-rep ratios)")
for t in tests:
    cells, ratios = [], []
    for m in modes:
        v = list(rps[(t, m)].values())
        cells.append(f"{st.median(v):>10.0f} ({min(v):.0f}-{max(v):.0f})".rjust(32))
        if m != "untraced":
            r = [rps[(t, m)][k] / rps[(t, "untraced")][k] for k in rps[(t, m)] if k in rps[(t, "untraced")]]
            ratios.append(f"{m} {st.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
    print(f"{t:8} " + " ".join(cells) + "  " + ", ".join(ratios))
PY
sort "$work/sizes" | awk '{s[$1]+=$2; n[$1]++} END {for (k in s) printf "%s mean %.1f KiB\n", k, s[k]/n[k]/1024}'
python3 - "$work/rss" <<'PY'
import sys, statistics as st, collections
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    mode, hwm, interp = line.split()
    v[mode].append((int(hwm) / 1024, int(interp) / 1024))
base = st.median(h for h, _ in v["untraced"])
print(f"peak RSS: untraced server {base:.1f} MiB")
for mode in ("zmtrace", "aggregate", "sampled", "allblocks", "heaptrack"):
    if mode in v:
        server = st.median(h for h, _ in v[mode])
        extra = st.median(i for _, i in v[mode])
        print(f"  {mode:10} server {server:.1f} MiB, other tracer processes {extra:.1f} MiB; "
              f"tracer's own memory {server - base + extra:.1f} MiB")
PY
