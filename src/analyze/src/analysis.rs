//! One replay of a dump's events, in sequence order, that computes everything the reports need:
//! the totals, per stack what it allocated, leaked and churned, and the heap's peak. Memory is
//! the live set plus one entry per stack: the events themselves stream past.
//!
//! The replay holds the rules: the live set, the two halves of a realloc, which blocks are
//! temporary, the heap's size and its peak. What is counted from them is its observers' (see
//! [`Observer`]): the per-site totals ([`Sites`]), and for `zmtrace view` the page's timeline
//! ([`crate::timeline`]), asked for with [`Want::timeline`]. The replay is monomorphized per set
//! of observers, so the reports pay nothing for the timeline.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use zmtrace_format::{Dump, Event, EventKind, KindTotal, LeakKind, LiveSite, Reach};

use crate::leakcheck::Suppressed;
use crate::leakcheck::{self, Check};
pub(crate) use crate::livemap::Live;
use crate::livemap::LiveMap;

/// Sampled recording: the weights of the sampled blocks (see [`Analysis::sample_interval`]).
#[derive(Clone, Copy, Debug)]
struct Scale(Option<u64>);

impl Scale {
    /// The blocks one recorded block of `size` bytes stands for.
    fn weight(self, size: u64) -> f64 {
        self.0
            .map_or(1.0, |t| zmtrace_format::sample_weight(size, t))
    }
}

/// Bytes as they count in the heap: weighted for a sampled block, exact otherwise.
#[inline]
fn wb(size: u64, w: f64) -> u64 {
    if w == 1.0 {
        size
    } else {
        (size as f64 * w).round() as u64
    }
}

/// Sampled recording: what a recorded realloc of a sampled block stands for. The recorder draws
/// the new block afresh at its new size, as a malloc of it (a block not drawn leaves the
/// recording with a free), so each live block is sampled with the probability of its current
/// size. The new block, and the bytes the realloc allocated, weigh what that size weighs. But a
/// realloc is seen as one only when the old block was sampled and the new one drawn, so the
/// call itself weighs the product. (The realloc of an unsampled block that is drawn is recorded
/// as an allocation of its new size.) Both are 1.0 in full recording.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReallocWeight {
    /// The weight of the realloc call: old block's weight × new block's.
    pub calls: f64,
    /// The weight of the new block and of the bytes allocated: its size's.
    pub bytes: f64,
}

/// A sampled recording's per-site estimates, summed in floating point and rounded once at the
/// end (a per-block rounding of `1/p` would bias the sums).
#[derive(Clone, Copy, Debug, Default)]
struct Est {
    allocations: f64,
    bytes: f64,
    temporary: f64,
    frees: f64,
    reallocs: f64,
    /// The reallocs' shapes, as [`Churn`] counts them: grew, shrank, moved, in place, and the
    /// bytes copied.
    churn: [f64; 5],
    leaked_blocks: f64,
    leaked_bytes: f64,
    leaked_via_realloc: f64,
    kinds: [(f64, f64); 4],
    kinds_via_realloc: [f64; 4],
}

impl Est {
    fn leaked(&mut self, w: f64, size: u64, via_realloc: bool, kind: Option<LeakKind>) {
        let v = if via_realloc { w } else { 0.0 };
        self.leaked_blocks += w;
        self.leaked_bytes += w * size as f64;
        self.leaked_via_realloc += v;
        if let Some(k) = kind {
            self.kinds[k as usize].0 += w;
            self.kinds[k as usize].1 += w * size as f64;
            self.kinds_via_realloc[k as usize] += v;
        }
    }

    fn add(&mut self, o: &Est) {
        self.allocations += o.allocations;
        self.bytes += o.bytes;
        self.temporary += o.temporary;
        self.frees += o.frees;
        self.reallocs += o.reallocs;
        for (c, o) in self.churn.iter_mut().zip(&o.churn) {
            *c += o;
        }
        self.leaked_blocks += o.leaked_blocks;
        self.leaked_bytes += o.leaked_bytes;
        self.leaked_via_realloc += o.leaked_via_realloc;
        for k in 0..4 {
            self.kinds[k].0 += o.kinds[k].0;
            self.kinds[k].1 += o.kinds[k].1;
            self.kinds_via_realloc[k] += o.kinds_via_realloc[k];
        }
    }

    /// Writes the rounded estimates over a site's counts (what a sampled replay counted).
    fn apply(&self, s: &mut SiteStats) {
        let r = |v: f64| v.round() as u64;
        s.allocations = r(self.allocations);
        s.bytes = r(self.bytes);
        s.temporary = r(self.temporary);
        s.leaked_blocks = r(self.leaked_blocks);
        s.leaked_bytes = r(self.leaked_bytes);
        s.leaked_via_realloc = r(self.leaked_via_realloc);
        s.reallocs_estimated = Some(r(self.reallocs));
        let [grew, shrank, moved, in_place, copied] = self.churn.map(r);
        s.churn_estimated = Some(Churn {
            reallocs: r(self.reallocs),
            grew,
            shrank,
            moved,
            in_place,
            bytes_copied: copied,
            ..s.churn.clone()
        });
        for k in 0..4 {
            s.kinds[k] = KindTotal {
                blocks: r(self.kinds[k].0),
                bytes: r(self.kinds[k].1),
            };
            s.kinds_via_realloc[k] = r(self.kinds_via_realloc[k]);
        }
    }
}

/// The stack id the recorder gives a block it keeps for the leak check only (`--all-blocks`):
/// no stack, no events (stack ids start at 1). Only a forked child's inherited blocks carry it
/// into the dump.
const UNSAMPLED: u32 = 0;

/// Sampled recording: the weight of each live sampled block, kept beside the packed live map
/// (which has no room for it); a recording that is not sampled leaves it empty.
#[derive(Clone, Default)]
struct Weights {
    sampled: bool,
    by_addr: HashMap<u64, f64>,
}

impl Weights {
    fn put(&mut self, addr: u64, w: f64) {
        if self.sampled {
            self.by_addr.insert(addr, w);
        }
    }

    fn take(&mut self, addr: u64) -> f64 {
        if self.sampled {
            self.by_addr.remove(&addr).unwrap_or(1.0)
        } else {
            1.0
        }
    }

    fn get(&self, addr: u64) -> f64 {
        if self.sampled {
            self.by_addr.get(&addr).copied().unwrap_or(1.0)
        } else {
            1.0
        }
    }
}

/// What one stack did. Allocation-side numbers count against the stack of the allocation (or
/// realloc) that made the block.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteStats {
    /// Successful allocations made here (`realloc(NULL, n)` included).
    pub allocations: u64,
    /// Requested bytes of those allocations, plus the new sizes of reallocs made here.
    pub bytes: u64,
    /// Blocks from here freed before their thread allocated (or reallocated) anything else
    /// since their allocation.
    pub temporary: u64,
    /// Blocks not freed at the end, whose (last) stack is this one, and their bytes.
    pub leaked_blocks: u64,
    pub leaked_bytes: u64,
    /// Of the leaked blocks, those whose stack is a realloc's (the block was grown or shrunk).
    pub leaked_via_realloc: u64,
    /// Bytes live from here at the moment of the peak heap.
    pub peak_bytes: u64,
    /// Failed allocations and reallocs here.
    pub failed: u64,
    pub churn: Churn,
    /// The leaked blocks by what the leak check at exit found them to be, per
    /// [`zmtrace_format::LeakKind`] (all zero without a check).
    pub kinds: [KindTotal; 4],
    /// Of those, per kind, the blocks whose stack is a realloc's.
    pub kinds_via_realloc: [u64; 4],
    /// Sampled recording: the reallocs made here, estimated (`churn` counts the ones recorded,
    /// unweighted). See [`SiteStats::reallocs`].
    pub reallocs_estimated: Option<u64>,
    /// Sampled recording: `churn` with its counts (reallocs, grew, shrank, moved, in place,
    /// bytes copied) estimated; its growth steps, ratios and longest chain are the recorded
    /// reallocs' (a shape, not a count). See [`SiteStats::churn`].
    pub churn_estimated: Option<Churn>,
}

pub use zmtrace_format::{Churn, MAX_STEPS};

/// How a site grows its blocks.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GrowthPattern {
    /// No grows.
    None,
    /// Most grows (three quarters or more) add the same number of bytes.
    FixedStep {
        step: u64,
        share: f64,
    },
    /// Grows multiply the size (by `factor` on average, at least 1.25).
    Geometric {
        factor: f64,
    },
    Irregular,
}

impl SiteStats {
    /// The reallocs made here: estimated in a sampled recording, counted otherwise.
    pub fn reallocs(&self) -> u64 {
        self.reallocs_estimated.unwrap_or(self.churn.reallocs)
    }

    /// The reallocs made here by shape: estimated in a sampled recording (see
    /// [`SiteStats::churn_estimated`]), counted otherwise.
    pub fn churn(&self) -> &Churn {
        self.churn_estimated.as_ref().unwrap_or(&self.churn)
    }

    /// Blocks of this stack live at the end; `kind`: what the leak check found them to be.
    fn add_leaked(&mut self, blocks: u64, bytes: u64, via_realloc: u64, kind: Option<LeakKind>) {
        self.leaked_blocks += blocks;
        self.leaked_bytes += bytes;
        self.leaked_via_realloc += via_realloc;
        if let Some(k) = kind {
            let k = k as usize;
            self.kinds[k].blocks += blocks;
            self.kinds[k].bytes += bytes;
            self.kinds_via_realloc[k] += via_realloc;
        }
    }

    /// Adds another stack's numbers (two stacks that symbolize the same).
    pub fn merge(&mut self, o: &SiteStats) {
        self.allocations += o.allocations;
        self.bytes += o.bytes;
        self.temporary += o.temporary;
        self.leaked_blocks += o.leaked_blocks;
        self.leaked_bytes += o.leaked_bytes;
        self.leaked_via_realloc += o.leaked_via_realloc;
        self.peak_bytes += o.peak_bytes;
        self.failed += o.failed;
        self.reallocs_estimated = match (self.reallocs_estimated, o.reallocs_estimated) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        for (k, o) in self.kinds.iter_mut().zip(&o.kinds) {
            k.blocks += o.blocks;
            k.bytes += o.bytes;
        }
        for (k, o) in self.kinds_via_realloc.iter_mut().zip(&o.kinds_via_realloc) {
            *k += o;
        }
        self.churn.merge(&o.churn);
        self.churn_estimated = match (self.churn_estimated.take(), &o.churn_estimated) {
            (None, None) => None,
            (a, b) => {
                let mut a = a.unwrap_or_default();
                a.merge(b.as_ref().unwrap_or(&Churn::default()));
                Some(a)
            }
        };
    }
}

/// How a site grows its blocks, from its reallocs.
pub fn pattern(c: &Churn) -> GrowthPattern {
    if c.grew == 0 {
        return GrowthPattern::None;
    }
    let (step, n) = c
        .steps
        .iter()
        .copied()
        .max_by_key(|&(s, n)| (n, std::cmp::Reverse(s)))
        .unwrap_or((0, 0));
    let share = n as f64 / c.grew as f64;
    if c.grew >= 2 && share >= 0.75 {
        return GrowthPattern::FixedStep { step, share };
    }
    let factor = c.ratio_sum / c.grew as f64;
    if c.grew >= 2 && factor >= 1.25 {
        GrowthPattern::Geometric { factor }
    } else {
        GrowthPattern::Irregular
    }
}

impl Analysis {
    /// Blocks live at the end, in the totals; `kind` as for [`SiteStats`].
    fn add_leaked(&mut self, blocks: u64, bytes: u64, kind: Option<LeakKind>) {
        self.leaked_blocks += blocks;
        self.leaked_bytes += bytes;
        if let Some(k) = kind {
            self.kinds[k as usize].blocks += blocks;
            self.kinds[k as usize].bytes += bytes;
        }
    }
}

/// Everything one replay found.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub allocations: u64,
    pub frees: u64,
    pub reallocs: u64,
    pub failed: u64,
    pub bytes_allocated: u64,
    pub peak_bytes: u64,
    pub peak_ns: u64,
    /// The sequence number of the event that reached the peak.
    pub peak_seq: u64,
    pub leaked_blocks: u64,
    pub leaked_bytes: u64,
    pub temporary: u64,
    pub threads: u64,
    pub events: u64,
    pub duration_ns: u64,
    /// Blocks inherited at a fork (live from the start).
    pub inherited_blocks: u64,
    /// Frees and reallocs of addresses that were not live: a damaged or partial dump.
    pub inconsistent: u64,
    pub sites: HashMap<u32, SiteStats>,
    /// From an aggregated dump (`zmtrace run --aggregate`): the recorder's counters, no events,
    /// so no peak and no timeline (`peak_bytes`, `peak_ns`, `duration_ns` are 0).
    pub aggregated: bool,
    /// The leak check made as the process ended, if the dump has one (see [`leakcheck`]).
    pub check: Option<Check>,
    /// The leaked blocks per kind, less the suppressed ones (all zero without a check).
    pub kinds: [KindTotal; 4],
    /// What suppressions took out ([`crate::suppressions::apply`]).
    pub suppressed: Suppressed,
    /// The program's own mappings (`mmap`, `munmap`, `mremap`): a metric of their own, in none
    /// of the heap figures above.
    pub mapped: crate::mapped::Mapped,
    /// A sampled recording (`zmtrace run --sample BYTES`): its mean interval in bytes. Then the
    /// per-site figures and the totals of allocations, frees, reallocs, bytes, temporaries,
    /// peak and blocks live at the end are estimates: each sampled block counts `1/p` times
    /// (`p` = [`zmtrace_format::sample_probability`] of its size, recomputed here rather than
    /// stored in the dump). Failed calls are all recorded, so exact; churn counts sampled
    /// blocks only.
    pub sample_interval: Option<u64>,
    /// Sampled with `--all-blocks`: the leak classes' totals (`kinds`) are exact, their split
    /// per site estimated.
    pub all_blocks: bool,
    /// The replayed events by kind (`dump-info`'s list); empty for an aggregated dump.
    pub by_kind: EventCounts,
    /// The page's timeline, when it was asked for ([`Want::timeline`]) and the dump has one.
    pub timeline: Option<crate::timeline::Recorded>,
}

/// Events by kind, counted as the replay goes (the halves of reallocs and remaps, which are no
/// events of the program's, are not).
#[derive(Clone, Debug, Default)]
pub struct EventCounts {
    /// Allocations by [`zmtrace_format::AllocKind`] (its number).
    pub alloc: [u64; 9],
    pub free: u64,
    /// Reallocs of an existing block (`realloc(NULL, n)` is an allocation).
    pub realloc: u64,
    pub failed: u64,
    pub map: u64,
    pub unmap: u64,
    pub remap: u64,
}

impl EventCounts {
    #[inline]
    fn add(&mut self, k: &EventKind) {
        match *k {
            EventKind::Alloc { kind, .. } => {
                if let Some(n) = self.alloc.get_mut(kind as usize) {
                    *n += 1;
                }
            }
            EventKind::Free { .. } => self.free += 1,
            EventKind::Realloc { .. } => self.realloc += 1,
            EventKind::AllocFailed { .. } => self.failed += 1,
            EventKind::Map { .. } => self.map += 1,
            EventKind::Unmap { .. } => self.unmap += 1,
            EventKind::Remap { .. } => self.remap += 1,
            EventKind::ReallocOut { .. } | EventKind::RemapOut { .. } => {}
        }
    }

    /// The kinds met, by the names `dump-info` shows, in name order.
    pub fn named(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let allocs = self.alloc.iter().enumerate().filter_map(|(i, &n)| {
            zmtrace_format::AllocKind::from_u8(i as u8).map(|k| (k.name(), n))
        });
        let mut out = std::collections::BTreeMap::new();
        for (name, n) in allocs.chain([
            ("free", self.free),
            ("realloc (existing block)", self.realloc),
            ("failed", self.failed),
            ("mmap", self.map),
            ("munmap", self.unmap),
            ("mremap", self.remap),
        ]) {
            if n > 0 {
                *out.entry(name).or_default() += n;
            }
        }
        out
    }
}

impl Analysis {
    /// True when the figures are estimates (a sampled recording).
    pub fn estimated(&self) -> bool {
        self.sample_interval.is_some()
    }
}

/// Replays `dump` once; `progress` is called now and then with (records read, records in all).
/// With `peak_sites`, the same pass also fills in [`SiteStats::peak_bytes`] (what each stack held
/// at the peak; see `Heap`).
pub fn analyze(dump: &Dump, peak_sites: bool, progress: &mut dyn FnMut(usize, usize)) -> Analysis {
    analyze_at(dump, peak_sites, progress, None)
}

/// [`analyze`] as of a snapshot taken while the program ran (`zmtrace export --at`): the events
/// numbered before it, or an aggregated dump's counters and live set written with it. "Leaked"
/// then means live at the snapshot, and there is no leak check (the exit's came later).
pub fn analyze_at(
    dump: &Dump,
    peak_sites: bool,
    progress: &mut dyn FnMut(usize, usize),
    at: Option<&zmtrace_format::Snapshot>,
) -> Analysis {
    let want = Want {
        peak_sites,
        timeline: None,
    };
    analyze_with(dump, &want, progress, at)
}

/// What a replay computes besides the totals and the per-site numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    /// [`SiteStats::peak_bytes`] (see [`analyze`]).
    pub peak_sites: bool,
    /// The page's timeline in this many time buckets ([`Analysis::timeline`], `zmtrace view`
    /// only): a dump's whole run, with every block in its events (not an aggregated or a
    /// sampled dump, not as of a snapshot).
    pub timeline: Option<usize>,
}

/// [`analyze_at`], computing what `want` asks for.
pub fn analyze_with(
    dump: &Dump,
    want: &Want,
    progress: &mut dyn FnMut(usize, usize),
    at: Option<&zmtrace_format::Snapshot>,
) -> Analysis {
    if dump.is_aggregated() {
        return match at {
            None => from_aggregate(dump, dump.aggregate.as_ref(), &dump.live_at_end, true),
            Some(s) => from_aggregate(
                dump,
                s.aggregate.as_ref(),
                s.live.as_deref().unwrap_or(&[]),
                false,
            ),
        };
    }
    let until = at.map_or(u64::MAX, |s| s.seq);
    let stacks = dump.stacks.len();
    let sites = Sites::new(dump, want.peak_sites, stacks);
    // Monomorphized: without the timeline the replay has no call to make for it, and its
    // blocks no tag to carry.
    let timeline = want
        .timeline
        .filter(|_| at.is_none() && dump.sample_interval().is_none())
        .and_then(|buckets| crate::timeline::Recorder::new(dump, buckets, stacks));
    match timeline {
        Some(t) => run(dump, (sites, t), until, progress, at),
        None => run(dump, sites, until, progress, at),
    }
}

fn run<O: Observer>(
    dump: &Dump,
    obs: O,
    until: u64,
    progress: &mut dyn FnMut(usize, usize),
    at: Option<&zmtrace_format::Snapshot>,
) -> Analysis {
    let mut r = start(dump, obs);
    let mut events = dump.events();
    replay(&mut r, &mut events, until, &mut |ev| {
        let (done, total) = ev.progress();
        progress(done, total);
    });
    let (done, total) = events.progress();
    progress(done, total);
    finish(r, dump, at)
}

/// What the replay tells those who count: the per-site totals ([`Sites`]) and, for `zmtrace
/// view`, the page's timeline ([`crate::timeline::Recorder`]). The replay keeps the live set,
/// the halves of reallocs, which blocks are temporary, the heap's size and its peak: the rules,
/// once. An observer only counts what it is told, so two observers of one replay cannot
/// disagree about what happened. Every method but [`Observer::time`] and [`Observer::finish`]
/// does nothing unless the observer counts it.
pub(crate) trait Observer: Clone {
    /// What the observer keeps with each live block (the timeline: the bucket it was made in).
    type Tag: Copy + Default;
    /// After the blocks inherited at a fork are in the heap, before any event.
    fn begin(&mut self) {}
    /// An event of the program's (anything but the first half of a realloc) is next. Returns
    /// the tag of the blocks it makes.
    fn time(&mut self, e: &Event) -> Self::Tag;
    /// An allocation at `stack`; `w`: the blocks it stands for (sampled recording).
    fn alloc(&mut self, _stack: u32, _size: u64, _w: f64) {}
    /// Block `b` joins the heap, counting `bytes` there (weighted if sampled).
    fn added(&mut self, _b: &Live, _tag: Self::Tag, _bytes: u64) {}
    /// Block `b` leaves the heap (freed, reallocated, or replaced in a damaged dump).
    fn removed(&mut self, _b: &Live, _tag: Self::Tag, _bytes: u64) {}
    /// A realloc's new block took the address of block `b`, still live (a damaged dump): `b` is
    /// out of the live set, its bytes are still in the heap's size.
    fn dropped(&mut self, _b: &Live, _tag: Self::Tag) {}
    /// `free` of block `b`, temporary or not (the replay's rule).
    fn freed(&mut self, _b: &Live, _tag: Self::Tag, _w: f64, _temporary: bool) {}
    /// `realloc(p, 0)` that freed block `b`.
    fn realloc_freed(&mut self, _b: &Live, _w: f64) {}
    /// A realloc at `stack` of block `old` (size 0 when it was not live) to `size` bytes,
    /// `moved` or in place; `chain`: the reallocs the block has been through now.
    #[allow(clippy::too_many_arguments)]
    fn realloc(
        &mut self,
        _stack: u32,
        _old: &Live,
        _size: u64,
        _moved: bool,
        _chain: u32,
        _w: ReallocWeight,
    ) {
    }
    /// A failed allocation or realloc at `stack`.
    fn failed(&mut self, _stack: u32) {}
    /// The event announced by [`Observer::time`] is replayed; `peak`: the heap is at a new
    /// highest point.
    fn after(&mut self, _peak: bool) {}
    /// Block `b`, at `addr`, live at the end (or at the snapshot); `kind`: what the leak check
    /// found it to be, `reach` that check.
    #[allow(clippy::too_many_arguments)]
    fn leaked(
        &mut self,
        _addr: u64,
        _b: &Live,
        _tag: Self::Tag,
        _w: f64,
        _kind: Option<LeakKind>,
        _reach: Option<&Reach>,
    ) {
    }
    /// The replay is over: what was counted goes into `a`.
    fn finish(self, a: &mut Analysis, reach: Option<&Reach>);
}

/// Two observers of one replay.
impl<A: Observer, B: Observer> Observer for (A, B) {
    type Tag = (A::Tag, B::Tag);
    fn begin(&mut self) {
        self.0.begin();
        self.1.begin();
    }
    #[inline]
    fn time(&mut self, e: &Event) -> Self::Tag {
        (self.0.time(e), self.1.time(e))
    }
    #[inline]
    fn alloc(&mut self, stack: u32, size: u64, w: f64) {
        self.0.alloc(stack, size, w);
        self.1.alloc(stack, size, w);
    }
    #[inline]
    fn added(&mut self, b: &Live, tag: Self::Tag, bytes: u64) {
        self.0.added(b, tag.0, bytes);
        self.1.added(b, tag.1, bytes);
    }
    #[inline]
    fn removed(&mut self, b: &Live, tag: Self::Tag, bytes: u64) {
        self.0.removed(b, tag.0, bytes);
        self.1.removed(b, tag.1, bytes);
    }
    fn dropped(&mut self, b: &Live, tag: Self::Tag) {
        self.0.dropped(b, tag.0);
        self.1.dropped(b, tag.1);
    }
    #[inline]
    fn freed(&mut self, b: &Live, tag: Self::Tag, w: f64, temporary: bool) {
        self.0.freed(b, tag.0, w, temporary);
        self.1.freed(b, tag.1, w, temporary);
    }
    fn realloc_freed(&mut self, b: &Live, w: f64) {
        self.0.realloc_freed(b, w);
        self.1.realloc_freed(b, w);
    }
    #[inline]
    fn realloc(
        &mut self,
        stack: u32,
        old: &Live,
        size: u64,
        moved: bool,
        chain: u32,
        w: ReallocWeight,
    ) {
        self.0.realloc(stack, old, size, moved, chain, w);
        self.1.realloc(stack, old, size, moved, chain, w);
    }
    fn failed(&mut self, stack: u32) {
        self.0.failed(stack);
        self.1.failed(stack);
    }
    #[inline]
    fn after(&mut self, peak: bool) {
        self.0.after(peak);
        self.1.after(peak);
    }
    fn leaked(
        &mut self,
        addr: u64,
        b: &Live,
        tag: Self::Tag,
        w: f64,
        kind: Option<LeakKind>,
        reach: Option<&Reach>,
    ) {
        self.0.leaked(addr, b, tag.0, w, kind, reach);
        self.1.leaked(addr, b, tag.1, w, kind, reach);
    }
    fn finish(self, a: &mut Analysis, reach: Option<&Reach>) {
        self.0.finish(a, reach);
        self.1.finish(a, reach);
    }
}

/// The per-site totals: per stack what it allocated, freed, leaked, reallocated and failed, and
/// (with `peak_sites`) held at the peak; for a sampled recording, the estimates that replace them.
#[derive(Clone)]
pub(crate) struct Sites {
    /// Per stack, indexed by id: a hash lookup per event was a fifth of the replay.
    sites: ById<SiteStats>,
    /// Sampled: the estimates per stack (None: count as ever).
    est: Option<ById<Est>>,
    heap: Heap,
}

impl Sites {
    /// For `dump`'s recording; stack ids up to `stacks` are counted in vectors (see
    /// [`ById::for_stacks`]).
    fn new(dump: &Dump, peak_sites: bool, stacks: usize) -> Sites {
        Sites {
            sites: ById::for_stacks(stacks),
            est: dump.sample_interval().map(|_| ById::default()),
            heap: Heap {
                track: peak_sites,
                by_stack: ById::for_stacks(stacks),
                ..Heap::default()
            },
        }
    }
}

impl Observer for Sites {
    type Tag = ();

    fn begin(&mut self) {
        self.heap.new_peak();
    }

    #[inline]
    fn time(&mut self, _e: &Event) {}

    #[inline]
    fn alloc(&mut self, stack: u32, size: u64, w: f64) {
        let site = self.sites.get(stack);
        site.allocations += 1;
        site.bytes += size;
        if let Some(est) = self.est.as_mut() {
            let e = est.get(stack);
            e.allocations += w;
            e.bytes += w * size as f64;
        }
    }

    #[inline]
    fn added(&mut self, b: &Live, _tag: (), bytes: u64) {
        self.heap.add(b.stack, bytes);
    }

    #[inline]
    fn removed(&mut self, b: &Live, _tag: (), bytes: u64) {
        self.heap.sub(b.stack, bytes);
    }

    #[inline]
    fn freed(&mut self, b: &Live, _tag: (), w: f64, temporary: bool) {
        if temporary {
            self.sites.get(b.stack).temporary += 1;
        }
        if let Some(est) = self.est.as_mut() {
            let e = est.get(b.stack);
            e.frees += w;
            if temporary {
                e.temporary += w;
            }
        }
    }

    fn realloc_freed(&mut self, b: &Live, w: f64) {
        if let Some(est) = self.est.as_mut() {
            est.get(b.stack).frees += w;
        }
    }

    #[inline]
    fn realloc(
        &mut self,
        stack: u32,
        old: &Live,
        size: u64,
        moved: bool,
        chain: u32,
        w: ReallocWeight,
    ) {
        let site = self.sites.get(stack);
        site.bytes += size;
        site.churn.add(old.size, size, moved, chain);
        // Sampled recording draws a reallocated block afresh at its new size (see
        // [`ReallocWeight`]).
        if let Some(est) = self.est.as_mut() {
            let e = est.get(stack);
            e.reallocs += w.calls;
            e.bytes += w.bytes * size as f64;
            let r = zmtrace_format::ReallocShape::of(old.size, size, moved);
            let c = &mut e.churn;
            c[0] += w.calls * f64::from(u8::from(r.grew));
            c[1] += w.calls * f64::from(u8::from(r.shrank));
            c[2 + usize::from(!moved)] += w.calls;
            c[4] += w.calls * r.bytes_copied as f64;
        }
    }

    fn failed(&mut self, stack: u32) {
        self.sites.get(stack).failed += 1;
    }

    #[inline]
    fn after(&mut self, peak: bool) {
        if peak {
            self.heap.new_peak();
        }
    }

    fn leaked(
        &mut self,
        _addr: u64,
        b: &Live,
        _tag: (),
        w: f64,
        kind: Option<LeakKind>,
        _reach: Option<&Reach>,
    ) {
        self.sites
            .get(b.stack)
            .add_leaked(1, b.size, u64::from(b.chain > 0), kind);
        if let Some(est) = self.est.as_mut() {
            est.get(b.stack).leaked(w, b.size, b.chain > 0, kind);
        }
    }

    fn finish(self, a: &mut Analysis, reach: Option<&Reach>) {
        let Sites {
            mut sites,
            est,
            heap,
        } = self;
        if let Some(est) = &est {
            // Sampled: the estimates replace what the replay counted, per site and in total.
            let mut total = Est::default();
            for (id, e) in est.iter() {
                e.apply(sites.get(id));
                total.add(e);
            }
            let r = |v: f64| v.round() as u64;
            a.allocations = r(total.allocations);
            a.bytes_allocated = r(total.bytes);
            a.frees = r(total.frees);
            a.reallocs = r(total.reallocs);
            a.temporary = r(total.temporary);
            a.leaked_blocks = r(total.leaked_blocks);
            a.leaked_bytes = r(total.leaked_bytes);
            for k in 0..4 {
                a.kinds[k] = KindTotal {
                    blocks: r(total.kinds[k].0),
                    bytes: r(total.kinds[k].1),
                };
            }
            exact_kinds(a, reach);
        }
        for (stack, h) in heap.by_stack.iter() {
            if h.at_peak > 0 {
                sites.get(stack).peak_bytes = h.at_peak;
            }
        }
        a.sites = sites
            .iter()
            .filter(|(_, s)| **s != SiteStats::default())
            .map(|(id, s)| (id, s.clone()))
            .collect();
    }
}

/// A replay between two events: what [`analyze_at`] keeps as it goes, and what [`Replay`] keeps
/// from one piece of a dump still being written to the next.
#[derive(Clone)]
struct State<O: Observer> {
    a: Analysis,
    scale: Scale,
    live: LiveMap<O::Tag>,
    weights: Weights,
    last_alloc: LastAlloc,
    tids: HashSet<u32>,
    last_tid: u32,
    /// The heap's size: the bytes of the live blocks (weighted, sampled).
    cur: u64,
    /// Blocks being reallocated: out of the live set, not yet replaced (see `ReallocOut`).
    moving: HashMap<(u32, u64), (Live, f64, O::Tag)>,
    obs: O,
}

/// Per thread, the block it allocated last, while it may still turn out temporary. Threads are
/// numbered as they come, and the number of the last one looked up is kept: a hash map by thread
/// id cost a lookup on nearly every event, and events come in runs of one thread's.
#[derive(Clone, Default)]
struct LastAlloc {
    number: HashMap<u32, u32>,
    addr: Vec<Option<u64>>,
    last: Option<(u32, u32)>,
}

impl LastAlloc {
    #[inline]
    fn slot(&mut self, tid: u32) -> &mut Option<u64> {
        let i = match self.last {
            Some((t, i)) if t == tid => i,
            _ => {
                let n = self.addr.len() as u32;
                let i = *self.number.entry(tid).or_insert(n);
                if i == n {
                    self.addr.push(None);
                }
                self.last = Some((tid, i));
                i
            }
        };
        &mut self.addr[i as usize]
    }

    #[inline]
    fn set(&mut self, tid: u32, addr: u64) {
        *self.slot(tid) = Some(addr);
    }

    #[inline]
    fn clear(&mut self, tid: u32) {
        *self.slot(tid) = None;
    }

    /// Whether `addr` is the block `tid` allocated last; it no longer is after this.
    #[inline]
    fn take_if(&mut self, tid: u32, addr: u64) -> bool {
        let s = self.slot(tid);
        let is = *s == Some(addr);
        if is {
            *s = None;
        }
        is
    }
}

/// The state before the first event: the blocks inherited at a fork are live.
fn start<O: Observer>(dump: &Dump, mut obs: O) -> State<O> {
    let mut a = Analysis {
        sample_interval: dump.sample_interval(),
        all_blocks: dump.all_blocks(),
        ..Analysis::default()
    };
    let scale = Scale(a.sample_interval);
    let mut live = LiveMap::default();
    let mut weights = Weights {
        sampled: scale.0.is_some(),
        ..Weights::default()
    };
    let mut cur = 0;
    for b in dump.inherited.iter().filter(|b| b.stack != UNSAMPLED) {
        let w = scale.weight(b.size);
        let block = Live {
            size: b.size,
            stack: b.stack,
            tid: 0,
            chain: 0,
        };
        live.insert(b.addr, block, O::Tag::default());
        weights.put(b.addr, w);
        cur += wb(b.size, w);
        obs.added(&block, O::Tag::default(), wb(b.size, w));
    }
    a.inherited_blocks = dump.inherited.len() as u64;
    a.peak_bytes = cur;
    obs.begin();
    State {
        a,
        scale,
        live,
        weights,
        last_alloc: LastAlloc::default(),
        tids: HashSet::default(),
        last_tid: u32::MAX,
        cur,
        moving: HashMap::default(),
        obs,
    }
}

/// How many events the replay reads ahead of the one it replays (see [`replay`]).
const AHEAD: usize = 8;

/// Replays `events` (those numbered before `until`) onto `r`; `tick` is called every 65,536.
fn replay<O: Observer, I: Iterator<Item = Event>>(
    r: &mut State<O>,
    events: &mut I,
    until: u64,
    tick: &mut dyn FnMut(&I),
) {
    let State {
        a,
        scale,
        live,
        weights,
        last_alloc,
        tids,
        last_tid,
        cur,
        moving,
        obs,
    } = r;
    // The next events, their blocks' slots asked of the CPU as they come in: one event ahead
    // hid a fifth of a miss on a live set larger than the caches (an event's own work is shorter
    // than the memory's latency), AHEAD of them hide all of it.
    let mut ahead: VecDeque<Event> = VecDeque::with_capacity(AHEAD);
    let mut more = true;
    let mut started = false;
    loop {
        // The event replayed last leaves only now: it is read where it lies, not moved out
        // first (the copy of a 64-byte event through the stack, stored and loaded back in
        // pieces of other sizes, stalled on every event).
        if std::mem::replace(&mut started, true) {
            ahead.pop_front();
        }
        while more && ahead.len() < AHEAD {
            match events.next() {
                Some(n) => {
                    if let Some(addr) = block_addr(&n) {
                        live.prefetch(addr);
                    }
                    ahead.push_back(n);
                }
                None => more = false,
            }
        }
        let Some(e) = ahead.front() else { break };
        if e.seq >= until {
            break;
        }
        if let EventKind::ReallocOut { addr } = e.kind {
            // Not an event of the program's: the first half of a realloc's numbering.
            match live.remove(addr) {
                Some((b, tag)) => {
                    let w = weights.take(addr);
                    let bytes = wb(b.size, w);
                    *cur -= bytes;
                    obs.removed(&b, tag, bytes);
                    moving.insert((e.tid, addr), (b, w, tag));
                }
                None => a.inconsistent += 1,
            }
            continue;
        }
        let tag = obs.time(e);
        if let EventKind::RemapOut { .. } = e.kind {
            // The first half of a remap's numbering, as `ReallocOut`.
            a.mapped.event(e);
            obs.after(false);
            continue;
        }
        a.events += 1;
        a.by_kind.add(&e.kind);
        if a.events.is_multiple_of(65536) {
            tick(events);
        }
        if e.tid != *last_tid {
            tids.insert(e.tid);
            *last_tid = e.tid;
        }
        match e.kind {
            EventKind::Alloc {
                addr, size, stack, ..
            } => {
                a.allocations += 1;
                a.bytes_allocated += size;
                let w = scale.weight(size);
                obs.alloc(stack, size, w);
                let old_w = weights.take(addr);
                let b = Live {
                    size,
                    stack,
                    tid: e.tid,
                    chain: 0,
                };
                if let Some((old, old_tag)) = live.insert(addr, b, tag) {
                    a.inconsistent += 1;
                    let bytes = wb(old.size, old_w);
                    *cur -= bytes;
                    obs.removed(&old, old_tag, bytes);
                }
                weights.put(addr, w);
                let bytes = wb(size, w);
                *cur += bytes;
                obs.added(&b, tag, bytes);
                last_alloc.set(e.tid, addr);
            }
            EventKind::Free { addr, at_realloc } => match live.remove(addr) {
                Some((b, btag)) => {
                    let bw = weights.take(addr);
                    let bytes = wb(b.size, bw);
                    *cur -= bytes;
                    obs.removed(&b, btag, bytes);
                    let temporary = last_alloc.take_if(b.tid, addr);
                    if at_realloc {
                        // Sampled: the block left the recording at a realloc whose new block
                        // was not drawn. The program freed nothing (its free of the new block
                        // is counted if that block is drawn later, by its own weight), the
                        // realloc is estimated from the ones recorded whole, and, as at any
                        // realloc, the thread's last block is not a temporary.
                        last_alloc.clear(e.tid);
                    } else {
                        a.frees += 1;
                        if temporary {
                            a.temporary += 1;
                        }
                        obs.freed(&b, btag, bw, temporary);
                    }
                }
                None => a.inconsistent += 1,
            },
            EventKind::Realloc {
                old_addr,
                new_addr,
                size,
                stack,
                ..
            } => {
                let old = moving.remove(&(e.tid, old_addr)).or_else(|| {
                    let (b, t) = live.remove(old_addr)?;
                    let w = weights.take(old_addr);
                    let bytes = wb(b.size, w);
                    *cur -= bytes;
                    obs.removed(&b, t, bytes);
                    Some((b, w, t))
                });
                if old.is_none() {
                    a.inconsistent += 1;
                }
                let (old, old_w) = old.map_or(
                    (
                        Live {
                            size: 0,
                            stack,
                            tid: e.tid,
                            chain: 0,
                        },
                        scale.weight(size),
                    ),
                    |(b, w, _)| (b, w),
                );
                last_alloc.take_if(old.tid, old_addr);
                if new_addr == 0 && size == 0 {
                    // realloc(p, 0) that freed the block.
                    a.frees += 1;
                    obs.realloc_freed(&old, old_w);
                } else {
                    a.reallocs += 1;
                    a.bytes_allocated += size;
                    let chain = old.chain + 1;
                    // Drawn afresh at its new size (the recorder's realloc): its new weight.
                    let new_w = scale.weight(size);
                    let w = ReallocWeight {
                        calls: old_w * new_w,
                        bytes: new_w,
                    };
                    obs.realloc(stack, &old, size, new_addr != old_addr, chain, w);
                    let b = Live {
                        size,
                        stack,
                        tid: e.tid,
                        chain,
                    };
                    if let Some((gone, gone_tag)) = live.insert(new_addr, b, tag) {
                        obs.dropped(&gone, gone_tag);
                    }
                    weights.put(new_addr, new_w);
                    let bytes = wb(size, new_w);
                    *cur += bytes;
                    obs.added(&b, tag, bytes);
                }
                // A realloc is an allocation of its thread: the block that thread made last is
                // not temporary any more, and a reallocated block never is (it was allocated,
                // then reallocated, before it was freed).
                last_alloc.clear(e.tid);
            }
            EventKind::ReallocOut { .. } | EventKind::RemapOut { .. } => {} // handled above
            EventKind::Map { .. } | EventKind::Unmap { .. } | EventKind::Remap { .. } => {
                // Not heap blocks: neither in the live set nor in the temporaries.
                a.mapped.event(e);
            }
            EventKind::AllocFailed { stack, .. } => {
                a.failed += 1;
                obs.failed(stack);
                // A failed call is still an allocation attempt of its thread.
                last_alloc.clear(e.tid);
            }
        }
        let peak = *cur > a.peak_bytes;
        if peak {
            a.peak_bytes = *cur;
            a.peak_ns = e.ts_ns;
            a.peak_seq = e.seq;
        }
        obs.after(peak);
        a.duration_ns = a.duration_ns.max(e.ts_ns);
    }
}

/// The live block an event looks up first, if any.
#[inline]
fn block_addr(e: &Event) -> Option<u64> {
    match e.kind {
        EventKind::Alloc { addr, .. }
        | EventKind::Free { addr, .. }
        | EventKind::ReallocOut { addr } => Some(addr),
        EventKind::Realloc { new_addr, .. } => Some(new_addr),
        _ => None,
    }
}

/// What the replay found, once its events are all in.
fn finish<O: Observer>(
    r: State<O>,
    dump: &Dump,
    at: Option<&zmtrace_format::Snapshot>,
) -> Analysis {
    let State {
        mut a,
        mut live,
        mut weights,
        tids,
        mut moving,
        mut obs,
        ..
    } = r;
    a.mapped.finish();
    a.threads = tids.len() as u64;
    // A block between a realloc's two halves at the snapshot was live then.
    for ((_, addr), (b, w, tag)) in moving.drain() {
        if at.is_some() {
            live.insert(addr, b, tag);
            weights.put(addr, w);
        }
    }
    let reach = leakcheck::exit_check(dump).filter(|_| at.is_none());
    let mut check = reach.map(Check::new);
    live.for_each(|addr, b, tag| {
        let kind = reach
            .zip(check.as_mut())
            .map(|(r, c)| c.kind_of(r, addr, b.size));
        a.add_leaked(1, b.size, kind);
        obs.leaked(addr, &b, tag, weights.get(addr), kind, reach);
    });
    // Before the observers' totals, which allocate their lists: the live set is the replay's
    // largest table, and kept to here it set the report's peak (python3's dump: 4.4 MiB of
    // lists on top of a 32 MiB live set).
    drop(live);
    drop(weights);
    a.check = check;
    obs.finish(&mut a, reach);
    a
}

/// A replay of a dump still being written, resumed as it grows: `zmtrace run --serve` replays,
/// for each scrape, only the records added since the last one ([`crate::follow`] reads them).
/// [`Replay::feed`] takes the events of a piece of the dump (a [`Dump`] of just the records
/// added); [`Replay::analysis`] is what [`analyze`] finds on all the records read so far.
///
/// The recorder's writer appends each thread's events as it drains that thread's buffer, so a
/// record read now can hold events numbered before some that another thread's records brought
/// already. Replayed out of order, an address that one thread freed and another then got back
/// would come out wrong; so the newest events are held back, and merged in sequence order with
/// the next piece's, until they are [`HOLD_NS`] older than the newest event read: by then the
/// writer (which flushes every thread's buffer at least every 0.1 s) has written every event of
/// their time. [`Replay::analysis`] replays the held events too, on a copy of the state.
pub struct Replay {
    state: State<Sites>,
    /// Read but not yet replayed into `state`, in sequence order.
    held: std::collections::VecDeque<Event>,
    /// The newest timestamp read, and the highest sequence number replayed into `state`.
    newest_ns: u64,
    last_seq: Option<u64>,
    /// Events read from the pieces fed, in all.
    pub decoded: u64,
    /// Events that came in numbered before one already replayed (held [`HOLD_NS`] was not enough:
    /// the recorder's writer was held up). They are replayed then, late.
    pub late: u64,
    /// How long the newest events are held back ([`HOLD_NS`] unless [`Replay::with_hold`]).
    hold_ns: u64,
    /// The most events held back, however new ([`Replay::with_hold`]).
    max_held: usize,
    /// The thread of the first event read, and whether another thread's came in since.
    first_tid: Option<u32>,
    several_threads: bool,
    /// Events of a dump of several threads were let go of before their hold was over, for
    /// [`Replay::with_hold`]'s bound: a later piece may bring events numbered before them.
    pub overflowed: bool,
}

/// Events released from the hold are replayed this many at a time: one `replay` call an event
/// allocated its look-ahead queue for that one event, and could not look ahead.
pub const RELEASE_BATCH: usize = 4096;

/// How long [`Replay`] holds the newest events back.
pub const HOLD_NS: u64 = 1_000_000_000;

impl Replay {
    /// Starts from the dump's first piece: its process record says how it was recorded, and a
    /// forked child's first records its inherited blocks. (Its events are for [`Replay::feed`].)
    pub fn new(first: &Dump, peak_sites: bool) -> Replay {
        // The stacks of a dump being written are not all known yet, so the ids are not bounded
        // by their count; they are the recorder's own, dense from 1.
        Replay {
            state: start(first, Sites::new(first, peak_sites, DENSE_IDS)),
            held: Default::default(),
            newest_ns: 0,
            last_seq: None,
            decoded: 0,
            late: 0,
            hold_ns: HOLD_NS,
            max_held: usize::MAX,
            first_tid: None,
            several_threads: false,
            overflowed: false,
        }
    }

    /// Holds the newest events back `ns` instead of [`HOLD_NS`], and `max` of them at most (the
    /// oldest beyond are replayed then): less memory (64 bytes an event; a second of a busy
    /// program's events is 100 MB and more), more risk of events coming in [`Replay::late`].
    pub fn with_hold(mut self, ns: u64, max: usize) -> Replay {
        self.hold_ns = ns;
        self.max_held = max;
        self
    }

    /// The hold of [`Replay::with_hold`] from the next piece on: 0 once no event can come in
    /// late any more (the dump is complete), so that the last piece is replayed as it is read,
    /// not held.
    pub fn set_hold(&mut self, ns: u64) {
        self.hold_ns = ns;
    }

    /// Replays the events of `piece` (records added to the dump since the last piece), but the
    /// newest, held back (see [`Replay`]).
    pub fn feed(&mut self, piece: &Dump) {
        let mut new = piece.events().peekable();
        if self.hold_ns == 0 {
            // Nothing held back: the held events and the piece's go straight into the replay as
            // they are decoded, not through the queue below.
            let old = std::mem::take(&mut self.held).into_iter();
            let Replay {
                state,
                newest_ns,
                last_seq,
                decoded,
                late,
                ..
            } = self;
            let mut events = merged(old, new).map(|(e, read)| {
                *decoded += u64::from(read);
                *newest_ns = (*newest_ns).max(e.ts_ns);
                *late += u64::from(last_seq.is_some_and(|s| e.seq < s));
                *last_seq = Some(last_seq.map_or(e.seq, |s| s.max(e.seq)));
                e
            });
            replay(state, &mut events, u64::MAX, &mut |_| {});
            return;
        }
        // The held events numbered before the piece's first (in sequence order, as the piece's
        // are) stay where they are: only the ones after it are merged with the piece's. Merging
        // all of them again cost a second's worth of events a piece, whatever its size: fed
        // small pieces often (`zmtrace run --serve`'s follower), the replay ran at ~85 k
        // events/s instead of ~1.6 M.
        let cut = match new.peek() {
            Some(first) => self.held.partition_point(|e| e.seq <= first.seq),
            None => self.held.len(),
        };
        let old = self.held.split_off(cut).into_iter();
        let mut held = std::mem::take(&mut self.held);
        for (e, read) in merged(old, new) {
            self.decoded += u64::from(read);
            self.newest_ns = self.newest_ns.max(e.ts_ns);
            self.several_threads |= *self.first_tid.get_or_insert(e.tid) != e.tid;
            held.push_back(e);
            if held.len() >= RELEASE_BATCH {
                self.release(&mut held);
            }
        }
        self.release(&mut held);
        self.held = held;
    }

    /// Replays the events at the front of `held` that are old enough, or beyond the most held.
    /// The newest timestamp only grows, so releasing now and then a batch lets go of the same
    /// events, in the same order, as releasing after each event read.
    fn release(&mut self, held: &mut std::collections::VecDeque<Event>) {
        let (hold, newest) = (self.hold_ns, self.newest_ns);
        let old = held
            .iter()
            .position(|f| f.ts_ns.saturating_add(hold) >= newest)
            .unwrap_or(held.len());
        let over = held.len().saturating_sub(self.max_held);
        // One thread's events come in order: only another thread's can come in before them.
        self.overflowed |= over > old && self.several_threads;
        let n = old.max(over);
        for f in held.range(..n) {
            self.late += u64::from(self.last_seq.is_some_and(|s| f.seq < s));
            self.last_seq = Some(self.last_seq.map_or(f.seq, |s| s.max(f.seq)));
        }
        replay(&mut self.state, &mut held.drain(..n), u64::MAX, &mut |_| {});
    }

    /// Events replayed so far (as [`Analysis::events`]), the held ones not counted.
    pub fn replayed(&self) -> u64 {
        self.state.a.events
    }

    /// Events read and held back (see [`Replay`]).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The analysis of the dump read so far: `dump` has its records (stacks, modules, leak
    /// checks) and the state here its events.
    pub fn analysis(&self, dump: &Dump) -> Analysis {
        let mut state = self.state.clone();
        replay(
            &mut state,
            &mut self.held.iter().copied(),
            u64::MAX,
            &mut |_| {},
        );
        finish(state, dump, None)
    }

    /// [`Replay::analysis`] when the replay is over: its own state finished, not a copy.
    pub fn into_analysis(mut self, dump: &Dump) -> Analysis {
        let held = std::mem::take(&mut self.held);
        replay(
            &mut self.state,
            &mut held.into_iter(),
            u64::MAX,
            &mut |_| {},
        );
        finish(self.state, dump, None)
    }
}

/// Two runs of events in sequence order, merged in that order (the first's first on a tie); with
/// each event, whether it came from the second.
fn merged(
    old: impl Iterator<Item = Event>,
    new: impl Iterator<Item = Event>,
) -> impl Iterator<Item = (Event, bool)> {
    let (mut old, mut new) = (old.peekable(), new.peekable());
    std::iter::from_fn(move || {
        let from_old = match (old.peek(), new.peek()) {
            (Some(a), Some(b)) => a.seq <= b.seq,
            (a, _) => a.is_some(),
        };
        if from_old {
            old.next().map(|e| (e, false))
        } else {
            new.next().map(|e| (e, true))
        }
    })
}

/// Values by stack id: in a vector for the ids a recorder hands out (dense, from 1), in a map
/// beyond (a damaged dump's ids must not size the vector).
#[derive(Clone)]
pub(crate) struct ById<T> {
    dense: Vec<T>,
    sparse: HashMap<u32, T>,
    /// Ids below this go to the vector.
    limit: usize,
}

impl<T> ById<T> {
    /// For the ids of a dump with `stacks` stacks: the recorder numbers them from 1, so an id
    /// beyond their count (damage, or a crafted event) goes to the map, and one event cannot
    /// make the vector reserve millions of entries.
    pub(crate) fn for_stacks(stacks: usize) -> Self {
        ById {
            limit: stacks.saturating_add(1).min(DENSE_IDS),
            ..ById::default()
        }
    }
}

impl<T> Default for ById<T> {
    fn default() -> Self {
        ById {
            dense: Vec::new(),
            sparse: HashMap::default(),
            limit: DENSE_IDS,
        }
    }
}

const DENSE_IDS: usize = 1 << 22;

impl<T: Default> ById<T> {
    /// Once per event or two: the common case (an id seen before) is a bounds check and an
    /// index, inlined; growing and the map are out of line.
    #[inline(always)]
    pub(crate) fn get(&mut self, id: u32) -> &mut T {
        let i = id as usize;
        if i < self.dense.len() {
            return &mut self.dense[i];
        }
        self.get_slow(id)
    }

    #[inline(never)]
    fn get_slow(&mut self, id: u32) -> &mut T {
        let i = id as usize;
        if i < self.limit {
            self.dense
                .resize_with((i + 1).next_power_of_two().min(self.limit), T::default);
            &mut self.dense[i]
        } else {
            self.sparse.entry(id).or_default()
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.dense
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32, v))
            .chain(self.sparse.iter().map(|(&id, v)| (id, v)))
    }
}

/// With `track`, what each stack held at the heap's highest point, found in the same pass: the changes since the last peak are kept per stack and folded
/// into the peak's picture when a new peak comes, so each change is folded at most once. (A
/// second replay up to the peak cost as much as the first; a copy of every stack's bytes at
/// each new peak costs far more when the heap only grows.)
#[derive(Clone, Default)]
struct Heap {
    track: bool,
    by_stack: ById<StackHeap>,
    touched: Vec<u32>,
}

#[derive(Default, Clone, Copy)]
struct StackHeap {
    since_peak: i64,
    touched: bool,
    at_peak: u64,
}

impl Heap {
    #[inline]
    fn note(&mut self, stack: u32, delta: i64) {
        let h = self.by_stack.get(stack);
        h.since_peak += delta;
        if !h.touched {
            h.touched = true;
            self.touched.push(stack);
        }
    }
    #[inline]
    fn add(&mut self, stack: u32, size: u64) {
        if self.track {
            self.note(stack, size as i64);
        }
    }
    #[inline]
    fn sub(&mut self, stack: u32, size: u64) {
        if self.track {
            self.note(stack, -(size as i64));
        }
    }
    fn new_peak(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for &s in &touched {
            let h = self.by_stack.get(s);
            h.at_peak = (h.at_peak as i64 + h.since_peak) as u64;
            h.since_peak = 0;
            h.touched = false;
        }
        touched.clear();
        self.touched = touched;
    }
}

/// `--all-blocks`: the leak check saw every block, so its totals per class are exact (and the
/// blocks live at the end are their sum); only the split per site is estimated.
fn exact_kinds(a: &mut Analysis, reach: Option<&zmtrace_format::Reach>) {
    if let (true, Some(r)) = (a.all_blocks, reach) {
        a.kinds = r.totals;
        a.leaked_blocks = r.totals.iter().map(|t| t.blocks).sum();
        a.leaked_bytes = r.totals.iter().map(|t| t.bytes).sum();
    }
}

/// An aggregated dump's counters, in the shape a replay gives. A dump cut short before its
/// counters were written has nothing but the blocks a forked child inherited.
fn from_aggregate(
    dump: &Dump,
    counters: Option<&zmtrace_format::Aggregate>,
    live_sites: &[LiveSite],
    with_check: bool,
) -> Analysis {
    let mut a = Analysis {
        aggregated: true,
        inherited_blocks: dump.inherited.len() as u64,
        sample_interval: dump.sample_interval(),
        all_blocks: dump.all_blocks(),
        ..Analysis::default()
    };
    let scale = Scale(a.sample_interval);
    // Sampled: per stack, counters of sampled blocks. Their sizes are summed, so each counts at
    // the weight of the stack's mean size (exact for one size per stack; for sizes far below
    // the interval the weight is nearly linear in the size, so the error is small).
    let est = |n: u64, bytes: u64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        n as f64 * scale.weight(bytes / n)
    };
    let round = |v: f64| v.round() as u64;
    if let Some(g) = counters {
        a.allocations = g.allocations;
        a.frees = g.frees;
        a.reallocs = g.reallocs;
        a.failed = g.failed;
        a.bytes_allocated = g.bytes_allocated;
        a.temporary = g.temporary;
        a.threads = g.threads;
        a.events = g.calls;
        for s in &g.sites {
            let site = a.sites.entry(s.stack).or_default();
            site.allocations += s.allocations;
            site.bytes += s.bytes;
            site.temporary += s.temporary;
            site.failed += s.failed;
            site.churn.merge(&s.churn);
        }
        if scale.0.is_some() {
            let (mut n, mut bytes, mut temp) = (0.0, 0.0, 0.0);
            for site in a.sites.values_mut() {
                let f = est(site.allocations, site.bytes) / site.allocations.max(1) as f64;
                n += site.allocations as f64 * f;
                bytes += site.bytes as f64 * f;
                temp += site.temporary as f64 * f;
                site.allocations = round(site.allocations as f64 * f);
                site.bytes = round(site.bytes as f64 * f);
                site.temporary = round(site.temporary as f64 * f);
            }
            let f = |v: u64| round(v as f64 * n / g.allocations.max(1) as f64);
            a.frees = f(a.frees);
            a.reallocs = f(a.reallocs);
            a.allocations = round(n);
            a.bytes_allocated = round(bytes);
            a.temporary = round(temp);
        }
    }
    let live: Vec<LiveSite> = if dump.aggregate.is_some() {
        live_sites.to_vec()
    } else {
        dump.inherited
            .iter()
            .map(|b| LiveSite {
                stack: b.stack,
                blocks: 1,
                bytes: b.size,
                usable: b.usable,
                via_realloc: 0,
                kind: LiveSite::UNCHECKED,
            })
            .collect()
    };
    // The recorder classified the live set by the check at the end (it has the addresses).
    let reach = leakcheck::exit_check(dump).filter(|_| with_check);
    let mut check = reach.map(Check::new);
    for mut l in live {
        if l.stack == UNSAMPLED {
            continue; // `--all-blocks`' unsampled blocks: in the exact totals only
        }
        if scale.0.is_some() {
            let f = est(l.blocks, l.bytes) / l.blocks.max(1) as f64;
            l.blocks = round(l.blocks as f64 * f);
            l.bytes = round(l.bytes as f64 * f);
            l.via_realloc = round(l.via_realloc as f64 * f);
        }
        let kind = check.as_mut().map(|c| {
            l.leak_kind().unwrap_or_else(|| {
                // Allocated after the check, by a thread still running.
                c.unscanned_blocks += l.blocks;
                c.unscanned_bytes += l.bytes;
                LeakKind::Reachable
            })
        });
        a.add_leaked(l.blocks, l.bytes, kind);
        a.sites
            .entry(l.stack)
            .or_default()
            .add_leaked(l.blocks, l.bytes, l.via_realloc, kind);
    }
    a.check = check;
    if a.estimated() {
        exact_kinds(&mut a, reach);
    }
    a
}
