//! `zmtrace report`, `leaks`, `churn` and `flamegraph`: open the dump, replay it, print.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zmtrace_analyze::flame::{self, Metric};
use zmtrace_analyze::leakcheck::NO_CHECK;
use zmtrace_analyze::reports::{self, Options};
use zmtrace_analyze::session::{self, Session};
use zmtrace_analyze::suppressions::Suppressions;
use zmtrace_format::{Dump, LeakKind};

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
    fn session(&self, peak_sites: bool) -> session::Options {
        session::Options {
            peak_sites,
            suppressions: self.suppressions.clone(),
        }
    }
}

pub fn run(what: What, o: &AnalyzeOptions) -> Result<(), Failure> {
    let dump = open(&o.dump)?;
    if dump.is_aggregated()
        && matches!(
            what,
            What::Flamegraph {
                metric: Metric::Peak,
                ..
            }
        )
    {
        return Err(Failure::bad_input(format!(
            "{}: an aggregated dump (zmtrace run --aggregate) has no timeline, so no peak; \
             every other metric works",
            o.dump.display()
        )));
    }
    let peak = matches!(
        what,
        What::Report
            | What::Flamegraph {
                metric: Metric::Peak,
                ..
            }
    );
    let Session {
        analysis: a,
        mut sym,
        ..
    } = {
        let mut p = Progress::new();
        Session::with_progress(&dump, &o.session(peak), &mut |d, t| p.update(d, t))
    };
    let (text, json) = match what {
        What::Report => {
            let r = reports::report(&dump, &a, &mut sym, &o.report);
            (reports::report_text(&r, &o.report), to_json(&r))
        }
        What::Leaks { min_bytes, kinds } => {
            let l = reports::leaks(&dump, &a, &mut sym, &o.report, min_bytes, &kinds);
            (reports::leaks_text(&l, &o.report), to_json(&l))
        }
        What::Churn => {
            let c = reports::churn(&dump, &a, &mut sym, &o.report);
            (reports::churn_text(&c, &o.report), to_json(&c))
        }
        What::Flamegraph { metric, folded } => {
            let lines = flame::folded(&a, &mut sym, metric);
            if metric == Metric::Lost && a.check.is_none() {
                eprintln!("zmtrace: warning: {NO_CHECK} (counted as lost)");
            }
            for w in &sym.warnings {
                eprintln!("zmtrace: warning: {w}");
            }
            for w in dump.warnings.iter().chain(dump.late_warnings().iter()) {
                eprintln!("zmtrace: warning: {w}");
            }
            write_flamegraph(&dump, &lines, metric, folded, o.out.as_deref())?;
            return damaged(&dump);
        }
    };
    let out = if o.json { json } else { text };
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
    let mut p = Progress::new();
    let Session {
        analysis: base_a,
        sym: mut base_sym,
        ..
    } = Session::with_progress(&base_dump, &o.session(true), &mut |d, t| p.update(d, t));
    let Session {
        analysis: new_a,
        sym: mut new_sym,
        ..
    } = Session::with_progress(&new_dump, &o.session(true), &mut |d, t| p.update(d, t));
    drop(p);
    if let Some(metric) = flame {
        let base_lines = flame::folded(&base_a, &mut base_sym, metric);
        let new_lines = flame::folded(&new_a, &mut new_sym, metric);
        let Some(path) = o.out.as_deref() else {
            return Err(Failure::bad_input(
                "diff --flamegraph needs -o FILE.svg".into(),
            ));
        };
        let name = |d: &Dump| {
            d.process
                .as_ref()
                .map(|p| format!("{} (pid {})", p.command().join(" "), p.pid))
                .unwrap_or_else(|| d.path.display().to_string())
        };
        let title = format!(
            "{} — {} → {}",
            metric.name(),
            name(&base_dump),
            name(&new_dump)
        );
        let file = std::fs::File::create(path)
            .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())))?;
        let mut w = std::io::BufWriter::new(file);
        return flame::differential(&base_lines, &new_lines, metric, title, &mut w)
            .and_then(|()| w.flush())
            .map_err(|e| Failure::setup(format!("cannot write {}: {e}", path.display())));
    }
    let d = zmtrace_analyze::diff::diff(
        zmtrace_analyze::diff::Side {
            dump: &base_dump,
            analysis: &base_a,
            sym: &mut base_sym,
        },
        zmtrace_analyze::diff::Side {
            dump: &new_dump,
            analysis: &new_a,
            sym: &mut new_sym,
        },
        &o.report,
    );
    let out = if o.json {
        to_json(&d)
    } else {
        zmtrace_analyze::diff::diff_text(&d, &o.report)
    };
    write_out(o.out.as_deref(), out.as_bytes())
}

fn to_json(v: &impl serde::Serialize) -> String {
    let mut s =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
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
        let mut s = lines.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        return write_out(out, s.as_bytes());
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
