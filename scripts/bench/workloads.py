"""The workloads of the benchmark suite (scripts/bench/suite.py): how each is built, its input
generated, and its counts checked. `prepare(ctx, name)` builds what the workload needs in ctx.work
and returns the Workload objects to measure."""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

from suite import Workload, need, without_timing, die

CFLAGS = ["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-Wall"]
HERE = os.path.dirname(os.path.abspath(__file__))


def cc(ctx, src, out, extra=(), compiler="cc"):
    exe = os.path.join(ctx.work, out)
    if not os.path.exists(exe):
        subprocess.run([compiler] + CFLAGS + list(extra) + ["-o", exe, src], check=True)
    return exe


def size(ctx, full, quick):
    """The workload's size: full, the smoke run's, or a tenth for callgrind (50 times slower)."""
    if ctx.quick:
        return quick
    if getattr(ctx, "callgrind", False):
        return max(quick, full // 10)
    return full


def scale(ctx, full, quick):
    return str(size(ctx, full, quick))


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


# --- thousands of distinct sites, STL churn ---------------------------------------------------


def sites(ctx, name):
    src = os.path.join(ctx.work, "sites.c")
    if not os.path.exists(src):
        subprocess.run([sys.executable, os.path.join(HERE, "gensites.py"), src, "4000", "10", "1"],
                       check=True)
    exe = cc(ctx, src, "sites")
    walks = scale(ctx, 600000, 500)
    desc = (f"sites.c written by scripts/bench/gensites.py: 4,000 functions in a random call tree "
            f"10 deep, each allocating its own size; {int(walks):,} walks root to leaf, 11 "
            "malloc+free each, ~4,096 live blocks")
    return [Workload(name, desc, [exe, walks, "1"], same_output=without_timing,
                     check=check_sites)]


def check_sites(stdout, dump, ctx):
    want = printed_counts(stdout)
    rep, err = report_json(ctx, dump)
    if err:
        return err
    got = sum(v for k, v in site_counts(rep, "allocations").items()
              if k[:1] == "f" and k[1:].isdigit())
    bad = [] if got == want["malloc"] else [f"malloc {got} in the dump, {want['malloc']} made"]
    if not want["free"] <= rep["frees"] <= want["free"] + 16:
        bad.append(f"free {rep['frees']} in the dump, {want['free']} made")
    return "; ".join(bad) or None


def stl(ctx, name):
    exe = cc(ctx, os.path.join(HERE, "stl.cpp"), "stl", compiler="c++")
    n = scale(ctx, 50000, 100)
    desc = (f"scripts/bench/stl.cpp: {int(n):,} iterations of std::string appends, std::vector "
            "growth, std::map and std::unordered_map inserts and erases (~2,000 entries each)")
    return [Workload(name, desc, [exe, n, "1"], same_output=without_timing)]


# --- Debian programs on generated input --------------------------------------------------------

PY_CHURN = """import sys
n = int(sys.argv[1])
d, total = {}, 0
for i in range(n):
    k = f"key{i % 5000}-{i % 7}"
    lst = d.setdefault(k, [])
    lst.append({"i": i, "s": str(i) * (i % 5 + 1), "t": (i, k)})
    if len(lst) > 20:
        del lst[:10]
    if i % 5000 == 0:
        total += sum(len(x["s"]) for v in d.values() for x in v)
        total += len(" ".join(sorted(d)[:200]).split())
print(total, len(d))
"""

JQ_PROGRAM = ("[.[] | select(.score % 3 == 0) | {id, name: (.name + \"x\"), "
              "tags: (.tags | map(ascii_upcase)), s: (.nested.b | add)}] "
              "| group_by(.id % 10) | map(length)")

AWK_PROGRAM = ("{ for (i = 1; i < NF; i++) { c[$i]++; last[$i] = $NF }; pair[$1 \" \" $2]++ } "
               "END { n = asorti(c, k); for (i = 1; i <= 5; i++) print k[i], c[k[i]]; "
               "print n, length(pair) }")


def gen_sql(path, rows):
    r = random.Random(1)
    with open(path, "w") as f:
        f.write("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, tag TEXT, v REAL, note TEXT);\n"
                "BEGIN;\n")
        for _ in range(rows):
            name = "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(5, 20)))
            f.write(f"INSERT INTO t(name, tag, v, note) VALUES('{name}', 'tag{r.randrange(500)}', "
                    f"{r.random() * 1000:.3f}, '{name[::-1] * r.randint(1, 4)}');\n")
        f.write("COMMIT;\nCREATE INDEX t_name ON t(name);\nCREATE INDEX t_tag ON t(tag, v);\n"
                "SELECT count(*), count(DISTINCT tag), round(sum(v), 3) FROM t;\n"
                "SELECT tag, count(*), round(avg(v), 3) FROM t GROUP BY tag ORDER BY 2 DESC, 1 "
                "LIMIT 5;\nSELECT name FROM t WHERE name > 'm' ORDER BY name LIMIT 3;\n")


def gen_json(path, n):
    r = random.Random(2)
    items = [{"id": i, "name": "".join(r.choice("abcdefghij") for _ in range(r.randint(4, 12))),
              "score": r.randrange(1000),
              "tags": [f"t{r.randrange(50)}" for _ in range(r.randint(0, 6))],
              "nested": {"a": r.random(), "b": [r.randrange(100) for _ in range(r.randint(0, 5))]}}
             for i in range(n)]
    with open(path, "w") as f:
        json.dump(items, f)


def gen_text(path, lines):
    r = random.Random(3)
    words = ["".join(r.choice("abcdefghijklmnop") for _ in range(r.randint(2, 9)))
             for _ in range(20000)]
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(r.choice(words) for _ in range(r.randint(3, 15)))
                    + f" {r.randrange(100000)}\n")


def debian(ctx, name):
    if name == "sqlite3":
        exe = need("sqlite3", "sqlite3")
        rows = size(ctx, 150000, 300)
        path = os.path.join(ctx.work, "insert.sql")
        gen_sql(path, rows)
        desc = (f"Debian's sqlite3 (in memory): {rows:,} INSERTs in one transaction, then two "
                "indexes and three queries")
        return [Workload(name, desc, [exe], metric="wall", stdin=path)]
    if name == "jq":
        exe = need("jq", "jq")
        n = size(ctx, 60000, 200)
        path = os.path.join(ctx.work, "data.json")
        gen_json(path, n)
        desc = (f"Debian's jq: select, map and group_by over {os.path.getsize(path) / 2**20:.1f} "
                f"MiB of JSON ({n:,} objects)")
        return [Workload(name, desc, [exe, "-c", JQ_PROGRAM, path], metric="wall")]
    if name == "gawk":
        exe = need("gawk", "gawk")
        n = size(ctx, 150000, 500)
        path = os.path.join(ctx.work, "words.txt")
        gen_text(path, n)
        desc = (f"Debian's gawk: word counts in associative arrays over {n:,} lines "
                f"({os.path.getsize(path) / 2**20:.1f} MiB), then asorti")
        return [Workload(name, desc, [exe, AWK_PROGRAM, path], metric="wall")]
    if name == "python3":
        exe = need("/usr/bin/python3", "python3")
        n = size(ctx, 200000, 2000)
        path = os.path.join(ctx.work, "churn.py")
        with open(path, "w") as f:
            f.write(PY_CHURN)
        desc = (f"Debian's /usr/bin/python3, PYTHONMALLOC=malloc: dicts of lists of dicts, "
                f"strings and tuples, {n:,} iterations")
        return [Workload(name, desc, [exe, path, str(n)], metric="wall",
                         env={"PYTHONMALLOC": "malloc"})]
    raise KeyError(name)


# --- many live blocks: the memory figures of issue 13 -----------------------------------------


def manyblocks(ctx, name):
    exe = cc(ctx, os.path.join(HERE, "manyblocks.c"), "manyblocks")
    n = size(ctx, 5000000, 5000)
    desc = (f"scripts/bench/manyblocks.c: {n:,} blocks of 16–64 B held at once, then freed")
    return [Workload(name, desc, [exe, str(n), "free"], same_output=without_timing),
            PerBlock(exe, n)]


class PerBlock:
    """Bytes per live block: the traced process's extra peak RSS while it holds N blocks, the same
    with the N blocks still live at exit (the leak check then classifies them all, inside the
    process), the analyzer's peak RSS on those dumps, and heaptrack's (the program under heaptrack
    plus heaptrack_interpret, over untraced), each divided by N.

    The traced process's peak is GNU time's %M of the program run with libzmtrace.so preloaded
    directly (LD_PRELOAD, ZMTRACE_OUT, ZMTRACE_AGGREGATE: what `zmtrace run` sets), so that it is
    the program's own, exact, and not `zmtrace run`'s summary afterwards."""

    def __init__(self, exe, n):
        self.exe, self.n, self.rows, self.errors = exe, n, {}, []

    def measure(self, ctx):
        from suite import spawn_measured, main_dump, analysis, log
        lib = os.path.join(os.path.dirname(ctx.zmtrace), "libzmtrace.so")
        peak = {}
        for variant in ("free", "keep"):
            for mode in ("untraced", "zmtrace", "aggregate", "heaptrack"):
                if mode == "heaptrack" and variant == "keep":
                    continue
                log(f"  manyblocks per-block figures: {mode}, {variant}")
                out = tempfile.mkdtemp(dir=ctx.work, prefix=f"perblock.{mode}.{variant}.")
                env = dict(os.environ)
                cmd = [self.exe, str(self.n), variant]
                if mode in ("zmtrace", "aggregate"):
                    env.update(LD_PRELOAD=lib, ZMTRACE_OUT=out,
                               ZMTRACE_AGGREGATE="1" if mode == "aggregate" else "0")
                if mode == "heaptrack":
                    cmd = [ctx.heaptrack, "-o", os.path.join(out, "heaptrack"), "--"] + cmd
                rc, _, err, _, peaks, maxrss = spawn_measured(cmd, env=env, cwd=ctx.work,
                                                              capped=mode == "heaptrack",
                                                              timeout=1800)
                if rc != 0:
                    self.errors.append(f"{mode} {variant}: exit {rc}: "
                                       f"{(err.strip().splitlines() or ['?'])[-1][:120]}")
                    continue
                # heaptrack: every process of the run (the program, heaptrack_interpret, zstd,
                # the script), each at its own peak.
                peak[(mode, variant)] = (sum(b for _, b in peaks.values()) if mode == "heaptrack"
                                         else maxrss)
                if mode in ("zmtrace", "aggregate"):
                    dump = main_dump(out, mode)
                    a = analysis(ctx, mode, dump, 1)
                    if isinstance(a, str):
                        self.errors.append(f"zmtrace report on the {mode} {variant} dump: {a}")
                    else:
                        peak[("report " + mode, variant)] = a[1]
                        self.rows[("report time " + mode, variant)] = a[0]
                shutil.rmtree(out, ignore_errors=True)
        self.peak = peak

    def render(self):
        n, p = self.n, self.peak
        lines = [f"\n## Bytes per live block (scripts/bench/manyblocks.c, {n:,} blocks of 16–64 B)\n",
                 "| | event mode | --aggregate |", "|---|---|---|"]

        def per(a, b):
            return f"{(p[a] - p[b]) / n:.1f}" if a in p and b in p else "FAILED"

        def mb(k):
            return f"{p[k] / 2**20:.0f} MiB" if k in p else "FAILED"

        lines.append(f"| recorder: traced process's peak RSS − untraced, holding them | "
                     f"{per(('zmtrace', 'free'), ('untraced', 'free'))} | "
                     f"{per(('aggregate', 'free'), ('untraced', 'free'))} |")
        lines.append(f"| recorder during the leak check at exit (all still live) | "
                     f"{per(('zmtrace', 'keep'), ('untraced', 'keep'))} | "
                     f"{per(('aggregate', 'keep'), ('untraced', 'keep'))} |")
        for v, what in (("free", "freed before exit"), ("keep", "live at exit")):
            cells = []
            for mode in ("zmtrace", "aggregate"):
                k = ("report " + mode, v)
                t = self.rows.get(("report time " + mode, v))
                cells.append(f"{p[k] / n:.1f} ({p[k] / 2**20:.0f} MiB, {t:.1f} s)" if k in p
                             else "FAILED")
            lines.append(f"| analyzer: `zmtrace report`'s peak RSS, dump of the run ({what}) | "
                         + " | ".join(cells) + " |")
        ht = per(("heaptrack", "free"), ("untraced", "free"))
        lines.append(f"| heaptrack 1.4: the program under heaptrack + heaptrack_interpret (+ zstd, "
                     f"the script) − untraced | {ht} | |")
        lines.append(f"\nPeak RSS untraced: {mb(('untraced', 'free'))} (freed before exit), "
                     f"{mb(('untraced', 'keep'))} (live at exit); zmtrace: "
                     f"{mb(('zmtrace', 'free'))}, {mb(('zmtrace', 'keep'))}; --aggregate: "
                     f"{mb(('aggregate', 'free'))}, {mb(('aggregate', 'keep'))}; heaptrack's run: "
                     f"{mb(('heaptrack', 'free'))}.")
        for e in self.errors:
            lines.append(f"- FAILED: {e}")
        return "\n".join(lines)


# --- Redis: scripts/redis-throughput.sh -------------------------------------------------------


def redis(ctx, name):
    need("redis-server", "redis-server")
    need("redis-benchmark", "redis-tools")
    return [Redis()]


class Redis:
    """Runs scripts/redis-throughput.sh (same repetitions) and puts its figures in the table: one
    row group per command, in requests/s; the dump sizes and the peak RSS (the server's; for the
    whole run, the server's plus heaptrack_interpret's) are the whole run's, on each row."""

    def measure(self, ctx):
        from suite import Measured, log
        requests = 2000 if ctx.quick else 100000
        out = os.path.join(ctx.work, "redis.json")
        log(f"redis: scripts/redis-throughput.sh {ctx.reps} {requests} 16")
        p = subprocess.run([os.path.join(ctx.root, "scripts", "redis-throughput.sh"),
                            str(ctx.reps), str(requests), "16"], capture_output=True, text=True,
                           env=dict(os.environ, BENCH_JSON=out))
        self.text = p.stdout
        self.measured = []
        if p.returncode != 0:
            self.text += f"\nredis-throughput.sh FAILED (exit {p.returncode}): {p.stderr[-500:]}"
            return
        d = json.load(open(out))
        for test in sorted(d["rps"]):
            w = Workload(f"redis {test}", f"Debian's redis-server under redis-benchmark -n "
                         f"{d['requests']:,} -P {d['pipeline']} -t {d['tests']}: {test}", [])
            m = Measured(w)
            m.unit = "req/s"
            for mode, reps in d["rps"][test].items():
                m.values[mode] = {int(k): v for k, v in reps.items()}
            for mode, xs in d["rss"].items():
                m.rss_program[mode] = [a for a, _ in xs]
                m.rss_total[mode] = [a + b for a, b in xs]
            for mode, xs in d["sizes"].items():
                m.sizes[mode] = xs[-1]
            self.measured.append(m)

    def render(self):
        return "\n## Redis (scripts/redis-throughput.sh)\n\n```\n" + self.text.rstrip() + "\n```"


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
    ("sites", sites, "4,000 generated functions in a call tree 10 deep, each its own site"),
    ("stl", stl, "stl.cpp: std::string, std::vector, std::map, std::unordered_map churn"),
    ("sqlite3", debian, "Debian's sqlite3: inserts, then indexes"),
    ("jq", debian, "Debian's jq over a few MiB of JSON"),
    ("gawk", debian, "Debian's gawk with associative arrays"),
    ("redis", redis, "Debian's redis-server under redis-benchmark (scripts/redis-throughput.sh)"),
    ("manyblocks", manyblocks, "5 M live blocks of 16-64 B; the bytes per live block"),
    ("python3", debian, "Debian's python3, PYTHONMALLOC=malloc: dicts, lists, strings"),
]


# The programs each workload needs, and the Debian package of each: checked before anything runs.
REQUIRES = {
    "stl": [("c++", "g++")],
    "sqlite3": [("sqlite3", "sqlite3")],
    "jq": [("jq", "jq")],
    "gawk": [("gawk", "gawk")],
    "python3": [("/usr/bin/python3", "python3")],
    "redis": [("redis-server", "redis-server"), ("redis-benchmark", "redis-tools"),
              ("redis-cli", "redis-tools")],
}


def check_requirements(chosen):
    for name in chosen:
        for program, package in [("cc", "gcc")] + REQUIRES.get(name, []):
            need(program, package)


def names():
    return [n for n, _, _ in GROUPS]


def describe():
    return [(n, d) for n, _, d in GROUPS]


def prepare(ctx, name):
    return next(f for n, f, _ in GROUPS if n == name)(ctx, name)
