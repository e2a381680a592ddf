//! The fast unwinder (the rule table over the in-memory unwind tables, framehop for the rest)
//! against the reference, the `backtrace` crate: with `ZMTRACE_UNWIND=compare` the recorder
//! captures every stack both ways and counts the captures where they differ.
//! `ZMTRACE_UNWIND_STATS=1` makes the recorder say on stderr what its unwinder did (steps,
//! signal frames, captures left to the reference unwinder), which the tests check too.

use std::collections::BTreeSet;

use crate::common::*;

fn assert_fast_equals_reference(name: &str, args: &[&str]) {
    let run = run_traced_env(&sample(name), args, &[("ZMTRACE_UNWIND", "compare")]);
    assert_compared_equal(&run);
}

/// Every dump of `run` (made with `ZMTRACE_UNWIND=compare`) ended normally, compared every stack
/// it captured, and found no difference and no truncated stack.
fn assert_compared_equal(run: &Run) {
    assert_compared_equal_truncated(run, 0);
}

/// [`assert_compared_equal`] with `truncated` stacks cut short (by both unwinders alike: they
/// are compared too).
fn assert_compared_equal_truncated(run: &Run, truncated: u64) {
    assert!(!run.dumps.is_empty(), "{}", run.describe());
    for dump in &run.dumps {
        let end = dump.end.unwrap_or_else(|| {
            panic!(
                "{} has no End record\n{}",
                dump.path.display(),
                run.describe()
            )
        });
        // Every allocation, failed allocation, realloc, mmap and mremap captured a stack (a free
        // or an munmap does not).
        let captures = dump
            .events()
            .filter(|e| {
                !matches!(
                    e.kind,
                    zmtrace_format::EventKind::Free { .. }
                        | zmtrace_format::EventKind::ReallocOut { .. }
                        | zmtrace_format::EventKind::Unmap { .. }
                        | zmtrace_format::EventKind::RemapOut { .. }
                )
            })
            .count() as u64;
        assert_eq!(
            end.compared_stacks,
            captures,
            "{}: every captured stack is compared",
            dump.path.display()
        );
        assert!(end.compared_stacks > 0);
        assert_eq!(
            end.mismatched_stacks,
            0,
            "{}: {} of {} stacks differ between framehop and backtrace",
            dump.path.display(),
            end.mismatched_stacks,
            end.compared_stacks
        );
        assert_eq!(end.truncated_stacks, truncated, "{}", dump.path.display());
    }
}

#[test]
fn fast_unwinder_equals_backtrace_on_leaky_with_threads() {
    assert_fast_equals_reference("leaky", &[]);
}

#[test]
fn fast_unwinder_equals_backtrace_in_forked_children() {
    assert_fast_equals_reference("forker", &[]);
}

#[test]
fn backtrace_mode_records_the_same_stack_for_the_deepest_allocation() {
    let sym = Symbolizer::new();
    let names = |env: &[(&str, &str)]| {
        let run = run_traced_env(&sample("leaky"), &[], env);
        let dump = run.only_dump();
        let mut stacks: Vec<Vec<String>> = dump
            .stacks
            .keys()
            .map(|&id| sym.stack(dump, id))
            .filter(|names| names.first().is_some_and(|n| n == "zs_alloc_deep"))
            .collect();
        stacks.sort();
        stacks
    };
    let fast = names(&[]);
    let reference = names(&[("ZMTRACE_UNWIND", "backtrace")]);
    assert!(!fast.is_empty());
    assert_eq!(fast, reference);
}

/// What `ZMTRACE_UNWIND_STATS=1` made the recorder print at the end of the run's one process.
#[derive(Debug, PartialEq, Eq)]
struct UnwindStats {
    captures: u64,
    own_path: u64,
    steps: u64,
    by_framehop: u64,
    signal_frames: u64,
    taken_over: u64,
    by_reference: u64,
    rules: u64,
    refused: u64,
}

fn unwind_stats(run: &Run) -> UnwindStats {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("zmtrace: unwinder: "))
        .collect();
    assert_eq!(lines.len(), 1, "one unwinder line\n{}", run.describe());
    let n: Vec<u64> = lines[0]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(n.len(), 10, "{}", lines[0]);
    UnwindStats {
        captures: n[0],
        own_path: n[1],
        steps: n[2],
        by_framehop: n[3],
        signal_frames: n[4],
        taken_over: n[5],
        by_reference: n[6],
        rules: n[7],
        refused: n[8],
    }
}

/// The numbers a sample printed after each of `words` (`"malloc 12 free 3"`).
fn printed(run: &Run, words: &[&str]) -> Vec<u64> {
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(words[0]))
        .unwrap_or_else(|| panic!("no line starting with {:?}\n{}", words[0], run.describe()));
    let w: Vec<&str> = line.split_whitespace().collect();
    words
        .iter()
        .map(|want| {
            let i = w.iter().position(|x| x == want).expect(want);
            w[i + 1].parse().unwrap()
        })
        .collect()
}

/// The index of the first function named `name` in a symbolized stack.
fn at(functions: &[String], name: &str) -> Option<usize> {
    functions.iter().position(|f| f == name)
}

/// Stacks that change on every call (random depths 5-25 through four call paths, shifted by a
/// random amount), on two threads: every capture equals the reference, and every one of the
/// sample's stacks holds exactly the frames the program made (it adds up their depths).
#[test]
fn fast_unwinder_equals_backtrace_on_random_depth_stacks() {
    let run = run_traced_env(
        &sample("randdepth"),
        &["20000", "2"],
        &[("ZMTRACE_UNWIND", "compare"), ("ZMTRACE_UNWIND_STATS", "1")],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_compared_equal(&run);
    let p = printed(
        &run,
        &["malloc", "calloc", "realloc", "free", "captures", "frames"],
    );
    let dump = run.only_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_complete(&run, dump, &r);
    let (mut captures, mut frames) = (0u64, 0u64);
    for e in r.events() {
        if matches!(e.op, Op::Free(_)) {
            continue;
        }
        captures += 1;
        let (op, top) = (at(&e.functions, "zs_op"), at(&e.functions, "zs_run"));
        assert!(
            op == Some(0) && top.is_some(),
            "seq {}: {:?}",
            e.event.seq,
            e.functions
        );
        frames += (top.unwrap() + 1) as u64;
    }
    assert_eq!(
        (captures, frames, r.counts.frees),
        (p[4], p[5], p[3]),
        "(captures, frames from zs_op to zs_run, frees) of the sample"
    );
    let stats = unwind_stats(&run);
    let end = dump.end.unwrap();
    assert_eq!(stats.captures, end.compared_stacks);
    // Every frame of these stacks, libc's included, is walked with the rule table.
    assert_eq!(
        (
            stats.by_framehop,
            stats.signal_frames,
            stats.by_reference,
            stats.refused
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
}

/// A SIGALRM every 100 us whose handler allocates, on the thread's stack or on a `sigaltstack`:
/// the handler's stacks go through the kernel's signal frame into the interrupted code, up to
/// `main` and `_start`, equal the reference's, and are as few as the places the signals land.
fn signal_storm(altstack: bool) {
    let mut args = vec!["500", "1500"];
    if altstack {
        args.insert(0, "altstack");
    }
    let run = run_traced_env(
        &sample("sigstorm"),
        &args,
        &[("ZMTRACE_UNWIND", "compare"), ("ZMTRACE_UNWIND_STATS", "1")],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_compared_equal(&run);
    let p = printed(&run, &["signals", "handler_allocs", "main_allocs"]);
    let (handler_allocs, main_allocs) = (p[1], p[2]);
    assert!(handler_allocs >= 1500, "{p:?}");
    let dump = run.only_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_complete(&run, dump, &r);
    let mut handler_stacks = BTreeSet::new();
    let (mut in_handler, mut in_main) = (0u64, 0u64);
    for e in r.events() {
        if !matches!(e.op, Op::Alloc(..)) {
            continue;
        }
        let f = &e.functions;
        if at(f, "zs_handler_alloc") == Some(0) {
            in_handler += 1;
            if let EventKind::Alloc { stack, .. } = e.event.kind {
                handler_stacks.insert(stack);
            }
            assert!(
                is_subsequence(&["zs_handler_alloc", "zs_on_alarm", "main"], f)
                    && f.last().is_some_and(|l| l == "_start"),
                "seq {}: the handler's stack does not reach main and _start: {f:?}",
                e.event.seq
            );
        } else if at(f, "zs_main_alloc") == Some(0) {
            in_main += 1;
        }
    }
    assert_eq!((in_handler, in_main), (handler_allocs, main_allocs));
    // A stack per place a signal lands (a few dozen instructions), not per signal.
    assert!(
        handler_stacks.len() <= 200,
        "{} distinct stacks for {handler_allocs} allocations in the handler",
        handler_stacks.len()
    );
    let stats = unwind_stats(&run);
    assert_eq!(stats.captures, dump.end.unwrap().compared_stacks);
    // The fast unwinder walked the handler's stacks itself: one signal frame each.
    assert_eq!(
        (stats.signal_frames, stats.by_reference),
        (handler_allocs, 0),
        "{stats:?}"
    );
}

#[test]
fn stacks_go_through_signal_frames() {
    signal_storm(false);
}

#[test]
fn stacks_go_from_a_sigaltstack_through_signal_frames() {
    signal_storm(true);
}

/// A coroutine's stack (makecontext) is none the fast unwinder knows: its captures are the
/// reference unwinder's, and the thread's own are still the fast one's.
#[test]
fn coroutine_stacks_are_captured_by_the_reference_unwinder() {
    let run = run_traced_env(
        &sample("coroutine"),
        &["2000"],
        &[("ZMTRACE_UNWIND", "compare"), ("ZMTRACE_UNWIND_STATS", "1")],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_compared_equal(&run);
    let p = printed(&run, &["coroutine_allocs", "main_allocs"]);
    let dump = run.only_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_complete(&run, dump, &r);
    let count = |name: &str| {
        r.events()
            .filter(|e| matches!(e.op, Op::Alloc(..)) && at(&e.functions, name) == Some(0))
            .count() as u64
    };
    let (co, main) = (count("zs_co_alloc"), count("zs_main_alloc"));
    assert_eq!((co, main), (p[0], p[1]));
    let stats = unwind_stats(&run);
    assert_eq!(stats.by_reference, co, "{stats:?}");
}

/// The C++ standard library allocating from inside its templates (vectors, strings, maps, a
/// shared_ptr, a std::function, an exception thrown and caught).
#[test]
fn fast_unwinder_equals_backtrace_on_cxx_containers() {
    let run = run_traced_env(
        &sample("stlchurn"),
        &["100"],
        &[("ZMTRACE_UNWIND", "compare")],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    // libstdc++'s emergency exception pool is allocated while the loader runs the library's
    // initialisers from its entry code, which has no unwind information: both unwinders stop
    // there, and it is the outermost frame (as `_start` is), not a truncated stack.
    assert_compared_equal_truncated(&run, 0);
}

/// Writes a C program with `n` functions in a binary tree (function i calls 2i+1 and 2i+2),
/// each allocating once from its own call site: `n` distinct allocation sites, stacks up to
/// log2(n) + 1 deep.
fn many_sites(n: usize) -> std::path::PathBuf {
    let mut c =
        String::from("#include <stdlib.h>\n#include \"zs_common.h\"\nvoid *volatile zs_sink;\n");
    for i in 0..n {
        c += &format!("ZS_FN void zs_site{i}(void);\n");
    }
    for i in 0..n {
        c += &format!(
            "ZS_FN void zs_site{i}(void) {{ void *p = malloc({}); zs_sink = p; free(p);",
            16 + i % 200
        );
        for child in [2 * i + 1, 2 * i + 2] {
            if child < n {
                c += &format!(" zs_site{child}();");
            }
        }
        c += " ZS_KEEP(); }\n";
    }
    c += "int main(int argc, char **argv) { int r = argc > 1 ? atoi(argv[1]) : 1;\n\
          for (int k = 0; k < r; k++) zs_site0(); return 0; }\n";
    let dir = scratch_dir().join("samples");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("sites{n}.c"));
    std::fs::write(&src, c).unwrap();
    std::fs::copy(
        workspace_root().join("samples/zs_common.h"),
        dir.join("zs_common.h"),
    )
    .unwrap();
    let exe = dir.join(format!("sites{n}"));
    compile_c(&src, &exe, SAMPLE_CFLAGS);
    exe
}

/// Thousands of call sites: every one a stack of its own, every one equal to the reference, each
/// site's return address a rule of the table (which has room to spare).
#[test]
fn fast_unwinder_equals_backtrace_on_thousands_of_sites() {
    let n = 3000;
    let run = run_traced_env(
        &many_sites(n),
        &["3"],
        &[("ZMTRACE_UNWIND", "compare"), ("ZMTRACE_UNWIND_STATS", "1")],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_compared_equal(&run);
    let dump = run.only_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_complete(&run, dump, &r);
    let mut sites = BTreeSet::new();
    let mut allocs = 0u64;
    for e in r.events() {
        if let EventKind::Alloc { stack, .. } = e.event.kind {
            allocs += 1;
            sites.insert(stack);
            assert!(
                e.functions[0].starts_with("zs_site") && at(&e.functions, "main").is_some(),
                "seq {}: {:?}",
                e.event.seq,
                e.functions
            );
        }
    }
    assert_eq!((allocs, sites.len()), (3 * n as u64, n));
    let stats = unwind_stats(&run);
    // A return address in each site (for its malloc) and in each but the leaves (for its
    // children's calls): well over n rules, none refused.
    assert!(stats.rules >= n as u64, "{stats:?}");
    assert_eq!((stats.refused, stats.by_framehop), (0, 0), "{stats:?}");
}

/// A plugin loaded, used and unloaded, in two builds whose code differs at the same addresses:
/// the rules of the one unloaded are forgotten, so the next one's frames are found where they
/// are.
#[test]
fn rules_of_an_unloaded_module_are_forgotten() {
    let src = workspace_root().join("samples/dlcycle.c");
    let dir = scratch_dir().join("samples");
    let plugins: Vec<String> = (1..=2)
        .map(|v| {
            let so = dir.join(format!("dlcycle-plugin{v}.so"));
            let def = format!("-DZS_PLUGIN={v}");
            compile_c(
                &src,
                &so,
                &[
                    "-O2",
                    "-g",
                    "-fomit-frame-pointer",
                    "-fPIC",
                    "-shared",
                    "-fvisibility=hidden",
                    &def,
                ],
            );
            so.to_string_lossy().into_owned()
        })
        .collect();
    let (cycles, calls) = (20u64, 100u64);
    let run = run_traced_env(
        &sample("dlcycle"),
        &[
            &plugins[0],
            &plugins[1],
            &cycles.to_string(),
            &calls.to_string(),
        ],
        &[("ZMTRACE_UNWIND", "compare")],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let p = printed(&run, &["cycles", "calls", "same_address"]);
    // What makes the test: a build loaded where the other one was.
    assert!(p[2] > 0, "the loader never reused an address: {p:?}");
    assert_compared_equal(&run);
    let dump = run.only_dump();
    let r = replay(
        dump,
        &Symbolizer::new(),
        &has_function_prefix("zs_call_plugin"),
    );
    let allocs = r.events().filter(|e| matches!(e.op, Op::Alloc(..))).count() as u64;
    assert_eq!(allocs, 2 * cycles * calls);
}

/// Taking walks over from the previous one (off by default, `ZMTRACE_UNWIND_REUSE=always`):
/// stacks that repeat (steady.c), change on every call (randdepth.c) or go through signal frames
/// (sigstorm.c) still equal the reference's, and the walks are taken over where stacks repeat.
#[test]
fn walks_taken_over_equal_the_reference() {
    let env = [
        ("ZMTRACE_UNWIND", "compare"),
        ("ZMTRACE_UNWIND_STATS", "1"),
        ("ZMTRACE_UNWIND_REUSE", "always"),
    ];
    for (name, args) in [
        ("steady", &["20000"][..]),
        ("randdepth", &["5000", "2"][..]),
        ("sigstorm", &["300", "500"][..]),
        ("leaky", &[][..]),
    ] {
        let run = run_traced_env(&sample(name), args, &env);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        assert_compared_equal(&run);
        let stats = unwind_stats(&run);
        assert!(
            stats.taken_over > 0,
            "{name}: no frame was taken over: {stats:?}"
        );
    }
}

/// Stacks deeper than the recorder's frame buffer (deepstack.c: 400 frames, interleaved with
/// 40-frame ones): the walk stops at the buffer's end on each deep stack, counted as truncated,
/// and never on a shallow one, both in lean walks and in walks that may take the previous one
/// over. (The fast walk checks the buffer's room through the stack pointer, not per frame; the
/// debug build the tests use asserts it never wrote past it.)
#[test]
fn stacks_deeper_than_the_frame_buffer_are_cut_at_its_end() {
    for reuse in ["0", "always"] {
        let run = run_traced_env(
            &sample("deepstack"),
            &["3", "5"],
            &[("ZMTRACE_UNWIND_REUSE", reuse)],
        );
        assert_eq!(run.code, Some(0), "{}", run.describe());
        assert_eq!(run.dumps.len(), 1, "{}", run.describe());
        let end = run.dumps[0].end.expect("an End record");
        assert_eq!(end.truncated_stacks, 5, "reuse {reuse}: {}", run.describe());
    }
}
