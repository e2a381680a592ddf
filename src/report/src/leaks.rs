//! `zmtrace leaks`: the blocks not freed at exit, grouped by stack. With the dump's leak check
//! (see [`zmtrace_analyze::leakcheck`]) each group is one stack and one class, lost first; without it,
//! every block live at exit is listed, as before there were classes.

use std::fmt::Write as _;

use serde::Serialize;
use zmtrace_format::{Dump, LeakKind};

use zmtrace_analyze::analysis::Analysis;
use zmtrace_analyze::leakcheck::{Check, Kinds};
use zmtrace_analyze::sites::merged_sites;

use crate::parts::{header, site, write_header, write_stack, Header, Options, Site};
use crate::words::{human_bytes, plural};
use zmtrace_analyze::suppressions::Suppressed;
use zmtrace_analyze::symbols::Symbolizer;

/// The line reports print when a dump has no leak check made at its end.
pub const NO_CHECK: &str = "no reachability data: every block live at exit is listed";

/// The line reports print for a sampled recording without `--all-blocks`.
pub const NO_CLASSES_SAMPLED: &str =
    "no leak classes: sampled recording sees only some blocks (use --all-blocks for exact classes)";

/// The line for a dump without a leak check: why there is none.
pub fn no_check_line(sampled: bool) -> &'static str {
    if sampled {
        NO_CLASSES_SAMPLED
    } else {
        NO_CHECK
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LeakSite {
    /// `definite`, `indirect`, `possible` or `reachable`; null without a leak check.
    pub kind: Option<&'static str>,
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks of this group whose stack is the one of their last realloc, not their malloc.
    pub via_realloc: u64,
    #[serde(flatten)]
    pub site: Site,
}

#[derive(Clone, Debug, Serialize)]
pub struct Leaks {
    #[serde(flatten)]
    pub header: Header,
    /// Every block not freed at exit (what heaptrack calls leaked), suppressed ones included.
    pub leaked_blocks: u64,
    pub leaked_bytes: u64,
    /// Groups in all, before `--kind`, `--min-bytes` and `--top` were applied.
    pub groups: u64,
    /// How the leak check at exit went; null when the dump has none.
    pub check: Option<Check>,
    /// Blocks and bytes per class, suppressed ones left out; null without a leak check.
    pub kinds: Option<Kinds>,
    pub suppressed: Suppressed,
    pub sites: Vec<LeakSite>,
}

/// The leaks report. `kinds` keeps only those classes (all when empty; ignored without a leak
/// check, when there are no classes).
pub fn leaks(
    dump: &Dump,
    a: &Analysis,
    sym: &mut Symbolizer,
    opts: &Options,
    min_bytes: u64,
    kinds: &[LeakKind],
) -> Leaks {
    let merged = merged_sites(a, sym);
    // (kind, blocks, bytes, via realloc, stack id)
    let mut groups: Vec<(Option<LeakKind>, u64, u64, u64, u32)> = Vec::new();
    for (id, s) in &merged {
        if s.leaked_blocks == 0 {
            continue;
        }
        if a.check.is_none() {
            groups.push((
                None,
                s.leaked_blocks,
                s.leaked_bytes,
                s.leaked_via_realloc,
                *id,
            ));
            continue;
        }
        for k in LeakKind::ALL {
            let t = s.kinds[k as usize];
            if t.blocks > 0 {
                groups.push((
                    Some(k),
                    t.blocks,
                    t.bytes,
                    s.kinds_via_realloc[k as usize],
                    *id,
                ));
            }
        }
    }
    let total_groups = groups.len() as u64;
    groups.retain(|g| {
        g.2 >= min_bytes && (kinds.is_empty() || g.0.is_none_or(|k| kinds.contains(&k)))
    });
    groups.sort_by_key(|&(k, blocks, bytes, _, id)| {
        (k, std::cmp::Reverse(bytes), std::cmp::Reverse(blocks), id)
    });
    if opts.top > 0 {
        groups.truncate(opts.top);
    }
    let sites = groups
        .into_iter()
        .map(|(k, blocks, bytes, via_realloc, id)| LeakSite {
            kind: k.map(LeakKind::name),
            blocks,
            bytes,
            via_realloc,
            site: site(sym, id, opts),
        })
        .collect();
    Leaks {
        header: header(dump, a, sym),
        leaked_blocks: a.leaked_blocks,
        leaked_bytes: a.leaked_bytes,
        groups: total_groups,
        check: a.check.clone(),
        kinds: a.check.as_ref().map(|_| Kinds::from(&a.kinds)),
        suppressed: a.suppressed.clone(),
        sites,
    }
}

/// One line per class: `definitely lost: 453 B in 3 blocks`.
pub fn kinds_lines(k: &Kinds) -> Vec<String> {
    [
        (LeakKind::Definite, k.definite),
        (LeakKind::Indirect, k.indirect),
        (LeakKind::Possible, k.possible),
        (LeakKind::Reachable, k.reachable),
    ]
    .into_iter()
    .map(|(kind, t)| {
        format!(
            "{:<16} {:>12} in {}",
            format!("{}:", kind.describe()),
            human_bytes(t.bytes),
            plural(t.blocks, "block")
        )
    })
    .collect()
}

/// The classes on one line, as `zmtrace run` sums a dump up: `definitely lost 453 B, indirectly
/// lost 0 B, possibly lost 0 B, still reachable 72 B`.
pub fn kinds_summary(k: &Kinds) -> String {
    [
        (LeakKind::Definite, k.definite),
        (LeakKind::Indirect, k.indirect),
        (LeakKind::Possible, k.possible),
        (LeakKind::Reachable, k.reachable),
    ]
    .into_iter()
    .map(|(kind, t)| format!("{} {}", kind.describe(), human_bytes(t.bytes)))
    .collect::<Vec<_>>()
    .join(", ")
}

/// One group of leaked blocks, as `leaks` and the leak gate name it: `definitely lost{sep}453 B
/// in 3 blocks{after}` (no class without a leak check). The site's name is the caller's: the
/// two put it differently after this.
pub fn group_text(s: &LeakSite, sep: &str, after: &str) -> String {
    let kind = s
        .kind
        .and_then(LeakKind::parse)
        .map(|k| format!("{}{sep}", k.describe()))
        .unwrap_or_default();
    format!(
        "{kind}{} in {}{after}",
        human_bytes(s.bytes),
        plural(s.blocks, "block")
    )
}

/// `leak check at exit: 0.4 ms, 1 thread stopped` and what it could not do.
pub fn check_line(c: &Check) -> String {
    let mut s = format!(
        "leak check at {}: {:.1} ms, {} stopped, {} of roots",
        c.trigger,
        c.scan_ns as f64 / 1e6,
        plural(u64::from(c.threads_stopped), "other thread"),
        human_bytes(c.root_bytes)
    );
    if c.threads_unstopped > 0 {
        let _ = write!(
            s,
            "; {} could not be stopped (their stacks were read as they were)",
            plural(u64::from(c.threads_unstopped), "thread")
        );
    }
    s
}

/// The suppression summary lines (none when nothing was suppressed).
pub fn suppressed_lines(s: &Suppressed) -> Vec<String> {
    if s.blocks == 0 {
        return Vec::new();
    }
    let mut out = vec![format!(
        "suppressed: {} in {}",
        human_bytes(s.bytes),
        plural(s.blocks, "block")
    )];
    for b in &s.by {
        out.push(format!(
            "  {:>12} in {:>13}  {}",
            human_bytes(b.bytes),
            plural(b.blocks, "block"),
            b.name
        ));
    }
    out
}

pub fn leaks_text(l: &Leaks, opts: &Options) -> String {
    let mut o = String::new();
    write_header(&mut o, "leaks", &l.header);
    match (&l.check, &l.kinds) {
        (Some(c), Some(k)) => {
            let _ = writeln!(o, "{}", check_line(c));
            for line in kinds_lines(k) {
                let _ = writeln!(o, "  {line}");
            }
        }
        _ => {
            let _ = writeln!(o, "{}", no_check_line(l.header.estimated));
        }
    }
    for line in suppressed_lines(&l.suppressed) {
        let _ = writeln!(o, "{line}");
    }
    let _ = writeln!(
        o,
        "{}{} ({}) not freed at exit, in {}; {} shown, {}largest first",
        match (l.header.estimated, l.header.all_blocks && l.check.is_some()) {
            (true, false) => "estimated: ",
            (true, true) => "exact in all, estimated per site: ",
            _ => "",
        },
        plural(l.leaked_blocks, "block"),
        human_bytes(l.leaked_bytes),
        plural(l.groups, "group"),
        l.sites.len(),
        if l.check.is_some() {
            "lost first, "
        } else {
            ""
        }
    );
    for (i, s) in l.sites.iter().enumerate() {
        let realloc = if s.via_realloc > 0 {
            format!(
                " ({} grown by realloc: the stack is their last realloc's)",
                s.via_realloc
            )
        } else {
            String::new()
        };
        let after = format!("{}{realloc}", crate::parts::est(&l.header));
        let _ = writeln!(
            o,
            "\n#{} {}: {}",
            i + 1,
            group_text(s, ": ", &after),
            s.site.site
        );
        write_stack(&mut o, &s.site, opts);
    }
    o
}
