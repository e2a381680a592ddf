//! Hostile input to the analyzer: a real dump cut at every byte, randomly damaged, empty, from
//! a future version, a directory. Each gets a clear error or a partial result with a warning;
//! never a panic, never a hang.

use std::path::Path;
use std::sync::OnceLock;

use crate::common::*;
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
    let opts = zmtrace_report::reports::Options::default();
    let r = zmtrace_report::reports::report(&dump, &a, &mut sym, &opts);
    let _ = zmtrace_report::reports::report_text(&r, &opts);
    let c = zmtrace_report::reports::churn(&dump, &a, &mut sym, &opts);
    let _ = zmtrace_report::reports::churn_text(&c, &opts);
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

/// A real dump with CRC-valid records put before its `End` record that claim a raw length of
/// 32 GiB: a `Stacks` record (read on opening) and an `Events` record (read while streaming).
/// The reader used to reserve the 32 GiB and abort ("memory allocation of 34359738368 bytes
/// failed", exit 134).
fn with_32_gib_claims(full: &[u8]) -> Vec<u8> {
    use zmtrace_format::{write, RecordKind, FILE_HEADER_LEN, RECORD_HEADER_LEN};
    let mut pos = FILE_HEADER_LEN;
    let mut last = pos;
    while pos < full.len() {
        last = pos;
        let len = u32::from_le_bytes(full[pos + 1..pos + 5].try_into().unwrap()) as usize;
        pos += RECORD_HEADER_LEN + len;
    }
    assert_eq!(full[last], RecordKind::End as u8);
    const GIB32: usize = 32 << 30;
    // One stack (id 999999, two frames), its raw length a lie.
    let z = zstd::bulk::compress(&[1, 0xbf, 0x84, 0x3d, 2, 0x80, 0x20, 2], 1).unwrap();
    let mut lie = Vec::new();
    write::compressed(&mut lie, RecordKind::Stacks, GIB32, &z);
    write::events(&mut lie, 4242, 4242, GIB32, &z);
    let mut data = full.to_vec();
    data.splice(last..last, lie);
    data
}

#[test]
fn records_claiming_32_gib_are_one_line_and_the_rest_is_reported() {
    let run = run_traced(&sample("leaky"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let full = std::fs::read(&run.only_dump().path).unwrap();
    let dir = fresh_dir("hostile-32g");
    let good = dir.join("good.zmt");
    let bad = dir.join("bad.zmt");
    std::fs::write(&good, &full).unwrap();
    std::fs::write(&bad, with_32_gib_claims(&full)).unwrap();
    // What is not about the damage: the warnings and the record count differ, the rest is the
    // same report.
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                !l.starts_with("warning:") && !l.starts_with("format:") && !l.starts_with("dump:")
            })
            .map(str::to_owned)
            .collect()
    };
    for cmd in ["report", "leaks", "dump-info"] {
        let g = run_zmtrace(&[cmd, good.to_str().unwrap()]);
        assert_eq!(g.code, Some(0), "{cmd} on the intact dump: {}", g.stderr);
        let b = run_zmtrace(&[cmd, bad.to_str().unwrap()]);
        assert_eq!(
            (b.code, b.signal),
            (Some(3), None),
            "{cmd} on the damaged dump: {}",
            b.stderr
        );
        assert_eq!(b.stderr.lines().count(), 1, "{cmd}: {}", b.stderr);
        assert!(
            b.stderr.starts_with(&format!(
                "zmtrace: error: {}: damaged: 2 part(s) could not be read",
                bad.display()
            )) && b.stderr.contains("it claims 32.0 GiB decompressed"),
            "{cmd}: {}",
            b.stderr
        );
        assert_eq!(strip(&b.stdout), strip(&g.stdout), "{cmd}");
        assert!(
            b.stdout
                .contains("warning: malformed Stacks record at offset")
                || b.stdout
                    .contains("warning:   malformed Stacks record at offset"),
            "{cmd}: {}",
            b.stdout
        );
    }
    // The leaks of the sample are all there: 4 blocks, 4396 bytes.
    let b = run_zmtrace(&["leaks", "--json", bad.to_str().unwrap()]);
    assert!(b.stdout.contains("4396"), "{}", b.stdout);
}
