#!/usr/bin/env bash
# Does the tracer's memory stay flat? (issue 17: "the tracer's memory stays flat over an
# hour-long run", estimated from a shorter run's growth.) For each mode, a long-running
# allocating program (samples/steady.c: malloc/free from three sites, a live set of 1,000 blocks,
# as fast as it goes) runs for MINUTES while every EVERY seconds this samples:
#   - the traced program's VmRSS (the program plus the recorder inside it: the live set's map,
#     stack table, unwinder caches, rings);
#   - the `zmtrace run` process's VmRSS (with --serve, the replay it keeps across scrapes, and
#     the profiles it builds: a scrape of /debug/pprof/heap every SCRAPE seconds);
#   - the dump's size (disk, not memory: an event dump grows with the events by design).
# The tracer's memory in the program is its RSS minus the untraced run's (the `untraced` mode,
# run first; its fitted line is subtracted). A least-squares line over the samples after WARMUP
# seconds gives the growth, printed in MiB per hour. RSS does not depend on timing: a busy
# machine changes how many allocations are made per minute (printed too, as the program's
# progress), not whether memory grows per allocation.
#
# Modes: untraced, event (zmtrace run), aggregate (--aggregate), sample (--sample 524288),
# sample-all (--sample 524288 --all-blocks), serve (event, with --serve and scrapes).
# scripts/memory-flat.sh is the same measure on redis-server under redis-benchmark.
#
#   scripts/memflat.sh [MINUTES]          (default 2.5 per mode)
#   MODES="untraced serve" EVERY=3 WARMUP=20 SCRAPE=10 scripts/memflat.sh 5
#   ZMTRACE=PATH runs that zmtrace (with the libzmtrace.so beside it) instead of this tree's,
#   e.g. a build of another commit, for a before/after.
#   OUT=DIR keeps each mode's samples (DIR/MODE.samples: seconds, program RSS KiB, zmtrace RSS
#   KiB, dump bytes) and scrape headers (DIR/MODE.scrapes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-2.5}
export MEMFLAT_EVERY=${EVERY:-3}
export MEMFLAT_WARMUP=${WARMUP:-20}
export MEMFLAT_SCRAPE=${SCRAPE:-10}
export MEMFLAT_MODES=${MODES:-untraced event aggregate sample sample-all serve}
export MEMFLAT_OUT=${OUT:-}
export MEMFLAT_ZM=${ZMTRACE:-}
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -g -fomit-frame-pointer -Wall -o "$work/steady" "$root/samples/steady.c"

python3 - "$root/target/release/zmtrace" "$work" "$minutes" <<'PY'
import os, signal, socket, subprocess, sys, time, urllib.request

zm, work, minutes = os.environ["MEMFLAT_ZM"] or sys.argv[1], sys.argv[2], float(sys.argv[3])
every = float(os.environ["MEMFLAT_EVERY"])
warmup = float(os.environ["MEMFLAT_WARMUP"])
scrape_every = float(os.environ["MEMFLAT_SCRAPE"])
modes = os.environ["MEMFLAT_MODES"].split()
steady = os.path.join(work, "steady")
SAMPLE = "524288"

def rss_kib(pid):
    try:
        for l in open(f"/proc/{pid}/status"):
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    except OSError:
        pass
    return 0

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p

def child_of(pid):
    for _ in range(200):
        try:
            kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    sys.exit(f"memflat: no traced program under pid {pid}")

def dump_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".zmt"))

def fit(xs, ys):
    n = len(xs)
    if n < 2:
        return (ys[0] if ys else 0.0), 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b

def run(mode):
    out = os.path.join(work, mode)
    os.makedirs(out)
    cmd, port = [], None
    if mode != "untraced":
        cmd = [zm, "run", "-o", out]
        if mode == "aggregate":
            cmd.append("--aggregate")
        if mode in ("sample", "sample-all"):
            cmd += ["--sample", SAMPLE]
        if mode == "sample-all":
            cmd.append("--all-blocks")
        if mode == "serve":
            port = free_port()
            cmd += ["--serve", f"127.0.0.1:{port}"]
        cmd.append("--")
    log = open(os.path.join(out, "log"), "w")
    top = subprocess.Popen(cmd + [steady, "100000000000"], stdout=log, stderr=log,
                           start_new_session=True)
    prog = child_of(top.pid) if cmd else top.pid
    rows, scrapes, last_scrape = [], [], -1e9
    start = time.time()
    while (t := time.time() - start) < minutes * 60:
        if port and t - last_scrape >= scrape_every:
            last_scrape = t
            s0 = time.time()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/pprof/heap",
                                            timeout=120) as r:
                    r.read()
                    scrapes.append((time.time() - s0, r.headers.get("x-zmtrace-time", ""),
                                    r.headers.get("x-zmtrace-replay", "")))
            except Exception as e:  # the first may come before the dump exists: 503
                scrapes.append((time.time() - s0, f"failed: {e}", ""))
        rows.append((t, rss_kib(prog), rss_kib(top.pid) if cmd else 0, dump_bytes(out)))
        time.sleep(every)
    os.killpg(top.pid, signal.SIGTERM)
    try:
        top.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(top.pid, signal.SIGKILL)
        top.wait()
    return rows, scrapes

base = None  # the untraced program's fitted RSS line (KiB, KiB/min)
print(f"memflat: {minutes} min per mode, a sample every {every:g} s, fitted after {warmup:g} s",
      file=sys.stderr)
results = []
for mode in modes:
    print(f"memflat: {mode}...", file=sys.stderr)
    rows, scrapes = run(mode)
    if os.environ["MEMFLAT_OUT"]:
        keep = os.environ["MEMFLAT_OUT"]
        os.makedirs(keep, exist_ok=True)
        with open(os.path.join(keep, f"{mode}.samples"), "w") as f:
            f.writelines(f"{t:.1f} {p} {z} {d}\n" for t, p, z, d in rows)
        with open(os.path.join(keep, f"{mode}.scrapes"), "w") as f:
            f.writelines(f"{s:.3f} {t} | {r}\n" for s, t, r in scrapes)
    warm = [r for r in rows if r[0] >= warmup] or rows
    mins = [r[0] / 60 for r in warm]
    a, b = fit(mins, [r[1] for r in warm])
    if mode == "untraced":
        base = (a, b)
    line = {"mode": mode, "samples": len(warm), "prog_start": warm[0][1], "prog_end": warm[-1][1],
            "prog_slope": b}
    if base and mode != "untraced":
        # The tracer's part of the program's RSS: its RSS minus the untraced line.
        ta, tb = fit(mins, [r[1] - (base[0] + base[1] * m) for r, m in zip(warm, mins)])
        line["tracer_mean"] = sum(r[1] - (base[0] + base[1] * m) for r, m in zip(warm, mins)) / len(warm)
        line["tracer_slope"] = tb
    if mode != "untraced":
        za, zb = fit(mins, [r[2] for r in warm])
        line["zm_start"], line["zm_end"], line["zm_slope"] = warm[0][2], warm[-1][2], zb
        da, db = fit(mins, [r[3] / 1024 for r in warm])
        line["dump_end"], line["dump_slope"] = warm[-1][3], db
    line["scrapes"] = scrapes
    results.append(line)

mib_h = lambda kib_min: kib_min * 60 / 1024
print(f"{'mode':11} {'program RSS':>17} {'tracer in prog':>16} {'tracer MiB/h':>13} "
      f"{'zmtrace RSS':>17} {'zmtrace MiB/h':>14} {'dump MiB/h':>11}")
for l in results:
    prog = f"{l['prog_start']/1024:6.1f}->{l['prog_end']/1024:6.1f} M"
    tr = f"{l['tracer_mean']/1024:12.1f} M" if "tracer_mean" in l else f"{'-':>14}"
    ts = f"{mib_h(l['tracer_slope']):13.2f}" if "tracer_slope" in l else f"{mib_h(l['prog_slope']):13.2f}"
    zr = f"{l['zm_start']/1024:6.1f}->{l['zm_end']/1024:6.1f} M" if "zm_slope" in l else f"{'-':>17}"
    zs = f"{mib_h(l['zm_slope']):14.2f}" if "zm_slope" in l else f"{'-':>14}"
    ds = f"{mib_h(l['dump_slope']):11.1f}" if "dump_slope" in l else f"{'-':>11}"
    print(f"{l['mode']:11} {prog:>17} {tr:>16} {ts} {zr:>17} {zs} {ds}")
print("(tracer MiB/h: the fitted slope of RSS minus the untraced line; for untraced, the program's own)")
def behind(replay):
    for w in replay.split():
        if w.startswith("behind="):
            return int(w[7:])
    return None

for l in results:
    if l["scrapes"]:
        s = l["scrapes"]
        took = sorted(x[0] for x in s)
        bs = [b for b in (behind(x[2]) for x in s) if b is not None]
        print(f"{l['mode']}: {len(s)} scrapes, {took[0]:.3f}..{took[-1]:.3f} s, median "
              f"{took[len(took) // 2]:.3f} s; behind= max {max(bs, default=0) / 2**20:.1f} MiB, last "
              f"{(bs or [0])[-1] / 2**20:.1f} MiB; last x-zmtrace-time: {s[-1][1]}; "
              f"x-zmtrace-replay: {s[-1][2]}")
PY
