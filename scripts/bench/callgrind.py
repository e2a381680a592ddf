"""The suite's callgrind mode (scripts/bench.sh --callgrind): instruction counts, which do not move
with the machine's load, per allocator call and per stack frame walked.

Each workload runs under callgrind untraced and with libzmtrace.so preloaded, the way
/work/shared/tools/callgrind-preload.sh runs it (its static env(1), built from its static_env.c,
sets LD_PRELOAD after valgrind has started, so that valgrind's launcher is not traced); the
callgrind file is kept and read whole here (that script prints only the top functions, and the
unwinder's cost is spread over many file:function entries, one per inlined source file, whose
inclusive costs callgrind_annotate gives overlapping).

Per workload:
  - allocator calls: the events of the zmtrace dump of the traced run (malloc, calloc, realloc,
    free, ... each one event);
  - instructions per call, untraced and traced (the whole process: the program, the recorder,
    its writer thread), and the difference: what the recorder costs per call;
  - the unwinder's instructions per captured stack: the inclusive cost of the functions named by
    ZMTRACE_UNWIND_FUNCS (a regular expression on the function name; default `capture_fast`, the
    recorder's entry into framehop in src/recorder/src/unwind.rs; give the new unwinder's entry
    function(s) here, the outermost ones only, or nested costs are counted twice), divided by the
    captures (the dump's allocations and reallocs: frees capture no stack).

For the random-depth workloads, the unwinder's instructions per frame, on the steady path: the
workload runs traced twice, with N and 2N operations, and the difference of the unwinder's cost is
divided by the difference of the frames, so that start-up (loading the modules' unwind tables,
the caches' first misses) is left out. The frames are the program's known stack depths (randdepth
prints them, and is deterministic: the same seed makes the same stacks traced or not), not
counted by the recorder:
  - "recorded": per capture, the whole stack recorded (depth + 6);
  - "walked": the frames the unwinder walked. By default the recorder takes no walk over from the
    previous one (src/recorder/src/unwind/mod.rs, `reuse`), so it walks every frame: walked =
    recorded. With ZMTRACE_UNWIND_REUSE=1 or =always in the environment, walks may be taken over:
    walked is then the depth up to the frame that shifted the stack pointer (depth + 3: the op
    function, bottom, the path's frames, root), the frames above it (run, start_thread, clone3)
    sitting where they sat in the previous walk (with =1 the trials may walk them all the same,
    so this is the least the unwinder walked).
  In both, the recorder's own frames (3 to 4, from malloc to the capture) are walked too and not
  counted: the figure is per program frame.
The target is <= 25 instructions per frame walked.
"""
import os
import re
import subprocess
import tempfile

from suite import Workload, log, main_dump, need

TOOLS = os.environ.get("CALLGRIND_TOOLS", "/work/shared/tools")


def static_env(ctx):
    exe = os.path.join(ctx.work, "static_env")
    if not os.path.exists(exe):
        src = os.path.join(TOOLS, "static_env.c")
        if not os.path.exists(src):
            raise SystemExit(f"bench: {src} is missing (set CALLGRIND_TOOLS to the folder of "
                             "callgrind-preload.sh and static_env.c)")
        subprocess.run(["cc", "-O2", "-static", "-o", exe, src], check=True)
    return exe


def stub_lib(ctx):
    so = os.path.join(ctx.work, "stub.so")
    if not os.path.exists(so):
        src = os.path.join(ctx.work, "stub.c")
        with open(src, "w") as f:
            f.write("void zmtrace_bench_stub(void) {}\n")
        subprocess.run(["cc", "-shared", "-fPIC", "-o", so, src], check=True)
    return so


def callgrind(ctx, w, lib, argv):
    """Runs argv under callgrind with lib preloaded; returns (total Ir, {function: inclusive Ir}
    of the main process, the dump directory)."""
    out = tempfile.mkdtemp(dir=ctx.work, prefix=f"cg.{w.name}.")
    cg = os.path.join(out, "cg.%p")
    env = dict(os.environ, **w.env)
    stdin = open(w.stdin, "rb") if w.stdin else subprocess.DEVNULL
    p = subprocess.run(["valgrind", "--tool=callgrind", "--trace-children=yes",
                        f"--callgrind-out-file={cg}", static_env(ctx), f"LD_PRELOAD={lib}",
                        f"ZMTRACE_OUT={out}"] + argv, env=env, stdin=stdin,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ctx.work)
    if w.stdin:
        stdin.close()
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    files = [os.path.join(out, f) for f in os.listdir(out) if f.startswith("cg.")]
    total, incl = read_callgrind(max(files, key=os.path.getsize))
    return total, incl, out


def read_callgrind(path):
    """(total Ir, {function: inclusive Ir}) from a callgrind file: a function's inclusive cost is
    its own plus that of the calls it makes (each "calls=" line is followed by the call's
    inclusive cost), whatever source file (fi=/fe=, inlined code) each part came from; a call to
    itself is not added again."""
    names, self_ir, call_ir = {}, {}, {}
    fn = cfn = None
    after_calls = False
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
                        call_ir[fn] = call_ir.get(fn, 0) + ir
                    after_calls = False
                else:
                    self_ir[fn] = self_ir.get(fn, 0) + ir
                    total += ir
            elif line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                cfn = name(line[4:].strip())
            elif line.startswith("calls="):
                after_calls = True
            elif line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
    incl = {k: self_ir.get(k, 0) + call_ir.get(k, 0) for k in set(self_ir) | set(call_ir)}
    return total, incl


def unwinder_cost(incl, pattern):
    names = [f for f in incl if re.search(pattern, f)]
    return sum(incl[f] for f in names), names


def dump_counts(ctx, out):
    rep = subprocess.run([ctx.zmtrace, "report", "--json", "--top", "1", main_dump(out, "zmtrace")],
                         capture_output=True, text=True, check=True).stdout
    import json
    d = json.loads(rep)
    return d["events"], d["allocations"] + d["reallocs"] + d["failed"]


def walk_reuse(w):
    """Whether the traced run may take walks over (the recorder's ZMTRACE_UNWIND_REUSE knob)."""
    return dict(os.environ, **w.env).get("ZMTRACE_UNWIND_REUSE") in ("1", "always")


def printed_frames(w, argv):
    """(captures, frames recorded, frames walked) of argv's run, from the frames: line it
    prints; walked is the recorded frames unless walks may be taken over."""
    p = subprocess.run(argv, capture_output=True, text=True, check=True,
                       env=dict(os.environ, **w.env))
    line = next(l for l in p.stdout.splitlines() if l.startswith("frames:"))
    f = line.split()
    captures, recorded, shifted = int(f[2]), int(f[4]), int(f[6])
    return captures, recorded, shifted if walk_reuse(w) else recorded


def run(ctx, chosen):
    import workloads
    need("valgrind", "valgrind")
    pattern = os.environ.get("ZMTRACE_UNWIND_FUNCS", "capture_fast")
    lib = os.path.join(os.path.dirname(ctx.zmtrace), "libzmtrace.so")
    ctx.callgrind = True
    rows, steady = [], []
    reuse = False
    for name in chosen:
        for w in workloads.prepare(ctx, name):
            if not isinstance(w, Workload):
                log(f"{name}: {type(w).__name__} has no instruction counts (not a program run)")
                continue
            log(f"{w.name}: callgrind, untraced and traced")
            try:
                base, _, _ = callgrind(ctx, w, stub_lib(ctx), w.argv)
                traced, incl, out = callgrind(ctx, w, lib, w.argv)
                events, captures = dump_counts(ctx, out)
            except (RuntimeError, subprocess.CalledProcessError, ValueError) as e:
                rows.append(f"| {w.name} | FAILED ({e}) | | | | | |")
                continue
            unw, names = unwinder_cost(incl, pattern)
            rows.append(f"| {w.name} | {events:,} | {base / events:.0f} | {traced / events:.0f} | "
                        f"{(traced - base) / events:.0f} | "
                        f"{unw / captures:.0f} ({100 * unw / traced:.0f} %) | "
                        f"{', '.join(sorted(names)) or 'no function matched'} |")
            if w.name.startswith("randdepth") and not ctx.quick:
                # The steady path: N and 2N operations.
                argv2 = list(w.argv)
                argv2[1] = str(2 * int(w.argv[1]))
                log(f"{w.name}: callgrind, traced, twice the operations")
                try:
                    traced2, incl2, out2 = callgrind(ctx, w, lib, argv2)
                    events2, captures2 = dump_counts(ctx, out2)
                except (RuntimeError, subprocess.CalledProcessError) as e:
                    steady.append(f"| {w.name} | FAILED ({e}) | | | |")
                    continue
                unw2, _ = unwinder_cost(incl2, pattern)
                reuse = reuse or walk_reuse(w)
                c1, rec1, walk1 = printed_frames(w, w.argv)
                c2, rec2, walk2 = printed_frames(w, argv2)
                du = unw2 - unw
                steady.append(
                    f"| {w.name} | {du / (c2 - c1):.0f} | {du / (walk2 - walk1):.1f} | "
                    f"{du / (rec2 - rec1):.1f} | {(walk2 - walk1) / (c2 - c1):.1f} / "
                    f"{(rec2 - rec1) / (c2 - c1):.1f} | {(traced2 - traced) / (events2 - events):.0f} |")
    print(f"# callgrind: instructions (Ir); unwinder = inclusive cost of the functions matching "
          f"ZMTRACE_UNWIND_FUNCS={pattern!r}\n")
    print("| workload | allocator calls (dump events) | Ir/call untraced | Ir/call traced | "
          "recorder Ir/call | unwinder Ir/capture (share of traced) | unwinder functions |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if steady:
        walked = ("up to the shifted root (ZMTRACE_UNWIND_REUSE on)" if reuse
                  else "the whole stack (walk reuse off, the default)")
        print("\nSteady path, random depth (the difference between N and 2N operations; frames from "
              f"the program's known depths: walked = {walked}, recorded = the whole "
              "stack; target <= 25 per frame walked):\n")
        print("| workload | unwinder Ir/capture | unwinder Ir/frame walked | unwinder Ir/frame "
              "recorded | frames per capture, walked / recorded | traced Ir/call |")
        print("|---|---|---|---|---|---|")
        print("\n".join(steady))
