#!/usr/bin/python3
"""Where a traced program's time goes, per thread: wall, CPU of the program's threads and of the
recorder's writer thread (named `zmtrace-writer`), context switches and page faults.

    scripts/bench-threads.py [--reps N] [--lib LIB] [--modes untraced,event,aggregate] -- CMD...

A mode may name its own build of the library (event:/tmp/a.so,event:/tmp/b.so) for an A/B.

Each repetition runs the modes interleaved. CPU per thread comes from /proc/PID/task/*/stat
(utime+stime, clock ticks), polled every 5 ms: a thread that ends between two polls loses at
most that much. The totals (CPU, page faults, context switches) are the process's own rusage
from wait4, exact. Prints one line per mode with the medians, and the ratio of each to
untraced's median wall."""
import argparse
import os
import statistics
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def task_times(pid):
    """{tid: (comm, cpu seconds, voluntary, involuntary switches)} of the live threads."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        fields = s[s.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        vol = invol = 0
        for line in st.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                invol = int(line.split()[1])
        out[tid] = (comm, cpu, vol, invol)
    return out


def run(cmd, env):
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.execvpe(cmd[0], cmd, env)
    seen = {}
    while True:
        r, status, ru = os.wait4(pid, os.WNOHANG)
        if r == pid:
            break
        for tid, v in task_times(pid).items():
            seen[tid] = v
        time.sleep(0.005)
    wall = time.monotonic() - t0
    writer = sum(v[1] for v in seen.values() if v[0] == "zmtrace-writer")
    wsw = sum(v[2] + v[3] for v in seen.values() if v[0] == "zmtrace-writer")
    return {
        "wall": wall,
        "cpu": ru.ru_utime + ru.ru_stime,
        "sys": ru.ru_stime,
        "writer": writer,
        "program": ru.ru_utime + ru.ru_stime - writer,
        "minflt": ru.ru_minflt,
        "vcsw": ru.ru_nvcsw,
        "ivcsw": ru.ru_nivcsw,
        "writer_csw": wsw,
        "rc": os.waitstatus_to_exitcode(status),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lib", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "target", "release", "libzmtrace.so"))
    ap.add_argument("--modes", default="untraced,event,aggregate")
    ap.add_argument("cmd", nargs="+")
    a = ap.parse_args()
    lib = os.path.abspath(a.lib)
    modes = a.modes.split(",")
    res = {m: [] for m in modes}
    out = tempfile.mkdtemp(prefix="bench-threads.")
    for _ in range(a.reps):
        for m in modes:
            env = dict(os.environ)
            if m != "untraced":
                # MODE or MODE:LIB (another build of the library, for an A/B in one run).
                kind, _, other = m.partition(":")
                env.update(LD_PRELOAD=os.path.abspath(other) if other else lib, ZMTRACE_OUT=out,
                           ZMTRACE_AGGREGATE="1" if kind == "aggregate" else "0")
            r = run(a.cmd, env)
            if r["rc"] != 0:
                sys.exit(f"{m}: exit status {r['rc']}")
            res[m].append(r)
            for f in os.listdir(out):
                os.unlink(os.path.join(out, f))
    os.rmdir(out)
    base = statistics.median(r["wall"] for r in res[modes[0]])
    print(f"load {os.getloadavg()[0]:.2f}; {a.reps} interleaved reps; medians; "
          f"x = wall / {modes[0]}'s median wall")
    print(f"{'mode':20} {'wall s':>7} {'x':>5} {'cpu s':>6} {'prog':>6} {'writer':>6} {'sys':>5} "
          f"{'minflt':>8} {'vcsw':>7} {'ivcsw':>6} {'w-csw':>6}")
    for m in modes:
        med = {k: statistics.median(r[k] for r in res[m]) for k in res[m][0]}
        print(f"{os.path.basename(m)[:20]:20} {med['wall']:7.3f} {med['wall'] / base:5.2f} {med['cpu']:6.2f} "
              f"{med['program']:6.2f} {med['writer']:6.2f} {med['sys']:5.2f} {med['minflt']:8.0f} "
              f"{med['vcsw']:7.0f} {med['ivcsw']:6.0f} {med['writer_csw']:6.0f}")


if __name__ == "__main__":
    main()
