#!/usr/bin/env python3
"""The zmtrace benchmark suite. Run it through scripts/bench.sh, which builds zmtrace first:

    scripts/bench.sh [--reps N] [--only NAME,NAME...] [--quick] [--callgrind] [--list]

Every workload runs untraced, under `zmtrace run`, under `zmtrace run --aggregate` and under
heaptrack 1.4, interleaved (untraced, zmtrace, aggregate, heaptrack, untraced, ...) over N
repetitions (default 5), so that the machine's load moves all four alike; ratios are taken within
each repetition, then their median and range are given. `--list` prints the workloads.

Measures, per workload and configuration:
  - the time: for the programs of scripts/bench/ their own timer ("X ns per call", the allocator
    calls they made; "per iteration" for stl), so that start-up and the tracer's work after the
    program ended are left out; for the Debian programs the wall time of the whole traced run, from
    the start of `zmtrace run`/`heaptrack` to its end (heaptrack_interpret finishing included);
    Redis, throughput (scripts/redis-throughput.sh). The wall-time ratio is given for every
    workload too.
  - x untraced: traced time / untraced time, per repetition;
  - overhead / heaptrack's: (zmtrace - untraced) / (heaptrack - untraced), per repetition;
  - dump sizes: zmtrace's event dump, its aggregated dump, heaptrack's .zst (last repetition);
  - analysis: `zmtrace report` on each zmtrace dump and `heaptrack_print` on heaptrack's file, wall
    time and peak RSS (median of 3, 1 with --quick);
  - peak RSS: of the program (the largest process that is not the tracer's: zmtrace, bash,
    heaptrack_interpret, zstd), and of the whole run (the sum over every process of the run of its
    own peak): VmHWM sampled every 10 ms from /proc, the program's also from wait4 where it is the
    largest process of the run (untraced, zmtrace).
Then the geometric mean over workloads of zmtrace's overhead / heaptrack's (the target: <= 1/4,
and <= 1/3 on every workload), over the workloads heaptrack survived.

The memory figures of issue 13 (workload "manyblocks", scripts/bench/manyblocks.c): bytes per live
block of the recorder, of the recorder during the leak check at exit, of the analyzer, and of
heaptrack.

heaptrack runs with its address space capped (RLIMIT_AS 4 GiB, inherited by heaptrack_interpret):
heaptrack 1.4's interpreter dies of std::bad_alloc, or grows past 16 GiB, on several workloads
(randdepth; mix with 2 threads); its cell then says FAILED (reason) and the suite goes on. A
traced run whose output differs from the untraced run's, or that exits otherwise, is FAILED too:
that is a bug of the tracer.

ZMTRACE_SAMPLE=BYTES adds the configuration "sampled" (`zmtrace run --sample BYTES`);
ZMTRACE_FLOOR=1 adds "forward", the program with scripts/bench/forward.c preloaded: a library whose
allocator functions only call glibc's, the floor that no preload tracer goes under; and
"forward+thread", the same with one idle thread (the floor of a tracer with a writer thread:
glibc's malloc then locks its arena on each call its per-thread cache does not serve).

--callgrind: instruction counts instead of times (scripts/bench/callgrind.py).
"""
import argparse
import math
import os
import re
import shutil
import statistics as st
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# ZMTRACE_SAMPLE=BYTES adds a column "sampled": `zmtrace run --sample BYTES` (e.g. 524288).
# Taken out of the environment so no traced child inherits it (the recorder reads it too).
SAMPLE = os.environ.pop("ZMTRACE_SAMPLE", None)
# ZMTRACE_FLOOR=1 adds the floors "forward" and "forward+thread" (see the docstring).
FLOOR = os.environ.pop("ZMTRACE_FLOOR", None) == "1"
FLOORS = ["forward", "forward+thread"] if FLOOR else []
MODES = (["untraced"] + FLOORS + ["zmtrace", "aggregate"] + (["sampled"] if SAMPLE else [])
         + ["heaptrack"])
# ZMTRACE_BENCH_MODES=untraced,sampled,... keeps only those configurations (untraced is always
# kept: every ratio is to it), for a shorter run on one question.
_ONLY_MODES = os.environ.pop("ZMTRACE_BENCH_MODES", None)
if _ONLY_MODES:
    _keep = set(_ONLY_MODES.split(",")) | {"untraced"}
    _unknown = _keep - set(MODES)
    if _unknown:
        sys.exit(f"ZMTRACE_BENCH_MODES: no configuration {', '.join(sorted(_unknown))} "
                 f"(there are: {', '.join(MODES)})")
    MODES = [m for m in MODES if m in _keep]
# The configurations that leave a dump.
TRACED = [m for m in MODES[1:] if m not in FLOORS]
HEAPTRACK_CAP = 4 << 30
TIME = "/usr/bin/time"
TRACER_PROCS = {"zmtrace", "bash", "sh", "heaptrack", "heaptrack_inter", "zstd", "timeout"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def die(msg):
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(1)


def need(program, package):
    """The path of `program`, or a clear error naming the Debian package that has it."""
    path = program if os.path.isabs(program) else shutil.which(program)
    if not path or not os.access(path, os.X_OK):
        die(f"{program} is missing: apt-get install {package}")
    return path


class Workload:
    """One program to run in every configuration.

    metric: "self" (the program prints "VALUE ns per UNIT") or "wall" (seconds of the whole run).
    same_output: a function of stdout giving what must be equal traced and untraced.
    check: a function (stdout, event dump path) -> error string or None, run on the zmtrace run of
    the last repetition (counts the program printed against the dump's).
    """

    def __init__(self, name, desc, argv, metric="self", stdin=None, env=None, same_output=None,
                 check=None, modes=MODES, timeout=600):
        self.name, self.desc, self.argv, self.metric = name, desc, argv, metric
        self.stdin, self.env, self.modes, self.timeout = stdin, env or {}, modes, timeout
        self.same_output = same_output or (lambda out: out)
        self.check = check


def without_timing(out):
    return "\n".join(l for l in out.splitlines() if " ns per " not in l)


# ---------------------------------------------------------------------------------------------
# Running one configuration, with its peak RSS


def process_tree(root):
    """Pids of root and its descendants (from /proc/PID/task/TID/children)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def read_hwm(pid):
    """(name, VmHWM in bytes) of a live process, or None."""
    name, hwm = None, None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split(None, 1)[1].strip()
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                    break
    except OSError:
        return None
    return (name, hwm) if hwm is not None else None


class Result:
    def __init__(self):
        self.value = None  # the workload's metric
        self.wall = None
        self.rss_program = None
        self.rss_total = None
        self.error = None
        self.stdout = ""
        self.out_dir = None


def cap_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (HEAPTRACK_CAP, HEAPTRACK_CAP))


def command(ctx, mode, argv, out):
    if mode == "untraced":
        return list(argv)
    if mode in FLOORS:
        # env(1) sets it for the program only: env itself starts before the preload applies.
        return ["env", f"LD_PRELOAD={ctx.floors[mode]}"] + argv
    if mode == "zmtrace":
        return [ctx.zmtrace, "run", "-o", out, "--"] + argv
    if mode == "aggregate":
        return [ctx.zmtrace, "run", "--aggregate", "-o", out, "--"] + argv
    if mode == "sampled":
        return [ctx.zmtrace, "run", "--sample", SAMPLE, "-o", out, "--"] + argv
    return [ctx.heaptrack, "-o", os.path.join(out, "heaptrack"), "--"] + argv


def spawn_measured(cmd, env=None, stdin=None, capped=False, timeout=None, cwd=None):
    """Runs cmd in its own session under GNU time; returns (returncode, stdout, stderr, wall
    seconds, peak RSS of each process {pid: (name, bytes)} sampled from /proc, and GNU time's
    %M in bytes: the peak RSS of the largest process of the run, exact). A run past `timeout` is
    killed (returncode None).

    GNU time, not this process's wait4: a child forked from Python starts with Python's resident
    set, and ru_maxrss counts it."""
    with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr, \
            tempfile.NamedTemporaryFile(mode="r") as ftime:
        fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
        t0 = time.monotonic()
        p = subprocess.Popen([TIME, "-q", "-f", "%M", "-o", ftime.name] + cmd, stdin=fin,
                             stdout=fout, stderr=ferr, env=env, cwd=cwd, start_new_session=True,
                             preexec_fn=cap_memory if capped else None)
        peaks = {}
        done = threading.Event()

        def sample():
            while not done.is_set():
                for pid in process_tree(p.pid)[1:]:  # not GNU time
                    r = read_hwm(pid)
                    if r and (pid not in peaks or r[1] > peaks[pid][1]):
                        peaks[pid] = r
                done.wait(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(p.pid, 9)
            p.wait()
        wall = time.monotonic() - t0
        done.set()
        sampler.join()
        if stdin:
            fin.close()
        fout.seek(0)
        ferr.seek(0)
        out = fout.read().decode(errors="replace")
        err = ferr.read().decode(errors="replace")
        lines = ftime.read().split()
        maxrss = int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else 0
        # GNU time says "Command exited with non-zero status N" / "Command terminated by
        # signal N" in its file, and exits with the status.
    # What is left of the session (heaptrack's interpreter, if the script did not wait for it).
    try:
        os.killpg(p.pid, 9)
    except OSError:
        pass
    rc = None if timed_out else p.returncode
    return rc, out, err, wall, peaks, maxrss


def run_one(ctx, w, mode):
    r = Result()
    r.out_dir = tempfile.mkdtemp(dir=ctx.work, prefix=f"{w.name}.{mode}.")
    env = dict(os.environ, **w.env)
    rc, out, err, wall, peaks, maxrss = spawn_measured(
        command(ctx, mode, w.argv, r.out_dir), env=env, stdin=w.stdin, capped=mode == "heaptrack",
        timeout=w.timeout * (1 if mode == "untraced" else 10), cwd=ctx.work)
    r.wall, r.stdout = wall, out
    # The program is the largest process that is not the tracer's; where it is the largest of
    # the run (untraced, zmtrace: `zmtrace run` itself is small), GNU time has its exact peak.
    # GNU time's figure is the largest process's: the program's where no other sampled process
    # (`zmtrace run` summarizing the dump at the end, say) came near it.
    prog = {pid: b for pid, (n, b) in peaks.items() if n not in TRACER_PROCS}
    ppid = max(prog, key=prog.get) if prog else None
    others = max((b for pid, (n, b) in peaks.items() if pid != ppid), default=0)
    if mode != "heaptrack" and ppid is not None and prog[ppid] >= others:
        peaks[ppid] = (peaks[ppid][0], max(prog[ppid], maxrss))
    elif mode != "heaptrack" and ppid is None:
        peaks[-1] = ("program", maxrss)  # too short to be sampled
        ppid = -1
    r.rss_program = peaks[ppid][1] if ppid is not None else 0
    r.rss_total = sum(b for _, b in peaks.values())
    if rc is None:
        r.error = f"timed out after {wall:.0f} s"
        return r
    if rc != 0:
        lines = [l for l in err.splitlines() if l.strip() and not l.startswith("zmtrace:")]
        reason = next((l.strip() for l in lines if "bad_alloc" in l or "Killed" in l), None)
        if reason is None:
            reason = lines[-1].strip() if lines else ""
        if mode == "heaptrack" and rc == 141:
            reason = "the program got SIGPIPE: heaptrack_interpret died" + (
                f" ({reason})" if reason else "")
        r.error = f"exit {rc}: {reason[:120]}"
        return r
    if w.metric == "self":
        line = [l for l in out.splitlines() if " ns per " in l]
        if not line:
            r.error = "no timing line in the output"
            return r
        r.value = float(line[0].split()[0])
    else:
        r.value = wall
    return r


def dump_files(d, mode):
    if not d or not os.path.isdir(d):
        return []
    if mode == "heaptrack":
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith("heaptrack"))
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".zmt"))


def main_dump(d, mode):
    """The largest dump of a run (a shell's own dumps are small beside the program's)."""
    fs = dump_files(d, mode)
    return max(fs, key=os.path.getsize) if fs else None


def analysis(ctx, mode, path, n):
    """(median wall seconds, peak RSS bytes) of the analyzer on a dump, or an error string."""
    cmd = ([ctx.heaptrack_print, path] if mode == "heaptrack" else [ctx.zmtrace, "report", path])
    ts, rss = [], []
    for _ in range(n):
        rc, _, err, wall, _, maxrss = spawn_measured(cmd, timeout=900)
        if rc != 0:
            return f"exit {rc}: {(err.strip().splitlines() or ['?'])[-1][:100]}"
        ts.append(wall)
        rss.append(maxrss)
    return st.median(ts), max(rss)


# ---------------------------------------------------------------------------------------------
# Measuring a workload


class Measured:
    def __init__(self, w):
        self.w = w
        self.values = {m: {} for m in MODES}  # mode -> rep -> metric
        self.walls = {m: {} for m in MODES}
        self.rss_program = {m: [] for m in MODES}
        self.rss_total = {m: [] for m in MODES}
        self.failed = {}
        self.dirs = {}
        self.sizes = {}
        self.analysis = {}
        self.notes = []
        self.unit = "s" if w.metric == "wall" else None


def measure(ctx, w):
    m = Measured(w)
    untraced_out = None
    for rep in range(ctx.reps):
        for mode in w.modes:
            if mode in m.failed:
                continue
            log(f"  {w.name}: repetition {rep + 1}/{ctx.reps}, {mode}")
            r = run_one(ctx, w, mode)
            if r.error is None and mode != "heaptrack":
                got = w.same_output(r.stdout)
                if mode == "untraced":
                    untraced_out = got
                elif untraced_out is not None and got != untraced_out:
                    r.error = "the program's output differs from the untraced run's"
                    keep = os.path.join(ctx.work, f"{w.name}.{mode}.stdout")
                    with open(keep, "w") as f:
                        f.write(r.stdout)
                    m.notes.append(f"{mode}: output kept in {keep}")
            if r.error:
                m.failed[mode] = r.error
                m.dirs[mode] = r.out_dir
                continue
            m.values[mode][rep] = r.value
            m.walls[mode][rep] = r.wall
            m.rss_program[mode].append(r.rss_program)
            m.rss_total[mode].append(r.rss_total)
            if m.unit is None:
                line = next(l for l in r.stdout.splitlines() if " ns per " in l)
                m.unit = "ns/" + line.split(" ns per ")[1].split()[0]
            if mode in m.dirs:
                shutil.rmtree(m.dirs[mode], ignore_errors=True)
            m.dirs[mode] = r.out_dir
            m.last_stdout = getattr(m, "last_stdout", {})
            m.last_stdout[mode] = r.stdout
        if "untraced" in m.failed:
            break
    for mode in TRACED:
        if mode in m.failed or mode not in w.modes:
            continue
        if mode == "heaptrack":
            fs = [f for f in dump_files(m.dirs.get(mode), mode) if f.endswith(".zst")]
        else:
            fs = dump_files(m.dirs.get(mode), mode)
        m.sizes[mode] = sum(os.path.getsize(f) for f in fs)
        dump = main_dump(m.dirs.get(mode), mode)
        if dump:
            m.analysis[mode] = analysis(ctx, mode, dump, 1 if ctx.quick else 3)
    if ctx.quick and "zmtrace" in w.modes and "zmtrace" not in m.failed:
        err, notes = compare_stacks(ctx, w)
        m.notes += notes
        if err:
            m.failed["zmtrace"] = err
    if w.check and "zmtrace" in m.dirs and "zmtrace" not in m.failed:
        err = w.check(m.last_stdout["zmtrace"], main_dump(m.dirs["zmtrace"], "zmtrace"), ctx)
        if err:
            m.failed["zmtrace"] = f"wrong counts: {err}"
    return m


def compare_stacks(ctx, w):
    """The smoke run's check of every stack: one more run under zmtrace with
    ZMTRACE_UNWIND=compare (each stack also captured by the reference unwinder); an error if any
    differs, or if a dump did not end normally. Truncated stacks are noted, not failed: the
    recorder counts as truncated a stack that ends where the reference's ends too, in ld.so's
    entry code (libstdc++'s emergency pool, allocated from _dl_init, in every C++ program)."""
    import copy
    wc = copy.copy(w)
    wc.env = dict(w.env, ZMTRACE_UNWIND="compare")
    log(f"  {w.name}: zmtrace, every stack compared with the reference unwinder")
    r = run_one(ctx, wc, "zmtrace")
    if r.error:
        return f"with ZMTRACE_UNWIND=compare: {r.error}"
    bad, notes = [], []
    for dump in dump_files(r.out_dir, "zmtrace"):
        info = subprocess.run([ctx.zmtrace, "dump-info", dump], capture_output=True, text=True)
        text = info.stdout
        name = os.path.basename(dump)
        u = re.search(r"unwinding:\s+(\d+) stacks compared with the reference unwinder, (\d+) "
                      r"differ", text)
        t = re.search(r"(\d+) truncated stacks", text)
        if info.returncode != 0 or "ended normally" not in text:
            bad.append(f"{name}: {(text.strip().splitlines() or [info.stderr.strip()])[-1][:100]}")
        elif not u:
            bad.append(f"{name}: no comparison in dump-info")
        elif int(u.group(2)):
            bad.append(f"{name}: {u.group(2)} of {u.group(1)} stacks differ from the reference")
        if t and int(t.group(1)):
            notes.append(f"ZMTRACE_UNWIND=compare: {u.group(1) if u else '?'} stacks, none "
                         f"different, {t.group(1)} counted as truncated ({name})")
    shutil.rmtree(r.out_dir, ignore_errors=True)
    return "; ".join(bad) or None, notes


# ---------------------------------------------------------------------------------------------
# The table


def rng(xs, f="{:.2f}"):
    return f"{f.format(st.median(xs))} ({f.format(min(xs))}–{f.format(max(xs))})"


def value_fmt(unit):
    return "{:.3f}" if unit == "s" else ("{:.0f}" if unit == "req/s" else "{:.1f}")


def mib(b):
    return f"{b / 2**20:.1f}"


def size_fmt(b):
    return f"{b / 2**10:.0f} KiB" if b < 2**20 else f"{b / 2**20:.1f} MiB"


def ratios(m, mode, key="values"):
    """Traced / untraced per repetition (for a throughput: the share of it kept)."""
    a, u = getattr(m, key)[mode], getattr(m, key)["untraced"]
    return [a[k] / u[k] for k in a if k in u]


def overhead_ratios(m, mode):
    """(mode - untraced) / (heaptrack - untraced) per repetition, in time per operation."""
    v = m.values
    if "heaptrack" in m.failed or not v.get("heaptrack"):
        return []
    t = (lambda x: 1 / x) if m.unit == "req/s" else (lambda x: x)
    out = []
    for k, x in v[mode].items():
        if k in v["untraced"] and k in v["heaptrack"]:
            d = t(v["heaptrack"][k]) - t(v["untraced"][k])
            if d > 0:
                out.append((t(x) - t(v["untraced"][k])) / d)
    return out


def table(results, reps):
    hdr = ("| workload | configuration | median (min–max) | × untraced | overhead / heaptrack's "
           "| wall × untraced | dump | analysis: time, peak RSS | peak RSS MiB: program, whole run |")
    lines = [hdr, "|" + "|".join(["---"] * 9) + "|"]
    geo = {m: [] for m in MODES if m not in ("untraced", "heaptrack")}
    for m in results:
        for mode in m.w.modes:
            name = f"**{m.w.name}**" if mode == "untraced" else ""
            if mode in m.failed:
                lines.append(f"| {name} | {mode} | FAILED ({m.failed[mode]}) | | | | | | |")
                continue
            xs = list(m.values[mode].values())
            if not xs:
                continue
            cells = [name, mode, f"{rng(xs, value_fmt(m.unit))} {m.unit}"]
            if mode == "untraced":
                cells += ["1", "", "1"]
            else:
                r = ratios(m, mode)
                cells.append(rng(r) if r else "")
                o = overhead_ratios(m, mode) if mode != "heaptrack" else []
                cells.append(rng(o) if o else "")
                if o:
                    geo[mode].append((m.w.name, st.median(o)))
                wr = ratios(m, mode, "walls")
                cells.append(rng(wr) if wr else "")
            cells.append(size_fmt(m.sizes[mode]) if mode in m.sizes else "")
            a = m.analysis.get(mode)
            if a is None:
                cells.append("")
            elif isinstance(a, str):
                cells.append(f"FAILED ({a})")
            else:
                tool = "heaptrack_print" if mode == "heaptrack" else "report"
                cells.append(f"{tool} {a[0]:.2f} s, {mib(a[1])} MiB")
            rp, rt = m.rss_program[mode], m.rss_total[mode]
            cells.append(f"{mib(st.median(rp))}, {mib(st.median(rt))}" if rp else "")
            lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    out += "\n\nGeometric mean over workloads of zmtrace's overhead / heaptrack's overhead " \
           "(median per workload; target <= 0.25, and <= 0.33 on every workload):\n"
    for mode, xs in geo.items():
        if not xs:
            out += f"  {mode}: no workload that heaptrack survived\n"
            continue
        g = math.exp(sum(math.log(max(x, 1e-9)) for _, x in xs) / len(xs))
        worst = max(xs, key=lambda t: t[1])
        out += (f"  {mode:9} {g:.2f} over {len(xs)} workloads; worst {worst[1]:.2f} ({worst[0]}); "
                f"above 1/3: {', '.join(n for n, x in xs if x > 1 / 3) or 'none'}\n")
    failed = [m.w.name for m in results if "heaptrack" in m.failed]
    if failed:
        out += f"  (heaptrack failed on: {', '.join(failed)}; they are not in the mean)\n"
    return out


# ---------------------------------------------------------------------------------------------


class Context:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--zmtrace", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated workload names (or prefixes)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: a few thousand operations per workload, 1 repetition")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep", help="keep the work directory here")
    args = ap.parse_args()

    sys.modules.setdefault("suite", sys.modules[__name__])  # one Workload class for both files
    import workloads  # scripts/bench/workloads.py

    ctx = Context()
    ctx.root, ctx.zmtrace, ctx.quick = args.root, args.zmtrace, args.quick
    ctx.callgrind = args.callgrind
    ctx.reps = 1 if args.quick else args.reps
    ctx.work = args.keep or tempfile.mkdtemp(prefix="zmbench.")
    os.makedirs(ctx.work, exist_ok=True)
    names = workloads.names()
    if args.list:
        for n, d in workloads.describe():
            print(f"{n:14} {d}")
        return
    only = [o for o in args.only.split(",") if o]
    # A name chooses that workload; a prefix that is no name, every workload it starts.
    chosen = [n for n in names if not only
              or any(n == o or (o not in names and n.startswith(o)) for o in only)]
    bad = [o for o in only if not any(n == o or n.startswith(o) for n in names)]
    if bad:
        die(f"no workload named {', '.join(bad)} (see --list)")
    workloads.check_requirements(chosen)
    need(TIME, "time")
    ctx.heaptrack = need("heaptrack", "heaptrack")
    ctx.heaptrack_print = need("heaptrack_print", "heaptrack")
    ctx.floors = {}
    for mode, flags in zip(FLOORS, [[], ["-DIDLE_THREAD", "-pthread"]]):
        so = os.path.join(ctx.work, mode.replace("+", "-") + ".so")
        subprocess.run(["cc", "-O2", "-shared", "-fPIC"] + flags
                       + ["-o", so, os.path.join(HERE, "forward.c")], check=True)
        ctx.floors[mode] = so
    try:
        if args.callgrind:
            import callgrind
            callgrind.run(ctx, chosen)
            return
        results = []
        started = time.monotonic()
        load = os.getloadavg()
        for n in chosen:
            log(f"{n}: preparing")
            for item in workloads.prepare(ctx, n):
                if isinstance(item, Workload):
                    log(f"{item.name}: {item.desc}")
                    results.append(measure(ctx, item))
                else:  # figures of their own (bytes per live block, Redis)
                    item.measure(ctx)
                    results.append(item)
        print(f"# zmtrace benchmark suite: {ctx.reps} repetition(s){' (quick)' if ctx.quick else ''}"
              f", load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
              f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
              f"{time.monotonic() - started:.0f} s\n")
        timed = []
        for m in results:
            timed += [m] if isinstance(m, Measured) else getattr(m, "measured", [])
        for m in timed:
            print(f"- {m.w.name}: {m.w.desc}")
            for note in m.notes:
                print(f"  - {note}")
        print()
        print(table(timed, ctx.reps))
        for extra in results:
            if not isinstance(extra, Measured):
                print(extra.render())
    finally:
        if not args.keep:
            shutil.rmtree(ctx.work, ignore_errors=True)


if __name__ == "__main__":
    main()
