#!/usr/bin/env bash
# Analysis speed: each workload is traced once by zmtrace and once by heaptrack; then
# `zmtrace report`, `zmtrace dump-info` and `heaptrack_print` each read their own dump of that
# same run, REPS times, alternating. Per workload and reader: the median (min-max) wall time,
# the events read per second (the dump's events over the median wall time), the peak RSS, and
# heaptrack_print's time over zmtrace's (issue 12: report at least 4x faster, with a lower RSS).
#
#   scripts/analysis-speed.sh [PAIRS] [REPS] [WORKLOADS]
#
# PAIRS sizes every workload (default 5,000,000: scripts/bench/pairs.c's malloc+free pairs, 10
# million events; the others make about as many events). WORKLOADS (default "pairs randdepth1p
# python3"): pairs = scripts/bench/pairs.c; randdepth1p = scripts/bench/randdepth.c with one call
# path at random depths (the variant heaptrack 1.4 survives); python3 = Debian's python3 with
# PYTHONMALLOC=malloc on the bench's churn script (skipped where there is no /usr/bin/python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pairs=${1:-5000000}
reps=${2:-3}
workloads=${3:-pairs randdepth1p python3}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
zmtrace=$root/target/release/zmtrace
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
have_heaptrack=0
command -v heaptrack >/dev/null && command -v heaptrack_print >/dev/null && have_heaptrack=1

measure() { # workload label events command...
    /usr/bin/time -o "$work/t" -f "%e %M" "${@:4}" >/dev/null 2>&1
    echo "$1 $2 $3 $(tail -1 "$work/t")" >>"$work/times"
}

for w in $workloads; do
    envs=()
    case $w in
    pairs)
        cc -O2 -fomit-frame-pointer -pthread -o "$work/pairs" "$root/scripts/bench/pairs.c"
        cmd=("$work/pairs" "$pairs" 19 1) ;;
    randdepth1p)
        cc -O2 -g -fomit-frame-pointer -pthread -o "$work/randdepth" "$root/scripts/bench/randdepth.c"
        # About 2.5 events per operation.
        cmd=("$work/randdepth" $((pairs * 4 / 5)) 1 1 paths=1) ;;
    python3)
        [ -x /usr/bin/python3 ] || { echo "$w: no /usr/bin/python3, skipped"; continue; }
        python3 -c "import sys; sys.path.insert(0, '$root/scripts/bench'); import workloads; \
            open('$work/churn.py', 'w').write(workloads.PY_CHURN)"
        # About 33 events per iteration. The variable is set for the tracer, not through `env`
        # in the command: heaptrack would trace env, not the python3 it execs.
        envs=(PYTHONMALLOC=malloc)
        cmd=(/usr/bin/python3 "$work/churn.py" $((pairs / 16))) ;;
    *) echo "unknown workload $w" >&2; exit 2 ;;
    esac
    # The dumps' directory is not named like the workload: "$work/pairs" is the compiled program.
    d=$work/d-$w
    mkdir -p "$d"
    env "${envs[@]}" "$zmtrace" run -o "$d" -- "${cmd[@]}" >/dev/null 2>&1 || true
    # The workload's own dump, the largest: `env` writes one too before it execs python3
    # (zmtrace.env.*, first by name, a few hundred events).
    dump=$(ls -S "$d"/zmtrace.*.zmt | head -1)
    events=$("$zmtrace" report --json "$dump" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])')
    echo "$w: zmtrace dump $(du -h "$dump" | cut -f1), $events events"
    ht=
    if [ "$have_heaptrack" = 1 ]; then
        env "${envs[@]}" heaptrack -o "$d/ht" "${cmd[@]}" >/dev/null 2>&1 || true
        ht=$(ls "$d"/ht*.zst 2>/dev/null | head -1 || true)
        [ -n "$ht" ] && echo "$w: heaptrack data $(du -h "$ht" | cut -f1)"
    fi
    for _ in $(seq "$reps"); do
        measure "$w" report "$events" "$zmtrace" report "$dump"
        measure "$w" dump-info "$events" "$zmtrace" dump-info "$dump"
        [ -n "$ht" ] && measure "$w" heaptrack_print "$events" heaptrack_print "$ht"
    done
done
python3 - "$work/times" <<'PY'
import sys, statistics as st, collections
t = collections.defaultdict(list)
events = {}
for line in open(sys.argv[1]):
    w, name, ev, secs, rss = line.split()
    t[(w, name)].append((float(secs), int(rss)))
    events[w] = int(ev)
print(f"{'workload':12} {'reader':16} {'wall s (min-max)':>22} {'M events/s':>11} {'peak RSS':>10}")
for (w, name), v in t.items():
    s = [x[0] for x in v]
    m = st.median(s)
    rate = events[w] / m / 1e6 if m > 0 else float("inf")
    print(f"{w:12} {name:16} {m:8.2f} ({min(s):.2f}-{max(s):.2f})      {rate:11.1f} "
          f"{max(x[1] for x in v) / 1024:7.0f} MiB")
for w in events:
    if (w, "heaptrack_print") in t:
        h = st.median(x[0] for x in t[(w, "heaptrack_print")])
        hr = max(x[1] for x in t[(w, "heaptrack_print")])
        for name in ("report", "dump-info"):
            z = st.median(x[0] for x in t[(w, name)])
            zr = max(x[1] for x in t[(w, name)])
            print(f"{w}: heaptrack_print / zmtrace {name}: {h / max(z, 0.005):.1f}x time, "
                  f"{hr / zr:.1f}x peak RSS")
PY
