//! The reports built from an [`Analysis`]: `report` (the summary and the top sites), `leaks` and
//! `churn`, each as data (serialized to JSON with a stable schema, see the crate docs) and as
//! text for people.

use std::fmt::Write as _;

use serde::Serialize;
use zmtrace_format::Dump;

use zmtrace_analyze::analysis::{Analysis, GrowthPattern, SiteStats};
use zmtrace_analyze::sites::merged_sites;
use zmtrace_analyze::symbols::Symbolizer;

// The parts every report is made of, here for the reports' callers.
pub use crate::parts::{
    ending, est, header, site, write_header, write_stack, Header, Options, Site, TopSite,
};
pub use crate::words::{human_bytes, plural, thousands};

// ---- report ----------------------------------------------------------------------------------

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
    pub check: Option<zmtrace_analyze::leakcheck::Check>,
    pub kinds: Option<zmtrace_analyze::leakcheck::Kinds>,
    pub suppressed: zmtrace_analyze::suppressions::Suppressed,
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
        reallocs: top_by(&sites, sym, opts, SiteStats::reallocs),
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
    // Sampled: each site's counts weighted (SiteStats::churn), as the total reallocs are; a
    // site is listed if it recorded a realloc.
    let mut v: Vec<(u32, &SiteStats)> = merged
        .iter()
        .filter(|(_, s)| s.churn.reallocs > 0)
        .map(|(id, s)| (*id, s))
        .collect();
    let bytes_copied = v.iter().map(|(_, s)| s.churn().bytes_copied).sum();
    v.sort_by_key(|&(id, s)| {
        (
            std::cmp::Reverse(s.churn().bytes_copied),
            std::cmp::Reverse(s.churn().reallocs),
            id,
        )
    });
    if opts.top > 0 {
        v.truncate(opts.top);
    }
    let sites = v
        .into_iter()
        .map(|(id, s)| {
            // The pattern is the recorded reallocs' shape (shares of steps, ratios).
            let pattern = zmtrace_analyze::analysis::pattern(&s.churn);
            let c = s.churn();
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
            let _ = writeln!(o, "  {}", crate::leaks::no_check_line(r.header.estimated));
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
        "{} reallocs, {} copied by moving reallocs{}; sites by bytes copied",
        thousands(c.reallocs),
        human_bytes(c.bytes_copied),
        est(&c.header)
    );
    let e = est(&c.header);
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
            "\n#{} {}: {} reallocs{e} (grew {}, shrank {}; moved {}, in place {}), {} copied, longest chain {}, {pattern}",
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
