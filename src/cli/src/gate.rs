//! `zmtrace run --fail-on-leak [LEVEL]`: a CI gate. After the program ends, its dumps are
//! analyzed, suppressions applied, and the run fails with [`LEAK_EXIT`] when a process leaked at
//! the level asked, naming the sites that did. A dump that cannot be read fails the gate too:
//! what it would have said is unknown, and a gate that passes what it could not check is no gate.

use std::io::Write;
use std::path::PathBuf;

use zmtrace_analyze::session::{self, Session};
use zmtrace_analyze::suppressions::Suppressions;
use zmtrace_analyze::words::{human_bytes, plural};
use zmtrace_format::LeakKind;
use zmtrace_report::reports::Options;

/// The exit status of a run that leaked (LeakSanitizer's).
pub const LEAK_EXIT: i32 = 23;

/// What counts as a leak for the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakLevel {
    /// Definitely or indirectly lost.
    Lost,
    /// Lost or possibly lost.
    Possible,
    /// Any block not freed at exit.
    All,
}

impl LeakLevel {
    pub fn parse(s: &str) -> Result<LeakLevel, String> {
        match s {
            "lost" => Ok(LeakLevel::Lost),
            "possible" => Ok(LeakLevel::Possible),
            "all" => Ok(LeakLevel::All),
            _ => Err(format!(
                "--fail-on-leak={s}: expected lost, possible or all"
            )),
        }
    }

    fn kinds(self) -> &'static [LeakKind] {
        match self {
            LeakLevel::Lost => &[LeakKind::Definite, LeakKind::Indirect],
            LeakLevel::Possible => &[LeakKind::Definite, LeakKind::Indirect, LeakKind::Possible],
            LeakLevel::All => &LeakKind::ALL,
        }
    }
}

/// Checks every dump of the run; prints what leaked on stderr. True when something did, or when
/// a dump could not be read (one line says which and why).
pub fn check(dumps: &[PathBuf], level: LeakLevel, supp: &Suppressions) -> bool {
    let mut err = std::io::stderr().lock();
    let mut leaked = false;
    let opts = session::Options {
        peak_sites: false,
        suppressions: supp.clone(),
    };
    for path in dumps {
        let dump = match session::open(path) {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(
                    err,
                    "zmtrace: leak gate: {e}: the dump cannot be read, so it fails the gate"
                );
                leaked = true;
                continue;
            }
        };
        // An image replaced by exec freed nothing, but it did not leak either.
        if dump.exec.is_some() {
            continue;
        }
        let Session {
            analysis: a,
            mut sym,
            ..
        } = Session::new(&dump, &opts);
        // A process that reached its end (the dump has its end record) leaves a dump the
        // reader finds nothing wrong with; a problem then is damage, and what the damaged part
        // held (blocks, frees, the leak check itself) is unknown. A dump cut short, without
        // its end, is the "not checked" case below.
        let problems: Vec<String> = dump
            .warnings
            .iter()
            .cloned()
            .chain(dump.late_warnings())
            .collect();
        if dump.end.is_some() && !problems.is_empty() {
            let _ = writeln!(
                err,
                "zmtrace: leak gate: {}: the dump is damaged ({}), so it fails the gate",
                path.display(),
                problems.join("; ")
            );
            leaked = true;
            continue;
        }
        let kinds = level.kinds();
        let (blocks, bytes) = if a.check.is_some() {
            kinds.iter().fold((0, 0), |(n, b), &k| {
                (
                    n + a.kinds[k as usize].blocks,
                    b + a.kinds[k as usize].bytes,
                )
            })
        } else if level == LeakLevel::All {
            (
                a.leaked_blocks - a.suppressed.blocks,
                a.leaked_bytes - a.suppressed.bytes,
            )
        } else {
            let why = if a.estimated() {
                "no leak classes: sampled recording sees only some blocks (use --all-blocks for \
                 exact classes)"
            } else {
                "no reachability data (the process did not exit normally)"
            };
            let _ = writeln!(
                err,
                "zmtrace: leak gate: {}: {why}: not checked",
                path.display()
            );
            continue;
        };
        if blocks == 0 {
            continue;
        }
        leaked = true;
        let what = match level {
            LeakLevel::Lost => "lost",
            LeakLevel::Possible => "lost or possibly lost",
            LeakLevel::All => "not freed",
        };
        let _ = writeln!(
            err,
            "zmtrace: leak gate: {} {what} in {} ({}):",
            human_bytes(bytes),
            plural(blocks, "block"),
            path.display()
        );
        let opts = Options {
            top: 10,
            ..Options::default()
        };
        let filter = if a.check.is_some() { kinds } else { &[] };
        let l = zmtrace_report::reports::leaks(&dump, &a, &mut sym, &opts, 0, filter);
        for s in &l.sites {
            let kind = s
                .kind
                .and_then(LeakKind::parse)
                .map(|k| format!("{} ", k.describe()))
                .unwrap_or_default();
            let _ = writeln!(
                err,
                "zmtrace:   {kind}{} in {}: {}",
                human_bytes(s.bytes),
                plural(s.blocks, "block"),
                s.site.site
            );
        }
        if l.groups > l.sites.len() as u64 {
            let _ = writeln!(
                err,
                "zmtrace:   (`zmtrace leaks {}` lists them all)",
                path.display()
            );
        }
    }
    leaked
}
