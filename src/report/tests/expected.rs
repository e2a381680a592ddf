//! Expected-output tests, as inferno's: the reports of small dumps checked into the repository
//! (`tests/data/*.zmt`, made by `scripts/make-test-dumps.sh` from samples/leaky.c, demo.c,
//! churn.c and diffable.c, and leaky.c recorded with `--aggregate`) are compared line by line
//! with the files in `tests/expected/`: `report`, `leaks`, `churn` (text and JSON), `diff` of
//! the two diffable runs (text and JSON), `run`'s summary and leak gate (text and JSON) and
//! `dump-info` (text, with `--modules`). `ZMTRACE_BLESS=1 cargo test -p zmtrace-report --test
//! expected` writes them instead; read the diff before committing it.
//!
//! No compiler, program or browser is needed, and the output is the same on every machine: the
//! samples' own frames are symbolized from their binaries, kept next to the dumps
//! (`tests/data/bin/`, mapped here from the path recorded in the dump), and every other module
//! (libc, the loader) is renamed `not-on-disk:PATH`, so that it is never read and its frames are
//! the symbolizer's fallback, `module+offset`, whatever libc the machine has.
//!
//! The dumps also guard the reader: a change that cannot read them any more (or reads them with
//! warnings) fails [`every_checked_in_dump_reads_without_warnings`].

use std::path::{Path, PathBuf};

use zmtrace_analyze::session::{self, Session};
use zmtrace_analyze::suppressions::Suppressions;
use zmtrace_format::Dump;
use zmtrace_report::diff::{self, Side};
use zmtrace_report::reports::{self, Options};

/// The dumps of the reports (diffable-25 is only the other side of the diff).
const DUMPS: [&str; 5] = ["leaky", "demo", "churn", "diffable-10", "leaky-aggregated"];

/// A checked-in dump, its modules mapped as the module docs say, named by its file name only
/// (reports print the dump's path).
fn load(name: &str) -> Dump {
    let path = Path::new("tests/data").join(format!("{name}.zmt"));
    let mut d = Dump::open(&path).unwrap_or_else(|e| panic!("{e}"));
    d.path = PathBuf::from(format!("{name}.zmt"));
    for m in &mut d.modules {
        let recorded = Path::new(&m.path);
        let ours = recorded
            .file_name()
            .map(|f| Path::new("tests/data/bin").join(f));
        m.path = match ours {
            Some(p)
                if recorded
                    .parent()
                    .is_some_and(|d| d.ends_with("tests/data/bin")) =>
            {
                p.to_string_lossy().into_owned()
            }
            _ => format!("not-on-disk:{}", m.path),
        };
    }
    d
}

fn options() -> Options {
    // The CLI's defaults (`--top 10 --depth 8`).
    Options::default()
}

fn json(v: &impl serde::Serialize) -> String {
    // As the CLI writes it.
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    s
}

/// Compares `actual` with `tests/expected/NAME`, line by line (or writes it, when blessing).
fn check(name: &str, actual: &str) {
    let path = Path::new("tests/expected").join(name);
    if std::env::var_os("ZMTRACE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (ZMTRACE_BLESS=1 cargo test -p zmtrace-report --test expected writes it)",
            path.display()
        )
    });
    let (mut want, mut got) = (expected.lines(), actual.lines());
    for n in 1.. {
        match (want.next(), got.next()) {
            (None, None) => break,
            (w, g) if w == g => continue,
            (w, g) => panic!(
                "{} differs at line {n}:\n  expected: {}\n  actual:   {}\n(after a change meant to \
                 change the output: ZMTRACE_BLESS=1 cargo test -p zmtrace-report --test \
                 expected, then read the diff)\nactual output:\n{actual}",
                path.display(),
                w.unwrap_or("(end of file)"),
                g.unwrap_or("(end of output)"),
            ),
        }
    }
}

fn session_options(peak_sites: bool, suppressions: Suppressions) -> session::Options {
    session::Options {
        peak_sites,
        timeline: None,
        suppressions,
    }
}

#[test]
fn report_text_and_json() {
    for name in DUMPS {
        let d = load(name);
        let mut s = Session::new(&d, &session_options(true, Suppressions::builtin()));
        let r = reports::report(&d, &s.analysis, &mut s.sym, &options());
        check(
            &format!("{name}.report.txt"),
            &reports::report_text(&r, &options()),
        );
        check(&format!("{name}.report.json"), &json(&r));
    }
}

#[test]
fn leaks_text_and_json() {
    for name in DUMPS {
        let d = load(name);
        let mut s = Session::new(&d, &session_options(false, Suppressions::builtin()));
        let l = zmtrace_report::leaks::leaks(&d, &s.analysis, &mut s.sym, &options(), 0, &[]);
        check(
            &format!("{name}.leaks.txt"),
            &zmtrace_report::leaks::leaks_text(&l, &options()),
        );
        check(&format!("{name}.leaks.json"), &json(&l));
    }
}

#[test]
fn churn_text_and_json() {
    for name in DUMPS {
        let d = load(name);
        // `zmtrace churn` applies no suppressions (it shows no leaks).
        let mut s = Session::new(&d, &session_options(false, Suppressions::default()));
        let c = reports::churn(&d, &s.analysis, &mut s.sym, &options());
        check(
            &format!("{name}.churn.txt"),
            &reports::churn_text(&c, &options()),
        );
        check(&format!("{name}.churn.json"), &json(&c));
    }
}

#[test]
fn diff_text_and_json() {
    let (b, n) = (load("diffable-10"), load("diffable-25"));
    let opts = session_options(true, Suppressions::builtin());
    let (mut bs, mut ns) = (Session::new(&b, &opts), Session::new(&n, &opts));
    let d = diff::diff(
        Side {
            dump: &b,
            analysis: &bs.analysis,
            sym: &mut bs.sym,
        },
        Side {
            dump: &n,
            analysis: &ns.analysis,
            sym: &mut ns.sym,
        },
        &options(),
    );
    check("diffable.diff.txt", &diff::diff_text(&d, &options()));
    check("diffable.diff.json", &json(&d));
}

/// `zmtrace run`'s summary of each dump (with the built-in suppressions, as `run` applies them by
/// default) and, from the same session, the leak gate's verdict at `--fail-on-leak all` (the
/// samples' blocks left are still reachable: `lost` would pass them all, saying nothing).
#[test]
fn run_summary_and_gate_text_and_json() {
    use zmtrace_report::run::{self, LeakLevel, RunSummary, Started};
    for name in DUMPS {
        let d = load(name);
        let mut s = Session::new(&d, &session_options(false, Suppressions::builtin()));
        let started = Started {
            pid: d.process.as_ref().map_or(0, |p| p.pid),
            code: Some(0),
            signal: None,
        };
        let summary = RunSummary {
            out_dir: "tests/data".into(),
            dumps: vec![run::read(&s, &started)],
            killed_by: None,
        };
        let gate = run::gate(&mut s, LeakLevel::All);
        check(
            &format!("{name}.run.txt"),
            &format!("{}{}", run::run_text(&summary), gate.text),
        );
        check(&format!("{name}.run.json"), &json(&summary));
    }
}

#[test]
fn dump_info_text() {
    // `zmtrace dump-info` has no JSON; with --modules it lists the (mapped) module paths.
    for name in DUMPS.iter().chain(&["diffable-25"]) {
        let d = load(name);
        check(
            &format!("{name}.dump-info.txt"),
            &zmtrace_report::info::text(&d, true),
        );
    }
}

#[test]
fn every_checked_in_dump_reads_without_warnings() {
    for name in DUMPS.iter().chain(&["diffable-25"]) {
        let d = load(name);
        assert!(d.is_complete(), "{name}: {:?}", d.warnings);
        assert_eq!(d.warnings, Vec::<String>::new(), "{name}");
        // The events are read as they are replayed.
        let s = Session::new(&d, &session_options(true, Suppressions::default()));
        assert_eq!(d.late_warnings(), Vec::<String>::new(), "{name}");
        assert!(s.analysis.allocations > 0, "{name}");
    }
}

/// The one rule of [`Session`]: the suppressions given are applied as the dump is opened, and
/// take blocks out of the classes only; "not freed at exit" stays every block (leaky.c leaves
/// 3 x 100 B from zs_leak_small and 4096 B from zs_leak_page, all still reachable).
#[test]
fn a_session_applies_its_suppressions_to_the_classes_only() {
    use zmtrace_format::LeakKind;
    let supp = Suppressions::parse(
        "suppression the small ones\n    fun:zs_leak_small\n",
        "test",
    )
    .unwrap();
    for name in ["leaky", "leaky-aggregated"] {
        let d = load(name);
        let s = Session::new(&d, &session_options(false, supp.clone()));
        let a = &s.analysis;
        assert_eq!((a.leaked_blocks, a.leaked_bytes), (4, 4396), "{name}");
        assert_eq!(
            (a.suppressed.blocks, a.suppressed.bytes),
            (3, 300),
            "{name}"
        );
        let reachable = a.kinds[LeakKind::Reachable as usize];
        assert_eq!((reachable.blocks, reachable.bytes), (1, 4096), "{name}");
        let by: Vec<_> = a
            .suppressed
            .by
            .iter()
            .map(|b| (b.name.as_str(), b.blocks, b.bytes))
            .collect();
        assert_eq!(by, [("the small ones", 3, 300)], "{name}");
    }
}
