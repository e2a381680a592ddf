//! The report crate's expected files (`src/report/tests/expected/`), run through the built
//! binary: `zmtrace report DUMP` (and `leaks`, `churn`, `diff`, `dump-info --modules`, text and
//! JSON) prints exactly the file the library's test compares with, so the CLI's wiring (its
//! options' defaults, which suppressions each subcommand applies, where the text goes) is
//! covered as well as the renderers.
//!
//! The library's test maps each dump's modules as it loads it (the samples' binaries to
//! `tests/data/bin/`, every other module to `not-on-disk:PATH`); the binary reads the dump as it
//! is, so each dump is copied here with its module records rewritten the same way, into a
//! directory where `tests/data/bin` leads to the checked-in binaries. Every other record is
//! copied byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use zmtrace_format::{write, RecordKind, FILE_HEADER_LEN, RECORD_HEADER_LEN};

const DUMPS: [&str; 5] = ["leaky", "demo", "churn", "diffable-10", "leaky-aggregated"];

fn report_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../report/tests")
}

fn uvarint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// The path the library's test gives a module recorded at `path`.
fn mapped(path: &str) -> String {
    let recorded = Path::new(path);
    match recorded.file_name() {
        Some(f)
            if recorded
                .parent()
                .is_some_and(|d| d.ends_with("tests/data/bin")) =>
        {
            format!("tests/data/bin/{}", f.to_string_lossy())
        }
        _ => format!("not-on-disk:{path}"),
    }
}

/// `src/report/tests/data/NAME.zmt` copied to `dir/NAME.zmt`, its modules mapped.
fn copy_mapped(name: &str, dir: &Path) {
    let data = std::fs::read(report_tests().join(format!("data/{name}.zmt"))).unwrap();
    let mut out = data[..FILE_HEADER_LEN].to_vec();
    let mut at = FILE_HEADER_LEN;
    while at < data.len() {
        let kind = data[at];
        let len = u32::from_le_bytes(data[at + 1..at + 5].try_into().unwrap()) as usize;
        let payload = &data[at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + len];
        if kind == RecordKind::Module as u8 {
            // base, path, then the rest as it was.
            let mut p = 0;
            let base = uvarint(payload, &mut p);
            let path_len = uvarint(payload, &mut p) as usize;
            let path = std::str::from_utf8(&payload[p..p + path_len]).unwrap();
            let mut b = Vec::new();
            zmtrace_format::varint::put_uvarint(&mut b, base);
            zmtrace_format::varint::put_bytes(&mut b, mapped(path).as_bytes());
            b.extend_from_slice(&payload[p + path_len..]);
            write::record(&mut out, RecordKind::Module, &b);
        } else {
            out.extend_from_slice(&data[at..at + RECORD_HEADER_LEN + len]);
        }
        at += RECORD_HEADER_LEN + len;
    }
    std::fs::write(dir.join(format!("{name}.zmt")), out).unwrap();
}

/// A directory holding every dump, mapped, and `tests/data/bin`.
fn workdir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("expected-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tests/data")).unwrap();
    std::os::unix::fs::symlink(
        report_tests().join("data/bin").canonicalize().unwrap(),
        dir.join("tests/data/bin"),
    )
    .unwrap();
    for name in DUMPS.iter().chain(&["diffable-25"]) {
        copy_mapped(name, &dir);
    }
    dir
}

fn zmtrace(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zmtrace"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zmtrace {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn expected(file: &str) -> String {
    let path = report_tests().join("expected").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_binary_prints_the_report_crates_expected_files() {
    let dir = workdir();
    let mut compared = 0;
    for name in DUMPS {
        let dump = format!("{name}.zmt");
        for what in ["report", "leaks", "churn"] {
            let text = zmtrace(&dir, &[what, &dump]);
            assert_eq!(
                text,
                expected(&format!("{name}.{what}.txt")),
                "zmtrace {what} {dump}"
            );
            let json = zmtrace(&dir, &[what, "--json", &dump]);
            assert_eq!(
                json,
                expected(&format!("{name}.{what}.json")),
                "zmtrace {what} --json {dump}"
            );
            compared += 2;
        }
    }
    for name in DUMPS.iter().chain(&["diffable-25"]) {
        let dump = format!("{name}.zmt");
        let text = zmtrace(&dir, &["dump-info", "--modules", &dump]);
        // The one figure the copy changes: the file's length (its module paths are longer).
        let (was, is) = (
            std::fs::metadata(report_tests().join(format!("data/{dump}")))
                .unwrap()
                .len(),
            std::fs::metadata(dir.join(&dump)).unwrap().len(),
        );
        let want = expected(&format!("{name}.dump-info.txt")).replacen(
            &format!(", {was} bytes, "),
            &format!(", {is} bytes, "),
            1,
        );
        assert_eq!(text, want, "zmtrace dump-info {dump}");
        compared += 1;
    }
    let text = zmtrace(&dir, &["diff", "diffable-10.zmt", "diffable-25.zmt"]);
    assert_eq!(text, expected("diffable.diff.txt"));
    let json = zmtrace(
        &dir,
        &["diff", "--json", "diffable-10.zmt", "diffable-25.zmt"],
    );
    assert_eq!(json, expected("diffable.diff.json"));
    compared += 2;
    assert_eq!(compared, 38);
    let _ = std::fs::remove_dir_all(&dir);
}
