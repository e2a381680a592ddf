//! The page's timeline (`zmtrace view`): the run cut into equal time buckets and, per bucket and
//! site, the [`COUNTERS`]; the heap's highest point in each bucket, with the live bytes of the
//! sites drawn as series. A replay of its own for now (it follows [`crate::analysis`] event for
//! event); the page's presentation of it is the report crate's `view`.

use rustc_hash::FxHashMap;
use serde::Serialize;
use zmtrace_format::{Dump, EventKind, LeakKind};

use crate::analysis::Analysis;

/// What the page gets per site, per time bucket and in all; `timeline.counters[i]` and
/// `sites[_].totals[i]` are `COUNTERS[i]`. The flamegraph metrics are `allocations`, `bytes`,
/// `leaked`, `peak`, `temporary`, `reallocs` and `lost`, with the meanings of
/// `zmtrace_report::flame::Metric`. `leaked` and `lost` leave out the suppressed blocks, as
/// `zmtrace leaks` does.
pub const COUNTERS: [&str; 13] = [
    "allocations",
    "bytes",
    "temporary",
    "reallocs",
    "leaked",
    "leaked_blocks",
    "peak",
    "grew",
    "shrank",
    "moved",
    "in_place",
    "bytes_copied",
    "lost",
];
pub const ALLOCATIONS: usize = 0;
pub const BYTES: usize = 1;
pub const TEMPORARY: usize = 2;
pub const REALLOCS: usize = 3;
pub const LEAKED: usize = 4;
pub const LEAKED_BLOCKS: usize = 5;
pub const PEAK: usize = 6;
pub const GREW: usize = 7;
pub const SHRANK: usize = 8;
pub const MOVED: usize = 9;
pub const IN_PLACE: usize = 10;
pub const BYTES_COPIED: usize = 11;
pub const LOST: usize = 12;

pub type Counts = [u64; COUNTERS.len()];

#[derive(Debug, Serialize)]
pub struct Timeline {
    /// Bucket `i` holds the events with `start_ns + i * bucket_ns <= ts < start_ns + (i + 1) *
    /// bucket_ns` (ns since the process started; the first event starts bucket 0).
    pub start_ns: u64,
    pub bucket_ns: u64,
    /// The heap's highest point in each bucket.
    pub heap: Vec<u64>,
    pub series: Vec<Series>,
    /// Per counter, per bucket: `[site, value, site, value, …]` for the sites with a value.
    pub counters: Vec<Vec<Vec<u64>>>,
}

/// One site on the memory chart.
#[derive(Debug, Serialize)]
pub struct Series {
    pub site: usize,
    /// Its live bytes at each bucket's highest point.
    pub live: Vec<u64>,
}

/// A block live during the timeline's replay.
#[derive(Clone, Copy)]
struct Live {
    size: u64,
    /// Index into the page's sites (`u32::MAX`: a stack the analysis never counted).
    site: u32,
    /// Its stack, for the suppressions and the leak classes at the end.
    stack: u32,
    tid: u32,
    /// The bucket of its allocation (or last realloc).
    bucket: u32,
}

const NO_SITE: u32 = u32::MAX;

/// The replay behind the timeline. It follows [`crate::analysis::analyze`] event for event (the
/// same live set, temporaries, realloc halves and peak), only counting per bucket as well.
pub fn timeline(
    dump: &Dump,
    a: &Analysis,
    site_of: &FxHashMap<u32, u32>,
    n_sites: usize,
    series_sites: &[usize],
    buckets: usize,
) -> Timeline {
    let nb = buckets.max(1);
    let start_ns = dump
        .events()
        .find(|e| !matches!(e.kind, EventKind::ReallocOut { .. }))
        .map_or(0, |e| e.ts_ns);
    let span = a.duration_ns.saturating_sub(start_ns) + 1;
    let bucket_ns = span.div_ceil(nb as u64).max(1);
    let bucket_of = |ts: u64| ((ts.saturating_sub(start_ns) / bucket_ns) as usize).min(nb - 1);
    let site = |stack: u32| site_of.get(&stack).copied().unwrap_or(NO_SITE);

    // Dense per (bucket, site): the page's sites are bounded, and a hash lookup per event would
    // cost more than the memory.
    let mut cells = vec![[0u64; COUNTERS.len()]; nb * n_sites];
    let cell = |bucket: u32, site: u32| -> Option<usize> {
        (site != NO_SITE).then(|| bucket as usize * n_sites + site as usize)
    };
    let mut series_of = vec![u8::MAX; n_sites];
    for (i, &s) in series_sites.iter().enumerate() {
        series_of[s] = i as u8;
    }
    let ns = series_sites.len();
    let mut series_now = vec![0u64; ns];
    let add_series = |now: &mut Vec<u64>, site: u32, size: u64, add: bool| {
        if site == NO_SITE {
            return;
        }
        let i = series_of[site as usize];
        if (i as usize) < ns {
            let v = &mut now[i as usize];
            *v = if add { *v + size } else { *v - size };
        }
    };

    let mut live: FxHashMap<u64, Live> = FxHashMap::default();
    let mut cur: u64 = 0;
    for b in &dump.inherited {
        let s = site(b.stack);
        live.insert(
            b.addr,
            Live {
                size: b.size,
                site: s,
                stack: b.stack,
                tid: 0,
                bucket: 0,
            },
        );
        cur += b.size;
        add_series(&mut series_now, s, b.size, true);
    }
    let snapshot_peak = |live: &FxHashMap<u64, Live>, cells: &mut Vec<Counts>| {
        for b in live.values() {
            if let Some(c) = cell(b.bucket, b.site) {
                cells[c][PEAK] += b.size;
            }
        }
    };
    if a.peak_seq == 0 {
        snapshot_peak(&live, &mut cells);
    }
    let mut heap = vec![0u64; nb];
    let mut at_top = vec![0u64; nb * ns];
    heap[0] = cur;
    at_top[..ns].copy_from_slice(&series_now);
    // Buckets before this one have been started (given the heap as it was when they began).
    let mut started = 1usize;
    let mut last_alloc: FxHashMap<u32, u64> = FxHashMap::default();
    let mut moving: FxHashMap<(u32, u64), Live> = FxHashMap::default();
    for e in dump.events() {
        if let EventKind::ReallocOut { addr } = e.kind {
            if let Some(b) = live.remove(&addr) {
                cur -= b.size;
                add_series(&mut series_now, b.site, b.size, false);
                moving.insert((e.tid, addr), b);
            }
            continue;
        }
        let bi = bucket_of(e.ts_ns);
        while started <= bi {
            heap[started] = cur;
            at_top[started * ns..(started + 1) * ns].copy_from_slice(&series_now);
            started += 1;
        }
        let bucket = bi as u32;
        match e.kind {
            EventKind::Alloc {
                addr, size, stack, ..
            } => {
                let s = site(stack);
                if let Some(c) = cell(bucket, s) {
                    cells[c][ALLOCATIONS] += 1;
                    cells[c][BYTES] += size;
                }
                let new = Live {
                    size,
                    site: s,
                    stack,
                    tid: e.tid,
                    bucket,
                };
                if let Some(old) = live.insert(addr, new) {
                    cur -= old.size;
                    add_series(&mut series_now, old.site, old.size, false);
                }
                cur += size;
                add_series(&mut series_now, s, size, true);
                last_alloc.insert(e.tid, addr);
            }
            EventKind::Free { addr } => {
                if let Some(b) = live.remove(&addr) {
                    cur -= b.size;
                    add_series(&mut series_now, b.site, b.size, false);
                    if last_alloc.get(&b.tid) == Some(&addr) {
                        last_alloc.remove(&b.tid);
                        if let Some(c) = cell(b.bucket, b.site) {
                            cells[c][TEMPORARY] += 1;
                        }
                    }
                }
            }
            EventKind::Realloc {
                old_addr,
                new_addr,
                size,
                stack,
                ..
            } => {
                let s = site(stack);
                let old = moving.remove(&(e.tid, old_addr)).or_else(|| {
                    let b = live.remove(&old_addr)?;
                    cur -= b.size;
                    add_series(&mut series_now, b.site, b.size, false);
                    Some(b)
                });
                let (old_size, old_tid) = old.map_or((0, e.tid), |b| (b.size, b.tid));
                if last_alloc.get(&old_tid) == Some(&old_addr) {
                    last_alloc.remove(&old_tid);
                }
                if !(new_addr == 0 && size == 0) {
                    if let Some(c) = cell(bucket, s) {
                        let c = &mut cells[c];
                        c[REALLOCS] += 1;
                        c[BYTES] += size;
                        if size > old_size {
                            c[GREW] += 1;
                        } else if size < old_size {
                            c[SHRANK] += 1;
                        }
                        if new_addr != old_addr {
                            c[MOVED] += 1;
                            c[BYTES_COPIED] += old_size.min(size);
                        } else {
                            c[IN_PLACE] += 1;
                        }
                    }
                    live.insert(
                        new_addr,
                        Live {
                            size,
                            site: s,
                            stack,
                            tid: e.tid,
                            bucket,
                        },
                    );
                    cur += size;
                    add_series(&mut series_now, s, size, true);
                }
                last_alloc.remove(&e.tid);
            }
            EventKind::AllocFailed { .. } => {
                last_alloc.remove(&e.tid);
            }
            EventKind::ReallocOut { .. } => {} // handled above
            // The program's own mappings are not the heap (they are in `report.mapped`).
            EventKind::Map { .. }
            | EventKind::Unmap { .. }
            | EventKind::RemapOut { .. }
            | EventKind::Remap { .. } => {}
        }
        if cur > heap[bi] {
            heap[bi] = cur;
            at_top[bi * ns..(bi + 1) * ns].copy_from_slice(&series_now);
        }
        if e.seq == a.peak_seq && a.peak_seq > 0 {
            snapshot_peak(&live, &mut cells);
        }
    }
    while started < nb {
        heap[started] = cur;
        at_top[started * ns..(started + 1) * ns].copy_from_slice(&series_now);
        started += 1;
    }
    let reach = crate::leakcheck::exit_check(dump);
    for (&addr, b) in &live {
        // A suppressed stack's blocks were taken out of its site (`suppressions::apply`).
        if a.sites.get(&b.stack).is_none_or(|s| s.leaked_blocks == 0) {
            continue;
        }
        if let Some(c) = cell(b.bucket, b.site) {
            cells[c][LEAKED] += b.size;
            cells[c][LEAKED_BLOCKS] += 1;
            if reach
                .and_then(|r| r.kind_of(addr))
                .is_some_and(|k| matches!(k, LeakKind::Definite | LeakKind::Indirect))
            {
                cells[c][LOST] += b.size;
            }
        }
    }

    let counters = (0..COUNTERS.len())
        .map(|k| {
            (0..nb)
                .map(|b| {
                    let mut flat = Vec::new();
                    for s in 0..n_sites {
                        let v = cells[b * n_sites + s][k];
                        if v > 0 {
                            flat.extend([s as u64, v]);
                        }
                    }
                    flat
                })
                .collect()
        })
        .collect();
    let series = series_sites
        .iter()
        .enumerate()
        .map(|(i, &s)| Series {
            site: s,
            live: (0..nb).map(|b| at_top[b * ns + i]).collect(),
        })
        .collect();
    Timeline {
        start_ns,
        bucket_ns,
        heap,
        series,
        counters,
    }
}
