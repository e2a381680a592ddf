//! What `zmtrace run` prints on stderr after the program ends: the summary of each dump of the
//! run, and the leak gate's verdict (`--fail-on-leak`). Both are rendered from the same
//! [`Session`] of each dump, replayed once, so the two cannot disagree about what a dump holds.
//!
//! The CLI finds the dumps, opens and replays each, and hands the sessions here; it prints the
//! text and turns [`Gate::failed`] into the exit status.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use zmtrace_analyze::leakcheck::Kinds;
use zmtrace_analyze::session::Session;
use zmtrace_format::{LeakKind, Origin};

use crate::leaks::{group_text, kinds_summary, leaks};
use crate::parts::Options;
use crate::words::{human_bytes, plural, thousands};

/// What `zmtrace run` knows of the program it started, which its dumps cannot say.
#[derive(Clone, Copy, Debug, Default)]
pub struct Started {
    /// The pid of the program started (the first process).
    pub pid: u32,
    /// Its exit status, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
}

/// The run's summary (`zmtrace run`'s stderr after the program, less the gate).
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// The directory the dumps were looked for in.
    pub out_dir: String,
    /// The run's dumps, the first process first (none: the program wrote none).
    pub dumps: Vec<RunDump>,
    /// The signal that killed the program (`SIGKILL`), or null.
    pub killed_by: Option<String>,
}

/// One dump of the run: what it holds, or why it cannot be read.
#[derive(Clone, Debug, Serialize)]
pub struct RunDump {
    pub dump: String,
    /// The one-line error when the dump cannot be read (and `summary` is null).
    pub error: Option<String>,
    pub summary: Option<DumpSummary>,
}

/// The figures of one dump, as the replay (with the suppressions) counted them.
#[derive(Clone, Debug, Serialize)]
pub struct DumpSummary {
    /// `start` (the program started), `fork` (a forked child), `exec` (an image after exec) or
    /// `child` (another process of the run).
    pub process: &'static str,
    /// The mean sampling interval in bytes of a sampled recording, or null.
    pub sample_interval: Option<u64>,
    /// Sampled with `--all-blocks` and checked at exit: the leak classes are exact.
    pub classes_exact: bool,
    pub allocations: u64,
    pub bytes_allocated: u64,
    pub frees: u64,
    pub reallocs: u64,
    /// An aggregated dump: no timeline, so the peak is null.
    pub aggregated: bool,
    pub peak_bytes: Option<u64>,
    pub peak_time_ns: Option<u64>,
    /// Every block not freed at exit, suppressed ones included.
    pub leaked_blocks: u64,
    pub leaked_bytes: u64,
    /// The classes of the leak check at exit, suppressed blocks left out; null without one.
    pub kinds: Option<Kinds>,
    pub suppressed_bytes: u64,
    pub suppressed_blocks: u64,
    /// How the process ended, when the dump is not complete (else null).
    pub ending: Option<String>,
    /// The reader's warnings.
    pub warnings: Vec<String>,
}

/// The summary of one dump of the run. `s` is replayed with the run's suppressions.
pub fn dump_summary(s: &Session, started: &Started) -> DumpSummary {
    let (dump, a) = (s.dump, &s.analysis);
    let proc = dump.process.as_ref();
    let process = match proc.map(|p| (p.origin, p.pid)) {
        Some((Origin::Start, p)) if p == started.pid => "start",
        Some((Origin::Fork, _)) => "fork",
        Some((Origin::Exec, _)) => "exec",
        _ => "child",
    };
    let ending = (!dump.is_complete() && dump.exec.is_none()).then(|| {
        match (dump.end, started.code, proc) {
            // We saw the program exit: it was not killed, whatever the dump cannot tell.
            (None, Some(code), Some(p)) if p.pid == started.pid => format!(
                "the dump has no end although the program exited (status {code}): recording \
                 stopped early (the recorder's message above says why), or the process left \
                 by a way the recorder does not see (the C library's own _exit, as in \
                 daemon(3)'s parent); events after its last flush are missing"
            ),
            _ => match crate::parts::ending(dump) {
                e if e.starts_with("did not") => format!("the process {e}"),
                e => e,
            },
        }
    });
    DumpSummary {
        process,
        sample_interval: a.sample_interval,
        classes_exact: a.all_blocks && a.check.is_some(),
        allocations: a.allocations,
        bytes_allocated: a.bytes_allocated,
        frees: a.frees,
        reallocs: a.reallocs,
        aggregated: a.aggregated,
        peak_bytes: (!a.aggregated).then_some(a.peak_bytes),
        peak_time_ns: (!a.aggregated).then_some(a.peak_ns),
        leaked_blocks: a.leaked_blocks,
        leaked_bytes: a.leaked_bytes,
        kinds: a.check.as_ref().map(|_| Kinds::from(&a.kinds)),
        suppressed_bytes: a.suppressed.bytes,
        suppressed_blocks: a.suppressed.blocks,
        ending,
        warnings: dump.warnings.clone(),
    }
}

/// A dump of the run that could not be opened.
pub fn unreadable(path: &Path, error: String) -> RunDump {
    RunDump {
        dump: path.display().to_string(),
        error: Some(error),
        summary: None,
    }
}

/// A dump of the run, summarized.
pub fn read(s: &Session, started: &Started) -> RunDump {
    RunDump {
        dump: s.dump.path.display().to_string(),
        error: None,
        summary: Some(dump_summary(s, started)),
    }
}

/// The run's summary as `zmtrace run` prints it.
pub fn run_text(r: &RunSummary) -> String {
    let mut o = String::new();
    if r.dumps.is_empty() {
        let _ = writeln!(
            o,
            "zmtrace: no dump was written in {} (did the program run at all?)",
            r.out_dir
        );
        // Nothing else is known of a run without dumps.
        return o;
    }
    for d in &r.dumps {
        match (&d.error, &d.summary) {
            (Some(e), _) => {
                let _ = writeln!(o, "zmtrace: {e}");
            }
            (None, Some(s)) => write_dump(&mut o, &d.dump, s),
            (None, None) => {}
        }
    }
    if let Some(sig) = &r.killed_by {
        let _ = writeln!(o, "zmtrace: the program was killed by {sig}");
    }
    o
}

fn write_dump(o: &mut String, path: &str, s: &DumpSummary) {
    let what = match s.process {
        "start" => "",
        "fork" => " (forked child)",
        "exec" => " (after exec)",
        _ => " (child process)",
    };
    let _ = writeln!(o, "zmtrace: dump {path}{what}");
    if let Some(t) = s.sample_interval {
        let _ = writeln!(
            o,
            "zmtrace:   sampled recording (every {} on average): figures estimated{}",
            human_bytes(t),
            if s.classes_exact {
                ", leak classes exact"
            } else {
                ", no leak classes"
            }
        );
    }
    let _ = writeln!(
        o,
        "zmtrace:   allocations {} ({}), frees {}, reallocs {}",
        thousands(s.allocations),
        human_bytes(s.bytes_allocated),
        thousands(s.frees),
        thousands(s.reallocs)
    );
    let peak = match (s.peak_bytes, s.peak_time_ns) {
        (Some(bytes), Some(ns)) => format!(
            "peak heap {} at {:.3} s",
            human_bytes(bytes),
            ns as f64 / 1e9
        ),
        _ => "aggregated, no timeline".to_string(),
    };
    let _ = writeln!(
        o,
        "zmtrace:   {peak}; not freed at exit: {}, {}",
        plural(s.leaked_blocks, "block"),
        human_bytes(s.leaked_bytes)
    );
    if let Some(k) = &s.kinds {
        let _ = writeln!(
            o,
            "zmtrace:   leak check: {}{}",
            kinds_summary(k),
            if s.suppressed_blocks > 0 {
                format!(" ({} suppressed)", human_bytes(s.suppressed_bytes))
            } else {
                String::new()
            }
        );
    }
    if let Some(line) = &s.ending {
        let _ = writeln!(o, "zmtrace:   {line}");
    }
    for w in &s.warnings {
        let _ = writeln!(o, "zmtrace:   warning: {w}");
    }
}

// ---- the leak gate ---------------------------------------------------------------------------

/// What counts as a leak for the gate (`--fail-on-leak LEVEL`).
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

/// The gate's verdict on one dump, and what it says (lines for stderr, possibly none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    /// The dump leaked at the level asked, or could not be checked because it is damaged or
    /// unreadable: what it held is unknown, and a gate that passes what it could not check is
    /// no gate.
    pub failed: bool,
    pub text: String,
}

/// The gate on a dump that cannot be read at all.
pub fn gate_unreadable(error: &str) -> Gate {
    Gate {
        failed: true,
        text: format!(
            "zmtrace: leak gate: {error}: the dump cannot be read, so it fails the gate\n"
        ),
    }
}

/// The gate on one dump, from its session (the one the summary was made from).
pub fn gate(s: &mut Session, level: LeakLevel) -> Gate {
    let dump = s.dump;
    let path = dump.path.display();
    let mut o = String::new();
    // An image replaced by exec freed nothing, but it did not leak either.
    if dump.exec.is_some() {
        return Gate::default();
    }
    // A process that reached its end (the dump has its end record) leaves a dump the reader
    // finds nothing wrong with; a problem then is damage, and what the damaged part held
    // (blocks, frees, the leak check itself) is unknown. A dump cut short, without its end, is
    // the "not checked" case below. (The late warnings are the replay's, made already.)
    let problems: Vec<String> = dump
        .warnings
        .iter()
        .cloned()
        .chain(dump.late_warnings())
        .collect();
    if dump.end.is_some() && !problems.is_empty() {
        let _ = writeln!(
            o,
            "zmtrace: leak gate: {path}: the dump is damaged ({}), so it fails the gate",
            problems.join("; ")
        );
        return Gate {
            failed: true,
            text: o,
        };
    }
    let a = &s.analysis;
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
            crate::leaks::NO_CLASSES_SAMPLED
        } else {
            "no reachability data (the process did not exit normally)"
        };
        let _ = writeln!(o, "zmtrace: leak gate: {path}: {why}: not checked");
        return Gate {
            failed: false,
            text: o,
        };
    };
    if blocks == 0 {
        return Gate::default();
    }
    let what = match level {
        LeakLevel::Lost => "lost",
        LeakLevel::Possible => "lost or possibly lost",
        LeakLevel::All => "not freed",
    };
    let _ = writeln!(
        o,
        "zmtrace: leak gate: {} {what} in {} ({path}):",
        human_bytes(bytes),
        plural(blocks, "block"),
    );
    let opts = Options {
        top: 10,
        ..Options::default()
    };
    let filter = if a.check.is_some() { kinds } else { &[] };
    let l = leaks(dump, a, &mut s.sym, &opts, 0, filter);
    for site in &l.sites {
        let _ = writeln!(
            o,
            "zmtrace:   {}: {}",
            group_text(site, " ", ""),
            site.site.site
        );
    }
    if l.groups > l.sites.len() as u64 {
        let _ = writeln!(o, "zmtrace:   (`zmtrace leaks {path}` lists them all)");
    }
    Gate {
        failed: true,
        text: o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_dumps_says_so_and_nothing_else() {
        let r = RunSummary {
            out_dir: "/tmp/out".into(),
            dumps: Vec::new(),
            killed_by: Some("SIGKILL (9)".into()),
        };
        assert_eq!(
            run_text(&r),
            "zmtrace: no dump was written in /tmp/out (did the program run at all?)\n"
        );
    }

    #[test]
    fn an_unreadable_dump_is_one_line_and_the_signal_ends_the_summary() {
        let path = Path::new("out/zmtrace.x.1.zmt");
        let r = RunSummary {
            out_dir: "out".into(),
            dumps: vec![unreadable(path, format!("{}: not a dump", path.display()))],
            killed_by: Some("SIGSEGV (11)".into()),
        };
        assert_eq!(
            run_text(&r),
            "zmtrace: out/zmtrace.x.1.zmt: not a dump\n\
             zmtrace: the program was killed by SIGSEGV (11)\n"
        );
    }

    #[test]
    fn an_unreadable_dump_fails_the_gate() {
        let g = gate_unreadable("out/zmtrace.x.1.zmt: not a dump");
        assert!(g.failed);
        assert_eq!(
            g.text,
            "zmtrace: leak gate: out/zmtrace.x.1.zmt: not a dump: the dump cannot be read, so it \
             fails the gate\n"
        );
    }
}
