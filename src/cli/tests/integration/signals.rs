//! `zmtrace run` passes the signals it gets on to the traced program, whose dump is still
//! complete: the recorder's handler writes everything before the signal takes its course.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Starts `crasher wait` under `zmtrace run`, waits for "ready", sends `sig` to zmtrace itself
/// (not to the program), and returns zmtrace's exit code and the dumps.
fn signal_zmtrace(sig: i32) -> (Option<i32>, Vec<zmtrace_format::Dump>, String) {
    ensure_preload_built();
    let dir = fresh_dir("signals");
    let mut child = Command::new(zmtrace_bin())
        .arg("run")
        .arg("-o")
        .arg(&dir)
        .arg("--")
        .arg(sample("crasher"))
        .arg("wait")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zmtrace");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    // Signal at once: the events are in the dump because the handler flushes them, not because
    // a periodic flush happened to come first.
    std::thread::sleep(Duration::from_millis(5));
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "zmtrace did not end after signal {sig}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let dumps = dump_files(&dir)
        .iter()
        .map(|p| zmtrace_format::Dump::open(p).expect("readable dump"))
        .collect();
    (status.code(), dumps, stderr)
}

fn assert_early_events_recorded(dumps: &[zmtrace_format::Dump], stderr: &str, sig: i32) {
    assert_eq!(dumps.len(), 1, "{stderr}");
    let end = dumps[0].end.expect("the dump is complete");
    assert_eq!(
        (end.reason, end.status),
        (zmtrace_format::EndReason::Signal, sig)
    );
    assert!(dumps[0].is_complete());
    let sym = Symbolizer::new();
    let r = replay(&dumps[0], &sym, &is_sample);
    // zs_early: malloc(201), malloc(202), calloc(4, 50), malloc(203), free(202 B).
    assert_eq!(r.counts.frees, 1, "{}", list_events(&r));
    let allocations: u64 = r.counts.allocs.values().map(|&(n, _)| n).sum();
    assert_eq!(allocations, 4, "{}", list_events(&r));
    assert!(stderr.contains("zmtrace: dump "), "{stderr}");
}

#[test]
fn sigint_to_zmtrace_reaches_the_program() {
    let (code, dumps, stderr) = signal_zmtrace(libc::SIGINT);
    assert_eq!(code, Some(128 + libc::SIGINT), "{stderr}");
    assert_early_events_recorded(&dumps, &stderr, libc::SIGINT);
}

#[test]
fn sigterm_to_zmtrace_is_passed_on_as_sigterm() {
    let (code, dumps, stderr) = signal_zmtrace(libc::SIGTERM);
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert_early_events_recorded(&dumps, &stderr, libc::SIGTERM);
}
