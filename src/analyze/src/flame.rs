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
    /// The program's own mappings: bytes mapped in all (`mmap`, and `mremap` growth).
    Mapped,
    /// The program's own mappings still mapped at exit.
    MappedAtExit,
}

impl Metric {
    pub const ALL: [Metric; 9] = [
        Metric::Allocations,
        Metric::Bytes,
        Metric::Leaked,
        Metric::Peak,
        Metric::Temporary,
        Metric::Reallocs,
        Metric::Lost,
        Metric::Mapped,
        Metric::MappedAtExit,
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
            Metric::Mapped => "mapped",
            Metric::MappedAtExit => "mapped-at-exit",
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
            // Not heap sites: see `folded`.
            Metric::Mapped | Metric::MappedAtExit => 0,
        }
    }

    /// What the numbers count, for the title and the tooltips.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Allocations => "allocations",
            Metric::Bytes
            | Metric::Leaked
            | Metric::Peak
            | Metric::Lost
            | Metric::Mapped
            | Metric::MappedAtExit => "bytes",
            Metric::Temporary => "temporary allocations",
            Metric::Reallocs => "reallocs",
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
            Metric::Mapped => "Bytes mapped in all (the program's mmap and mremap)",
            Metric::MappedAtExit => "Bytes still mapped at exit (the program's mmap and mremap)",
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
    // The mapping metrics are the mappings' own sites, never the heap's.
    let values: Vec<(u32, u64)> = match metric {
        Metric::Mapped => a
            .mapped
            .sites
            .iter()
            .map(|(&id, s)| (id, s.bytes))
            .collect(),
        Metric::MappedAtExit => a
            .mapped
            .sites
            .iter()
            .map(|(&id, s)| (id, s.at_exit))
            .collect(),
        _ => a
            .sites
            .iter()
            .map(|(&id, s)| (id, metric.value(s)))
            .collect(),
    };
    collapse(sym, values.into_iter())
}

/// The collapsed stacks of any per-stack values (stack id, value): what [`folded`] writes for a
/// metric, and `export --format folded` for a sample type. Zero values are left out.
pub fn collapse(sym: &mut Symbolizer, values: impl Iterator<Item = (u32, u64)>) -> Vec<String> {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for (id, v) in values {
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

/// Writes an SVG flamegraph of `metric`.
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
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!("{} — {program} (pid {pid})", metric.title());
    opts.count_name = metric.unit().to_string();
    opts.name_type = "Function:".to_string();
    if folded.is_empty() {
        opts.subtitle = Some(format!("no {} in this dump", metric.unit()));
        // inferno refuses empty input: draw a single empty root instead.
        let empty = ["(none) 0".to_string()];
        return inferno::flamegraph::from_lines(&mut opts, empty.iter().map(String::as_str), out);
    }
    inferno::flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), out)
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
        opts.subtitle = Some(format!("no {} in either dump", metric.unit()));
        let empty = ["(none) 0 0".to_string()];
        return inferno::flamegraph::from_lines(&mut opts, empty.iter().map(String::as_str), out);
    }
    inferno::flamegraph::from_lines(&mut opts, lines.lines(), out)
}
