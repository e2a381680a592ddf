//! The leak check's roots, one kind each (`samples/roots.c`): a block held only in a mapping of
//! the program's own (anonymous, a file's, moved by `mremap`), on the stack of a thread blocked
//! in a system call, in TLS, on a signal stack, on a coroutine's stack (malloc'd and mapped), and
//! in a live block with a guard page. Each is exact per function, and equal to valgrind
//! memcheck's classes. The cases that used to come out differently from run to run (a forked
//! child's leaks, 1,000 lost blocks, the last allocation before `exit`, 10,000 unwritten lost
//! blocks, the guard page) run 20 times each, with the same classes every time.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::Value;

type Classes = BTreeMap<(String, String), (u64, u64)>;

fn leaks_json(dump: &Path) -> Value {
    let d = dump.to_str().unwrap();
    let f = run_zmtrace(&[
        "leaks",
        d,
        "--json",
        "--top",
        "0",
        "--no-default-suppressions",
    ]);
    assert_eq!(f.code, Some(0), "zmtrace leaks failed:\n{}", f.stderr);
    serde_json::from_str(&f.stdout).expect("valid JSON")
}

/// (site, kind) -> (blocks, bytes), for the sample's own sites (`zs_`).
fn classes(l: &Value) -> Classes {
    let mut out = BTreeMap::new();
    for s in l["sites"].as_array().unwrap() {
        let site = s["site"].as_str().unwrap();
        if !site.starts_with("zs_") {
            continue;
        }
        let e = out
            .entry((site.to_string(), s["kind"].as_str().unwrap().to_string()))
            .or_insert((0, 0));
        e.0 += s["blocks"].as_u64().unwrap();
        e.1 += s["bytes"].as_u64().unwrap();
    }
    out
}

fn expect(rows: &[(&str, &str, u64, u64)]) -> Classes {
    rows.iter()
        .map(|&(s, k, n, b)| ((s.to_string(), k.to_string()), (n, b)))
        .collect()
}

/// The totals of `leaks --json`: kind -> (blocks, bytes).
fn totals(l: &Value) -> BTreeMap<String, (u64, u64)> {
    ["definite", "indirect", "possible", "reachable"]
        .iter()
        .map(|k| {
            let t = &l["kinds"][k];
            (
                k.to_string(),
                (t["blocks"].as_u64().unwrap(), t["bytes"].as_u64().unwrap()),
            )
        })
        .collect()
}

const LOST: (&str, &str, u64, u64) = ("zs_lost", "definite", 1, 333);

/// Runs `roots MODE` traced; returns its (last) dump's leaks and the run.
fn traced(mode: &str) -> (Value, Run) {
    let run = run_traced(&sample("roots"), &[mode]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = run.dumps.last().expect("a dump").path.clone();
    (leaks_json(&dump), run)
}

/// The mode's classes are `rows`, and its totals memcheck's (but for glibc's DTV of a thread:
/// `thread_dtv` adds the one possibly lost block memcheck counts, 16 B smaller there since
/// zmtrace's library has one TLS module more).
fn assert_root(mode: &str, rows: &[(&str, &str, u64, u64)], threads: bool) {
    let (l, run) = traced(mode);
    assert_eq!(
        classes(&l),
        expect(rows),
        "{mode}\n{l:#}\n{}",
        run.describe()
    );
    assert_eq!(l["check"]["unscanned_blocks"], 0, "{l:#}");
    let mut zm = totals(&l);
    let vg = memcheck(&run.program, &[mode]);
    if threads {
        let p = zm.get_mut("possible").unwrap();
        assert_eq!(p.0, 1, "{mode}: the thread's DTV\n{l:#}");
        p.1 -= 16;
    }
    assert_eq!(zm, vg, "{mode}: zmtrace (left) vs memcheck (right)\n{l:#}");
}

#[test]
fn a_block_held_only_in_an_anonymous_mapping_is_still_reachable() {
    assert_root("anon", &[("zs_held", "reachable", 1, 1000), LOST], false);
}

#[test]
fn a_block_held_only_in_the_argument_strings_above_glibcs_stack_top_is_still_reachable() {
    // glibc's top of the main thread's stack is the page above `__libc_stack_end`; argv, envp
    // and their strings lie above it (before, ld's rewritten "-lX" arguments were definitely
    // lost in about one run of eight).
    let long = "x".repeat(5000);
    let run = run_traced(&sample("roots"), &["argv", &long]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let l = leaks_json(&run.dumps.last().expect("a dump").path);
    assert_eq!(
        classes(&l),
        expect(&[("zs_held", "reachable", 1, 1900), LOST]),
        "{l:#}\n{}",
        run.describe()
    );
    assert_eq!(
        totals(&l),
        memcheck(&run.program, &["argv", &long]),
        "zmtrace (left) vs memcheck (right)\n{l:#}"
    );
}

#[test]
fn a_block_held_only_in_a_private_file_mapping_is_still_reachable() {
    assert_root("file", &[("zs_held", "reachable", 1, 1100), LOST], false);
}

#[test]
fn a_block_held_only_in_a_moved_mapping_is_still_reachable() {
    assert_root("mremap", &[("zs_held", "reachable", 1, 1200), LOST], false);
}

#[test]
fn a_block_held_only_by_a_thread_blocked_in_a_system_call_is_still_reachable() {
    assert_root("syscall", &[("zs_held", "reachable", 1, 1300), LOST], true);
}

#[test]
fn blocks_held_only_in_tls_are_still_reachable() {
    assert_root(
        "tls",
        &[
            ("zs_held", "reachable", 1, 1400),
            ("zs_held_thread", "reachable", 1, 1450),
            LOST,
        ],
        true,
    );
}

#[test]
fn a_block_held_only_on_a_signal_stack_is_still_reachable() {
    assert_root(
        "altstack",
        &[("zs_held", "reachable", 1, 1500), LOST],
        false,
    );
}

#[test]
fn blocks_held_only_on_coroutine_stacks_are_still_reachable() {
    assert_root(
        "coro_malloc",
        &[("zs_held", "reachable", 1, 1600), LOST],
        false,
    );
    assert_root(
        "coro_mmap",
        &[("zs_held", "reachable", 1, 1700), LOST],
        false,
    );
}

/// Runs `roots MODE` `n` times, one after another; returns each run's classes of the sample's
/// sites (of the last dump: a forked child's), failing on a run that did not exit 0.
fn repeated(mode: &str, n: usize) -> Vec<Classes> {
    (0..n).map(|_| classes(&traced(mode).0)).collect()
}

fn assert_every_run(mode: &str, rows: &[(&str, &str, u64, u64)]) {
    let want = expect(rows);
    for (i, got) in repeated(mode, 20).into_iter().enumerate() {
        assert_eq!(got, want, "{mode}: run {i} of 20");
    }
}

#[test]
fn a_forked_childs_lost_blocks_are_definitely_lost_every_run() {
    assert_every_run("fork", &[("zs_child_lost", "definite", 5, 510)]);
}

#[test]
fn a_thousand_lost_blocks_are_definitely_lost_every_run() {
    assert_every_run("lost1000", &[("zs_lost_many", "definite", 1000, 64_000)]);
}

#[test]
fn the_last_allocation_before_exit_is_definitely_lost_every_run() {
    assert_every_run(
        "last",
        &[
            ("zs_keep", "reachable", 1, 2000),
            ("zs_lost_last", "definite", 1, 777),
        ],
    );
}

#[test]
fn ten_thousand_unwritten_lost_blocks_are_definitely_lost_every_run() {
    assert_every_run("uninit", &[("zs_uninit", "definite", 10_000, 520_000)]);
}

#[test]
fn a_live_block_with_a_guard_page_is_read_without_faulting_every_run() {
    let rows = [
        ("zs_guarded", "reachable", 1, 12_288),
        ("zs_held_child", "reachable", 1, 1800),
        LOST,
    ];
    assert_every_run("guard", &rows);
    let (l, run) = traced("guard");
    assert_eq!(l["check"]["unreadable_blocks"], 1, "{l:#}");
    assert_eq!(l["check"]["unreadable_bytes"], 12_288, "{l:#}");
    let vg = memcheck(&run.program, &["guard"]);
    assert_eq!(totals(&l), vg, "zmtrace (left) vs memcheck (right)\n{l:#}");
    let f = run_zmtrace(&["leaks", run.only_dump().path.to_str().unwrap()]);
    assert!(
        f.stdout
            .contains("1 block (12.0 KiB) could not be read whole by the leak check")
            || f.stderr
                .contains("1 block (12.0 KiB) could not be read whole by the leak check"),
        "{}\n{}",
        f.stdout,
        f.stderr
    );
}

#[test]
fn the_memcheck_totals_of_the_repeated_cases_are_the_same() {
    for mode in ["fork", "lost1000", "last", "uninit"] {
        let (l, run) = traced(mode);
        let vg = memcheck(&run.program, &[mode]);
        // memcheck follows the child too and prints both summaries, in no set order: the
        // child's leaks are checked against the numbers memcheck gives for it (roots.c).
        if mode == "fork" {
            assert_eq!(totals(&l)["definite"], (5, 510), "{l:#}");
            continue;
        }
        assert_eq!(
            totals(&l),
            vg,
            "{mode}: zmtrace (left) vs memcheck (right)\n{l:#}"
        );
    }
}

/// memcheck's LEAK SUMMARY with `--leak-check-heuristics=SET`.
fn memcheck_with(program: &Path, set: &str) -> BTreeMap<String, (u64, u64)> {
    let out = Command::new("valgrind")
        .args(["--leak-check=full", "--error-exitcode=0"])
        .arg(format!("--leak-check-heuristics={set}"))
        .arg(program)
        .stdin(Stdio::null())
        .output()
        .expect("run valgrind (apt-get install valgrind)");
    let text = String::from_utf8_lossy(&out.stderr);
    let mut found = BTreeMap::new();
    for (label, kind) in [
        ("definitely lost:", "definite"),
        ("indirectly lost:", "indirect"),
        ("possibly lost:", "possible"),
        ("still reachable:", "reachable"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no `{label}` in valgrind's output:\n{text}"));
        let nums: Vec<u64> = line[line.find(label).unwrap() + label.len()..]
            .split_whitespace()
            .filter_map(|w| w.replace(',', "").parse().ok())
            .collect();
        found.insert(kind.to_string(), (nums[1], nums[0]));
    }
    found
}

#[test]
fn memchecks_heuristics_on_and_off_give_memchecks_classes() {
    let program = sample("heuristics");
    let sites = [
        ("zs_stdstring()", 125),
        ("zs_length64()", 108),
        ("zs_newarray()", 48),
        ("zs_multiple_inheritance()", 24),
    ];
    // The set, and the sites it makes reachable (the others are possibly lost).
    let cases: [(&str, &[&str]); 6] = [
        (
            "all",
            &[
                "zs_stdstring()",
                "zs_length64()",
                "zs_newarray()",
                "zs_multiple_inheritance()",
            ],
        ),
        ("none", &[]),
        ("stdstring", &["zs_stdstring()"]),
        ("length64", &["zs_length64()"]),
        // A 64-bit length before the data is also a count that divides the rest.
        ("newarray", &["zs_length64()", "zs_newarray()"]),
        ("multipleinheritance", &["zs_multiple_inheritance()"]),
    ];
    for (set, reachable) in cases {
        let opt = format!("--leak-check-heuristics={set}");
        let run = run_traced_opts(&program, &[], &[&opt], &[]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        let l = leaks_json(&run.only_dump().path);
        let want: Classes = sites
            .iter()
            .map(|&(s, b)| {
                let k = if reachable.contains(&s) {
                    "reachable"
                } else {
                    "possible"
                };
                ((s.to_string(), k.to_string()), (1, b))
            })
            .collect();
        assert_eq!(classes(&l), want, "{set}\n{l:#}");
        assert_eq!(
            totals(&l),
            memcheck_with(&program, set),
            "{set}: zmtrace (left) vs memcheck (right)"
        );
    }
    // Without the option: memcheck's default, all of them.
    let run = run_traced(&program, &[]);
    let l = leaks_json(&run.only_dump().path);
    assert_eq!(totals(&l)["reachable"], (4, 125 + 108 + 48 + 24), "{l:#}");
    let f = run_zmtrace(&[
        "run",
        "--leak-check-heuristics=stdstring,bogus",
        "--",
        "true",
    ]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert_eq!(
        f.stderr.trim(),
        "zmtrace: error: unknown leak check heuristic `bogus`: expected all, none, or some of \
         stdstring,length64,newarray,multipleinheritance"
    );
}

#[test]
fn freeres_at_exit_frees_what_libstdcxx_keeps_as_memcheck_does_and_can_be_turned_off() {
    let program = sample("heuristics");
    let sample_only = (4, 125 + 108 + 48 + 24);
    let run = run_traced(&program, &[]);
    let l = leaks_json(&run.only_dump().path);
    assert_eq!(totals(&l)["reachable"], sample_only, "{l:#}");
    // Without: libstdc++'s emergency exception pool (72,704 B) is still reachable, in both.
    let run = run_traced_opts(&program, &[], &["--no-freeres"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let l = leaks_json(&run.only_dump().path);
    assert_eq!(
        totals(&l)["reachable"],
        (sample_only.0 + 1, sample_only.1 + 72_704),
        "{l:#}"
    );
    let out = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--run-libc-freeres=no",
            "--run-cxx-freeres=no",
        ])
        .arg(&program)
        .stdin(Stdio::null())
        .output()
        .expect("run valgrind");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("still reachable: 73,009 bytes in 5 blocks"),
        "{text}"
    );
}

/// `samples/deepbind.c`: a library loaded with `RTLD_DEEPBIND` binds its calls to libc's, past the
/// hooks, unless they are rebound. Its allocations and frees must be in the dump, and a thread it
/// starts that asks for its own attributes before allocating (`pthread_getattr_np`, bound past the
/// hook that claims the thread first) must not hang: that run was killed at the harness's timeout.
/// Every other run ends with the library's `_exit`, which must end the dump with its check (bound
/// past the hook, the process left without an `End` record and lost every event not flushed).
#[test]
fn a_library_loaded_with_rtld_deepbind_is_traced_every_run() {
    let lib = sample_library("deeplib");
    let program = sample("deepbind");
    let want = expect(&[
        ("zs_lib_alloc", "definite", 1, 600),
        ("zs_lib_alloc", "reachable", 1, 500),
    ]);
    let lib_arg = lib.to_str().unwrap();
    for i in 0..20 {
        let lib_exit = i % 2 == 1;
        let args: &[&str] = if lib_exit {
            &[lib_arg, "_exit"]
        } else {
            &[lib_arg]
        };
        let run = run_traced(&program, args);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        let dump = run.only_dump();
        let l = leaks_json(&dump.path);
        // The block the library freed for the program (zs_main_block) is not live: no phantom.
        // The library thread's TLS (glibc's, named by the library function that started the
        // thread, suppressed by default) is left out: gone at `exit`, it is still live at
        // `_exit`, pointed to only from glibc's cache of exited threads' stacks, which the check
        // does not scan (definitely lost; memcheck, scanning every mapping, says possibly).
        let mut got = classes(&l);
        got.retain(|(site, _), _| site != "zs_lib_thread_stack");
        assert_eq!(got, want, "run {i} of 20\n{l:#}\n{}", run.describe());
        let f = run_zmtrace(&["dump-info", dump.path.to_str().unwrap()]);
        assert!(f.stdout.contains(" 0 untracked frees"), "{}", f.stdout);
        let ending = if lib_exit {
            "ended normally (_exit(0))"
        } else {
            "ended normally (exit)"
        };
        assert!(f.stdout.contains(ending), "run {i}: {}", f.stdout);
    }
}

/// `samples/fini.c`: a library the program links (`samples/finilib.c`) frees in its destructor,
/// which the loader runs after the recorder's own (it initialised the library first). The dump
/// ends after every destructor: what the library freed there is not live at exit, its frees are
/// in the dump, and the dump says that the process ended normally. Before, the 48 B and 700 B
/// stayed live (still reachable) and the dump said "exit while 1 other thread still allocated",
/// as on Debian's `tar` (libselinux's destructor).
#[test]
fn a_librarys_destructor_that_runs_after_ours_is_in_the_dump() {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let program = BUILT.get_or_init(|| {
        let lib = sample_library("finilib");
        let dir = lib.parent().unwrap();
        let l = format!("-L{}", dir.display());
        let rpath = format!("-Wl,-rpath,{}", dir.display());
        let mut flags = SAMPLE_CFLAGS.to_vec();
        flags.extend([l.as_str(), rpath.as_str(), "-lfinilib"]);
        let out = dir.join("fini");
        compile_c(&workspace_root().join("samples/fini.c"), &out, &flags);
        out
    });
    let run = run_traced(program, &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = run.only_dump();
    let f = run_zmtrace(&["dump-info", dump.path.to_str().unwrap()]);
    assert!(
        f.stdout.contains("ending:    ended normally (exit)\n"),
        "{}",
        f.stdout
    );
    // The constructor's allocation is walked to the loader's entry code, which has no CFI: the
    // outermost frame, not a truncated stack.
    assert!(f.stdout.contains(" 0 truncated stacks"), "{}", f.stdout);
    assert_eq!(
        classes(&leaks_json(&dump.path)),
        expect(&[("zs_lost", "definite", 1, 300)])
    );
    // The destructor's own allocation is an event of the dump.
    let report = zmtrace_ok(&[
        "report",
        dump.path.to_str().unwrap(),
        "--json",
        "--top",
        "0",
    ]);
    let v: Value = serde_json::from_str(&report).expect("valid JSON");
    let sites: Vec<&str> = v["top"]["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["site"].as_str())
        .collect();
    assert!(sites.contains(&"zs_lib_fini_temp"), "{sites:?}");
}
