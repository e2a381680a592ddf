//! `zmtrace run`'s summary made while the program runs (`src/cli/src/early.rs`): the dump that
//! was followed gives the summary that reading it after the end gives.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const STEPS: u64 = 300_000;

/// `zmtrace run` of `samples/burst.c` (300,000 mallocs and as many frees, deterministic sizes),
/// with `ZMTRACE_RUN_FOLLOW=stats`: the program is let go on only once zmtrace's follower has
/// started on its dump and gone idle, so most of the dump is replayed while the program runs.
/// The summary is then the one `dump-info` reads from the same dump after the end.
#[test]
fn a_dump_followed_while_the_program_ran_gives_the_summary_a_read_after_it_gives() {
    ensure_preload_built();
    let dir = fresh_dir("run-follow");
    let mut child = Command::new(zmtrace_bin())
        .env("ZMTRACE_RUN_FOLLOW", "stats")
        .args(["run", "-o", dir.to_str().unwrap(), "--"])
        .arg(sample("burst"))
        .arg(STEPS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start zmtrace");
    let out = pipe_lines(child.stdout.take().unwrap());
    let err = pipe_lines(child.stderr.take().unwrap());
    let made = out
        .recv_timeout(RUN_TIMEOUT)
        .expect("the program's first line");
    assert_eq!(made, format!("made {STEPS}"));
    let mut stderr = String::new();
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = err
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the dump was never followed:\n{stderr}"));
        stderr.push_str(&l);
        stderr.push('\n');
        if l.ends_with("followed while the program runs") {
            break;
        }
    }
    // The follower runs on spare CPU only (SCHED_IDLE): given time, it replays what is there.
    wait_idle(
        child.id(),
        Duration::from_millis(500),
        Duration::from_secs(120),
    );
    let dump = dump_files(&dir).pop().expect("a dump");
    let len_then = std::fs::metadata(&dump).unwrap().len();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    while let Ok(l) = err.recv_timeout(Duration::from_secs(5)) {
        stderr.push_str(&l);
        stderr.push('\n');
    }
    assert_eq!(status.code(), Some(0), "{stderr}");
    let len = std::fs::metadata(&dump).unwrap().len();

    // "PATH: N of M bytes replayed while the program ran"
    let stats = stderr
        .lines()
        .find(|l| l.ends_with("bytes replayed while the program ran"))
        .unwrap_or_else(|| panic!("the followed replay was not used:\n{stderr}"));
    let words: Vec<&str> = stats.split_whitespace().collect();
    let n: u64 = words[words.len() - 9].parse().unwrap();
    let m: u64 = words[words.len() - 7].parse().unwrap();
    assert_eq!(m, len, "{stats}");
    assert!(
        n >= len_then,
        "{stats}: {len_then} bytes were there while the program ran"
    );

    // The program's own figures, and the rest as a replay of the whole dump has them.
    let summary: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("zmtrace:   "))
        .collect();
    assert_eq!(
        summary[0], "allocations 300,000 (103.6 MiB), frees 300,000, reallocs 0",
        "{stderr}"
    );
    let info = dump_info(&dump);
    let peak_line = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("peak "))
        .unwrap_or_else(|| panic!("no peak in dump-info:\n{info}"));
    // dump-info: "peak 394.2 KiB at 0.008 s; not freed: 0 blocks, 0 B"
    let (peak, not_freed) = peak_line.split_once("; not freed: ").unwrap();
    assert_eq!(
        summary[1],
        format!("peak heap {peak}; not freed at exit: {not_freed}"),
        "{stderr}\n{info}"
    );
    assert_eq!(
        summary[2],
        "leak check: definitely lost 0 B, indirectly lost 0 B, possibly lost 0 B, still \
         reachable 0 B",
        "{stderr}"
    );
}
