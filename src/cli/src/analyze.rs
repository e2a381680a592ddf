//! `zmtrace report`, `leaks`, `churn`, `flamegraph` and `diff`: open the dump, replay it (a
//! [`Session`]), make one call to the report crate, print its text or JSON.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zmtrace_analyze::session::{self, Session};
use zmtrace_analyze::suppressions::Suppressions;
use zmtrace_format::{Dump, LeakKind};
use zmtrace_report::flame::{self, Metric};
use zmtrace_report::{Format, Options};

use crate::Failure;

pub enum What {
    Report,
    Leaks {
        min_bytes: u64,
        kinds: Vec<LeakKind>,
    },
    Churn,
    Flamegraph {
        metric: Metric,
        folded: bool,
    },
}

pub struct AnalyzeOptions {
    pub dump: PathBuf,
    pub json: bool,
    pub out: Option<PathBuf>,
    pub report: Options,
    pub suppressions: Suppressions,
}

/// Shows how far the replay is: a bar on stderr (indicatif), only when stderr is a terminal and
/// only once reading has taken more than a second, so a pipe or a log never gets one.
struct Progress {
    start: Instant,
    tty: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    fn update(&mut self, done: usize, total: usize) {
        if !self.tty || total == 0 {
            return;
        }
        if self.bar.is_none() {
            if self.start.elapsed() < Duration::from_secs(1) {
                return;
            }
            let style = indicatif::ProgressStyle::with_template(
                "zmtrace: reading events {bar:30} {pos}/{len} records, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total as u64),
                indicatif::ProgressDrawTarget::stderr(),
            )
            .with_style(style);
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn open(path: &Path) -> Result<Dump, Failure> {
    session::open(path).map_err(Failure::bad_input)
}

impl AnalyzeOptions {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            Format::Text
        }
    }

    fn session(&self, peak_sites: bool) -> session::Options {
        session::Options {
            peak_sites,
            timeline: None,
            suppressions: self.suppressions.clone(),
        }
    }
}

/// The session of one dump, with the progress shown on a terminal.
fn session<'d>(dump: &'d Dump, o: &AnalyzeOptions, peak_sites: bool) -> Session<'d> {
    let mut p = Progress::new();
    Session::with_progress(dump, &o.session(peak_sites), &mut |d, t| p.update(d, t))
}

pub fn run(what: What, o: &AnalyzeOptions) -> Result<(), Failure> {
    let dump = open(&o.dump)?;
    let peak_flame = matches!(
        what,
        What::Flamegraph {
            metric: Metric::Peak,
            ..
        }
    );
    if dump.is_aggregated() && peak_flame {
        return Err(Failure::bad_input(format!(
            "{}: an aggregated dump (zmtrace run --aggregate) has no timeline, so no peak; \
             every other metric works",
            o.dump.display()
        )));
    }
    let mut s = session(&dump, o, matches!(what, What::Report) || peak_flame);
    let out = match what {
        What::Report => zmtrace_report::report(&mut s, &o.report, o.format()),
        What::Leaks { min_bytes, kinds } => {
            zmtrace_report::leaks(&mut s, &o.report, min_bytes, &kinds, o.format())
        }
        What::Churn => zmtrace_report::churn(&mut s, &o.report, o.format()),
        What::Flamegraph { metric, folded } => {
            let lines = flame::folded(&s.analysis, &mut s.sym, metric);
            for w in flame::warnings(&s, metric) {
                eprintln!("zmtrace: warning: {w}");
            }
            write_flamegraph(&dump, &lines, metric, folded, o.out.as_deref())?;
            return damaged(&dump);
        }
    };
    write_out(o.out.as_deref(), out.as_bytes())?;
    damaged(&dump)
}

/// After the output: a damaged dump (records skipped, not merely cut short) fails with one line,
/// so that a script does not take a partial report for a whole one.
pub fn damaged(dump: &Dump) -> Result<(), Failure> {
    match dump.damage() {
        Some(line) => Err(Failure::damaged(line)),
        None => Ok(()),
    }
}

/// `zmtrace diff`: `o.dump` is the base, `new` the dump compared with it; with `flame`, a
/// differential flamegraph of that metric instead of the report.
pub fn diff(o: &AnalyzeOptions, new: &Path, flame: Option<Metric>) -> Result<(), Failure> {
    let base_dump = open(&o.dump)?;
    let new_dump = open(new)?;
    let mut base = session(&base_dump, o, true);
    let mut new = session(&new_dump, o, true);
    let Some(metric) = flame else {
        let out = zmtrace_report::diff(&mut base, &mut new, &o.report, o.format());
        return write_out(o.out.as_deref(), out.as_bytes());
    };
    let base_lines = flame::folded(&base.analysis, &mut base.sym, metric);
    let new_lines = flame::folded(&new.analysis, &mut new.sym, metric);
    let Some(path) = o.out.as_deref() else {
        return Err(Failure::bad_input(
            "diff --flamegraph needs -o FILE.svg".into(),
        ));
    };
    let title = flame::differential_title(&base_dump, &new_dump, metric);
    let file = std::fs::File::create(path)
        .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())))?;
    let mut w = std::io::BufWriter::new(file);
    flame::differential(&base_lines, &new_lines, metric, title, &mut w)
        .and_then(|()| w.flush())
        .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())))
}

fn write_out(path: Option<&Path>, bytes: &[u8]) -> Result<(), Failure> {
    match path {
        Some(p) => std::fs::write(p, bytes)
            .map_err(|e| Failure::setup(format!("cannot write {}: {e}", p.display()))),
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = out.write_all(bytes);
            Ok(())
        }
    }
}

fn write_flamegraph(
    dump: &Dump,
    lines: &[String],
    metric: Metric,
    folded: bool,
    out: Option<&Path>,
) -> Result<(), Failure> {
    if folded {
        return write_out(out, flame::folded_text(lines).as_bytes());
    }
    let Some(path) = out else {
        return Err(Failure::bad_input(
            "flamegraph needs -o FILE.svg (or --folded to print the collapsed stacks)".into(),
        ));
    };
    // Drawn in memory first: a failure then leaves no half-written file behind.
    let mut svg = Vec::new();
    flame::flamegraph(dump, lines, metric, &mut svg)
        .map_err(|e| Failure::bad_input(format!("cannot draw the flamegraph: {e}")))?;
    write_out(Some(path), &svg)
}
