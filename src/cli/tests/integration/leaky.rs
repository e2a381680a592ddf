//! `samples/leaky.c` under `zmtrace run`: every allocation function, three threads, known leaks.
//! The numbers asserted here are the ones documented at the top of the sample.

use std::sync::OnceLock;

use crate::common::*;

/// The sample is run once per test binary; every test reads the same dump.
fn leaky() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| run_traced(&sample("leaky"), &[]))
}

fn leaky_dump() -> (&'static Run, &'static Dump) {
    let run = leaky();
    assert_eq!(run.code, Some(0), "leaky must exit 0\n{}", run.describe());
    (run, run.only_dump())
}

#[test]
fn leaky_counts_every_allocation_function_exactly() {
    let (run, dump) = leaky_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    let expected = Counts::new()
        .alloc("malloc", 28, 5689)
        .alloc("calloc", 3, 376)
        .alloc("realloc", 3, 120)
        .alloc("posix_memalign", 1, 200)
        .alloc("aligned_alloc", 1, 256)
        .alloc("memalign", 1, 100)
        .alloc("valloc", 1, 300)
        .alloc("reallocarray", 1, 40)
        .reallocs(6, 1)
        .failed("malloc", 1)
        .failed("realloc", 1)
        .failed("calloc", 1)
        .frees(34)
        .leaked(4, 4396);
    assert_eq!(
        r.counts,
        expected,
        "the sample's events:\n{}\n{}",
        list_events(&r),
        run.describe()
    );
}

#[test]
fn leaky_dump_is_complete_and_describes_the_process() {
    let (run, dump) = leaky_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_complete(run, dump, &r);
    let p = process(dump);
    let end = dump.end.unwrap();
    assert_eq!(end.reason, EndReason::Exit, "{}", run.describe());
    assert_eq!(p.origin, Origin::Start, "{}", run.describe());
    assert_eq!(
        p.argv,
        [run.program.to_str().unwrap()],
        "{}",
        run.describe()
    );
    let name = dump.path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("zmtrace.leaky.{}.", p.pid)),
        "dump file {name} is not named zmtrace.<program>.<pid>.zmt (pid {})",
        p.pid
    );
    assert!(
        run.stderr.contains(name),
        "zmtrace run does not print the dump path {name} on stderr:\n{}",
        run.stderr
    );
    // The sample calls free(NULL) three times; libc may add its own.
    assert!(
        end.free_null >= 3,
        "End.free_null = {}, the sample alone calls free(NULL) 3 times\n{}",
        end.free_null,
        run.describe()
    );
    // The executable itself is among the modules, by a path that can be opened.
    assert!(
        dump.modules.iter().any(|m| m.path.ends_with("/leaky")),
        "no module for the executable: {:#?}",
        dump.modules
    );
}

#[test]
fn leaky_frees_on_other_threads_are_matched_to_their_blocks() {
    let (run, dump) = leaky_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_eq!(
        (r.tids.len(), r.cross_thread_frees),
        (3, 14),
        "(threads with sample events, frees of blocks allocated on another thread)\n{}\n{}",
        list_events(&r),
        run.describe()
    );
    // The worker threads' allocations are all under zs_worker, unwound through the thread start.
    for e in r.events() {
        if e.functions.iter().any(|f| f == "zs_worker_allocs") {
            assert!(
                is_subsequence(&["zs_worker_allocs", "zs_worker"], &e.functions),
                "worker stack not unwound to zs_worker: {:?}",
                e.functions
            );
        }
    }
}

#[test]
fn leaky_block_fields_match_what_libc_returned() {
    let (run, dump) = leaky_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    for e in r.events() {
        if let EventKind::Alloc {
            kind,
            addr,
            size,
            usable,
            ..
        } = e.event.kind
        {
            assert!(
                usable >= size && addr != 0,
                "alloc {kind:?} of {size} B at {addr:#x}: usable {usable}"
            );
            let align = match kind {
                AllocKind::PosixMemalign => 64,
                AllocKind::AlignedAlloc => 128,
                AllocKind::Memalign => 32,
                AllocKind::Valloc => 4096,
                _ => 16,
            };
            assert_eq!(
                addr % align,
                0,
                "{kind:?} block {addr:#x} is not {align}-aligned\n{}",
                run.describe()
            );
        }
    }
    // zs_reallocs: grow in place (100 -> 104), reallocarray (-> 160), move (64 -> 1 MiB),
    // realloc(p, 0).
    let reallocs: Vec<(u64, u64, u64, u64)> = r
        .events()
        .filter(|e| e.functions.iter().any(|f| f == "zs_reallocs"))
        .filter_map(|e| match e.event.kind {
            EventKind::Realloc {
                old_addr,
                new_addr,
                size,
                ..
            } => Some((old_addr, new_addr, size, e.event.seq)),
            _ => None,
        })
        .collect();
    let sizes: Vec<u64> = reallocs.iter().map(|r| r.2).collect();
    assert_eq!(
        sizes,
        [104, 160, 1 << 20, 0],
        "realloc sizes in zs_reallocs\n{}",
        list_events(&r)
    );
    let ops: Vec<&Op> = r
        .events()
        .filter(|e| matches!(e.event.kind, EventKind::Realloc { .. }))
        .filter(|e| e.functions.iter().any(|f| f == "zs_reallocs"))
        .map(|e| &e.op)
        .collect();
    assert_eq!(
        ops,
        [
            &Op::Realloc(100, 104),
            &Op::Realloc(104, 160),
            &Op::Realloc(64, 1 << 20),
            &Op::Realloc(1 << 20, 0)
        ],
        "realloc chain (old block size, new size)\n{}",
        list_events(&r)
    );
    let (old, new, _, _) = reallocs[0];
    assert_eq!(old, new, "realloc within the usable size moved the block");
    let (old, new, _, _) = reallocs[2];
    assert!(
        old != new && new != 0,
        "realloc to 1 MiB: {old:#x} -> {new:#x}"
    );
    let (old, new, _, _) = reallocs[3];
    assert!(old != 0 && new == 0, "realloc(p, 0): {old:#x} -> {new:#x}");
    // The failed realloc left its 24-byte block alone: zs_failures frees it afterwards.
    let failures: Vec<&Op> = r
        .events()
        .filter(|e| e.functions.iter().any(|f| f == "zs_failures"))
        .map(|e| &e.op)
        .collect();
    assert_eq!(
        failures,
        [
            &Op::Failed("malloc"),
            &Op::Alloc("malloc", 24),
            &Op::Failed("realloc"),
            &Op::Free(24),
            &Op::Failed("calloc"),
        ],
        "zs_failures in order\n{}",
        list_events(&r)
    );
}

#[test]
fn leaky_leaks_are_exactly_the_zs_leak_blocks() {
    let (run, dump) = leaky_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    let mut leaks: Vec<(u64, &str)> = r
        .leaks
        .values()
        .map(|b| {
            let fns = sym.stack(dump, b.stack);
            let leaker = if fns.iter().any(|f| f == "zs_leak_small") {
                "zs_leak_small"
            } else if fns.iter().any(|f| f == "zs_leak_page") {
                "zs_leak_page"
            } else {
                "elsewhere"
            };
            (b.size, leaker)
        })
        .collect();
    leaks.sort();
    assert_eq!(
        leaks,
        [
            (100, "zs_leak_small"),
            (100, "zs_leak_small"),
            (100, "zs_leak_small"),
            (4096, "zs_leak_page")
        ],
        "{}\n{}",
        list_events(&r),
        run.describe()
    );
}

#[test]
fn leaky_deepest_stack_unwinds_to_main_without_frame_pointers() {
    let (run, dump) = leaky_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    let deep = r
        .events()
        .find(|e| {
            e.op == Op::Alloc("malloc", 48) && e.functions.iter().any(|f| f == "zs_alloc_deep")
        })
        .unwrap_or_else(|| {
            panic!(
                "no malloc(48) from zs_alloc_deep\n{}\n{}",
                list_events(&r),
                run.describe()
            )
        });
    let EventKind::Alloc { stack, .. } = deep.event.kind else {
        unreachable!()
    };
    let frames = sym.stack_frames(dump, stack);
    // Frame 0 is the return address in the function that called malloc: the recorder's own
    // frames are gone.
    assert_eq!(
        frames.first().and_then(|f| f.1.first()).map(String::as_str),
        Some("zs_alloc_deep"),
        "frame 0 of the deepest allocation: {frames:#x?}"
    );
    assert!(
        is_subsequence(
            &["zs_alloc_deep", "zs_level2", "zs_level1", "zs_run", "main"],
            &deep.functions
        ),
        "stack of malloc(48) in zs_alloc_deep: {:?}\n{frames:#x?}",
        deep.functions
    );

    // strdup's malloc: frame 0 is in libc, and the stack goes on through the sample to main.
    let dup = r
        .events()
        .find(|e| e.op == Op::Alloc("malloc", 21))
        .unwrap_or_else(|| panic!("no malloc(21) from strdup\n{}", list_events(&r)));
    let EventKind::Alloc { stack, .. } = dup.event.kind else {
        unreachable!()
    };
    let frames = sym.stack_frames(dump, stack);
    assert!(
        frames.first().is_some_and(|f| !is_sample(&f.1)),
        "frame 0 of strdup's malloc should be in libc: {frames:#x?}"
    );
    assert!(
        is_subsequence(&["zs_alloc_kinds", "zs_run", "main"], &dup.functions),
        "stack of strdup's malloc: {:?}",
        dup.functions
    );
}

#[test]
fn dump_info_describes_a_dump() {
    let (_, dump) = leaky_dump();
    let f = run_zmtrace(&[std::ffi::OsStr::new("dump-info"), dump.path.as_os_str()]);
    let pid = process(dump).pid.to_string();
    assert_eq!(f.code, Some(0), "dump-info failed:\n{}", f.stderr);
    assert!(
        f.stdout.contains(&pid) && f.stdout.contains("leaky"),
        "dump-info output does not mention the pid {pid} and the program:\n{}",
        f.stdout
    );
}

#[test]
fn leaky_timestamps_fall_within_the_run_and_grow_per_thread() {
    let (run, dump) = leaky_dump();
    assert_times_within_run(run, dump);
    let mut last: std::collections::HashMap<u32, (u64, u64)> = Default::default();
    for e in dump.events() {
        if let Some(&(seq, ts)) = last.get(&e.tid) {
            assert!(
                e.ts_ns >= ts,
                "thread {}: event seq {} at {} ns comes after seq {seq} at {ts} ns",
                e.tid,
                e.seq,
                e.ts_ns
            );
        }
        last.insert(e.tid, (e.seq, e.ts_ns));
    }
}
