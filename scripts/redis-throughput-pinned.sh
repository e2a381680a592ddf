#!/usr/bin/env bash
# Redis throughput under zmtrace against untraced, made precise enough for ratios like 0.97 on a
# small shared machine: redis-server (with its tracer) pinned to one CPU and redis-benchmark to
# another (taskset), every mode restarted and warmed up in each repetition, the modes' order
# rotated from one repetition to the next (drift and other load fall on every mode alike), one
# redis-benchmark run per command, medians with their inter-quartile range. Two untraced modes
# (untraced, untraced2) measure the noise floor: their ratio is what "no difference" looks like.
#
# Besides requests/s it reports the server's CPU time per request (the sum of every thread's run
# time, /proc/PID/task/*/schedstat, in ns, of the server and of the `zmtrace run` parent): less
# sensitive to the other load on the machine than requests/s, and it shows whether the server was
# the bottleneck (busy = CPU time / wall time, near 1.00 when it was), and of that CPU time, the
# recorder's writer thread's (`writer`: what is not the hooks on the server's own thread).
#
#   scripts/redis-throughput-pinned.sh [REPS] [REQUESTS] [PIPELINE]
#       defaults 9 repetitions, 1,000,000 requests per command, pipeline 16
#       MODES="untraced untraced2 sampled allblocks" (also: zmtrace aggregate heaptrack)
#       SAMPLE=524288 (the sampled modes' mean interval), TESTS=set,get,incr,lpush
#       SERVER_CPU=1 CLIENT_CPU=0, ZMTRACE=path (default: this worktree's release build)
#       RAW=FILE keeps every measurement (mode rep test rps cpu_ns wall_ns writer_ns)
#       BASE=DIR (a `zmtrace` with its libzmtrace.so beside it, e.g. a copy of main's build) adds
#       the modes base-sampled, base-allblocks: before and after in one run
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
reps=${1:-9}
requests=${2:-1000000}
pipeline=${3:-16}
tests=${TESTS:-set,get,incr,lpush}
read -r -a modes <<<"${MODES:-untraced untraced2 sampled allblocks}"
sample=${SAMPLE:-524288}
scpu=${SERVER_CPU:-1}
ccpu=${CLIENT_CPU:-0}
if [ -z "${ZMTRACE:-}" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    zmtrace=$root/target/release/zmtrace
else
    zmtrace=$ZMTRACE
fi
unset ZMTRACE_SAMPLE ZMTRACE_SAMPLE_ALL
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for p in redis-server redis-benchmark redis-cli taskset; do
    command -v "$p" >/dev/null || { echo "$p is missing" >&2; exit 1; }
done

# Run time in ns of every thread of the given processes.
cpu_ns() {
    local t=0 f v
    for pid in "$@"; do
        for f in /proc/"$pid"/task/*/schedstat; do
            read -r v _ <"$f" 2>/dev/null || continue
            t=$((t + v))
        done
    done
    echo "$t"
}

# Run time in ns of the recorder's writer threads (named zmtrace-writer) of the given processes.
writer_ns() {
    local t=0 d v
    for pid in "$@"; do
        for d in /proc/"$pid"/task/*; do
            [ "$(cat "$d/comm" 2>/dev/null)" = zmtrace-writer ] || continue
            read -r v _ <"$d/schedstat" 2>/dev/null || continue
            t=$((t + v))
        done
    done
    echo "$t"
}

run_one() { # mode rep
    local mode=$1 rep=$2 out="$work/$1.$2"
    # Below 32768, the kernel's ephemeral range (ip_local_port_range): a port there may be a
    # client connection's (redis-benchmark opens 50), which `ss -l` does not show, and the server
    # then failed to listen. Another helper's server may hold a random port: take one nobody
    # listens on.
    local port=$((20000 + RANDOM % 12000))
    while ss -ltnH "sport = :$port" 2>/dev/null | grep -q .; do port=$((20000 + RANDOM % 12000)); done
    mkdir -p "$out"
    local server=(redis-server --port "$port" --save "" --appendonly no --dir "$out")
    local pin=(taskset -c "$scpu") zmtrace=$zmtrace
    case $mode in base-*) zmtrace=$BASE/zmtrace mode=${mode#base-} ;; esac
    case $mode in
        untraced | untraced2) "${pin[@]}" "${server[@]}" >"$out/log" 2>&1 & ;;
        zmtrace) "${pin[@]}" "$zmtrace" run -o "$out" -- "${server[@]}" >"$out/log" 2>&1 & ;;
        aggregate) "${pin[@]}" "$zmtrace" run --aggregate -o "$out" -- "${server[@]}" >"$out/log" 2>&1 & ;;
        sampled) "${pin[@]}" "$zmtrace" run --sample "$sample" -o "$out" -- "${server[@]}" >"$out/log" 2>&1 & ;;
        allblocks) "${pin[@]}" "$zmtrace" run --sample "$sample" --all-blocks -o "$out" -- "${server[@]}" >"$out/log" 2>&1 & ;;
        heaptrack) "${pin[@]}" heaptrack -o "$out/heaptrack" "${server[@]}" >"$out/log" 2>&1 & ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    local pid=$! up=""
    # 30 s: a traced server on a loaded machine took more than 10 to answer.
    for _ in $(seq 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && { up=1; break; }; sleep 0.1; done
    if [ -z "$up" ]; then
        echo "redis-throughput-pinned: $mode repetition $rep: no answer on port $port in 30 s:" >&2
        tail -5 "$out/log" >&2
        exit 1
    fi
    local pids=("$pid")
    case $mode in untraced | untraced2) ;; *) pids+=($(pgrep -P "$pid" || true)) ;; esac
    mode=$1
    local bench=(taskset -c "$ccpu" redis-benchmark -p "$port" -P "$pipeline" -q)
    # Warm-up: the server's allocator, the tracer's tables and caches, the keys.
    "${bench[@]}" -n $((requests / 5)) -t "$tests" >/dev/null 2>&1
    local t c0 c1 w0 w1 k0 k1 rps
    for t in ${tests//,/ }; do
        k0=$(writer_ns "${pids[@]}"); c0=$(cpu_ns "${pids[@]}"); w0=$(date +%s%N)
        rps=$("${bench[@]}" -n "$requests" -t "$t" --csv 2>/dev/null | awk -F'"' 'NR == 2 {print $4}')
        w1=$(date +%s%N); c1=$(cpu_ns "${pids[@]}"); k1=$(writer_ns "${pids[@]}")
        echo "$mode $rep $t $rps $((c1 - c0)) $((w1 - w0)) $((k1 - k0))" >>"$work/results"
    done
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$out"
}

load=$(cut -d' ' -f1-3 /proc/loadavg)
n=${#modes[@]}
for rep in $(seq "$reps"); do
    for i in $(seq 0 $((n - 1))); do
        run_one "${modes[$(((i + rep) % n))]}" "$rep"
    done
done
[ -n "${RAW:-}" ] && cp "$work/results" "$RAW"
echo "redis-benchmark -n $requests -P $pipeline per command ($tests), $reps repetitions, modes rotated;" \
    "server on CPU $scpu, benchmark on CPU $ccpu; load average at start $load, at end $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/results" "$requests" "${modes[@]}" <<'PY'
import sys, statistics as st, collections
path, nreq, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = [l.split() for l in open(path)]
rps, cpu, busy, writer = (collections.defaultdict(dict) for _ in range(4))
for mode, rep, test, v, c, w, k in rows:
    rps[(test, mode)][rep] = float(v)
    cpu[(test, mode)][rep] = int(c) / nreq
    busy[(test, mode)][rep] = int(c) / int(w)
    writer[(test, mode)][rep] = int(k) / nreq
def q(v):
    v = sorted(v)
    if len(v) < 4:
        return st.median(v), v[0], v[-1]
    q1, q2, q3 = st.quantiles(v, n=4, method="inclusive")
    return q2, q1, q3
def ratios(d, test, mode):
    base = d[(test, "untraced")]
    return [d[(test, mode)][r] / base[r] for r in d[(test, mode)] if r in base]
tests = sorted({t for t, _ in rps})
print("requests/s: median (IQR); ratio to untraced: median of the per-repetition ratios (IQR)")
for t in tests:
    print(f"  {t}")
    for m in modes:
        med, lo, hi = q(rps[(t, m)].values())
        line = f"    {m:10} {med:>10.0f} ({lo:.0f}-{hi:.0f})"
        if m != "untraced":
            r = q(ratios(rps, t, m))
            line += f"   ratio {r[0]:.3f} ({r[1]:.3f}-{r[2]:.3f})"
        print(line)
print("server CPU ns per request: median (IQR); ratio to untraced (untraced / mode: >1 would be faster); busy")
for t in tests:
    print(f"  {t}")
    for m in modes:
        med, lo, hi = q(cpu[(t, m)].values())
        line = f"    {m:10} {med:>8.1f} ({lo:.1f}-{hi:.1f})  busy {st.median(busy[(t, m)].values()):.2f}"
        if m != "untraced":
            r = q([1 / x for x in ratios(cpu, t, m)])
            line += f"   ratio {r[0]:.3f} ({r[1]:.3f}-{r[2]:.3f})"
        k = st.median(writer[(t, m)].values())
        if k > 0:
            line += f"   writer {k:.1f}"
        print(line)
PY
