//! The report's section on the program's own mappings (`mapped` in `zmtrace report --json`),
//! from what the replay computed ([`zmtrace_analyze::mapped`]).

use serde::Serialize;
use zmtrace_analyze::mapped::{MapSite, Mapped};
use zmtrace_analyze::sites::merged;
use zmtrace_analyze::symbols::Symbolizer;

use crate::parts::{self, Options, TopSite};

/// The mappings in `zmtrace report` (`mapped` in its JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MappedReport {
    /// Successful `mmap`, `munmap` and `mremap` calls of the program (not its allocator's).
    pub maps: u64,
    pub unmaps: u64,
    pub remaps: u64,
    /// Bytes mapped in all (by `mmap`, and what `mremap` added), and unmapped in all.
    pub bytes_mapped: u64,
    pub bytes_unmapped: u64,
    pub peak_bytes: u64,
    pub peak_time_ns: u64,
    /// What was still mapped at the end, in how many ranges, and of it anonymous, file-backed
    /// and shared bytes.
    pub at_exit_bytes: u64,
    pub at_exit_ranges: u64,
    pub at_exit_anonymous_bytes: u64,
    pub at_exit_file_bytes: u64,
    pub at_exit_shared_bytes: u64,
    pub top: MappedTop,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MappedTop {
    /// Sites by bytes mapped in all.
    pub bytes: Vec<TopSite>,
    /// Sites by bytes still mapped at the end.
    pub at_exit: Vec<TopSite>,
}

pub fn report(m: &Mapped, sym: &mut Symbolizer, opts: &Options) -> MappedReport {
    // Stacks that symbolize the same are one site, as in the heap's figures.
    let sites = merged(&m.sites, sym, MapSite::merge);
    let mut top = |f: fn(&MapSite) -> u64| {
        let mut v: Vec<(u64, u32)> = sites
            .iter()
            .map(|(id, s)| (f(s), *id))
            .filter(|&(v, _)| v > 0)
            .collect();
        v.sort_by_key(|&(v, id)| (std::cmp::Reverse(v), id));
        if opts.top > 0 {
            v.truncate(opts.top);
        }
        v.into_iter()
            .map(|(value, id)| TopSite {
                value,
                site: parts::site(sym, id, opts),
            })
            .collect::<Vec<_>>()
    };
    let top = MappedTop {
        bytes: top(|s| s.bytes),
        at_exit: top(|s| s.at_exit),
    };
    MappedReport {
        maps: m.maps,
        unmaps: m.unmaps,
        remaps: m.remaps,
        bytes_mapped: m.bytes_mapped,
        bytes_unmapped: m.bytes_unmapped,
        peak_bytes: m.peak_bytes,
        peak_time_ns: m.peak_ns,
        at_exit_bytes: m.current,
        at_exit_ranges: m.ranges_at_exit,
        at_exit_anonymous_bytes: m.anonymous_at_exit,
        at_exit_file_bytes: m.file_at_exit,
        at_exit_shared_bytes: m.shared_at_exit,
        top,
    }
}

/// The report's section on mappings; empty when the program made none.
pub fn text(r: &MappedReport, opts: &Options) -> String {
    use crate::words::{human_bytes, thousands};
    use std::fmt::Write as _;
    let mut o = String::new();
    if r.maps + r.unmaps + r.remaps == 0 {
        return o;
    }
    let _ = writeln!(
        o,
        "\nMappings (the program's own mmap, munmap and mremap calls; not in the heap figures):"
    );
    let _ = writeln!(
        o,
        "  mmap               {:>14}  ({} mapped in all, mremap growth included)",
        thousands(r.maps),
        human_bytes(r.bytes_mapped)
    );
    let _ = writeln!(o, "  mremap             {:>14}", thousands(r.remaps));
    let _ = writeln!(
        o,
        "  munmap             {:>14}  ({} unmapped)",
        thousands(r.unmaps),
        human_bytes(r.bytes_unmapped)
    );
    let _ = writeln!(
        o,
        "  peak mapped        {:>14}  at {:.3} s",
        human_bytes(r.peak_bytes),
        r.peak_time_ns as f64 / 1e9
    );
    let _ = writeln!(
        o,
        "  mapped at exit     {:>14}  in {} ranges ({} anonymous, {} file-backed, {} shared)",
        human_bytes(r.at_exit_bytes),
        thousands(r.at_exit_ranges),
        human_bytes(r.at_exit_anonymous_bytes),
        human_bytes(r.at_exit_file_bytes),
        human_bytes(r.at_exit_shared_bytes)
    );
    for (title, list) in [
        ("bytes mapped", &r.top.bytes),
        ("bytes mapped at exit", &r.top.at_exit),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\nTop sites by {title}:");
        for t in list {
            let _ = writeln!(o, "  {:>12}  {}", human_bytes(t.value), t.site.site);
            parts::write_stack(&mut o, &t.site, opts);
        }
    }
    o
}
