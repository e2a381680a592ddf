//! The parts every report is made of: the options, the header (what the dump is and how sure
//! its numbers are, how its process ended), a site and its stack, and how they are written.
//! Here, below every report, so that each report uses them and none takes them from another.

use std::fmt::Write as _;

use serde::Serialize;
use zmtrace_analyze::analysis::Analysis;
use zmtrace_analyze::sites::{named_wrapper_frames, site_start, DEFAULT_WRAPPERS};
use zmtrace_analyze::symbols::{Frame, Symbolizer};
use zmtrace_format::Dump;

use crate::words::{human_bytes, plural};

/// Options shared by the reports.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sites shown per list (0: all).
    pub top: usize,
    /// Frames shown per stack in text (0: all).
    pub depth: usize,
    pub wrappers: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            top: 10,
            depth: 8,
            wrappers: DEFAULT_WRAPPERS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A stack, ready to show: its frames and the name of the site.
#[derive(Clone, Debug, Serialize)]
pub struct Site {
    /// The first frame outside allocator wrappers and the C library.
    pub site: String,
    pub stack: Vec<Frame>,
}

/// Stack `stack` as a site: its frames, named after its first frame outside the wrappers.
pub fn site(sym: &mut Symbolizer, stack: u32, opts: &Options) -> Site {
    let frames = sym.stack(stack);
    let name = frames
        .get(site_start(&frames, &opts.wrappers))
        .map(Frame::label)
        .unwrap_or_else(|| "<empty stack>".into());
    Site {
        site: name,
        stack: frames.as_ref().clone(),
    }
}

/// What a dump is, and how sure the numbers are.
#[derive(Clone, Debug, Serialize)]
pub struct Header {
    pub dump: String,
    pub program: String,
    pub pid: u32,
    pub command: Vec<String>,
    /// False when the process did not end normally or data was lost: the numbers cover what the
    /// dump holds.
    pub complete: bool,
    pub ending: String,
    pub warnings: Vec<String>,
    /// A sampled recording (`zmtrace run --sample`): the per-site figures and the totals built
    /// from them are estimates (failed calls and, with `--all-blocks`, the leak classes' totals
    /// stay exact).
    pub estimated: bool,
    /// Its mean sampling interval in bytes (null: not sampled).
    pub sample_interval: Option<u64>,
    /// Sampled with `--all-blocks`.
    pub all_blocks: bool,
}

/// How the process of `dump` ended, in one line: decided here once for every report, `dump-info`
/// and `run`'s summary. A dump whose image was replaced by exec says so, whether or not its end
/// record (reason `exec`) made it to the dump.
pub fn ending(dump: &Dump) -> String {
    match &dump.exec {
        Some(path) => format!("ended by exec of {path}"),
        None => dump.ending(),
    }
}

pub fn header(dump: &Dump, a: &Analysis, sym: &Symbolizer) -> Header {
    let p = dump.process.as_ref();
    let mut warnings = dump.warnings.clone();
    warnings.extend(dump.late_warnings());
    warnings.extend(sym.warnings.iter().cloned());
    if let Some(e) = dump.end {
        if e.dropped > 0 {
            warnings.push(format!(
                "{} events were lost by the recorder (written after its last flush)",
                e.dropped
            ));
        }
        if e.events != a.events && dump.bytes_lost == 0 && !a.aggregated {
            warnings.push(format!(
                "the recorder wrote {} events but {} were read",
                e.events, a.events
            ));
        }
    }
    if a.aggregated && dump.end.is_none() {
        warnings.push(if dump.aggregate.is_some() {
            "aggregated dump cut short: the counters are from the last snapshot (every 2 s), and \
             the blocks live at the end are unknown, so no leaks are reported"
                .into()
        } else {
            "aggregated dump cut short before its first snapshot: no counters".into()
        });
    }
    // A dump cut short (bytes lost, or no end record) may miss the frees of blocks the check saw
    // freed.
    let cut = dump.bytes_lost > 0 || dump.end.is_none();
    warnings.extend(
        a.check
            .as_ref()
            .map(|c| c.warnings(cut))
            .unwrap_or_default(),
    );
    let mut seen = std::collections::HashSet::new();
    warnings.retain(|w| seen.insert(w.clone()));
    if a.inconsistent > 0 {
        warnings.push(format!(
            "{} name an address that was not live: the dump is partial",
            plural(a.inconsistent, "free or realloc|frees or reallocs")
        ));
    }
    Header {
        dump: dump.path.display().to_string(),
        program: p
            .and_then(|p| p.argv.first().cloned())
            .unwrap_or_else(|| "?".into()),
        pid: p.map_or(0, |p| p.pid),
        command: p.map(|p| p.command()).unwrap_or_default(),
        complete: dump.is_complete(),
        ending: ending(dump),
        warnings,
        estimated: a.estimated(),
        sample_interval: a.sample_interval,
        all_blocks: a.all_blocks,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TopSite {
    pub value: u64,
    #[serde(flatten)]
    pub site: Site,
}

pub fn write_header(o: &mut String, what: &str, h: &Header) {
    let _ = writeln!(
        o,
        "zmtrace {what}: {} (pid {}), {}",
        h.command.join(" "),
        h.pid,
        h.ending
    );
    for w in &h.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    if let Some(t) = h.sample_interval {
        let _ = writeln!(
            o,
            "sampled recording (one sampled byte every {} on average): figures marked \
             \"estimated\" are estimates{}",
            human_bytes(t),
            if h.all_blocks {
                "; the leak classes' totals are exact"
            } else {
                ""
            }
        );
    }
}

/// " (estimated)" after a figure of a sampled recording.
pub fn est(h: &Header) -> &'static str {
    if h.estimated {
        " (estimated)"
    } else {
        ""
    }
}

/// A site's stack in text. Two or more allocator-wrapper frames at its top, by name (a Rust
/// `Vec`'s growth is ten inlined frames of `alloc::` and `core::` before the code that asked),
/// are one line, so that `--depth` frames show the program's code, not the allocator's. The C
/// library's frames stay (`strdup`, `fopen`: what the program called). `--json` keeps every
/// frame.
pub fn write_stack(o: &mut String, s: &Site, opts: &Options) {
    let start = named_wrapper_frames(&s.stack, &opts.wrappers);
    let start = if start >= 2 {
        let _ = writeln!(
            o,
            "      ({} in allocator wrappers, innermost {})",
            plural(start as u64, "frame"),
            s.stack[0].label()
        );
        start
    } else {
        0
    };
    let frames = &s.stack[start..];
    let shown = if opts.depth == 0 {
        frames.len()
    } else {
        opts.depth.min(frames.len())
    };
    for f in &frames[..shown] {
        let loc = f.location().map(|l| format!("  {l}")).unwrap_or_default();
        let inl = if f.inlined { " (inlined)" } else { "" };
        let _ = writeln!(o, "      {}{inl}{loc}", f.label());
    }
    if shown < frames.len() {
        let more = (frames.len() - shown) as u64;
        let _ = writeln!(o, "      … {}", plural(more, "more frame"));
    }
}
