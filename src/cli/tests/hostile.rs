//! Hostile input to the analyzer: a real dump cut at every byte, randomly damaged, empty, from
//! a future version, a directory. Each gets a clear error or a partial result with a warning;
//! never a panic, never a hang.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::*;
use zmtrace_format::Dump;

fn small_dump() -> &'static [u8] {
    static DATA: OnceLock<Vec<u8>> = OnceLock::new();
    DATA.get_or_init(|| {
        let run = run_traced(&sample("churn"), &[]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        std::fs::read(&run.only_dump().path).unwrap()
    })
}

/// Reads, replays and reports on `data` the way `zmtrace report` does, in process.
fn analyze_bytes(data: Vec<u8>) -> Option<(zmtrace_analyze::Analysis, Dump)> {
    let dump = Dump::from_bytes(Path::new("t.zmt"), data).ok()?;
    let a = zmtrace_analyze::analyze(&dump, true, &mut |_, _| {});
    let mut sym = zmtrace_analyze::Symbolizer::new(&dump);
    let opts = zmtrace_analyze::reports::Options::default();
    let r = zmtrace_analyze::reports::report(&dump, &a, &mut sym, &opts);
    let _ = zmtrace_analyze::reports::report_text(&r, &opts);
    let c = zmtrace_analyze::reports::churn(&dump, &a, &mut sym, &opts);
    let _ = zmtrace_analyze::reports::churn_text(&c, &opts);
    Some((a, dump))
}

#[test]
fn a_dump_cut_at_every_byte_gives_a_prefix_and_says_so() {
    let full = small_dump();
    let (whole, _) = analyze_bytes(full.to_vec()).unwrap();
    let mut last_events = 0;
    for cut in 0..full.len() {
        let Some((a, dump)) = analyze_bytes(full[..cut].to_vec()) else {
            assert!(
                cut < 8,
                "only a cut inside the magic is not a dump (cut {cut})"
            );
            continue;
        };
        assert!(!dump.is_complete(), "cut at {cut} claims to be complete");
        assert!(
            !dump.warnings.is_empty() || dump.end.is_none(),
            "cut at {cut}: no warning"
        );
        // A longer prefix never has fewer events, and never more than the whole.
        assert!(
            a.events >= last_events && a.events <= whole.events,
            "cut at {cut}"
        );
        last_events = a.events;
    }
    assert_eq!(
        last_events, whole.events,
        "the last cut loses only the End record"
    );
}

#[test]
fn random_damage_never_panics_and_never_adds_events() {
    let full = small_dump();
    let (whole, _) = analyze_bytes(full.to_vec()).unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let mut data = full.to_vec();
        for _ in 0..1 + next() % 8 {
            let i = (next() as usize) % data.len();
            data[i] = next() as u8;
        }
        if let Some((a, dump)) = analyze_bytes(data) {
            assert!(a.events <= whole.events);
            let _ = dump.ending();
        }
    }
}

#[test]
fn files_that_are_not_dumps_get_one_line_errors() {
    let dir = fresh_dir("hostile");
    let empty = dir.join("empty.zmt");
    std::fs::write(&empty, b"").unwrap();
    let mut future = small_dump().to_vec();
    future[8..12].copy_from_slice(&7u32.to_le_bytes());
    let future_path = dir.join("future.zmt");
    std::fs::write(&future_path, future).unwrap();
    let future_message = format!(
        "is a version 7 dump; this zmtrace reads versions up to {}",
        zmtrace_format::VERSION
    );
    let cases = [
        (empty.clone(), "is empty"),
        (future_path.clone(), future_message.as_str()),
        (dir.clone(), "is a directory, not a zmtrace dump"),
        (dir.join("missing.zmt"), "cannot read"),
    ];
    for (path, expect) in cases {
        for cmd in ["report", "leaks", "churn", "dump-info"] {
            let f = run_zmtrace(&[cmd, path.to_str().unwrap()]);
            assert_eq!(f.code, Some(2), "{cmd} {}: {}", path.display(), f.stderr);
            assert_eq!(f.stderr.lines().count(), 1, "{cmd}: {}", f.stderr);
            assert!(f.stderr.contains(expect), "{cmd}: {}", f.stderr);
        }
    }
    let f = run_zmtrace(&[
        "flamegraph",
        empty.to_str().unwrap(),
        "-o",
        dir.join("x.svg").to_str().unwrap(),
    ]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
}

#[test]
fn an_unwritable_report_output_is_a_clear_error() {
    let dir = fresh_dir("hostile-out");
    let dump = dir.join("d.zmt");
    std::fs::write(&dump, small_dump()).unwrap();
    for args in [
        vec![
            "report",
            dump.to_str().unwrap(),
            "-o",
            "/nonexistent/dir/r.txt",
        ],
        vec![
            "flamegraph",
            dump.to_str().unwrap(),
            "-o",
            "/nonexistent/dir/f.svg",
        ],
    ] {
        let f = run_zmtrace(&args);
        assert_eq!(f.code, Some(125), "{args:?}: {}", f.stderr);
        assert_eq!(f.stderr.lines().count(), 1, "{}", f.stderr);
        assert!(
            f.stderr.contains("cannot write /nonexistent/dir/"),
            "{}",
            f.stderr
        );
    }
}
