#!/usr/bin/python3
"""What the unwinder costs, in instructions (callgrind), per capture and per frame walked.

    scripts/unwind-cost.py [--lib LIB]... [--only NAME,...] [--ops N] [--env K=V]...

Each workload runs under callgrind with LIB (default: target/release/libzmtrace.so, built if
missing) preloaded, the way /work/shared/tools/callgrind-preload.sh runs it (a static env(1) sets
LD_PRELOAD after valgrind has started), twice: with N and with 2N operations. The unwinder's
cost is the inclusive cost of `capture_fast` (the recorder's stack capture: the rule table, its
misses, framehop, the walk reuse; not the interning of the stack that follows), summed over every
file:function entry callgrind gives it. The differences between the two runs are the steady
path: start-up (the first misses, the table's first fills) cancels out.

The frames walked are counted exactly by the recorder (ZMTRACE_UNWIND_STATS=1: "steps", one per
frame stepped from, the recorder's own frames included; frames taken over from the previous walk
are not walked). A library that prints no such line (main before the rule table) gets the
per-capture figures and, for randdepth, the per-frame figure over the frames recorded (the
program's known depths: its printed frame count plus main, __libc_start_call_main,
__libc_start_main and _start per capture).

Workloads (NAME):
  randdepth  samples/randdepth.c, N ops on one thread: stacks 5-25 deep through four paths,
             shifted by a random amount (only the outermost frames stay put)
  pairs      scripts/bench/pairs.c, N malloc+free pairs from one 19-deep stack
  mix        scripts/bench/mix.c, N calls, stacks 19-25 deep from a few call sites
  randdepth-bench  scripts/bench/randdepth.c (the suite's, when merged), N ops on one thread
  coroutine  samples/coroutine.c: N/2 captures on a coroutine's stack, N/2 on the thread's

Several --lib: each workload runs with each library (e.g. main's and this branch's).
--env adds a variable for the traced program (e.g. ZMTRACE_UNWIND_REUSE=0).
Prints one table (markdown).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.environ.get("CALLGRIND_TOOLS", "/work/shared/tools")
CFLAGS = ["-O2", "-g", "-fomit-frame-pointer", "-pthread"]
UNWINDER_DEFAULT = r"capture_fast"
UNWINDER = re.compile(UNWINDER_DEFAULT)
ZMTRACE = os.path.join(ROOT, "target/release/zmtrace")

WORKLOADS = {
    # name: (source, args for N operations)
    "randdepth": ("samples/randdepth.c", lambda n: [str(n), "1"]),
    "pairs": ("scripts/bench/pairs.c", lambda n: [str(n), "19", "1"]),
    "mix": ("scripts/bench/mix.c", lambda n: [str(n), "1", "19", "25"]),
    # The benchmark suite's random-depth program (branch `bench`), when it is there.
    "randdepth-bench": ("scripts/bench/randdepth.c", lambda n: [str(n), "1"]),
    # Half the captures on a makecontext stack, which the reference unwinder takes.
    "coroutine": ("samples/coroutine.c", lambda n: [str(n // 2)]),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build(work, src):
    exe = os.path.join(work, src.replace("/", "_").split(".")[0])
    if not os.path.exists(exe):
        subprocess.run(["cc", *CFLAGS, "-I", os.path.join(ROOT, "samples"), "-o", exe,
                        os.path.join(ROOT, src)], check=True)
    return exe


def static_env(work):
    exe = os.path.join(work, "static_env")
    if not os.path.exists(exe):
        src = os.path.join(TOOLS, "static_env.c")
        if not os.path.exists(src):
            sys.exit(f"unwind-cost: {src} is missing (set CALLGRIND_TOOLS)")
        subprocess.run(["cc", "-O2", "-static", "-o", exe, src], check=True)
    return exe


def inclusive(path, pattern):
    """(total Ir, inclusive Ir of the functions matching pattern) from a callgrind file. A
    function's inclusive cost is its own cost plus that of the calls it makes, whatever file the
    costs are attributed to (inlined code has fi=/fe= lines of its own); its calls to itself are
    not counted twice."""
    names = {}
    fn = cfn = None
    after_calls = False
    own = {}
    called = {}
    total = 0

    def name(v):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", v)
        if not m:
            return v
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), v)

    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                ir = int(parts[1]) if len(parts) > 1 else 0
                if after_calls:
                    if cfn != fn:
                        called[fn] = called.get(fn, 0) + ir
                    after_calls = False
                else:
                    own[fn] = own.get(fn, 0) + ir
            elif line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                cfn = name(line[4:].strip())
            elif line.startswith("calls="):
                after_calls = True
            elif line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    hits = [k for k in set(own) | set(called) if pattern.search(k)]
    return total, sum(own.get(k, 0) + called.get(k, 0) for k in hits)


def run(work, lib, exe, args, env):
    out = tempfile.mkdtemp(dir=work, prefix="run.")
    cg = os.path.join(out, "cg.%p")
    p = subprocess.run(
        ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={cg}",
         static_env(work), f"LD_PRELOAD={lib}", f"ZMTRACE_OUT={out}", "ZMTRACE_UNWIND_STATS=1",
         *[f"{k}={v}" for k, v in env], exe, *args],
        capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"unwind-cost: {exe} {args} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    files = [os.path.join(out, f) for f in os.listdir(out) if f.startswith("cg.")]
    total, unw = inclusive(max(files, key=os.path.getsize), UNWINDER)
    stats = next((l for l in p.stderr.splitlines() if l.startswith("zmtrace: unwinder:")), None)
    steps = None
    if stats:
        nums = [int(x) for x in re.findall(r"\d+", stats)]
        captures, steps = nums[0], nums[2]
    else:
        # Every allocation, realloc and failed allocation captured a stack.
        dumps = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".zmt")]
        dump = max(dumps, key=os.path.getsize)
        rep = json.loads(subprocess.run([ZMTRACE, "report", "--json", "--top", "1", dump],
                                        capture_output=True, text=True, check=True).stdout)
        captures = rep["allocations"] + rep["reallocs"] + rep["failed"]
    printed = p.stdout
    return dict(total=total, unwinder=unw, steps=steps, captures=captures, stdout=printed)


def program_frames(stdout):
    """randdepth: (captures, frames recorded) from what the program printed: samples/randdepth.c
    prints its frames from zs_op to zs_run (4 more above: main, __libc_start_call_main,
    __libc_start_main, _start), scripts/bench/randdepth.c the frames recorded."""
    m = re.search(r"captures (\d+) frames (\d+)", stdout)
    if m:
        k, d = int(m.group(1)), int(m.group(2))
        return k, d + 4 * k
    m = re.search(r"frames: captures (\d+) recorded (\d+)", stdout)
    if m:
        return int(m.group(1)), int(m.group(2))
    return None


def main():
    global UNWINDER
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", action="append")
    ap.add_argument("--only", default="randdepth,pairs,mix")
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--funcs", default=UNWINDER_DEFAULT,
                    help="regular expression: the functions whose inclusive cost is counted")
    a = ap.parse_args()
    UNWINDER = re.compile(a.funcs)
    libs = a.lib or [os.path.join(ROOT, "target/release/libzmtrace.so")]
    if not os.path.exists(ZMTRACE):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    for lib in libs:
        if not os.path.exists(lib):
            if lib == os.path.join(ROOT, "target/release/libzmtrace.so"):
                subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
            else:
                sys.exit(f"unwind-cost: no {lib}")
    env = [tuple(e.split("=", 1)) for e in a.env]
    rows = []
    with tempfile.TemporaryDirectory(prefix="unwind-cost.") as work:
        for name in a.only.split(","):
            src, argf = WORKLOADS[name]
            if not os.path.exists(os.path.join(ROOT, src)):
                log(f"{name}: {src} is not in this tree, left out")
                continue
            exe = build(work, src)
            for lib in libs:
                log(f"{name} with {lib}: N = {a.ops}, 2N")
                r1 = run(work, lib, exe, argf(a.ops), env)
                r2 = run(work, lib, exe, argf(2 * a.ops), env)
                du, dt = r2["unwinder"] - r1["unwinder"], r2["total"] - r1["total"]
                pf1, pf2 = program_frames(r1["stdout"]), program_frames(r2["stdout"])
                dc = r2["captures"] - r1["captures"]
                per_capture = f"{du / dc:.0f}" if dc else "?"
                per_step = (f"{du / (r2['steps'] - r1['steps']):.1f} "
                            f"({(r2['steps'] - r1['steps']) / dc:.1f} a capture)"
                            if r1["steps"] is not None else "-")
                per_frame = (f"{du / (pf2[1] - pf1[1]):.1f}" if pf1 else "-")
                total_per_capture = f"{dt / dc:.0f}" if dc else "?"
                rows.append(f"| {name} | {lib} | {dc} | {total_per_capture} | {per_capture} | "
                            f"{per_step} | {per_frame} | {100 * du / dt:.0f} % |")
    env_s = " ".join(a.env) or "-"
    print(f"# unwinder instructions (callgrind), steady path: run(2N) - run(N), N = {a.ops}; "
          f"extra environment: {env_s}\n")
    print("| workload | library | captures | traced process Ir/capture | unwinder Ir/capture | "
          "unwinder Ir/frame walked (frames walked) | unwinder Ir/frame recorded | "
          "unwinder share of the process |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
