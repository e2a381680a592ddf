"""The workloads of the benchmark suite (scripts/bench/suite.py): how each is built, its input
generated, and its counts checked. `prepare(ctx, name)` builds what the workload needs in ctx.work
and returns the Workload objects to measure."""
import json
import os
import subprocess

from suite import Workload, need, without_timing, die

CFLAGS = ["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-Wall"]
HERE = os.path.dirname(os.path.abspath(__file__))


def cc(ctx, src, out, extra=(), compiler="cc"):
    exe = os.path.join(ctx.work, out)
    if not os.path.exists(exe):
        subprocess.run([compiler] + CFLAGS + list(extra) + ["-o", exe, src], check=True)
    return exe


def scale(ctx, full, quick):
    return str(quick if ctx.quick else full)


# --- mix.c and pairs.c: the first workloads (few stacks, repeated) ---------------------------


def mix(ctx, name):
    exe = cc(ctx, os.path.join(HERE, "mix.c"), "mix")
    calls = scale(ctx, 1000000, 5000)
    args = {"mix-1t": [calls, "1", "19", "25"], "mix-2t": [calls, "2", "19", "25"],
            "deep": [calls, "1", "60", "70"]}[name]
    desc = {"mix-1t": "scripts/bench/mix.c: malloc/calloc/realloc/free of 8 B–4 KiB from a few "
                      "stacks 19–25 deep, 1 thread",
            "mix-2t": "mix.c with 2 threads",
            "deep": "mix.c with stacks 60–70 deep"}[name]
    return [Workload(name, desc, [exe] + args, same_output=without_timing)]


def pairs(ctx, name):
    exe = cc(ctx, os.path.join(HERE, "pairs.c"), "pairs")
    n = scale(ctx, 1000000, 5000)
    threads = "2" if name == "pairs-2t" else "1"
    desc = (f"scripts/bench/pairs.c: malloc+free pairs of 16–128 B from one 19-deep stack, "
            f"{threads} thread{'s' if threads == '2' else ''}")
    return [Workload(name, desc, [exe, n, "19", threads], same_output=without_timing)]


# --- randdepth.c: random stack depth --------------------------------------------------------


def printed_counts(stdout):
    """The allocator calls a program of scripts/bench/ says it made: {"malloc": N, ...}."""
    line = next(l for l in stdout.splitlines() if l.startswith("calls:"))
    f = line.split()[1:]
    return {f[i]: int(f[i + 1]) for i in range(0, len(f), 2)}


def report_json(ctx, dump):
    p = subprocess.run([ctx.zmtrace, "report", "--json", "--top", "0", dump], capture_output=True,
                       text=True)
    if p.returncode != 0:
        return None, f"zmtrace report failed: {p.stderr.strip()[:200]}"
    return json.loads(p.stdout), None


def site_counts(report, metric):
    out = {}
    for s in report["top"][metric]:
        out[s["site"]] = out.get(s["site"], 0) + s["value"]
    return out


def check_randdepth(stdout, dump, ctx):
    """The dump's allocations per site equal the calls the program counted, exactly; its frees
    are the program's plus at most libc's own few."""
    want = printed_counts(stdout)
    rep, err = report_json(ctx, dump)
    if err:
        return err
    allocs, reallocs = site_counts(rep, "allocations"), site_counts(rep, "reallocs")
    got = {"malloc": allocs.get("do_malloc", 0), "calloc": allocs.get("do_calloc", 0),
           # realloc(NULL, n), the buffer's first, is an allocation
           "realloc": allocs.get("do_realloc", 0) + reallocs.get("do_realloc", 0)}
    bad = [f"{k} {got[k]} in the dump, {want[k]} made" for k in got if got[k] != want[k]]
    if not want["free"] <= rep["frees"] <= want["free"] + 16:
        bad.append(f"free {rep['frees']} in the dump, {want['free']} made")
    return "; ".join(bad) or None


def randdepth(ctx, name):
    exe = cc(ctx, os.path.join(HERE, "randdepth.c"), "randdepth")
    ops = scale(ctx, 2000000, 5000)
    threads = "2" if name.endswith("2t") else "1"
    paths = 1 if name.startswith("randdepth1p") else 4
    desc = (f"scripts/bench/randdepth.c: {int(ops):,} operations per thread ({threads} "
            f"thread{'s' if threads == '2' else ''}), {paths} call path{'s' if paths > 1 else ''} "
            "at random depths 5–25, the stack shifted by a random 0–496 B below the thread's "
            "entry; 40 % malloc, 10 % calloc, 25 % realloc, 25 % free, ~4,096 live blocks per "
            "thread" + ("" if paths > 1 else " (the variant heaptrack 1.4 survives)"))
    return [Workload(name, desc, [exe, ops, threads, "1", f"paths={paths}"],
                     same_output=without_timing, check=check_randdepth)]


# ---------------------------------------------------------------------------------------------

GROUPS = [
    ("mix-1t", mix, "mix.c, 1 thread, stacks 19-25 deep"),
    ("mix-2t", mix, "mix.c, 2 threads"),
    ("deep", mix, "mix.c, stacks 60-70 deep"),
    ("pairs", pairs, "pairs.c: malloc+free pairs from one 19-deep stack"),
    ("pairs-2t", pairs, "pairs.c, 2 threads"),
    ("randdepth-1t", randdepth, "randdepth.c: 4 call paths at random depths 5-25, 1 thread"),
    ("randdepth-2t", randdepth, "randdepth.c, 2 threads"),
    ("randdepth1p-1t", randdepth, "randdepth.c with one call path (heaptrack survives it)"),
    ("randdepth1p-2t", randdepth, "the same, 2 threads"),
]


def names():
    return [n for n, _, _ in GROUPS]


def describe():
    return [(n, d) for n, _, d in GROUPS]


def prepare(ctx, name):
    return next(f for n, f, _ in GROUPS if n == name)(ctx, name)
