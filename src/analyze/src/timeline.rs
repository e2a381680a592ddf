//! The page's timeline (`zmtrace view`): the run cut into equal time buckets and, per bucket and
//! site, the [`COUNTERS`]; the heap's highest point in each bucket, with the live bytes of the
//! sites drawn as series. The page's presentation of it is the report crate's `view`.
//!
//! # One replay
//!
//! [`Recorder`] is an observer of the one replay of [`crate::analysis`] (the per-site totals are
//! the other): it is told which blocks are made, freed, reallocated, temporary and leaked, and
//! when the heap peaks, by the rules that make the reports' numbers, so the page's buckets add
//! up to them by construction. It counts per bucket and *stack*, because the page's sites are
//! only known once the replay is over (they are chosen by its totals); [`page`] then adds the
//! stacks up into the page's sites.
//!
//! What each stack held at each bucket's highest point is kept the same way the peak's picture
//! is ([`crate::analysis`]'s `Heap`): the changes since the last highest point are folded in
//! when a new one comes, and each bucket's picture is frozen, as the changes since the previous
//! one, when the bucket ends; [`page`] adds them up for the few sites drawn as series.
//!
//! The buckets' width is the run's length over their number, and the length is only known at
//! the end: [`Recorder::new`] finds it first by a pass over the events' times (decoding only).

use rustc_hash::FxHashMap;
use serde::Serialize;
use zmtrace_format::{Dump, Event, EventKind, LeakKind, Reach, ReallocShape};

use crate::analysis::{Analysis, ById, Live, Observer, ReallocWeight};

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

/// What the replay recorded for the timeline, per bucket and stack ([`Analysis::timeline`]).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub start_ns: u64,
    pub bucket_ns: u64,
    /// The heap's highest point in each bucket.
    pub heap: Vec<u64>,
    /// `(bucket << 32) | stack` -> index in `cells`.
    index: FxHashMap<u64, u32>,
    cells: Vec<Cell>,
    /// What each stack held at the chosen moments: each entry the changes since the one before
    /// (the first: the blocks inherited at a fork).
    pictures: Vec<Vec<(u32, i64)>>,
    /// Per bucket, the picture at its highest point (an index in `pictures`).
    tops: Vec<u32>,
}

/// The counters of one stack in one bucket. A block counts in the bucket of its allocation (or
/// last realloc); its `PEAK` is kept as the peak's picture is: `since_peak` holds the changes
/// since the last peak, folded in at the next.
#[derive(Clone, Copy, Debug, Default)]
struct Cell {
    counts: Counts,
    since_peak: i64,
    touched: bool,
}

/// The current bucket's highest point so far.
#[derive(Clone, Copy, Debug)]
enum Top {
    /// A picture already taken.
    Frozen(u32),
    /// The last picture plus [`Recorder`]'s `top` changes.
    Pending,
}

/// A stack's changes since the last picture: up to the current bucket's highest point (`top`)
/// and after it (`now`).
#[derive(Clone, Copy, Debug, Default)]
struct Changes {
    top: i64,
    now: i64,
    in_top: bool,
    in_now: bool,
}

/// The timeline's observer of the replay (see the module's documentation). A block's tag is the
/// bucket it was made in.
#[derive(Clone)]
pub(crate) struct Recorder {
    start_ns: u64,
    bucket_ns: u64,
    buckets: usize,
    /// The bucket of the event being replayed.
    bucket: u32,
    /// The latest bucket begun. An event timed before it (threads' clocks read just before they
    /// number their events) still counts in its own bucket, and can raise that one's heap.
    last: usize,
    /// The heap's size, from the blocks the replay adds and removes.
    cur: u64,
    heap: Vec<u64>,
    index: FxHashMap<u64, u32>,
    cells: Vec<Cell>,
    peak_touched: Vec<u32>,
    changes: ById<Changes>,
    top_touched: Vec<u32>,
    now_touched: Vec<u32>,
    pictures: Vec<Vec<(u32, i64)>>,
    tops: Vec<u32>,
    top: Top,
}

impl Recorder {
    /// The recorder of `buckets` buckets over `dump`'s run, or None when it has no events; stack
    /// ids up to `stacks` are kept in vectors.
    pub(crate) fn new(dump: &Dump, buckets: usize, stacks: usize) -> Option<Recorder> {
        // The first event, and the last of the program's (the replay's `duration_ns`).
        let (mut start_ns, mut end_ns) = (None, None::<u64>);
        for e in dump.events() {
            if matches!(e.kind, EventKind::ReallocOut { .. }) {
                continue;
            }
            start_ns.get_or_insert(e.ts_ns);
            if !matches!(e.kind, EventKind::RemapOut { .. }) {
                end_ns = Some(end_ns.map_or(e.ts_ns, |t| t.max(e.ts_ns)));
            }
        }
        let (start_ns, end_ns) = (start_ns?, end_ns?);
        let nb = buckets.max(1);
        let span = end_ns.saturating_sub(start_ns) + 1;
        Some(Recorder {
            start_ns,
            bucket_ns: span.div_ceil(nb as u64).max(1),
            buckets: nb,
            bucket: 0,
            last: 0,
            cur: 0,
            heap: vec![0; nb],
            index: FxHashMap::default(),
            cells: Vec::new(),
            peak_touched: Vec::new(),
            changes: ById::for_stacks(stacks),
            top_touched: Vec::new(),
            now_touched: Vec::new(),
            pictures: Vec::new(),
            tops: vec![0; nb],
            top: Top::Pending,
        })
    }

    /// The index of the cell of `stack` in `bucket`, made if need be.
    #[inline]
    fn cell_index(&mut self, bucket: u32, stack: u32) -> u32 {
        let key = u64::from(bucket) << 32 | u64::from(stack);
        let cells = &mut self.cells;
        *self.index.entry(key).or_insert_with(|| {
            cells.push(Cell::default());
            (cells.len() - 1) as u32
        })
    }

    #[inline]
    fn cell(&mut self, bucket: u32, stack: u32) -> &mut Cell {
        let i = self.cell_index(bucket, stack);
        &mut self.cells[i as usize]
    }

    /// Block `b` (tagged `bucket`) joins (`delta` > 0) or leaves the heap.
    #[inline]
    fn heap_change(&mut self, b: &Live, bucket: u32, delta: i64) {
        self.cur = (self.cur as i64 + delta) as u64;
        self.peak_change(b, bucket, delta);
        let c = self.changes.get(b.stack);
        c.now += delta;
        if !c.in_now {
            c.in_now = true;
            self.now_touched.push(b.stack);
        }
    }

    #[inline]
    fn peak_change(&mut self, b: &Live, bucket: u32, delta: i64) {
        let i = self.cell_index(bucket, b.stack);
        let c = &mut self.cells[i as usize];
        c.since_peak += delta;
        if !c.touched {
            c.touched = true;
            self.peak_touched.push(i);
        }
    }

    /// The heap is at a new highest point: the peak's picture is what is live now.
    fn fold_peak(&mut self) {
        for &i in &self.peak_touched {
            let c = &mut self.cells[i as usize];
            c.counts[PEAK] = (c.counts[PEAK] as i64 + c.since_peak) as u64;
            c.since_peak = 0;
            c.touched = false;
        }
        self.peak_touched.clear();
    }

    /// The current bucket's highest point is now.
    fn new_top(&mut self) {
        for &s in &self.now_touched {
            let c = self.changes.get(s);
            c.top += c.now;
            c.now = 0;
            c.in_now = false;
            if !c.in_top {
                c.in_top = true;
                self.top_touched.push(s);
            }
        }
        self.now_touched.clear();
        self.top = Top::Pending;
    }

    /// Takes the pending highest point as a picture; its index.
    fn take_top(&mut self) -> u32 {
        let mut picture = Vec::with_capacity(self.top_touched.len());
        for &s in &self.top_touched {
            let c = self.changes.get(s);
            picture.push((s, c.top));
            c.top = 0;
            c.in_top = false;
        }
        self.top_touched.clear();
        self.pictures.push(picture);
        let k = (self.pictures.len() - 1) as u32;
        self.top = Top::Frozen(k);
        k
    }

    /// A picture of what is live now; its index.
    fn picture_now(&mut self) -> u32 {
        if let Top::Pending = self.top {
            self.take_top();
        }
        if self.now_touched.is_empty() && !self.pictures.is_empty() {
            return (self.pictures.len() - 1) as u32;
        }
        let mut picture = Vec::with_capacity(self.now_touched.len());
        for &s in &self.now_touched {
            let c = self.changes.get(s);
            picture.push((s, c.now));
            c.now = 0;
            c.in_now = false;
        }
        self.now_touched.clear();
        self.pictures.push(picture);
        (self.pictures.len() - 1) as u32
    }

    /// The current bucket is over: its highest point is final.
    fn close(&mut self) {
        let k = match self.top {
            Top::Frozen(k) => k,
            Top::Pending => self.take_top(),
        };
        self.tops[self.last] = k;
    }

    /// Buckets up to `bucket` begin, with the heap as it is now.
    fn advance(&mut self, bucket: usize) {
        self.close();
        let k = self.picture_now();
        for b in self.last + 1..=bucket {
            self.heap[b] = self.cur;
            self.tops[b] = k;
        }
        self.top = Top::Frozen(k);
        self.last = bucket;
    }
}

impl Observer for Recorder {
    type Tag = u32;

    fn begin(&mut self) {
        // Bucket 0 begins with the inherited blocks, which are also the first peak.
        let k = self.picture_now();
        self.heap[0] = self.cur;
        self.top = Top::Frozen(k);
        self.fold_peak();
    }

    #[inline]
    fn time(&mut self, e: &Event) -> u32 {
        let b = ((e.ts_ns.saturating_sub(self.start_ns) / self.bucket_ns) as usize)
            .min(self.buckets - 1);
        if b > self.last {
            self.advance(b);
        }
        self.bucket = b as u32;
        self.bucket
    }

    #[inline]
    fn alloc(&mut self, stack: u32, size: u64, _w: f64) {
        let c = &mut self.cell(self.bucket, stack).counts;
        c[ALLOCATIONS] += 1;
        c[BYTES] += size;
    }

    #[inline]
    fn added(&mut self, b: &Live, bucket: u32, bytes: u64) {
        self.heap_change(b, bucket, bytes as i64);
    }

    #[inline]
    fn removed(&mut self, b: &Live, bucket: u32, bytes: u64) {
        self.heap_change(b, bucket, -(bytes as i64));
    }

    fn dropped(&mut self, b: &Live, bucket: u32) {
        // Out of the live set, so not in the peak's picture; still in the heap's size.
        self.peak_change(b, bucket, -(b.size as i64));
    }

    #[inline]
    fn freed(&mut self, b: &Live, bucket: u32, _w: f64, temporary: bool) {
        if temporary {
            self.cell(bucket, b.stack).counts[TEMPORARY] += 1;
        }
    }

    #[inline]
    fn realloc(
        &mut self,
        stack: u32,
        old: &Live,
        size: u64,
        moved: bool,
        _chain: u32,
        _w: ReallocWeight,
    ) {
        let r = ReallocShape::of(old.size, size, moved);
        let c = &mut self.cell(self.bucket, stack).counts;
        c[REALLOCS] += 1;
        c[BYTES] += size;
        c[GREW] += u64::from(r.grew);
        c[SHRANK] += u64::from(r.shrank);
        c[MOVED] += u64::from(r.moved);
        c[IN_PLACE] += u64::from(!r.moved);
        c[BYTES_COPIED] += r.bytes_copied;
    }

    #[inline]
    fn after(&mut self, peak: bool) {
        let b = self.bucket as usize;
        if self.cur > self.heap[b] {
            self.heap[b] = self.cur;
            if b == self.last {
                self.new_top();
            } else {
                // An event timed in a bucket already over: its highest point is now.
                self.tops[b] = self.picture_now();
            }
        }
        if peak {
            self.fold_peak();
        }
    }

    fn leaked(
        &mut self,
        addr: u64,
        b: &Live,
        bucket: u32,
        _w: f64,
        _kind: Option<LeakKind>,
        reach: Option<&Reach>,
    ) {
        // `lost` is what the check found unreachable, whatever suppressions say later.
        let lost = reach
            .and_then(|r| r.kind_of(addr))
            .is_some_and(|k| matches!(k, LeakKind::Definite | LeakKind::Indirect));
        let c = &mut self.cell(bucket, b.stack).counts;
        c[LEAKED] += b.size;
        c[LEAKED_BLOCKS] += 1;
        if lost {
            c[LOST] += b.size;
        }
    }

    fn finish(mut self, a: &mut Analysis, _reach: Option<&Reach>) {
        if self.last < self.buckets - 1 {
            self.advance(self.buckets - 1);
        }
        self.close();
        a.timeline = Some(Recorded {
            start_ns: self.start_ns,
            bucket_ns: self.bucket_ns,
            heap: self.heap,
            index: self.index,
            cells: self.cells,
            pictures: self.pictures,
            tops: self.tops,
        });
    }
}

/// The page's timeline from what the replay recorded, `a`'s (its suppressions applied): stack
/// `s` is counted in the page's site `site_of[s]` (a stack with none is not counted), of
/// `n_sites`; `series_sites` are drawn on the memory chart.
pub fn page(
    a: &Analysis,
    rec: &Recorded,
    site_of: &FxHashMap<u32, u32>,
    n_sites: usize,
    series_sites: &[usize],
) -> Timeline {
    let nb = rec.heap.len();
    // Dense per (bucket, site): the page's sites are bounded.
    let mut cells = vec![[0u64; COUNTERS.len()]; nb * n_sites];
    for (&key, &i) in &rec.index {
        let (bucket, stack) = ((key >> 32) as usize, key as u32);
        let Some(&site) = site_of.get(&stack) else {
            continue;
        };
        // A suppressed stack's blocks were taken out of its site (`suppressions::apply`).
        let leaks = a.sites.get(&stack).is_some_and(|s| s.leaked_blocks > 0);
        let to = &mut cells[bucket * n_sites + site as usize];
        for (k, &v) in rec.cells[i as usize].counts.iter().enumerate() {
            if leaks || !matches!(k, LEAKED | LEAKED_BLOCKS | LOST) {
                to[k] += v;
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

    // The series sites' live bytes in each picture, added up from the changes.
    let mut series_of: FxHashMap<u32, usize> = FxHashMap::default();
    for (&stack, &site) in site_of {
        if let Some(i) = series_sites.iter().position(|&s| s == site as usize) {
            series_of.insert(stack, i);
        }
    }
    let ns = series_sites.len();
    let mut live = vec![0i64; ns];
    let mut at: Vec<Vec<u64>> = Vec::with_capacity(rec.pictures.len());
    for picture in &rec.pictures {
        for (stack, d) in picture {
            if let Some(&i) = series_of.get(stack) {
                live[i] += d;
            }
        }
        at.push(live.iter().map(|&v| v as u64).collect());
    }
    let series = series_sites
        .iter()
        .enumerate()
        .map(|(i, &s)| Series {
            site: s,
            live: rec.tops.iter().map(|&k| at[k as usize][i]).collect(),
        })
        .collect();
    Timeline {
        start_ns: rec.start_ns,
        bucket_ns: rec.bucket_ns,
        heap: rec.heap.clone(),
        series,
        counters,
    }
}
