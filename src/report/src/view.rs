//! The data behind `zmtrace view`'s page, aggregated here so that the page stays small and quick
//! whatever the size of the dump: it never sees an event.
//!
//! - The summary and the leak and churn tables are the reports of [`crate::reports`]: the same
//!   numbers as `zmtrace report`, `leaks` and `churn`.
//! - Sites are the merged sites of the reports. The page gets the top [`Limits::top`] of each
//!   metric and every site of the tables; the others are folded under their callers into
//!   "(N smaller sites)" entries, so totals still add up.
//! - The run is cut into [`Limits::buckets`] equal time buckets, and the analysis's replay
//!   counts, per bucket and stack, the [`COUNTERS`] ([`zmtrace_analyze::timeline`]), added up
//!   here per site. A block counts in the bucket of its allocation (or last
//!   realloc), its leaked and peak bytes too, so a time range ("what was allocated between t1
//!   and t2") is answered in the page by adding buckets.
//! - The heap over time is each bucket's highest point, with the live bytes of the
//!   [`Limits::series`] sites that held most at the peak, at that point.
//! - With a base dump, what changed per site between the two runs.
//!
//! Stacks are sent once: frames are interned, sites name their frames by index.

use std::cmp::Reverse;
use std::collections::HashMap;

use rustc_hash::FxHashMap;
use serde::Serialize;
use zmtrace_format::{Dump, LeakKind};

use crate::diff::{Side, METRICS};
use zmtrace_analyze::analysis::{Analysis, GrowthPattern, SiteStats};
use zmtrace_analyze::sites::{merged_sites, site_key, FrameKey};
use zmtrace_analyze::timeline::{
    Counts, Timeline, ALLOCATIONS, BYTES, BYTES_COPIED, COUNTERS, LEAKED, PEAK, REALLOCS, TEMPORARY,
};

use crate::reports::{self, Options, Report};
use zmtrace_analyze::symbols::{Frame, Symbolizer};

/// How much the page may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sites kept per metric (and rows per table); the rest are folded under their callers.
    pub top: usize,
    /// Entries the sites not kept are folded into, at most.
    pub folded: usize,
    /// Time buckets of the timeline: what the analysis is asked to record
    /// (`session::Options::timeline`); the page has the buckets the analysis recorded.
    pub buckets: usize,
    /// Sites drawn as their own series on the memory chart.
    pub series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            top: 100,
            folded: 100,
            buckets: 300,
            series: 8,
        }
    }
}

/// Everything the page shows (serialized to JSON into the page; the shape is described in
/// `viewer/README.md`).
#[derive(Debug, Serialize)]
pub struct ViewData {
    /// The shape of this data; the page refuses another.
    pub format: u32,
    pub counters: [&'static str; COUNTERS.len()],
    /// `zmtrace report --json`, exactly.
    pub report: Report,
    /// Module paths, named by index from the frames.
    pub modules: Vec<String>,
    pub frames: Vec<ViewFrame>,
    pub sites: Vec<ViewSite>,
    /// Sites in the dump. Those too small to be in `sites` by name are folded under their
    /// callers: the entries of `sites` listed in `folded`, each named `(N smaller sites)`,
    /// whose stack is the callers' frames the sites share.
    pub sites_in_dump: usize,
    pub folded: Vec<usize>,
    /// The largest leak groups, as `zmtrace leaks` orders them.
    pub leaks: Vec<LeakRow>,
    /// Leak groups in all.
    pub leak_groups: u64,
    /// The sites with most bytes copied by reallocs, as `zmtrace churn` orders them.
    pub churn: Vec<ChurnRow>,
    /// Sites that reallocated, in all.
    pub churn_sites: u64,
    pub timeline: Option<Timeline>,
    /// Why there is no timeline, when there is none.
    pub no_timeline: Option<String>,
    pub diff: Option<Diff>,
}

#[derive(Debug, Serialize)]
pub struct ViewFrame {
    /// The function, else `module+offset`, else the address (as in the flamegraphs).
    pub label: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<usize>,
    pub address: String,
    pub inlined: bool,
}

#[derive(Debug, Serialize)]
pub struct ViewSite {
    pub name: String,
    /// Frames, innermost first.
    pub stack: Vec<usize>,
    /// The whole run's numbers, in the order of [`COUNTERS`].
    pub totals: Counts,
}

#[derive(Debug, Serialize)]
pub struct LeakRow {
    pub site: usize,
    /// The leak check's class (`definite`, `indirect`, `possible`, `reachable`); null without a
    /// check. A site has a row per class.
    pub kind: Option<&'static str>,
    pub blocks: u64,
    pub bytes: u64,
    pub via_realloc: u64,
}

#[derive(Debug, Serialize)]
pub struct ChurnRow {
    pub site: usize,
    pub reallocs: u64,
    pub grew: u64,
    pub shrank: u64,
    pub moved: u64,
    pub in_place: u64,
    pub bytes_copied: u64,
    pub longest_chain: u64,
    pub pattern: GrowthPattern,
    pub hint: Option<String>,
}

/// What changed between the runs: the rows of `zmtrace diff` (its engine, [`crate::diff`]: the
/// same sites, metrics and numbers), the top [`Limits::top`] of each metric.
#[derive(Debug, Serialize)]
pub struct Diff {
    /// What `base` and `current` of each row hold: `zmtrace diff --json`'s field names.
    pub metrics: [&'static str; METRICS.len()],
    /// The unit of each metric, for the table's headers: `bytes`, else what it counts.
    pub units: [&'static str; METRICS.len()],
    /// `zmtrace report --json` of the base dump.
    pub base: Report,
    /// The sites that changed most, per metric (the top [`Limits::top`] of each).
    pub rows: Vec<DiffRow>,
    /// Sites whose numbers differ at all.
    pub sites_differing: usize,
}

#[derive(Debug, Serialize)]
pub struct DiffRow {
    pub name: String,
    pub stack: Vec<usize>,
    pub base: [u64; METRICS.len()],
    pub current: [u64; METRICS.len()],
}

/// The base run of a diff.
pub struct Base<'a, 'd> {
    pub dump: &'a Dump,
    /// Analyzed with the peak's sites.
    pub analysis: &'a Analysis,
    pub sym: &'a mut Symbolizer<'d>,
}

fn totals(s: &SiteStats) -> Counts {
    let c = &s.churn;
    [
        s.allocations,
        s.bytes,
        s.temporary,
        c.reallocs,
        s.leaked_bytes,
        s.leaked_blocks,
        s.peak_bytes,
        c.grew,
        c.shrank,
        c.moved,
        c.in_place,
        c.bytes_copied,
        s.kinds[LeakKind::Definite as usize].bytes + s.kinds[LeakKind::Indirect as usize].bytes,
    ]
}

/// Everything that makes two frames one for the page.
type FrameId = (
    String,
    Option<String>,
    Option<u32>,
    Option<String>,
    String,
    bool,
);

/// Frames and modules, each sent once.
#[derive(Default)]
struct Interner {
    modules: Vec<String>,
    module_ids: HashMap<String, usize>,
    frames: Vec<ViewFrame>,
    frame_ids: HashMap<FrameId, usize>,
}

impl Interner {
    fn frame(&mut self, f: &Frame) -> usize {
        let key = (
            f.label(),
            f.file.clone(),
            f.line,
            f.module.clone(),
            f.address.clone(),
            f.inlined,
        );
        if let Some(&i) = self.frame_ids.get(&key) {
            return i;
        }
        let module = f.module.as_ref().map(|m| {
            *self.module_ids.entry(m.clone()).or_insert_with(|| {
                self.modules.push(m.clone());
                self.modules.len() - 1
            })
        });
        self.frames.push(ViewFrame {
            label: key.0.clone(),
            file: f.file.clone(),
            line: f.line,
            module,
            address: f.address.clone(),
            inlined: f.inlined,
        });
        self.frame_ids.insert(key, self.frames.len() - 1);
        self.frames.len() - 1
    }

    fn stack(&mut self, frames: &[Frame]) -> Vec<usize> {
        frames.iter().map(|f| self.frame(f)).collect()
    }

    /// A made-up one-frame stack (the "other sites" entry).
    fn label(&mut self, label: &str) -> Vec<usize> {
        let f = Frame {
            function: Some(label.to_string()),
            file: None,
            line: None,
            module: None,
            address: String::new(),
            inlined: false,
        };
        vec![self.frame(&f)]
    }
}

/// Builds the page's data. `a` (and the base's analysis) must have been made with the peak's
/// sites (`analyze(dump, true, …)`); `opts` are the report's options (top sites, wrappers).
pub fn build(
    dump: &Dump,
    a: &Analysis,
    sym: &mut Symbolizer,
    opts: &Options,
    limits: Limits,
    base: Option<Base>,
) -> ViewData {
    let report = reports::report(dump, a, sym, opts);
    let merged = merged_sites(a, sym);
    let mut group_of: HashMap<Vec<FrameKey>, usize> = HashMap::new();
    for (i, (id, _)) in merged.iter().enumerate() {
        group_of.insert(site_key(&sym.stack(*id)), i);
    }

    // The sites the page gets: the top of each metric, and every row of the tables.
    let mut kept = vec![false; merged.len()];
    for metric in [
        ALLOCATIONS,
        BYTES,
        TEMPORARY,
        REALLOCS,
        LEAKED,
        PEAK,
        BYTES_COPIED,
    ] {
        let mut v: Vec<(u64, u32, usize)> = merged
            .iter()
            .enumerate()
            .map(|(i, (id, s))| (totals(s)[metric], *id, i))
            .filter(|&(m, _, _)| m > 0)
            .collect();
        v.sort_unstable_by_key(|&(m, id, _)| (Reverse(m), id));
        for &(_, _, i) in v.iter().take(limits.top) {
            kept[i] = true;
        }
    }
    let table_opts = Options {
        top: limits.top,
        ..opts.clone()
    };
    let leaks = crate::leaks::leaks(dump, a, sym, &table_opts, 0, &[]);
    let churn = reports::churn(dump, a, sym, &table_opts);
    let group = |s: &reports::Site| group_of.get(&site_key(&s.stack)).copied();
    let leak_groups: Vec<Option<usize>> = leaks.sites.iter().map(|s| group(&s.site)).collect();
    let churn_groups: Vec<Option<usize>> = churn.sites.iter().map(|s| group(&s.site)).collect();
    for &g in leak_groups.iter().chain(&churn_groups).flatten() {
        kept[g] = true;
    }

    let mut intern = Interner::default();
    let mut sites = Vec::new();
    // Merged site -> index in `sites`.
    let mut index = vec![usize::MAX; merged.len()];
    for (i, (id, s)) in merged.iter().enumerate() {
        if kept[i] {
            let site = reports::site(sym, *id, opts);
            index[i] = sites.len();
            sites.push(ViewSite {
                name: site.site,
                stack: intern.stack(&site.stack),
                totals: totals(s),
            });
        }
    }
    let folded = fold_under_callers(&merged, &kept, sym, opts, limits, &mut intern);
    let folded_at: Vec<usize> = folded.entries.iter().map(|e| sites.len() + e).collect();
    for (site, members) in folded.sites {
        let at = sites.len();
        sites.push(site);
        for i in members {
            index[i] = at;
        }
    }

    let leak_rows = leaks
        .sites
        .iter()
        .zip(&leak_groups)
        .filter_map(|(l, g)| {
            Some(LeakRow {
                site: index[(*g)?],
                kind: l.kind,
                blocks: l.blocks,
                bytes: l.bytes,
                via_realloc: l.via_realloc,
            })
        })
        .collect();
    let churn_rows = churn
        .sites
        .iter()
        .zip(&churn_groups)
        .filter_map(|(c, g)| {
            Some(ChurnRow {
                site: index[(*g)?],
                reallocs: c.reallocs,
                grew: c.grew,
                shrank: c.shrank,
                moved: c.moved,
                in_place: c.in_place,
                bytes_copied: c.bytes_copied,
                longest_chain: c.longest_chain,
                pattern: c.pattern.clone(),
                hint: c.hint.clone(),
            })
        })
        .collect();
    let churn_sites = merged.iter().filter(|(_, s)| s.churn.reallocs > 0).count() as u64;

    let (timeline, no_timeline) = if a.aggregated {
        (
            None,
            Some(
                "this dump has no timeline: it was recorded with --aggregate (counters only); \
                 everything else is here"
                    .into(),
            ),
        )
    } else if let Some(t) = a.sample_interval {
        // The timeline counts the events as they are: a sampled dump's would show only the
        // sampled blocks, unweighted.
        (
            None,
            Some(format!(
                "this dump is a sampled recording (--sample {t}): no timeline (it would show \
                 the sampled blocks only); the figures here are estimated"
            )),
        )
    } else if a.events == 0 {
        (None, Some("this dump has no events, so no timeline".into()))
    } else if let Some(rec) = &a.timeline {
        let mut site_of: FxHashMap<u32, u32> = FxHashMap::default();
        for &id in a.sites.keys() {
            if let Some(&g) = group_of.get(&site_key(&sym.stack(id))) {
                site_of.insert(id, index[g] as u32);
            }
        }
        let mut by_peak: Vec<usize> = (0..sites.len())
            .filter(|&i| !folded_at.contains(&i) && sites[i].totals[PEAK] > 0)
            .collect();
        by_peak.sort_by_key(|&i| Reverse(sites[i].totals[PEAK]));
        by_peak.truncate(limits.series);
        (
            Some(zmtrace_analyze::timeline::page(
                a,
                rec,
                &site_of,
                sites.len(),
                &by_peak,
            )),
            None,
        )
    } else {
        // A caller's mistake, not the dump's: say so rather than show an empty chart.
        (
            None,
            Some("the analysis was made without a timeline".into()),
        )
    };

    let diff = base.map(|b| diff(a, dump, sym, b, opts, limits, &mut intern));
    ViewData {
        format: 1,
        counters: COUNTERS,
        report,
        modules: intern.modules,
        frames: intern.frames,
        sites,
        sites_in_dump: merged.len(),
        folded: folded_at,
        leaks: leak_rows,
        leak_groups: leaks.groups,
        churn: churn_rows,
        churn_sites,
        timeline,
        no_timeline,
        diff,
    }
}

/// The sites too small to be kept, as the page gets them.
struct Folded {
    /// The page's new sites, each with the merged sites (indices) it stands for.
    sites: Vec<(ViewSite, Vec<usize>)>,
    /// Which of them (indices into the page's sites, once appended after the kept ones) are
    /// folded entries, not one site of the dump.
    entries: Vec<usize>,
}

/// Folds the sites not kept under their callers. One entry for all of them (as the page had)
/// hid where they were: on a compiler, one "(6,570 other sites)" box held 61 % of the
/// allocations. Instead the sites are grouped by the outermost frames they share (their
/// callers, as the flamegraph draws them), as deep as [`Limits::folded`] groups allow, deepest
/// where they weigh most; each group is an entry `(N smaller sites)` under those callers, and a
/// group of one site is that site itself.
fn fold_under_callers(
    merged: &[(u32, SiteStats)],
    kept: &[bool],
    sym: &mut Symbolizer,
    opts: &Options,
    limits: Limits,
    intern: &mut Interner,
) -> Folded {
    let small: Vec<usize> = (0..merged.len()).filter(|&i| !kept[i]).collect();
    // Each small site's frames outermost first, as label ids (the flamegraph merges frames by
    // label at each depth), and the frames themselves.
    let mut labels: HashMap<String, u32> = HashMap::new();
    let stacks: Vec<(Vec<u32>, reports::Site)> = small
        .iter()
        .map(|&i| {
            let site = reports::site(sym, merged[i].0, opts);
            let ids = site
                .stack
                .iter()
                .rev()
                .map(|f| {
                    let n = labels.len() as u32;
                    *labels.entry(f.label()).or_insert(n)
                })
                .collect();
            (ids, site)
        })
        .collect();
    // What a group weighs: its share of the allocations and of the bytes (the flamegraph's
    // first metrics), so that splitting goes where the boxes would be wide.
    let mut all = [0u64; COUNTERS.len()];
    for &i in &small {
        for (a, v) in all.iter_mut().zip(totals(&merged[i].1)) {
            *a += v;
        }
    }
    let share = |k: usize| {
        let t = totals(&merged[small[k]].1);
        t[ALLOCATIONS] as f64 / all[ALLOCATIONS].max(1) as f64
            + t[BYTES] as f64 / all[BYTES].max(1) as f64
    };
    // Groups by a shared prefix of `depth` frames, split heaviest first: a group becomes its
    // callees' groups one frame deeper, while the groups stay within [`Limits::folded`]. Where
    // the small sites weigh most the page shows them deepest.
    struct Group {
        depth: usize,
        members: Vec<usize>,
        weight: f64,
        done: bool,
    }
    let budget = limits.folded.max(1);
    let mut groups = vec![Group {
        depth: 0,
        members: (0..stacks.len()).collect(),
        weight: (0..stacks.len()).map(share).sum(),
        done: stacks.is_empty(),
    }];
    while let Some(g) = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.done)
        .max_by(|a, b| a.1.weight.total_cmp(&b.1.weight))
        .map(|(i, _)| i)
    {
        if groups[g].members.len() == 1 {
            groups[g].done = true;
            continue;
        }
        let depth = groups[g].depth;
        let mut by_next: Vec<(Option<u32>, Vec<usize>)> = Vec::new();
        for &k in &groups[g].members {
            let next = stacks[k].0.get(depth).copied();
            match by_next.iter_mut().find(|(n, _)| *n == next) {
                Some((_, v)) => v.push(k),
                None => by_next.push((next, vec![k])),
            }
        }
        match &by_next[..] {
            // One callee for all: one frame deeper, at no cost.
            [(Some(_), _)] => groups[g].depth += 1,
            [(None, _)] => groups[g].done = true,
            // Too many callees for the entries left: the heaviest get their own groups, the
            // rest stay together under this caller.
            _ if groups.len() - 1 + by_next.len() > budget => {
                let room = budget - groups.len();
                let mut heavy: Vec<(f64, Option<u32>, Vec<usize>)> = by_next
                    .into_iter()
                    .map(|(n, m)| (m.iter().map(|&k| share(k)).sum(), n, m))
                    .collect();
                heavy.sort_by(|a, b| b.0.total_cmp(&a.0));
                let rest: Vec<usize> = heavy
                    .drain(room.min(heavy.len())..)
                    .flat_map(|h| h.2)
                    .collect();
                groups[g].weight = rest.iter().map(|&k| share(k)).sum();
                groups[g].members = rest;
                groups[g].done = true;
                for (weight, next, members) in heavy {
                    groups.push(Group {
                        depth: depth + usize::from(next.is_some()),
                        weight,
                        done: next.is_none(),
                        members,
                    });
                }
            }
            _ => {
                groups.swap_remove(g);
                for (next, members) in by_next {
                    groups.push(Group {
                        depth: depth + usize::from(next.is_some()),
                        weight: members.iter().map(|&k| share(k)).sum(),
                        done: next.is_none(),
                        members,
                    });
                }
            }
        }
    }
    let mut groups: Vec<(usize, Vec<usize>)> = groups
        .into_iter()
        .filter(|g| !g.members.is_empty())
        .map(|g| (g.depth, g.members))
        .collect();
    // Stable order: the group holding the first small site first.
    groups.sort_by_key(|(_, members)| members[0]);
    let mut out = Folded {
        sites: Vec::new(),
        entries: Vec::new(),
    };
    for (depth, members) in groups {
        let mut sum = [0u64; COUNTERS.len()];
        for &k in &members {
            for (t, v) in sum.iter_mut().zip(totals(&merged[small[k]].1)) {
                *t += v;
            }
        }
        let of = members.iter().map(|&k| small[k]).collect();
        if let [k] = members[..] {
            let site = &stacks[k].1;
            out.sites.push((
                ViewSite {
                    name: site.site.clone(),
                    stack: intern.stack(&site.stack),
                    totals: sum,
                },
                of,
            ));
            continue;
        }
        let name = format!(
            "({} smaller sites)",
            crate::words::thousands(members.len() as u64)
        );
        // The shared callers, innermost first, under a frame that names the entry.
        let frames = &stacks[members[0]].1.stack;
        let callers = &frames[frames.len() - depth..];
        let mut stack = intern.label(&name);
        stack.extend(intern.stack(callers));
        out.entries.push(out.sites.len());
        out.sites.push((
            ViewSite {
                name,
                stack,
                totals: sum,
            },
            of,
        ));
    }
    out
}

/// The rows of the diff: [`crate::diff::diff`]'s changed sites, the largest [`Limits::top`]
/// changes of each metric kept.
fn diff(
    a: &Analysis,
    dump: &Dump,
    sym: &mut Symbolizer,
    base: Base,
    opts: &Options,
    limits: Limits,
    intern: &mut Interner,
) -> Diff {
    let base_report = reports::report(base.dump, base.analysis, base.sym, opts);
    let all = Options {
        top: 0,
        ..opts.clone()
    };
    let d = crate::diff::diff(
        Side {
            dump: base.dump,
            analysis: base.analysis,
            sym: base.sym,
        },
        Side {
            dump,
            analysis: a,
            sym,
        },
        &all,
    );
    let mut kept = vec![false; d.sites.len()];
    for m in 0..METRICS.len() {
        let mut v: Vec<(u64, usize)> = d
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.changes.all()[m].1.delta.unsigned_abs(), i))
            .filter(|&(delta, _)| delta > 0)
            .collect();
        v.sort_unstable_by_key(|&(delta, i)| (Reverse(delta), i));
        for &(_, i) in v.iter().take(limits.top) {
            kept[i] = true;
        }
    }
    let rows = d
        .sites
        .iter()
        .zip(kept)
        .filter(|(_, k)| *k)
        .map(|(s, _)| {
            let all = s.changes.all();
            DiffRow {
                name: s.site.site.clone(),
                stack: intern.stack(&s.site.stack),
                base: all.map(|(_, d)| d.base),
                current: all.map(|(_, d)| d.new),
            }
        })
        .collect();
    Diff {
        metrics: METRICS.map(|m| m.field),
        units: METRICS.map(|m| if m.bytes { "bytes" } else { m.label }),
        base: base_report,
        rows,
        sites_differing: d.changed as usize,
    }
}

// ---- the page ------------------------------------------------------------------------------

// The page's sources (`viewer/`), compiled into the binary: the page opens from disk, offline.
const TEMPLATE: &str = include_str!("../../../viewer/index.html");
const CSS: &str = include_str!("../../../viewer/viewer.css");
/// Concatenated in this order into one script.
const SCRIPTS: [&str; 6] = [
    include_str!("../../../viewer/js/format.js"),
    include_str!("../../../viewer/js/chart.js"),
    include_str!("../../../viewer/js/flame.js"),
    include_str!("../../../viewer/js/tables.js"),
    include_str!("../../../viewer/js/mapped.js"),
    include_str!("../../../viewer/js/main.js"),
];

/// The page: the template with the styles, the data and the scripts put in.
pub fn page(data: &ViewData) -> String {
    // In a <script> element only `</script` (any case) or `<!--` could end or upset the JSON;
    // escaping every `<` rules both out and still parses as the same JSON.
    let json = serde_json::to_string(data)
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        .replace('<', "\\u003c");
    let mut script = String::from("(() => {\n\"use strict\";\n");
    for s in SCRIPTS {
        script.push_str(s);
        script.push('\n');
    }
    script.push_str("})();\n");
    fill(
        TEMPLATE,
        &[
            ("/*{{css}}*/", CSS),
            ("{{data}}", &json),
            ("/*{{script}}*/", &script),
        ],
    )
}

/// Replaces each marker once, in one pass over the template, so that nothing put in is searched
/// for the next marker.
fn fill(template: &str, parts: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + parts.iter().map(|p| p.1.len()).sum::<usize>());
    let mut rest = template;
    for (marker, value) in parts {
        match rest.find(marker) {
            Some(i) => {
                out.push_str(&rest[..i]);
                out.push_str(value);
                rest = &rest[i + marker.len()..];
            }
            None => panic!("viewer/index.html lacks the marker {marker}"),
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use zmtrace_format::event::{encode_alloc, encode_free, encode_realloc, EventBuf};
    use zmtrace_format::{write, AllocKind, End, EndReason, Process};

    use super::*;
    use zmtrace_analyze::analysis::{analyze_with, Want};
    use zmtrace_analyze::timeline::{GREW, LEAKED_BLOCKS, MOVED};

    #[derive(Clone, Copy)]
    enum Ev {
        Alloc(u64, u64, u32),        // addr, size, stack
        Free(u64),                   // addr
        Realloc(u64, u64, u64, u32), // old, new, size, stack (its old block leaves at seq - 1)
    }

    /// A dump of `events` (tid, seq, ts, event); stacks 1 to 4 are one frame each, at no module
    /// (so each is its own site, named by its address).
    fn dump(events: &[(u32, u64, u64, Ev)]) -> Dump {
        let frames: Vec<Vec<u64>> = (1..=4u64).map(|i| vec![i * 0x1000]).collect();
        dump_stacks(&frames, events)
    }

    /// [`dump`] with stacks of its own: `stacks[i]` (return addresses, innermost first, at no
    /// module) is stack `i + 1`.
    fn dump_stacks(stacks: &[Vec<u64>], events: &[(u32, u64, u64, Ev)]) -> Dump {
        let mut out = write::file_header().to_vec();
        write::process(
            &mut out,
            &Process {
                pid: 42,
                ppid: 1,
                session: "s".into(),
                exe: "/bin/t".into(),
                argv: vec!["t".into()],
                ..Default::default()
            },
        );
        write::stacks(
            &mut out,
            stacks
                .iter()
                .enumerate()
                .map(|(i, f)| (i as u32 + 1, &f[..])),
            &mut |b| zstd::bulk::compress(b, 1).unwrap(),
        );
        let mut tids: Vec<u32> = events.iter().map(|e| e.0).collect();
        tids.sort_unstable();
        tids.dedup();
        for tid in tids {
            let mut raw = Vec::new();
            for &(_, seq, ms, ev) in events.iter().filter(|e| e.0 == tid) {
                // The fixtures' times are milliseconds: what the dump keeps of a time.
                let ts = ms * 1_000_000;
                let mut b = EventBuf::default();
                match ev {
                    Ev::Alloc(addr, size, stack) => {
                        encode_alloc(&mut b, seq, ts, AllocKind::Malloc, addr, size, size, stack)
                    }
                    Ev::Free(addr) => encode_free(&mut b, seq, ts, addr),
                    Ev::Realloc(old, new, size, stack) => {
                        encode_realloc(&mut b, seq, seq - 1, ts, old, new, size, size, stack)
                    }
                }
                raw.extend_from_slice(b.as_slice());
            }
            let mut packed = Vec::new();
            zmtrace_format::event::pack(&raw, &mut packed);
            let z = zstd::bulk::compress(&packed, 1).unwrap();
            write::events(&mut out, tid, tid, packed.len(), &z);
        }
        write::end(
            &mut out,
            &End {
                reason: EndReason::Exit,
                status: 0,
                events: events.len() as u64,
                dropped: 0,
                untracked_frees: 0,
                free_null: 0,
                truncated_stacks: 0,
                compared_stacks: 0,
                mismatched_stacks: 0,
            },
        );
        Dump::from_bytes(Path::new("test.zmt"), out).unwrap()
    }

    /// Two threads, ten buckets of 100 ms: a temporary block, a moving realloc, a peak of 2,060
    /// bytes at seq 12, and 67 bytes leaked from three blocks.
    fn sample() -> Dump {
        dump(&[
            (1, 2, 0, Ev::Alloc(0x100, 100, 1)),
            (1, 4, 10, Ev::Free(0x100)),
            (1, 6, 100, Ev::Alloc(0x200, 1000, 2)),
            (2, 8, 200, Ev::Alloc(0x300, 50, 3)),
            (1, 10, 300, Ev::Realloc(0x200, 0x400, 2000, 4)),
            (1, 12, 400, Ev::Alloc(0x500, 10, 1)),
            (2, 14, 500, Ev::Free(0x400)),
            (2, 16, 999, Ev::Alloc(0x600, 7, 3)),
        ])
    }

    const LIMITS: Limits = Limits {
        top: 100,
        folded: 100,
        buckets: 10,
        series: 2,
    };

    /// The analysis the page needs: with the peak's sites and the timeline.
    fn analyze(d: &Dump, limits: Limits) -> Analysis {
        let want = Want {
            peak_sites: true,
            timeline: Some(limits.buckets),
        };
        analyze_with(d, &want, &mut |_, _| {}, None)
    }

    fn build_of(d: &Dump, limits: Limits) -> ViewData {
        let a = analyze(d, limits);
        let mut sym = Symbolizer::new(d);
        build(d, &a, &mut sym, &Options::default(), limits, None)
    }

    /// counter -> bucket -> site -> value
    fn cells(t: &Timeline) -> Vec<Vec<HashMap<usize, u64>>> {
        t.counters
            .iter()
            .map(|per| {
                per.iter()
                    .map(|flat| flat.chunks(2).map(|p| (p[0] as usize, p[1])).collect())
                    .collect()
            })
            .collect()
    }

    fn site_named(v: &ViewData, name: &str) -> usize {
        v.sites
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name}"))
    }

    #[test]
    fn buckets_add_up_to_the_reports_numbers() {
        let d = sample();
        let v = build_of(&d, LIMITS);
        let r = &v.report;
        assert_eq!(
            (r.allocations, r.bytes_allocated, r.temporary, r.reallocs),
            (5, 3167, 1, 1)
        );
        assert_eq!(
            (r.peak_bytes, r.leaked_bytes, r.leaked_blocks),
            (Some(2060), 67, 3)
        );
        let t = v.timeline.as_ref().expect("a timeline");
        // A tenth of the 999 ms the run took, rounded up so that the last event is inside.
        assert_eq!((t.start_ns, t.bucket_ns, t.heap.len()), (0, 99_900_001, 10));
        let c = cells(t);
        // Every site's buckets add up to its whole-run numbers, and those to the report's.
        for (i, site) in v.sites.iter().enumerate() {
            for k in 0..COUNTERS.len() {
                let sum: u64 = c[k].iter().map(|b| b.get(&i).copied().unwrap_or(0)).sum();
                assert_eq!(sum, site.totals[k], "{} of {}", COUNTERS[k], site.name);
            }
        }
        let total = |k: usize| v.sites.iter().map(|s| s.totals[k]).sum::<u64>();
        assert_eq!(total(ALLOCATIONS), r.allocations);
        assert_eq!(total(BYTES), r.bytes_allocated);
        assert_eq!(total(TEMPORARY), r.temporary);
        assert_eq!(total(REALLOCS), r.reallocs);
        assert_eq!(total(LEAKED), r.leaked_bytes);
        assert_eq!(total(LEAKED_BLOCKS), r.leaked_blocks);
        assert_eq!(Some(total(PEAK)), r.peak_bytes);
    }

    #[test]
    fn blocks_count_in_the_bucket_of_their_allocation() {
        let d = sample();
        let v = build_of(&d, LIMITS);
        let t = v.timeline.as_ref().unwrap();
        let c = cells(t);
        let (s1, s2, s3, s4) = (
            site_named(&v, "0x1000"),
            site_named(&v, "0x2000"),
            site_named(&v, "0x3000"),
            site_named(&v, "0x4000"),
        );
        let at = |k: usize, b: usize| {
            let mut v: Vec<(usize, u64)> = c[k][b].iter().map(|(&s, &n)| (s, n)).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(at(ALLOCATIONS, 0), vec![(s1, 1)]);
        assert_eq!(
            at(TEMPORARY, 0),
            vec![(s1, 1)],
            "freed in bucket 0, made there"
        );
        assert_eq!(at(BYTES, 1), vec![(s2, 1000)]);
        assert_eq!(at(BYTES, 3), vec![(s4, 2000)], "the realloc's new size");
        for k in [REALLOCS, GREW, MOVED] {
            assert_eq!(at(k, 3), vec![(s4, 1)], "{}", COUNTERS[k]);
        }
        assert_eq!(at(BYTES_COPIED, 3), vec![(s4, 1000)]);
        // Live at the peak (seq 12): 50 bytes made in bucket 2, 2,000 in 3, 10 in 4.
        assert_eq!(at(PEAK, 2), vec![(s3, 50)]);
        assert_eq!(at(PEAK, 3), vec![(s4, 2000)]);
        assert_eq!(at(PEAK, 4), vec![(s1, 10)]);
        assert_eq!(at(LEAKED, 2), vec![(s3, 50)]);
        assert_eq!(at(LEAKED, 4), vec![(s1, 10)]);
        assert_eq!(at(LEAKED, 9), vec![(s3, 7)]);
        // The heap's highest point per bucket (the first block is gone after 10 ms); bucket 5
        // starts at the peak, then the free.
        assert_eq!(
            t.heap,
            vec![100, 1000, 1050, 2050, 2060, 2060, 60, 60, 60, 67]
        );
        // The two sites that held most at the peak, at each bucket's highest point.
        assert_eq!(
            t.series.iter().map(|s| s.site).collect::<Vec<_>>(),
            vec![s4, s3]
        );
        assert_eq!(
            t.series[0].live,
            vec![0, 0, 0, 2000, 2000, 2000, 0, 0, 0, 0]
        );
        assert_eq!(t.series[1].live, vec![0, 0, 50, 50, 50, 50, 50, 50, 50, 57]);
    }

    /// A thread that read the clock just before another numbered its event: an event timed in a
    /// bucket already over counts there, and can raise that bucket's highest point (with the
    /// series' bytes as they are at that moment), without changing the current bucket's.
    #[test]
    fn an_event_timed_in_a_bucket_already_over_counts_there() {
        let d = dump(&[
            (1, 2, 0, Ev::Alloc(0x100, 100, 1)),
            (1, 4, 250, Ev::Alloc(0x200, 1000, 2)),
            (2, 6, 199, Ev::Alloc(0x300, 50, 3)),
            (1, 8, 260, Ev::Free(0x200)),
            (1, 10, 999, Ev::Alloc(0x400, 7, 4)),
        ]);
        let v = build_of(&d, LIMITS);
        let t = v.timeline.as_ref().unwrap();
        // The fixture's times are milliseconds: a tenth of the 999 ms, rounded up.
        assert_eq!((t.start_ns, t.bucket_ns), (0, 99_900_001));
        assert_eq!(
            t.heap,
            vec![100, 1150, 1100, 150, 150, 150, 150, 150, 150, 157]
        );
        let (s1, s2, s3) = (
            site_named(&v, "0x1000"),
            site_named(&v, "0x2000"),
            site_named(&v, "0x3000"),
        );
        // The peak (1,150 bytes at seq 6) names the series: 0x2000, then 0x1000.
        assert_eq!(
            t.series.iter().map(|s| s.site).collect::<Vec<_>>(),
            vec![s2, s1]
        );
        assert_eq!(t.series[0].live, vec![0, 1000, 1000, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(t.series[1].live, vec![100; 10]);
        let c = cells(t);
        assert_eq!(c[ALLOCATIONS][1].get(&s3), Some(&1));
        assert_eq!(c[PEAK][1].get(&s3), Some(&50));
        assert_eq!(c[PEAK][2].get(&s2), Some(&1000));
        assert_eq!(c[PEAK][0].get(&s1), Some(&100));
    }

    #[test]
    fn a_small_site_alone_under_its_callers_is_shown_as_itself() {
        let d = sample();
        // One site per metric: 0x1000 (most allocations, temporaries), 0x4000 (bytes, reallocs,
        // peak, copies), 0x3000 (leaks); 0x2000 is the one small site, so it is not folded.
        let v = build_of(&d, Limits { top: 1, ..LIMITS });
        assert_eq!(v.sites_in_dump, 4);
        assert_eq!(v.sites.len(), 4);
        assert_eq!(v.folded, Vec::<usize>::new());
        let s2 = v.sites.iter().position(|s| s.name == "0x2000").unwrap();
        assert_eq!(v.sites[s2].totals[ALLOCATIONS], 1);
        assert_eq!(v.sites[s2].totals[BYTES], 1000);
        let c = cells(v.timeline.as_ref().unwrap());
        assert_eq!(c[BYTES][1].get(&s2), Some(&1000));
        assert_eq!(v.leaks.len(), 1);
        assert_eq!(v.sites[v.leaks[0].site].name, "0x3000");
        assert_eq!((v.leaks[0].blocks, v.leaks[0].bytes), (2, 57));
        assert_eq!(v.leak_groups, 2);
    }

    /// Small sites are folded under their callers, as deep as the entries allowed let them be,
    /// not into one box at the root (issue 16: on cc1 one "(6570 other sites)" box held 61 % of
    /// the allocations).
    #[test]
    fn small_sites_are_folded_under_their_callers() {
        // Stacks, innermost first: 1 is the big site under 0x1 alone; 2-4 are small ones under
        // 0x1 → 0x10 → 0x11; 5-6 under 0x1 → 0x20; 7 under 0x1 → 0x30 alone.
        let stacks = vec![
            vec![0xc0, 0x1],
            vec![0xa1, 0x11, 0x10, 0x1],
            vec![0xa2, 0x11, 0x10, 0x1],
            vec![0xa3, 0x12, 0x10, 0x1],
            vec![0xb1, 0x20, 0x1],
            vec![0xb2, 0x20, 0x1],
            vec![0xd1, 0x30, 0x1],
        ];
        // The big site allocates before and after the small ones, which are freed after both:
        // none of them is temporary (the top temporary site would be kept by name).
        let mut events = vec![(1, 2, 0, Ev::Alloc(0x100, 4000, 1))];
        for (i, stack) in (2..=7u32).enumerate() {
            let seq = 4 + 2 * i as u64;
            events.push((
                1,
                seq,
                10 * seq,
                Ev::Alloc(0x1000 * seq, 10 + i as u64, stack),
            ));
        }
        events.push((1, 30, 300, Ev::Alloc(0x200, 1000, 1)));
        for i in 0..6u64 {
            let seq = 4 + 2 * i;
            events.push((1, 40 + 2 * i, 400 + i, Ev::Free(0x1000 * seq)));
        }
        events.push((1, 100, 900, Ev::Free(0x100)));
        events.push((1, 102, 950, Ev::Free(0x200)));
        let d = dump_stacks(&stacks, &events);
        let names = |v: &ViewData| -> Vec<(String, Vec<String>, u64)> {
            v.sites
                .iter()
                .map(|s| {
                    let frames = s.stack.iter().map(|&f| v.frames[f].label.clone()).collect();
                    (s.name.clone(), frames, s.totals[BYTES])
                })
                .collect()
        };
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Three entries allowed: the groups of the callers two frames deep.
        let v = build_of(
            &d,
            Limits {
                top: 1,
                folded: 3,
                ..LIMITS
            },
        );
        assert_eq!(v.sites_in_dump, 7);
        assert_eq!(
            names(&v),
            vec![
                ("0xc0".to_string(), strs(&["0xc0", "0x1"]), 5000),
                (
                    "(3 smaller sites)".into(),
                    strs(&["(3 smaller sites)", "0x10", "0x1"]),
                    10 + 11 + 12
                ),
                (
                    "(2 smaller sites)".into(),
                    strs(&["(2 smaller sites)", "0x20", "0x1"]),
                    13 + 14
                ),
                ("0xd1".into(), strs(&["0xd1", "0x30", "0x1"]), 15),
            ]
        );
        assert_eq!(v.folded, vec![1, 2]);
        // Every byte is still counted, in the timeline too.
        let c = cells(v.timeline.as_ref().unwrap());
        let total: u64 = c[BYTES].iter().flat_map(|b| b.values()).sum();
        assert_eq!(total, 5000 + 10 + 11 + 12 + 13 + 14 + 15);
        // Two entries: the heaviest callee (0x10) gets one, the others stay under 0x1.
        let v = build_of(
            &d,
            Limits {
                top: 1,
                folded: 2,
                ..LIMITS
            },
        );
        assert_eq!(
            names(&v)[1..],
            [
                (
                    "(3 smaller sites)".to_string(),
                    strs(&["(3 smaller sites)", "0x10", "0x1"]),
                    10 + 11 + 12
                ),
                (
                    "(3 smaller sites)".to_string(),
                    strs(&["(3 smaller sites)", "0x1"]),
                    13 + 14 + 15
                ),
            ]
        );
        // One entry allowed: all small sites under their one shared caller, 0x1.
        let v = build_of(
            &d,
            Limits {
                top: 1,
                folded: 1,
                ..LIMITS
            },
        );
        assert_eq!(
            names(&v)[1],
            (
                "(6 smaller sites)".into(),
                strs(&["(6 smaller sites)", "0x1"]),
                75
            )
        );
        // Enough entries: none folded at all but those sharing their whole path to 0x11.
        let v = build_of(
            &d,
            Limits {
                top: 1,
                folded: 100,
                ..LIMITS
            },
        );
        assert!(v.sites.len() == 7 && v.folded.is_empty(), "{:?}", names(&v));
    }

    #[test]
    fn diff_matches_sites_across_runs() {
        let base = dump(&[
            (1, 2, 0, Ev::Alloc(0x100, 100, 1)),
            (1, 4, 10, Ev::Alloc(0x200, 500, 2)),
        ]);
        let d = sample();
        let a = analyze(&d, LIMITS);
        let mut sym = Symbolizer::new(&d);
        let ba = analyze(&base, LIMITS);
        let mut bsym = Symbolizer::new(&base);
        let v = build(
            &d,
            &a,
            &mut sym,
            &Options::default(),
            LIMITS,
            Some(Base {
                dump: &base,
                analysis: &ba,
                sym: &mut bsym,
            }),
        );
        let diff = v.diff.expect("a diff");
        assert_eq!(diff.base.bytes_allocated, 600);
        let row = |name: &str| {
            diff.rows
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("no row {name}"))
        };
        let bytes = diff.metrics.iter().position(|&m| m == "bytes").unwrap();
        let leaked = diff
            .metrics
            .iter()
            .position(|&m| m == "leaked_bytes")
            .unwrap();
        assert_eq!(
            (row("0x2000").base[bytes], row("0x2000").current[bytes]),
            (500, 1000)
        );
        assert_eq!(
            (row("0x2000").base[leaked], row("0x2000").current[leaked]),
            (500, 0)
        );
        assert_eq!(
            (row("0x3000").base[bytes], row("0x3000").current[bytes]),
            (0, 57)
        );
        // 0x1000: 100 bytes in the base; 110 now, 10 of them leaked (100 were in the base).
        assert_eq!(row("0x1000").base[bytes], 100);
        assert_eq!(row("0x1000").current[bytes], 110);
        assert_eq!(diff.sites_differing, 4);
    }

    #[test]
    fn a_dump_without_events_has_no_timeline() {
        let d = dump(&[]);
        let v = build_of(&d, LIMITS);
        assert!(v.timeline.is_none());
        assert!(v.no_timeline.unwrap().contains("no timeline"));
        assert!(v.sites.is_empty());
    }
}
