//! Flamegraphs (with `inferno`) and the collapsed stacks behind them.

use std::collections::BTreeMap;
use std::io::Write;

use zmtrace_format::{Dump, LeakKind};

use crate::analysis::{Analysis, SiteStats};
use crate::symbols::Symbolizer;

/// What a flamegraph measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Number of allocations.
    Allocations,
    /// Bytes allocated in all.
    Bytes,
    /// Bytes not freed at exit.
    Leaked,
    /// Bytes live at the moment of the peak heap.
    Peak,
    /// Number of temporary allocations.
    Temporary,
    /// Number of reallocs.
    Reallocs,
    /// Bytes definitely and indirectly lost at exit (the leak check's; without one, every byte
    /// not freed at exit).
    Lost,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Allocations,
        Metric::Bytes,
        Metric::Leaked,
        Metric::Peak,
        Metric::Temporary,
        Metric::Reallocs,
        Metric::Lost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Allocations => "allocations",
            Metric::Bytes => "bytes",
            Metric::Leaked => "leaked",
            Metric::Peak => "peak",
            Metric::Temporary => "temporary",
            Metric::Reallocs => "reallocs",
            Metric::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == s)
    }

    fn value(self, s: &SiteStats) -> u64 {
        match self {
            Metric::Allocations => s.allocations,
            Metric::Bytes => s.bytes,
            Metric::Leaked => s.leaked_bytes,
            Metric::Peak => s.peak_bytes,
            Metric::Temporary => s.temporary,
            Metric::Reallocs => s.churn.reallocs,
            Metric::Lost => {
                s.kinds[LeakKind::Definite as usize].bytes
                    + s.kinds[LeakKind::Indirect as usize].bytes
            }
        }
    }

    /// What the numbers count, for the title and the tooltips.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Allocations => "allocations",
            Metric::Bytes | Metric::Leaked | Metric::Peak | Metric::Lost => "bytes",
            Metric::Temporary => "temporary allocations",
            Metric::Reallocs => "reallocs",
        }
    }

    /// Why a flamegraph of this metric can be empty, said plainly.
    fn none(self) -> &'static str {
        match self {
            Metric::Allocations | Metric::Bytes => "no allocations were recorded",
            Metric::Leaked => "every block was freed before exit (or suppressed)",
            Metric::Peak => "nothing was live at the peak heap",
            Metric::Temporary => "no allocation was temporary",
            Metric::Reallocs => "no block was reallocated",
            Metric::Lost => {
                "no block was definitely or indirectly lost at exit (beyond the suppressions)"
            }
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::Allocations => "Allocations (count)",
            Metric::Bytes => "Bytes allocated in all",
            Metric::Leaked => "Bytes not freed at exit",
            Metric::Peak => "Bytes live at the peak heap",
            Metric::Temporary => "Temporary allocations (count)",
            Metric::Reallocs => "Reallocs (count)",
            Metric::Lost => "Bytes definitely and indirectly lost at exit",
        }
    }
}

/// The collapsed stacks (`main;f;g 123`, outermost first), one line per distinct stack, sorted.
/// Inlined frames are kept; a semicolon inside a name would split a frame, so it is replaced.
/// `lost` without a leak check in the dump counts every byte not freed at exit (`leaked`).
pub fn folded(a: &Analysis, sym: &mut Symbolizer, metric: Metric) -> Vec<String> {
    let metric = if metric == Metric::Lost && a.check.is_none() {
        Metric::Leaked
    } else {
        metric
    };
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for (&id, s) in &a.sites {
        let v = metric.value(s);
        if v == 0 {
            continue;
        }
        let frames = sym.stack(id);
        let path: Vec<String> = frames
            .iter()
            .rev()
            .map(|f| f.label().replace(';', ":"))
            .collect();
        let key = if path.is_empty() {
            "<empty stack>".to_string()
        } else {
            path.join(";")
        };
        *lines.entry(key).or_default() += v;
    }
    lines.into_iter().map(|(k, v)| format!("{k} {v}")).collect()
}

/// Writes an SVG flamegraph of `metric`. With nothing to draw (no stack has any of `metric`: a
/// program that leaks nothing, with `leaked`), a valid SVG that says so: inferno refuses empty
/// input ("No stack counts found") and would leave a page that says only "ERROR".
pub fn flamegraph(
    dump: &Dump,
    folded: &[String],
    metric: Metric,
    out: impl Write,
) -> std::io::Result<()> {
    let program = dump
        .process
        .as_ref()
        .and_then(|p| p.argv.first())
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_else(|| "?".into());
    let pid = dump.process.as_ref().map_or(0, |p| p.pid);
    let title = format!("{} — {program} (pid {pid})", metric.title());
    if folded.is_empty() {
        return empty_svg(&title, &format!("Nothing to draw: {}.", metric.none()), out);
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title;
    opts.count_name = metric.unit().to_string();
    opts.name_type = "Function:".to_string();
    inferno::flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), out)
}

/// A flamegraph with no frames: the title and one line saying why there is nothing.
fn empty_svg(title: &str, why: &str, mut out: impl Write) -> std::io::Result<()> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    write!(
        out,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="120" viewBox="0 0 1200 120" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#f8f8f8"/>
<text x="600" y="32" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text x="600" y="72" text-anchor="middle" font-family="Verdana" font-size="14" fill="#555">{}</text>
</svg>
"##,
        esc(title),
        esc(why)
    )
}

/// Writes a differential flamegraph of `metric` from `base` to `new` (collapsed stacks of each):
/// frames are as wide as in `new`, red where they grew, blue where they shrank (inferno's
/// differential mode).
pub fn differential(
    base: &[String],
    new: &[String],
    metric: Metric,
    title: String,
    out: impl Write,
) -> std::io::Result<()> {
    let join = |v: &[String]| {
        let mut s = v.join("\n");
        s.push('\n');
        s
    };
    let mut lines = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        join(base).as_bytes(),
        join(new).as_bytes(),
        &mut lines,
    )?;
    let lines = String::from_utf8_lossy(&lines).into_owned();
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title;
    opts.count_name = metric.unit().to_string();
    opts.name_type = "Function:".to_string();
    if lines.trim().is_empty() {
        let why = format!("Nothing to draw: {}, in either dump.", metric.none());
        return empty_svg(&opts.title, &why, out);
    }
    inferno::flamegraph::from_lines(&mut opts, lines.lines(), out)
}
