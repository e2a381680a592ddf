#!/usr/bin/env python3
"""The zmtrace benchmark suite (run it through scripts/bench.sh, which builds everything first).

Workloads (C programs built -O2 -fomit-frame-pointer):
  mix-1t   scripts/bench/mix.c, 1 thread: malloc/calloc/realloc/free of 8 B-4 KiB, stacks 19-25 deep
  mix-2t   the same with 2 threads
  deep     mix.c with stacks 60-70 deep
  pairs    scripts/bench/pairs.c: malloc+free pairs from a fixed 19-deep stack (the RECORDER-NOTES
           measure), 1 thread
  pairs-2t the same with 2 threads
Each runs untraced, under `zmtrace run`, under `zmtrace run --aggregate` and under heaptrack
(where installed), interleaved A B C D A B C D... over REPS repetitions. Reported: median ns per
call with min-max, the overhead per call (traced - untraced, per repetition), the ratio to the
untraced time within each repetition, and zmtrace's overhead over heaptrack's.

Then, for mix-1t: dump size, analysis time (`zmtrace report` vs `heaptrack_print`, median of 3),
and peak RSS of the traced program and of the whole tracer (every process of the run: for
heaptrack that includes heaptrack_interpret), sampled every 10 ms from /proc.

Note: heaptrack 1.4's heaptrack_interpret dies (std::bad_alloc) on mix.c when the stack depth
varies over a wide range (e.g. 5-25) and, with 2 threads, grows past 16 GiB even at 19-25; 19-25
is the widest range found that it survives with 1 thread. heaptrack runs here with its address
space capped at 4 GiB, so that it fails quickly instead of taking the machine's memory; a failed
run is reported as such. pairs-2t is the two-thread comparison heaptrack survives.
"""
import os
import shutil
import statistics as st
import subprocess
import sys
import tempfile
import time

root, work, zmtrace, reps, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
mix, pairs = os.path.join(work, "mix"), os.path.join(work, "pairs")
have_heaptrack = shutil.which("heaptrack") is not None

WORKLOADS = {
    "mix-1t": [mix, str(calls), "1", "19", "25"],
    "mix-2t": [mix, str(calls), "2", "19", "25"],
    "deep": [mix, str(calls), "1", "60", "70"],
    "pairs": [pairs, str(calls), "19", "1"],
    "pairs-2t": [pairs, str(calls), "19", "2"],
}
MODES = ["untraced", "zmtrace", "aggregate"] + (["heaptrack"] if have_heaptrack else [])


def command(mode, prog, out):
    if mode == "untraced":
        return prog
    if mode == "zmtrace":
        return [zmtrace, "run", "-o", out, "--"] + prog
    if mode == "aggregate":
        return [zmtrace, "run", "--aggregate", "-o", out, "--"] + prog
    return ["heaptrack", "-o", os.path.join(out, "heaptrack"), "--"] + prog


def cap_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run(mode, prog):
    out = tempfile.mkdtemp(dir=work)
    p = subprocess.run(
        command(mode, prog, out),
        capture_output=True,
        text=True,
        preexec_fn=cap_memory if mode == "heaptrack" else None,
    )
    line = [l for l in p.stdout.splitlines() if " ns per " in l]
    if p.returncode != 0 or not line:
        err = (p.stderr.strip().splitlines() or ["?"])[-1]
        return None, out, f"exit {p.returncode}: {err}"
    return float(line[0].split()[0]), out, None


def fmt(xs):
    return f"{st.median(xs):8.1f} ({min(xs):.1f}-{max(xs):.1f})"


print(f"# {reps} repetitions, {calls:,} calls per thread; medians (min-max)")
keep = {}  # one output dir per (workload, mode), for the size/analysis measures
for name, prog in WORKLOADS.items():
    ns = {m: {} for m in MODES}
    failures = {}
    for rep in range(reps):
        for mode in MODES:
            if mode in failures:
                continue
            v, out, err = run(mode, prog)
            if v is None:
                failures[mode] = err
                continue
            ns[mode][rep] = v
            if rep == reps - 1:
                keep[(name, mode)] = out
            else:
                shutil.rmtree(out, ignore_errors=True)
    print(f"\n{name}: {' '.join(prog[1:])}")
    base = ns["untraced"]
    for mode in MODES:
        if mode in failures:
            print(f"  {mode:10} FAILED ({failures[mode]})")
            continue
        xs = list(ns[mode].values())
        line = f"  {mode:10} {fmt(xs)} ns/call"
        if mode != "untraced":
            over = [ns[mode][r] - base[r] for r in ns[mode] if r in base]
            ratio = [ns[mode][r] / base[r] for r in ns[mode] if r in base]
            line += f"  overhead {fmt(over)} ns  x{st.median(ratio):.2f} untraced"
        print(line)
    if "heaptrack" in MODES and "heaptrack" not in failures:
        for mode in ("zmtrace", "aggregate"):
            if mode in failures:
                continue
            r = [
                (ns[mode][k] - base[k]) / (ns["heaptrack"][k] - base[k])
                for k in base
                if k in ns[mode] and k in ns["heaptrack"]
            ]
            print(f"  {mode} overhead / heaptrack overhead: {st.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")


def files(d):
    return [os.path.join(d, f) for f in os.listdir(d)]


def median_time(cmd, n=3):
    ts = []
    for _ in range(n):
        t = time.monotonic()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        ts.append(time.monotonic() - t)
    return st.median(ts)


print("\nmix-1t: dump size and analysis time")
sizes = {}
for mode in MODES[1:]:
    d = keep.get(("mix-1t", mode))
    if d:
        sizes[mode] = sum(os.path.getsize(f) for f in files(d))
        print(f"  {mode:10} dump {sizes[mode] / 2**20:8.2f} MiB")
if "heaptrack" in sizes:
    for mode in ("zmtrace", "aggregate"):
        if mode in sizes:
            print(f"  {mode} dump / heaptrack's: {sizes[mode] / sizes['heaptrack']:.2f}")
times = {}
for mode in ("zmtrace", "aggregate"):
    d = keep.get(("mix-1t", mode))
    if d:
        times[mode] = median_time([zmtrace, "report", files(d)[0]])
        print(f"  zmtrace report ({mode} dump): {times[mode]:.3f} s")
if ("mix-1t", "heaptrack") in keep:
    times["heaptrack"] = median_time(["heaptrack_print", files(keep[("mix-1t", "heaptrack")])[0]])
    print(f"  heaptrack_print:            {times['heaptrack']:.3f} s")
    for mode in ("zmtrace", "aggregate"):
        if mode in times:
            print(f"  heaptrack_print / zmtrace report ({mode}): {times['heaptrack'] / times[mode]:.1f}x")


def peak_rss(cmd, capped):
    """Runs cmd in its own process group; returns (peak RSS of the largest process, peak of
    the sum over the group), in MiB, sampled every 10 ms."""
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=cap_memory if capped else None,
    )
    best_one = best_sum = 0
    while p.poll() is None:
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) != p.pid:  # process group
                    continue
                rss = int(fields[21]) * 4096
            except (OSError, IndexError, ValueError):
                continue
            total += rss
            best_one = max(best_one, rss)
        best_sum = max(best_sum, total)
        time.sleep(0.01)
    return best_one / 2**20, best_sum / 2**20


print("\nmix-1t: peak RSS (MiB; program = the largest process, tracer = all processes of the run)")
for mode in MODES:
    out = tempfile.mkdtemp(dir=work)
    one, total = peak_rss(command(mode, WORKLOADS["mix-1t"], out), mode == "heaptrack")
    print(f"  {mode:10} program {one:7.1f}  whole run {total:7.1f}")
