//! `samples/crasher.c` under `zmtrace run`: a process killed by a signal leaves a readable dump
//! (complete when the signal could be caught, else a prefix of what it did), the analyzer says
//! the run did not end normally, and `zmtrace run` exits 128 + signal.

use crate::common::*;

/// The sample's events in program order (see the top of samples/crasher.c).
fn truth() -> Vec<Op> {
    vec![
        // zs_early
        Op::Alloc("malloc", 201),
        Op::Alloc("malloc", 202),
        Op::Alloc("calloc", 200),
        Op::Alloc("malloc", 203),
        Op::Free(202),
        // zs_late
        Op::Alloc("malloc", 301),
        Op::Alloc("malloc", 302),
        Op::Free(301),
    ]
}
const EARLY: usize = 5;

fn crash(mode: &str, signal: i32) -> (Run, Replay) {
    let run = run_traced(&sample("crasher"), &[mode]);
    assert_eq!(
        run.code,
        Some(128 + signal),
        "crasher {mode}: zmtrace run exits 128 + signal {signal}\n{}",
        run.describe()
    );
    let dump = run.only_dump();
    let p = process(dump);
    assert_eq!(
        p.argv,
        [run.program.to_str().unwrap(), mode],
        "{}",
        run.describe()
    );
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    (run, r)
}

/// The dump of a process that got no chance to finish: no End record, and the sample's events are
/// a prefix of what it did that holds at least everything done before the 2 s pause.
fn assert_killed_prefix(mode: &str, signal: i32) {
    let (run, r) = crash(mode, signal);
    let dump = run.only_dump();
    assert!(
        dump.end.is_none(),
        "crasher {mode}: the dump has an End record {:?} although the process was killed\n{}",
        dump.end,
        run.describe()
    );
    let ops: Vec<Op> = r.events().map(|e| e.op.clone()).collect();
    let truth = truth();
    assert!(
        ops.len() >= EARLY && ops.len() <= truth.len() && ops[..] == truth[..ops.len()],
        "crasher {mode}: the sample's events must be a prefix of {truth:?} holding at least the \
         first {EARLY} (made 2 s before death), got {ops:?}\n{}",
        run.describe()
    );
    assert_eq!(
        (r.duplicate_seqs, r.undefined_stacks),
        (0, 0),
        "(duplicate sequence numbers, events naming undefined stacks)\n{}",
        run.describe()
    );
}

/// `zmtrace report`'s text on the run's dump.
fn report_text(run: &Run) -> String {
    let f = run_zmtrace(&["report", run.only_dump().path.to_str().unwrap()]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    f.stdout
}

#[test]
fn segv_is_flushed_by_the_handler_and_exits_139() {
    let (run, r) = crash("segv", libc::SIGSEGV);
    let dump = run.only_dump();
    let end = dump.end.expect("the handler wrote the End record");
    assert_eq!((end.reason, end.status), (EndReason::Signal, libc::SIGSEGV));
    assert_complete(&run, dump, &r);
    let ops: Vec<Op> = r.events().map(|e| e.op.clone()).collect();
    assert_eq!(
        ops,
        truth(),
        "every event up to the crash\n{}",
        run.describe()
    );
    let text = report_text(&run);
    assert!(
        text.contains("did not end normally: killed by SIGSEGV (11)"),
        "{text}"
    );
}

#[test]
fn the_programs_own_signal_handler_replaces_the_tracers_unseen() {
    let run = run_traced(&sample("crasher"), &["handler"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = run.only_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_eq!(dump.end.map(|e| e.reason), Some(EndReason::Exit));
    assert_complete(&run, dump, &r);
    let ops: Vec<Op> = r.events().map(|e| e.op.clone()).collect();
    assert_eq!(ops, truth(), "{}", run.describe());
}

#[test]
fn exit_while_another_thread_allocates_leaves_a_consistent_dump() {
    let run = run_traced(&sample("crasher"), &["exit-thread"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = run.only_dump();
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_eq!(dump.end.map(|e| e.reason), Some(EndReason::Exit));
    // No invented events: every free frees a block the dump saw allocated.
    assert_eq!(
        (r.unknown_frees, r.duplicate_seqs),
        (0, 0),
        "{}",
        run.describe()
    );
    let early: Vec<Op> = r
        .events()
        .filter(|e| !e.functions.iter().any(|f| f == "zs_spin"))
        .map(|e| e.op.clone())
        .collect();
    assert_eq!(early, truth()[..EARLY], "{}", run.describe());
    let text = report_text(&run);
    if dump.late_threads.is_empty() {
        // The thread happened not to allocate between the end of the dump and the exit.
        assert!(dump.is_complete(), "{}", run.describe());
    } else {
        assert!(!dump.is_complete());
        assert!(
            text.contains("did not end normally: exit while 1 other thread still allocated"),
            "{text}"
        );
    }
}

#[test]
fn sigkill_leaves_a_readable_prefix_and_exits_137() {
    assert_killed_prefix("kill", libc::SIGKILL);
}

#[test]
fn abort_ends_the_dump_completely_and_exits_134() {
    let (run, r) = crash("abort", libc::SIGABRT);
    let dump = run.only_dump();
    assert_eq!(
        dump.end.map(|e| e.reason),
        Some(EndReason::Abort),
        "{}",
        run.describe()
    );
    assert_complete(&run, dump, &r);
    let ops: Vec<Op> = r.events().map(|e| e.op.clone()).collect();
    assert_eq!(ops, truth(), "{}", run.describe());
}

/// `samples/idlepool.c`: a worker that allocated a few milliseconds before `exit`, and sleeps in
/// a condition wait since, is not a thread caught allocating: the dump ends normally (as gdb's
/// idle workers made every `gdb -batch` dump say "exit while 2 other threads still allocated").
#[test]
fn an_idle_thread_that_allocated_just_before_exit_is_not_late() {
    for i in 0..5 {
        let run = run_traced(&sample("idlepool"), &[]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        let dump = run.only_dump();
        assert!(dump.late_threads.is_empty(), "run {i}: {}", run.describe());
        assert!(dump.is_complete(), "run {i}: {}", run.describe());
    }
}
