//! `zmtrace diff BASE NEW`: two dumps (two runs of a program, say before and after a change)
//! compared site by site. Sites are matched by their symbolized stacks, as the reports merge
//! them (function, file, line, module; module+offset for frames without symbols), so addresses
//! that moved between the runs do not matter.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;
use zmtrace_format::{Dump, LeakKind};

use zmtrace_analyze::analysis::{Analysis, SiteStats};
use zmtrace_analyze::sites::{frame_key, merged_sites, FrameKey};

use crate::parts::{header, site, write_stack, Header, Options, Site};
use crate::words::{human_bytes, thousands};
use zmtrace_analyze::symbols::Symbolizer;

/// One number in both dumps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Delta {
    pub base: u64,
    pub new: u64,
    /// `new - base`.
    pub delta: i64,
}

impl Delta {
    fn new(base: u64, new: u64) -> Delta {
        Delta {
            base,
            new,
            delta: new as i64 - base as i64,
        }
    }
}

/// One number the diff compares: its JSON field, its name for people, and whether it counts
/// bytes. [`METRICS`] is the one list, in the order of [`Changes::all`]; `zmtrace diff` and
/// `zmtrace view --base` both compare these, by the one rule of [`Changes::changed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Metric {
    pub field: &'static str,
    pub label: &'static str,
    pub bytes: bool,
}

const fn metric(field: &'static str, label: &'static str, bytes: bool) -> Metric {
    Metric {
        field,
        label,
        bytes,
    }
}

pub const METRICS: [Metric; 8] = [
    metric("allocations", "allocations", false),
    metric("bytes", "bytes", true),
    metric("peak", "peak", true),
    metric("leaked_blocks", "leaked blocks", false),
    metric("leaked_bytes", "leaked bytes", true),
    metric("lost_bytes", "lost bytes", true),
    metric("reallocs", "reallocs", false),
    metric("temporary", "temporary", false),
];

/// The numbers compared, per site and in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub allocations: Delta,
    /// Bytes allocated in all (reallocs' new sizes included).
    pub bytes: Delta,
    /// Bytes live at the peak heap.
    pub peak: Delta,
    pub leaked_blocks: Delta,
    pub leaked_bytes: Delta,
    /// Bytes definitely and indirectly lost (0 without a leak check).
    pub lost_bytes: Delta,
    pub reallocs: Delta,
    /// Temporary allocations: blocks freed before their thread allocated anything else.
    pub temporary: Delta,
}

impl Changes {
    fn new(b: &SiteStats, n: &SiteStats) -> Changes {
        let lost = |s: &SiteStats| {
            s.kinds[LeakKind::Definite as usize].bytes + s.kinds[LeakKind::Indirect as usize].bytes
        };
        Changes {
            allocations: Delta::new(b.allocations, n.allocations),
            bytes: Delta::new(b.bytes, n.bytes),
            peak: Delta::new(b.peak_bytes, n.peak_bytes),
            leaked_blocks: Delta::new(b.leaked_blocks, n.leaked_blocks),
            leaked_bytes: Delta::new(b.leaked_bytes, n.leaked_bytes),
            lost_bytes: Delta::new(lost(b), lost(n)),
            reallocs: Delta::new(b.reallocs(), n.reallocs()),
            temporary: Delta::new(b.temporary, n.temporary),
        }
    }

    /// Each of [`METRICS`] with its delta.
    pub fn all(&self) -> [(Metric, Delta); METRICS.len()] {
        let d = [
            self.allocations,
            self.bytes,
            self.peak,
            self.leaked_blocks,
            self.leaked_bytes,
            self.lost_bytes,
            self.reallocs,
            self.temporary,
        ];
        std::array::from_fn(|i| (METRICS[i], d[i]))
    }

    /// What "changed" means: any of [`METRICS`] differs.
    pub fn changed(&self) -> bool {
        self.all().iter().any(|(_, d)| d.delta != 0)
    }

    /// What orders the sites: the largest change in bytes first.
    fn weight(&self) -> (u64, u64, u64) {
        (
            self.bytes.delta.unsigned_abs() + self.peak.delta.unsigned_abs(),
            self.leaked_bytes.delta.unsigned_abs(),
            self.allocations.delta.unsigned_abs() + self.reallocs.delta.unsigned_abs(),
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DiffSite {
    #[serde(flatten)]
    pub changes: Changes,
    #[serde(flatten)]
    pub site: Site,
}

#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub base: Header,
    pub new: Header,
    pub totals: Changes,
    /// Sites whose numbers are the same in both dumps (not listed).
    pub unchanged: u64,
    /// Sites that changed, before `--top`.
    pub changed: u64,
    pub sites: Vec<DiffSite>,
}

/// One side of the comparison: a dump, its analysis and its symbolizer.
pub struct Side<'a, 'd> {
    pub dump: &'a Dump,
    pub analysis: &'a Analysis,
    pub sym: &'a mut Symbolizer<'d>,
}

/// Compares `base` with `new`: every site that changed (by [`Changes::changed`]), largest
/// change first, the first `opts.top` kept (0: all). The analyses should have per-site peaks
/// (`analyze(…, true, …)`). `zmtrace view --base` takes its rows from here too.
pub fn diff(base: Side, new: Side, opts: &Options) -> Diff {
    let keyed = |s: &mut Side| -> Vec<(Vec<FrameKey>, u32, SiteStats)> {
        merged_sites(s.analysis, s.sym)
            .into_iter()
            .map(|(id, st)| (s.sym.stack(id).iter().map(frame_key).collect(), id, st))
            .collect()
    };
    let (mut base, mut new) = (base, new);
    let b = keyed(&mut base);
    let n = keyed(&mut new);
    let mut index: HashMap<Vec<FrameKey>, usize> = HashMap::new();
    // (stats in base, stats in new, stack id in new (preferred for display) or base)
    let mut rows: Vec<(SiteStats, SiteStats, Option<u32>, Option<u32>)> = Vec::new();
    for (key, id, st) in b {
        index.insert(key, rows.len());
        rows.push((st, SiteStats::default(), Some(id), None));
    }
    for (key, id, st) in n {
        match index.get(&key) {
            Some(&i) => {
                rows[i].1 = st;
                rows[i].3 = Some(id);
            }
            None => rows.push((SiteStats::default(), st, None, Some(id))),
        }
    }
    let totals = Changes::new(&sum(base.analysis), &sum(new.analysis));
    let mut changed: Vec<(Changes, Option<u32>, Option<u32>)> = rows
        .iter()
        .map(|(b, n, bid, nid)| (Changes::new(b, n), *bid, *nid))
        .filter(|(c, _, _)| c.changed())
        .collect();
    let unchanged = (rows.len() - changed.len()) as u64;
    let n_changed = changed.len() as u64;
    changed.sort_by_key(|(c, bid, nid)| (std::cmp::Reverse(c.weight()), *nid, *bid));
    if opts.top > 0 {
        changed.truncate(opts.top);
    }
    let sites = changed
        .into_iter()
        .map(|(changes, bid, nid)| DiffSite {
            changes,
            site: match (nid, bid) {
                (Some(id), _) => site(new.sym, id, opts),
                (None, Some(id)) => site(base.sym, id, opts),
                (None, None) => unreachable!("every row comes from one of the dumps"),
            },
        })
        .collect();
    Diff {
        base: header(base.dump, base.analysis, base.sym),
        new: header(new.dump, new.analysis, new.sym),
        totals,
        unchanged,
        changed: n_changed,
        sites,
    }
}

/// The whole dump as one site: its totals.
fn sum(a: &Analysis) -> SiteStats {
    let mut s = SiteStats {
        allocations: a.allocations,
        bytes: a.bytes_allocated,
        peak_bytes: a.peak_bytes,
        leaked_blocks: a.leaked_blocks,
        leaked_bytes: a.leaked_bytes,
        kinds: a.kinds,
        temporary: a.temporary,
        ..SiteStats::default()
    };
    s.churn.reallocs = a.reallocs;
    s
}

fn signed(d: i64, bytes: bool) -> String {
    let v = if bytes {
        human_bytes(d.unsigned_abs())
    } else {
        thousands(d.unsigned_abs())
    };
    match d.signum() {
        1 => format!("+{v}"),
        -1 => format!("-{v}"),
        _ => "±0".to_string(),
    }
}

fn line(o: &mut String, indent: &str, name: &str, d: Delta, bytes: bool) {
    let show = |v: u64| {
        if bytes {
            human_bytes(v)
        } else {
            thousands(v)
        }
    };
    let _ = writeln!(
        o,
        "{indent}{name:<14} {:>12} -> {:<12} ({})",
        show(d.base),
        show(d.new),
        signed(d.delta, bytes)
    );
}

pub fn diff_text(d: &Diff, opts: &Options) -> String {
    let mut o = String::new();
    let who = |h: &Header| format!("{} (pid {})", h.command.join(" "), h.pid);
    let _ = writeln!(o, "zmtrace diff: base {}", who(&d.base));
    let _ = writeln!(o, "              new  {}", who(&d.new));
    for (which, h) in [("base", &d.base), ("new", &d.new)] {
        for w in &h.warnings {
            let _ = writeln!(o, "warning ({which}): {w}");
        }
    }
    let _ = writeln!(o, "totals:");
    for (m, delta) in d.totals.all() {
        line(&mut o, "  ", m.label, delta, m.bytes);
    }
    let _ = writeln!(
        o,
        "{} sites changed, {} unchanged; {} shown, largest change first",
        thousands(d.changed),
        thousands(d.unchanged),
        d.sites.len()
    );
    for (i, s) in d.sites.iter().enumerate() {
        let _ = writeln!(o, "\n#{} {}", i + 1, s.site.site);
        for (m, delta) in s.changes.all() {
            if delta.delta != 0 {
                line(&mut o, "    ", m.label, delta, m.bytes);
            }
        }
        write_stack(&mut o, &s.site, opts);
    }
    o
}
