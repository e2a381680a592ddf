//! The program's descriptors are the program's (`samples/fds.c`): the dump never lands in the
//! program's own files, never takes a number the program expects, and survives a program that
//! closes or replaces every descriptor it has, the recorder's included. Each case is compared
//! with the same program run untraced.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use zmtrace_format::{Dump, EventKind, Origin};

/// The 2,000 lines of 19 bytes the sample writes (`spread`: line i to fd 3 + i % 18).
fn expected_lines(spread: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..2000 {
        let fd = if spread { 3 + i % 18 } else { 3 };
        out.extend_from_slice(format!("fd {fd:02} line {i:07}\n").as_bytes());
    }
    assert_eq!(out.len(), 38_000);
    out
}

/// The sample run untraced: its exit code and stdout.
fn untraced(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(sample("fds"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run fds untraced");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Allocations of the sample's own (under a `zs_` function) in a dump.
fn sample_allocations(dump: &Dump) -> u64 {
    let sym = Symbolizer::new();
    let mut mine: HashMap<u32, bool> = HashMap::new();
    dump.events()
        .filter(|e| match e.kind {
            EventKind::Alloc { stack, .. } => *mine
                .entry(stack)
                .or_insert_with(|| is_sample(&sym.stack(dump, stack))),
            _ => false,
        })
        .count() as u64
}

/// The zstd frame magic: what the dump's records are made of.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fn assert_log_intact(log: &Path, spread: bool, what: &str) {
    let got = std::fs::read(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(
        !got.windows(4).any(|w| w == ZSTD_MAGIC),
        "{what}: zstd records in the program's file ({} bytes)",
        got.len()
    );
    assert_eq!(got.len(), 38_000, "{what}: the program's file");
    assert!(got == expected_lines(spread), "{what}: the program's file");
}

/// Runs `fds MODE LOG` traced `times` times; each time the program's log holds exactly its own
/// lines, the program says what it says untraced, and the dump is complete with every
/// allocation.
fn own_file_stays_intact(mode: &str, spread: bool, times: usize) {
    let dir = fresh_dir(&format!("fds-{mode}"));
    let log = dir.join("untraced.log");
    let (code, want) = untraced(&[mode, log.to_str().unwrap()]);
    assert_eq!(code, Some(0), "fds {mode} untraced");
    assert_log_intact(&log, spread, "untraced");
    for i in 0..times {
        let log = dir.join(format!("traced-{i}.log"));
        let run = run_traced(&sample("fds"), &[mode, log.to_str().unwrap()]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        assert_log_intact(&log, spread, &format!("run {i}"));
        assert_eq!(run.stdout, want, "run {i}: {}", run.describe());
        let dump = run.only_dump();
        assert!(dump.is_complete(), "run {i}: {}", run.describe());
        assert_eq!(sample_allocations(dump), 1_000_000, "run {i}");
    }
}

#[test]
fn dup2_over_fds_3_to_20_leaves_the_programs_file_intact() {
    own_file_stays_intact("dup2", true, 5);
}

#[test]
fn closing_fds_3_to_1023_then_opening_a_log_leaves_the_log_intact() {
    // The closes that succeed are counted too: closing the dump's number fails with EBADF, as
    // it would untraced, so the count is the untraced one.
    own_file_stays_intact("closeall", false, 7);
}

#[test]
fn a_raw_close_of_every_fd_is_survived_and_never_written_through() {
    // syscall(SYS_close) cannot be interposed: the check before each write sees that the number
    // is gone (the log now has 3), and the dump is reopened by its path.
    own_file_stays_intact("rawclose", false, 3);
}

#[test]
fn a_raw_dup2_onto_the_dumps_number_stops_the_recording_not_the_program() {
    // Every number there is holds the program's log: the recorder must notice (device and
    // inode) and stop, never write a record into the log.
    let dir = fresh_dir("fds-rawdup");
    let log = dir.join("traced.log");
    let run = run_traced(&sample("fds"), &["rawdup", log.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.starts_with("closed "), "{}", run.describe());
    assert_log_intact(&log, false, "rawdup");
    assert!(
        run.stderr
            .contains("zmtrace: recording stopped: could not write the dump")
            && run.stderr.contains("closed or replaced by the program"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr
            .contains("the dump has no end although the program exited (status 0)"),
        "{}",
        run.describe()
    );
    assert_eq!(run.only_dump().bytes_lost, 0, "{}", run.describe());
}

#[test]
fn closing_0_1_2_and_reopening_dev_null_gets_0_1_2_as_untraced() {
    assert_eq!(untraced(&["stdio"]).0, Some(0));
    for i in 0..3 {
        let run = run_traced(&sample("fds"), &["stdio"]);
        assert_eq!(run.code, Some(0), "run {i}: {}", run.describe());
        assert!(run.only_dump().is_complete(), "{}", run.describe());
    }
}

#[test]
fn a_lowered_fd_limit_leaves_the_program_as_many_files_as_untraced() {
    let (code, want) = untraced(&["rlimit"]);
    assert_eq!(code, Some(0));
    // 29 when only 0..2 are open (3..31); the test may inherit more (cargo's jobserver).
    assert!(want.starts_with("closed 0 opened 2"), "{want}");
    let run = run_traced(&sample("fds"), &["rlimit"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.stdout, want, "{}", run.describe());
    assert!(run.only_dump().is_complete(), "{}", run.describe());
}

#[test]
fn a_daemon_that_closed_every_fd_is_recorded_whole() {
    const N: u64 = 949_142;
    let dir = fresh_dir("fds-daemon");
    let out = dir.join("daemon.out");
    let run = run_traced(
        &sample("fds"),
        &["daemon", out.to_str().unwrap(), &N.to_string()],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    // The daemon (the forked child) runs on after `zmtrace run` has seen its parent exit.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let dump = loop {
        let done = dump_files(&run.dir).into_iter().find_map(|p| {
            let d = Dump::open(&p).ok()?;
            (d.process.as_ref()?.origin == Origin::Fork && d.end.is_some()).then_some(d)
        });
        if let Some(d) = done {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's dump did not end within {RUN_TIMEOUT:?}\n{}",
            run.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("allocations {N}\n")
    );
    assert!(dump.is_complete(), "{}", dump_info(&dump.path));
    assert_eq!(sample_allocations(&dump), N, "{}", dump_info(&dump.path));
}
