//! The reports built from an [`Analysis`]: `report` (the summary and the top sites), `leaks` and
//! `churn`, each as data (serialized to JSON with a stable schema, see the crate docs) and as
//! text for people.

use std::fmt::Write as _;

use serde::Serialize;
use zmtrace_format::Dump;

use crate::analysis::{Analysis, GrowthPattern, SiteStats};
use crate::symbols::{Frame, Symbolizer};

/// Frames that are allocator wrappers rather than the code that wanted the memory: a site is
/// named after the first frame outside them. Globs with `*`.
pub const DEFAULT_WRAPPERS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "__libc_*",
    "zmalloc*",
    "zcalloc*",
    "zrealloc*",
    "zfree*",
    "ztrymalloc*",
    "ztrycalloc*",
    "ztryrealloc*",
    "zstrdup",
    "operator new*",
    "operator delete*",
    "xmalloc",
    "xcalloc",
    "xrealloc",
    "g_malloc*",
    "g_realloc*",
    // Rust: the allocation shims and the standard library's collections.
    "__rust_*",
    "__rustc::*",
    "__rdl_*",
    "alloc::*",
    "<alloc::*",
    "<* as alloc::*",
    "core::*",
    "<core::*",
    "<* as core::*",
    "hashbrown::*",
    "<hashbrown::*",
];

/// Matches `*` globs (the only wildcard).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

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

fn is_wrapper(f: &Frame, wrappers: &[String]) -> bool {
    let in_libc = f.module.as_deref().is_some_and(|m| {
        let name = m.rsplit('/').next().unwrap_or(m);
        name.starts_with("libc.so") || name.starts_with("ld-linux")
    });
    in_libc
        || f.function
            .as_deref()
            .is_some_and(|n| wrappers.iter().any(|w| glob_match(w, n)))
}

/// Where a stack's site is: the index of its first frame outside the wrappers (0 when every
/// frame is one).
pub fn site_start(frames: &[Frame], wrappers: &[String]) -> usize {
    frames
        .iter()
        .position(|f| !is_wrapper(f, wrappers))
        .unwrap_or(0)
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

// Defined with the symbolizer, which groups stacks by it (`Symbolizer::site_group`).
pub use crate::symbols::{frame_key, FrameKey};

/// What makes two stacks one site (see [`merged_sites`]). A frame without name or line is keyed
/// by its offset in its module, not its address in the process, so the key also matches a site
/// across two runs of the same program.
pub fn site_key(frames: &[Frame]) -> Vec<FrameKey> {
    frames.iter().map(frame_key).collect()
}

/// The per-stack numbers, merged where stacks symbolize the same (the same functions, files and
/// lines: e.g. one source line compiled into several calls), each with the smallest stack id as
/// its representative.
pub fn merged_sites(a: &Analysis, sym: &mut Symbolizer) -> Vec<(u32, SiteStats)> {
    let mut ids: Vec<u32> = a.sites.keys().copied().collect();
    ids.sort_unstable();
    // By `Symbolizer::site_group`, which is `site_key` without building a stack's frames.
    let mut by_key: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    let mut out: Vec<(u32, SiteStats)> = Vec::new();
    for id in ids {
        let key = sym.site_group(id);
        match by_key.get(&key) {
            Some(&i) => out[i].1.merge(&a.sites[&id]),
            None => {
                by_key.insert(key, out.len());
                out.push((id, a.sites[&id].clone()));
            }
        }
    }
    out
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
        ending: match (&dump.exec, dump.end) {
            (Some(path), _) => format!("ended by exec of {path}"),
            _ => dump.ending(),
        },
        warnings,
        estimated: a.estimated(),
        sample_interval: a.sample_interval,
        all_blocks: a.all_blocks,
    }
}

// ---- report ----------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct TopSite {
    pub value: u64,
    #[serde(flatten)]
    pub site: Site,
}

#[derive(Clone, Debug, Serialize)]
pub struct Top {
    pub allocations: Vec<TopSite>,
    pub bytes: Vec<TopSite>,
    pub peak: Vec<TopSite>,
    pub leaked: Vec<TopSite>,
    pub temporary: Vec<TopSite>,
    pub reallocs: Vec<TopSite>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub header: Header,
    pub allocations: u64,
    pub frees: u64,
    pub reallocs: u64,
    pub failed: u64,
    pub bytes_allocated: u64,
    /// The peak heap and when it was, null for an aggregated dump (it has no timeline).
    pub peak_bytes: Option<u64>,
    pub peak_time_ns: Option<u64>,
    pub leaked_blocks: u64,
    pub leaked_bytes: u64,
    pub temporary: u64,
    pub threads: u64,
    /// Events in the dump's stream, null for an aggregated dump (it has none: see `calls`).
    pub events: Option<u64>,
    /// The calls an aggregated dump counted (null for a dump with events).
    pub calls: Option<u64>,
    /// Null for an aggregated dump.
    pub duration_ns: Option<u64>,
    /// An aggregated dump: no timeline, so `peak_bytes`, `peak_time_ns`, `events` and
    /// `duration_ns` are null and `top.peak` is empty.
    pub aggregated: bool,
    /// The leak check at exit (null without one), the classes of the leaked blocks less the
    /// suppressed ones (null without a check), and what suppressions took out.
    pub check: Option<crate::leakcheck::Check>,
    pub kinds: Option<crate::leakcheck::Kinds>,
    pub suppressed: crate::suppressions::Suppressed,
    pub top: Top,
    /// The program's own mappings, apart from the heap.
    pub mapped: crate::mapped::MappedReport,
}

fn top_by(
    sites: &[(u32, SiteStats)],
    sym: &mut Symbolizer,
    opts: &Options,
    metric: impl Fn(&SiteStats) -> u64,
) -> Vec<TopSite> {
    let mut v: Vec<(u64, u32)> = sites
        .iter()
        .map(|(id, s)| (metric(s), *id))
        .filter(|&(m, _)| m > 0)
        .collect();
    v.sort_by_key(|&(m, id)| (std::cmp::Reverse(m), id));
    if opts.top > 0 {
        v.truncate(opts.top);
    }
    v.into_iter()
        .map(|(value, id)| TopSite {
            value,
            site: site(sym, id, opts),
        })
        .collect()
}

pub fn report(dump: &Dump, a: &Analysis, sym: &mut Symbolizer, opts: &Options) -> Report {
    // What only a timeline measures is unknown (null), not 0, in an aggregated dump.
    let timed = |v: u64| (!a.aggregated).then_some(v);
    let sites = merged_sites(a, sym);
    let top = Top {
        allocations: top_by(&sites, sym, opts, |s| s.allocations),
        bytes: top_by(&sites, sym, opts, |s| s.bytes),
        peak: top_by(&sites, sym, opts, |s| s.peak_bytes),
        leaked: top_by(&sites, sym, opts, |s| s.leaked_bytes),
        temporary: top_by(&sites, sym, opts, |s| s.temporary),
        reallocs: top_by(&sites, sym, opts, |s| s.churn.reallocs),
    };
    Report {
        header: header(dump, a, sym),
        allocations: a.allocations,
        frees: a.frees,
        reallocs: a.reallocs,
        failed: a.failed,
        bytes_allocated: a.bytes_allocated,
        peak_bytes: timed(a.peak_bytes),
        peak_time_ns: timed(a.peak_ns),
        leaked_blocks: a.leaked_blocks,
        leaked_bytes: a.leaked_bytes,
        temporary: a.temporary,
        threads: a.threads,
        events: timed(a.events),
        calls: a.aggregated.then_some(a.events),
        duration_ns: timed(a.duration_ns),
        aggregated: a.aggregated,
        check: a.check.clone(),
        kinds: a.check.as_ref().map(|_| (&a.kinds).into()),
        suppressed: a.suppressed.clone(),
        top,
        mapped: crate::mapped::report(&a.mapped, sym, opts),
    }
}

// ---- leaks: see `crate::leaks` ------------------------------------------------------------

pub use crate::leaks::{leaks, leaks_text, LeakSite, Leaks};

// ---- churn -----------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct ChurnSite {
    pub reallocs: u64,
    pub grew: u64,
    pub shrank: u64,
    pub moved: u64,
    pub in_place: u64,
    pub bytes_copied: u64,
    pub longest_chain: u64,
    pub pattern: GrowthPattern,
    /// One line of advice where the pattern calls for it, else null.
    pub hint: Option<String>,
    #[serde(flatten)]
    pub site: Site,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    #[serde(flatten)]
    pub header: Header,
    pub reallocs: u64,
    pub bytes_copied: u64,
    pub sites: Vec<ChurnSite>,
}

pub fn churn(dump: &Dump, a: &Analysis, sym: &mut Symbolizer, opts: &Options) -> ChurnReport {
    let merged = merged_sites(a, sym);
    let mut v: Vec<(u32, &SiteStats)> = merged
        .iter()
        .filter(|(_, s)| s.churn.reallocs > 0)
        .map(|(id, s)| (*id, s))
        .collect();
    let bytes_copied = v.iter().map(|(_, s)| s.churn.bytes_copied).sum();
    v.sort_by_key(|&(id, s)| {
        (
            std::cmp::Reverse(s.churn.bytes_copied),
            std::cmp::Reverse(s.churn.reallocs),
            id,
        )
    });
    if opts.top > 0 {
        v.truncate(opts.top);
    }
    let sites = v
        .into_iter()
        .map(|(id, s)| {
            let c = &s.churn;
            let pattern = crate::analysis::pattern(c);
            let hint = match pattern {
                GrowthPattern::FixedStep { step, .. } if c.grew >= 4 => Some(format!(
                    "grows by a fixed {step} bytes per realloc ({} times): reserve the capacity up front, or grow geometrically",
                    c.grew
                )),
                _ => None,
            };
            ChurnSite {
                reallocs: c.reallocs,
                grew: c.grew,
                shrank: c.shrank,
                moved: c.moved,
                in_place: c.in_place,
                bytes_copied: c.bytes_copied,
                longest_chain: c.longest_chain,
                pattern,
                hint,
                site: site(sym, id, opts),
            }
        })
        .collect();
    ChurnReport {
        header: header(dump, a, sym),
        reallocs: a.reallocs,
        bytes_copied,
        sites,
    }
}

// ---- text ------------------------------------------------------------------------------------

pub use crate::words::{human_bytes, plural, thousands};

pub(crate) fn write_header(o: &mut String, what: &str, h: &Header) {
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
pub(crate) fn est(h: &Header) -> &'static str {
    if h.estimated {
        " (estimated)"
    } else {
        ""
    }
}

pub(crate) fn write_stack(o: &mut String, s: &Site, opts: &Options) {
    let shown = if opts.depth == 0 {
        s.stack.len()
    } else {
        opts.depth.min(s.stack.len())
    };
    for f in &s.stack[..shown] {
        let loc = f.location().map(|l| format!("  {l}")).unwrap_or_default();
        let inl = if f.inlined { " (inlined)" } else { "" };
        let _ = writeln!(o, "      {}{inl}{loc}", f.label());
    }
    if shown < s.stack.len() {
        let more = (s.stack.len() - shown) as u64;
        let _ = writeln!(o, "      … {}", plural(more, "more frame"));
    }
}

pub fn report_text(r: &Report, opts: &Options) -> String {
    let mut o = String::new();
    write_header(&mut o, "report", &r.header);
    let pct = |n: u64, d: u64| {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    };
    let e = est(&r.header);
    let _ = writeln!(
        o,
        "  allocations        {:>14}  ({} requested in all, reallocs included){e}",
        thousands(r.allocations),
        human_bytes(r.bytes_allocated)
    );
    let _ = writeln!(o, "  frees              {:>14}{e}", thousands(r.frees));
    let _ = writeln!(o, "  reallocs           {:>14}{e}", thousands(r.reallocs));
    let _ = writeln!(o, "  failed             {:>14}", thousands(r.failed));
    match (r.peak_bytes, r.peak_time_ns) {
        (Some(bytes), Some(ns)) => {
            let _ = writeln!(
                o,
                "  peak heap          {:>14}  at {:.3} s{e}",
                human_bytes(bytes),
                ns as f64 / 1e9
            );
        }
        _ => {
            let _ = writeln!(
                o,
                "  peak heap          {:>14}  (aggregated dump: no timeline)",
                "n/a"
            );
        }
    }
    let _ = writeln!(
        o,
        "  not freed at exit  {:>14}  in {}{}",
        human_bytes(r.leaked_bytes),
        plural(r.leaked_blocks, "block"),
        if r.header.all_blocks && r.kinds.is_some() {
            " (exact)"
        } else {
            e
        }
    );
    match (&r.check, &r.kinds) {
        (Some(c), Some(k)) => {
            let _ = writeln!(o, "  {}", crate::leaks::check_line(c));
            for line in crate::leaks::kinds_lines(k) {
                let _ = writeln!(o, "    {line}");
            }
        }
        _ => {
            let _ = writeln!(
                o,
                "  {}",
                crate::leakcheck::no_check_line(r.header.estimated)
            );
        }
    }
    for line in crate::leaks::suppressed_lines(&r.suppressed) {
        let _ = writeln!(o, "  {line}");
    }
    let _ = writeln!(
        o,
        "  temporary          {:>14}  ({:.1}% of allocations){e}",
        thousands(r.temporary),
        pct(r.temporary, r.allocations)
    );
    let _ = writeln!(o, "  threads            {:>14}", thousands(r.threads));
    if let Some(ns) = r.duration_ns {
        let _ = writeln!(
            o,
            "  run time           {:>14}",
            format!("{:.3} s", ns as f64 / 1e9)
        );
    }
    let lists: [(&str, &Vec<TopSite>, bool); 6] = [
        ("allocations", &r.top.allocations, false),
        ("bytes allocated", &r.top.bytes, true),
        ("bytes live at the peak", &r.top.peak, true),
        ("bytes not freed at exit", &r.top.leaked, true),
        ("temporary allocations", &r.top.temporary, false),
        ("reallocs", &r.top.reallocs, false),
    ];
    for (title, list, bytes) in lists {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\nTop sites by {title}{e}:");
        for (i, t) in list.iter().enumerate() {
            // A blank line between sites: each is a line and its stack, which otherwise run
            // into the next site's line.
            if i > 0 {
                let _ = writeln!(o);
            }
            let v = if bytes {
                human_bytes(t.value)
            } else {
                thousands(t.value)
            };
            let _ = writeln!(o, "  {v:>12}  {}", t.site.site);
            write_stack(&mut o, &t.site, opts);
        }
    }
    o.push_str(&crate::mapped::text(&r.mapped, opts));
    o
}

pub fn churn_text(c: &ChurnReport, opts: &Options) -> String {
    let mut o = String::new();
    write_header(&mut o, "churn", &c.header);
    let _ = writeln!(
        o,
        "{} reallocs, {} copied by moving reallocs; sites by bytes copied",
        thousands(c.reallocs),
        human_bytes(c.bytes_copied)
    );
    for (i, s) in c.sites.iter().enumerate() {
        let pattern = match s.pattern {
            GrowthPattern::None => "no growth".to_string(),
            GrowthPattern::FixedStep { step, share } => {
                format!(
                    "fixed step of {step} bytes ({:.0}% of grows)",
                    share * 100.0
                )
            }
            GrowthPattern::Geometric { factor } => format!("geometric, ×{factor:.2} per grow"),
            GrowthPattern::Irregular => "irregular".to_string(),
        };
        let _ = writeln!(
            o,
            "\n#{} {}: {} reallocs (grew {}, shrank {}; moved {}, in place {}), {} copied, longest chain {}, {pattern}",
            i + 1,
            s.site.site,
            thousands(s.reallocs),
            thousands(s.grew),
            thousands(s.shrank),
            thousands(s.moved),
            thousands(s.in_place),
            human_bytes(s.bytes_copied),
            thousands(s.longest_chain)
        );
        if let Some(h) = &s.hint {
            let _ = writeln!(o, "    hint: {h}");
        }
        write_stack(&mut o, &s.site, opts);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_shell_star() {
        assert!(glob_match("zmalloc*", "zmalloc_usable"));
        assert!(glob_match("zmalloc*", "zmalloc"));
        assert!(!glob_match("zmalloc*", "my_zmalloc"));
        assert!(glob_match("operator new*", "operator new(unsigned long)"));
        assert!(glob_match("*alloc*", "ztrymalloc_usable"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("free", "free"));
        assert!(!glob_match("free", "freed"));
    }

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
