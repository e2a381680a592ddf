//! `samples/threads.c` under `zmtrace run`: 8 threads making 1,000,000 allocator calls each
//! (malloc, calloc, realloc, free; 8..4096 bytes), many blocks freed by another thread than the
//! one that allocated them. The sample counts its own calls and prints the totals; the dump must
//! hold exactly those events, no more and no fewer, and exactly the 40 blocks it leaks.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use serde_json::Value;

const THREADS: usize = 8;
const OPS_PER_THREAD: u64 = 1_000_000;
/// zs_leak_t: 5 blocks of 1000 + t bytes per thread t.
const LEAKED_BLOCKS: u64 = 5 * THREADS as u64;
const LEAKED_BYTES: u64 = 5 * (1000 * THREADS as u64 + (THREADS as u64 * (THREADS as u64 - 1)) / 2); // 40140

/// The totals the sample printed.
#[derive(Debug)]
struct Printed {
    mallocs: (u64, u64),
    callocs: (u64, u64),
    reallocs: u64,
    frees: u64,
    cross_thread_frees: u64,
    leaked: (u64, u64),
}

fn parse(stdout: &str) -> Printed {
    let mut lines: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let nums: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
        lines.insert(key, nums);
    }
    let get = |key: &str, n: usize| -> Vec<u64> {
        let v = lines
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}` line in the sample's output:\n{stdout}"));
        assert_eq!(v.len(), n, "`{key}` line: {v:?}\n{stdout}");
        v.clone()
    };
    assert_eq!(
        get("threads", 2),
        [THREADS as u64, OPS_PER_THREAD],
        "{stdout}"
    );
    let m = get("malloc", 2);
    let c = get("calloc", 2);
    let l = get("leaked", 2);
    Printed {
        mallocs: (m[0], m[1]),
        callocs: (c[0], c[1]),
        reallocs: get("realloc", 1)[0],
        frees: get("free", 1)[0],
        cross_thread_frees: get("cross_thread_free", 1)[0],
        leaked: (l[0], l[1]),
    }
}

fn leaks_by_function(dump: &Path) -> BTreeMap<String, (u64, u64)> {
    let f = run_zmtrace(&["leaks", dump.to_str().unwrap(), "--json", "--top", "0"]);
    assert_eq!(f.code, Some(0), "zmtrace leaks failed:\n{}", f.stderr);
    let v: Value = serde_json::from_str(&f.stdout).expect("valid JSON");
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in v["sites"].as_array().unwrap() {
        let name = s["site"].as_str().unwrap();
        if name.starts_with("zs_") {
            let e = out.entry(name.to_string()).or_default();
            e.0 += s["blocks"].as_u64().unwrap();
            e.1 += s["bytes"].as_u64().unwrap();
        }
    }
    out
}

#[test]
fn eight_threads_of_a_million_calls_are_recorded_exactly() {
    let started = std::time::Instant::now();
    let run = run_traced(&sample("threads"), &[]);
    let traced = started.elapsed();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let printed = parse(&run.stdout);
    let dump = run.only_dump();

    // The leaks report (another process) runs while this one replays the dump.
    let path = dump.path.clone();
    let leaks = std::thread::spawn(move || leaks_by_function(&path));

    let sym = Symbolizer::new();
    let (r, events) = replay_counts(dump, &sym, &is_sample);
    assert_complete_counted(&run, dump, &r, events);
    eprintln!(
        "threads: traced run {:.1} s, replayed at {:.1} s; {events} events; sample printed \
         {printed:?}",
        traced.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // The sample's own bookkeeping: every block but the leaked ones freed once, and at least a
    // million calls per thread.
    assert_eq!(printed.leaked, (LEAKED_BLOCKS, LEAKED_BYTES));
    assert_eq!(
        printed.frees + LEAKED_BLOCKS,
        printed.mallocs.0 + printed.callocs.0
    );
    assert!(
        printed.mallocs.0 + printed.callocs.0 + printed.reallocs + printed.frees
            >= THREADS as u64 * OPS_PER_THREAD
    );

    assert_eq!(
        r.counts,
        Counts::new()
            .alloc("malloc", printed.mallocs.0, printed.mallocs.1)
            .alloc("calloc", printed.callocs.0, printed.callocs.1)
            .reallocs(printed.reallocs, 0)
            .frees(printed.frees)
            .leaked(printed.leaked.0, printed.leaked.1),
        "the dump's events under zs_ functions against the sample's own counts\n{}",
        run.describe()
    );
    assert_eq!(
        r.cross_thread_frees, printed.cross_thread_frees,
        "frees of blocks another thread allocated"
    );
    // Under tracing the handover rings rarely fill: about a third of all frees (1.28 million of
    // 3.4 million here); untraced about 390,000.
    assert!(
        r.cross_thread_frees >= 200_000,
        "only {} cross-thread frees",
        r.cross_thread_frees
    );
    assert_eq!(
        r.tids.len(),
        THREADS,
        "threads with zs_ events: {:?}",
        r.tids
    );
    // Each worker leaks 5 blocks of 1000 + t bytes, on its own thread.
    let mut leaked_sizes: BTreeMap<u64, u64> = BTreeMap::new();
    for b in r.leaks.values() {
        *leaked_sizes.entry(b.size).or_default() += 1;
    }
    assert_eq!(
        leaked_sizes,
        (0..THREADS as u64).map(|t| (1000 + t, 5)).collect(),
        "leaked blocks by size"
    );

    assert_eq!(
        leaks.join().expect("zmtrace leaks"),
        BTreeMap::from([("zs_leak_t".to_string(), (LEAKED_BLOCKS, LEAKED_BYTES))]),
        "zmtrace leaks --json: the sample's leaks by site (blocks, bytes)"
    );
}

/// Issue 14: `dump-info`'s untracked frees are the program's own frees of addresses the recorder
/// never saw, and none of zmtrace's: a thread's exit runs glibc's TLS destructors
/// (`__call_tls_dtors`), which used to free the recorder's own thread-local nodes through the
/// hooked `free`. Eight threads that exit, three runs: 0 every time (the sample frees only what
/// it allocated).
#[test]
fn threads_that_exit_leave_no_untracked_frees() {
    for _ in 0..3 {
        let run = run_traced(&sample("threads"), &["2000"]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        let dump = run.only_dump();
        let end = dump.end.expect("an End record");
        assert_eq!(end.untracked_frees, 0, "{}", run.describe());
        let info = dump_info(&dump.path);
        assert!(info.contains(", 0 untracked frees,"), "{info}");
        // The threads did exit, and allocated: nine streams of events (eight and main).
        let tids: std::collections::BTreeSet<u32> = dump.events().map(|e| e.tid).collect();
        assert_eq!(tids.len(), THREADS + 1, "{}", run.describe());
    }
}

/// `samples/getattr.c`: the main thread and four threads ask glibc for their own attributes
/// (`pthread_getattr_np`) before they allocate anything, as Rust's runtime does on every thread
/// it starts. glibc holds the thread's lock while it allocates there, and a thread whose first
/// event came in that allocation hung for ever: the recorder asked `pthread_getattr_np` for
/// the new thread's stack and waited for the lock the thread itself held (`zmtrace run` of any
/// Rust program whose main thread had not allocated before its runtime's start). Now the run
/// ends, and each thread's blocks have their whole stacks.
#[test]
fn threads_that_ask_for_their_own_attributes_first_do_not_hang() {
    let run = run_traced(&sample("getattr"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let expected: String = (0..4)
        .map(|i| format!("thread {i}: 1024 KiB\n"))
        .chain(["main: known\n".to_string()])
        .collect();
    assert_eq!(run.stdout, expected);
    let dump = run.only_dump();
    let tids: std::collections::BTreeSet<u32> = dump.events().map(|e| e.tid).collect();
    assert_eq!(tids.len(), 5, "{}", run.describe());
    assert_eq!(
        leaks_by_function(&dump.path),
        BTreeMap::from([("zs_keep".to_string(), (4, 256))])
    );
    // The stacks reach the thread's start: the body and glibc's start_thread below it.
    let f = run_zmtrace(&["leaks", dump.path.to_str().unwrap(), "--json", "--top", "0"]);
    let v: Value = serde_json::from_str(&f.stdout).expect("valid JSON");
    let stack = &v["sites"][0]["stack"];
    let functions: Vec<&str> = stack
        .as_array()
        .unwrap()
        .iter()
        .map(|fr| fr["function"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(&functions[..2], ["zs_keep", "body"], "{stack}");
    assert!(functions.len() >= 4, "{stack}");
}
