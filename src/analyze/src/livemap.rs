//! The replay's live set: address → (size, stack, thread, realloc chain), 16 bytes a block.
//!
//! A `HashMap<u64, Live>` took 33 bytes a bucket (key, 24-byte value, control byte) at a load
//! of 7/16 to 7/8, and doubled in one piece: while it grew, the old and the new table were both
//! there, and the analyzer's peak was 86–99 bytes per live block. Here the value is packed into
//! one word next to the address, and the set is 64 tables of open addressing (linear probing,
//! backward-shift deletion), each growing by half on its own, so that a growth holds a 64th of
//! the set twice instead of all of it. Blocks whose fields do not fit the word (huge sizes, stack ids
//! beyond 2^22, more than 255 threads, long realloc chains, address 0 of a damaged dump) are kept
//! whole in a side map.
//!
//! Each block also carries a tag `X` for the replay's observers (`zmtrace view`'s timeline: the
//! time bucket of the block's allocation). It is `()` for the reports, so their slots stay 16
//! bytes and they pay nothing for it.

use rustc_hash::FxHashMap as HashMap;

/// A block live during the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Live {
    pub size: u64,
    /// The stack of its allocation, or of its last realloc.
    pub stack: u32,
    /// The thread that allocated (or last reallocated) it.
    pub tid: u32,
    /// How many reallocs it has gone through.
    pub chain: u32,
}

const SHARDS: usize = 64;
const SHARD_BITS: u32 = 6;
const MIN_CAP: usize = 64;
/// The packed word: stack, size, thread index, chain, from bit 0 up; bit 63 unused (a slot
/// whose block is in the side map is never in a table).
const STACK_BITS: u32 = 22;
const SIZE_BITS: u32 = 28;
const TID_BITS: u32 = 8;
const CHAIN_BITS: u32 = 5;

#[derive(Clone, Copy, Default)]
struct Slot<X> {
    /// 0: empty.
    addr: u64,
    meta: u64,
    tag: X,
}

#[derive(Clone, Default)]
struct Table<X> {
    slots: Vec<Slot<X>>,
    len: usize,
    grow_at: usize,
    /// Homes by a hash of the whole address, not in address order: set, for good, when this
    /// table's probes grew long (see [`Table::note`]).
    scattered: bool,
    /// Lookups since the last check, and the slots they stepped over.
    ops: u32,
    steps: u64,
}

/// How often (in lookups) a table checks its probes' length, and the mean number of slots
/// stepped over past the home above which it scatters its homes.
const CHECK_EVERY: u32 = 4096;
const MAX_MEAN_STEPS: u64 = 16;

/// Addresses in one region of `1 << REGION_BITS` bytes have their homes side by side, in the
/// same shard, at 8 bytes of address a slot (see [`Table::home`]).
const REGION_BITS: u32 = 12;

/// The hash of `addr`'s region: its top bits choose the shard, the next ones where the region's
/// run of slots starts in the shard's table.
#[inline]
fn hash(addr: u64) -> u64 {
    (addr >> REGION_BITS).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// `x`'s place in `0..cap`, by its top bits (Lemire's multiply-shift): tables grow by half, so
/// their sizes are not powers of two.
#[inline]
fn scale(x: u64, cap: usize) -> usize {
    ((x as u128 * cap as u128) >> 64) as usize
}

/// The slot after `i` in a table of `cap`, around the end.
#[inline]
fn next(i: usize, cap: usize) -> usize {
    if i + 1 == cap {
        0
    } else {
        i + 1
    }
}

impl<X: Copy + Default> Table<X> {
    /// The slot where `addr` (of hash `h`) is looked for first. An allocator hands out its
    /// blocks next to each other, and a program frees them in much the same order: homes in
    /// address order turn the replay's misses (one per event on a live set larger than the
    /// caches, with a hash of the whole address) into runs along a few cache lines. Regions
    /// start at random, so two dense regions' runs overlap no more than random homes would; at
    /// 8 bytes of address a slot, a region of glibc's smallest blocks (32 bytes) fills a
    /// quarter of its run.
    ///
    /// Some allocators' layouts defeat this: where many regions are densely filled (gawk's
    /// nodes, on glibc), their runs merge into clusters of tens of slots and every lookup walks
    /// one, slower than a miss to memory. A table that sees that scatters its homes instead.
    #[inline]
    fn home(&self, h: u64, addr: u64) -> usize {
        let cap = self.slots.len();
        if self.scattered {
            // The top bits of a multiplicative hash; the shard came from the region's hash, so
            // these bits are independent of it.
            return scale(addr.wrapping_mul(0x9e37_79b9_7f4a_7c15), cap);
        }
        let run = scale(h << SHARD_BITS, cap);
        let within = ((addr >> 3) & ((1 << (REGION_BITS - 3)) - 1)) as usize;
        let i = run + within;
        if i < cap {
            i
        } else if cap > 0 {
            // A run that wraps around the table's end; `%` only where a table is smaller than
            // a region's run.
            i % cap
        } else {
            0
        }
    }

    /// Counts one lookup that stepped over `steps` slots; every [`CHECK_EVERY`] lookups, a
    /// table in address order whose mean is above [`MAX_MEAN_STEPS`] scatters its homes. It
    /// never goes back: a program whose layout clusters once will again.
    #[inline]
    fn note(&mut self, steps: usize) {
        self.steps += steps as u64;
        self.ops += 1;
        if self.ops == CHECK_EVERY {
            if !self.scattered && self.steps > CHECK_EVERY as u64 * MAX_MEAN_STEPS {
                self.scattered = true;
                self.rehash(self.slots.len());
            }
            self.ops = 0;
            self.steps = 0;
        }
    }

    /// By half: a table that doubles is between 3/8 and 3/4 full, and the 64 of one live set
    /// fill alike, so they double together. python3's dump peaked at 1.28 M blocks in 2 M slots
    /// (32 MiB); by half, in 1.8 M (27 MiB). A block is moved twice on average instead of once.
    fn grow(&mut self) {
        self.rehash((self.slots.len() + self.slots.len() / 2).max(MIN_CAP));
    }

    /// Puts every block again in a table of `cap` slots, at the homes [`Table::home`] gives now.
    fn rehash(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); cap]);
        self.grow_at = cap / 4 * 3;
        for s in old.into_iter().filter(|s| s.addr != 0) {
            let mut i = self.home(hash(s.addr), s.addr);
            while self.slots[i].addr != 0 {
                i = next(i, cap);
            }
            self.slots[i] = s;
        }
    }

    /// The slot of `addr`, or None, and the slots stepped over to learn it.
    #[inline]
    fn find(&self, h: u64, addr: u64) -> (Option<usize>, usize) {
        if self.slots.is_empty() {
            return (None, 0);
        }
        let cap = self.slots.len();
        let mut i = self.home(h, addr);
        let mut steps = 0;
        loop {
            let a = self.slots[i].addr;
            if a == addr {
                return (Some(i), steps);
            }
            if a == 0 {
                return (None, steps);
            }
            i = next(i, cap);
            steps += 1;
        }
    }

    /// Puts `meta` at `addr`, or replaces what is there (returned): one probe either way.
    #[inline]
    fn put(&mut self, h: u64, addr: u64, meta: u64, tag: X) -> Option<(u64, X)> {
        if self.len >= self.grow_at {
            self.grow();
        }
        let cap = self.slots.len();
        let mut i = self.home(h, addr);
        let mut steps = 0;
        let old = loop {
            let s = &mut self.slots[i];
            if s.addr == addr {
                let old = (s.meta, s.tag);
                s.meta = meta;
                s.tag = tag;
                break Some(old);
            }
            if s.addr == 0 {
                *s = Slot { addr, meta, tag };
                self.len += 1;
                break None;
            }
            i = next(i, cap);
            steps += 1;
        };
        self.note(steps);
        old
    }

    /// Empties slot `i`, shifting the rest of its probe run back.
    #[inline]
    fn take(&mut self, mut i: usize) -> (u64, X) {
        let meta = (self.slots[i].meta, self.slots[i].tag);
        let cap = self.slots.len();
        let mut j = i;
        loop {
            j = next(j, cap);
            let s = self.slots[j];
            if s.addr == 0 {
                break;
            }
            let k = self.home(hash(s.addr), s.addr);
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i].addr = 0;
        self.len -= 1;
        meta
    }
}

/// The live set of a replay (see the module's documentation).
#[derive(Clone)]
pub(crate) struct LiveMap<X = ()> {
    shards: Vec<Table<X>>,
    /// Blocks that do not pack, whole.
    side: HashMap<u64, (Live, X)>,
    /// Thread ids by their index in the packed word, and back.
    tids: Vec<u32>,
    tid_index: HashMap<u32, u8>,
    /// The last thread looked up and its index: events come in runs of one thread's.
    last_tid: Option<(u32, u8)>,
}

impl<X: Copy + Default> Default for LiveMap<X> {
    fn default() -> LiveMap<X> {
        LiveMap {
            shards: (0..SHARDS).map(|_| Table::default()).collect(),
            side: HashMap::default(),
            tids: Vec::new(),
            tid_index: HashMap::default(),
            last_tid: None,
        }
    }
}

impl<X: Copy + Default> LiveMap<X> {
    #[inline]
    fn shard(h: u64) -> usize {
        (h >> (64 - SHARD_BITS)) as usize
    }

    #[inline]
    fn tid_index(&mut self, tid: u32) -> Option<u64> {
        if let Some((t, i)) = self.last_tid {
            if t == tid {
                return Some(i as u64);
            }
        }
        if let Some(&i) = self.tid_index.get(&tid) {
            self.last_tid = Some((tid, i));
            return Some(i as u64);
        }
        if self.tids.len() >= 1 << TID_BITS {
            return None;
        }
        let i = self.tids.len() as u8;
        self.tids.push(tid);
        self.tid_index.insert(tid, i);
        Some(i as u64)
    }

    #[inline]
    fn pack(&mut self, b: &Live) -> Option<u64> {
        let fits = |v: u64, bits: u32| v >> bits == 0;
        if !(fits(b.stack as u64, STACK_BITS)
            && fits(b.size, SIZE_BITS)
            && fits(b.chain as u64, CHAIN_BITS))
        {
            return None;
        }
        let tid = self.tid_index(b.tid)?;
        Some(
            b.stack as u64
                | b.size << STACK_BITS
                | tid << (STACK_BITS + SIZE_BITS)
                | (b.chain as u64) << (STACK_BITS + SIZE_BITS + TID_BITS),
        )
    }

    #[inline]
    fn unpack(&self, w: u64) -> Live {
        let field = |shift: u32, bits: u32| (w >> shift) & ((1 << bits) - 1);
        Live {
            stack: field(0, STACK_BITS) as u32,
            size: field(STACK_BITS, SIZE_BITS),
            tid: self.tids[field(STACK_BITS + SIZE_BITS, TID_BITS) as usize],
            chain: field(STACK_BITS + SIZE_BITS + TID_BITS, CHAIN_BITS) as u32,
        }
    }

    /// Adds the block at `addr`, tagged `tag`; returns the one it replaces.
    #[inline]
    pub(crate) fn insert(&mut self, addr: u64, b: Live, tag: X) -> Option<(Live, X)> {
        // A block is in a table or in the side map, never both.
        match self.pack(&b).filter(|_| addr != 0) {
            Some(meta) => {
                let h = hash(addr);
                match self.shards[Self::shard(h)].put(h, addr, meta, tag) {
                    Some((old, old_tag)) => Some((self.unpack(old), old_tag)),
                    None if self.side.is_empty() => None,
                    None => self.side.remove(&addr),
                }
            }
            None => {
                let old = self.remove(addr);
                self.side.insert(addr, (b, tag));
                old
            }
        }
    }

    /// Asks the CPU to bring in the slot where `addr` would be: the replay calls it one event
    /// ahead, so that on a live set larger than the caches the miss overlaps the event before.
    #[inline]
    pub(crate) fn prefetch(&self, addr: u64) {
        let h = hash(addr);
        let t = &self.shards[Self::shard(h)];
        if let Some(slot) = t.slots.get(t.home(h, addr)) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot<X>).cast::<i8>());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = slot;
        }
    }

    /// Takes the block at `addr` out.
    #[inline]
    pub(crate) fn remove(&mut self, addr: u64) -> Option<(Live, X)> {
        let h = hash(addr);
        let t = &mut self.shards[Self::shard(h)];
        let (found, steps) = t.find(h, addr);
        match found {
            Some(i) if addr != 0 => {
                let (meta, tag) = t.take(i);
                // After the take: a rehash would move slot `i`.
                t.note(steps);
                Some((self.unpack(meta), tag))
            }
            _ => {
                t.note(steps);
                if self.side.is_empty() {
                    None
                } else {
                    self.side.remove(&addr)
                }
            }
        }
    }

    /// Every block, in no particular order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, Live, X)) {
        for t in &self.shards {
            for s in t.slots.iter().filter(|s| s.addr != 0) {
                f(s.addr, self.unpack(s.meta), s.tag);
            }
        }
        for (&a, &(b, tag)) in &self.side {
            f(a, b, tag);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|t| t.len).sum::<usize>() + self.side.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(i: u64) -> Live {
        Live {
            size: 16 + i % 100,
            stack: (i % 5000) as u32 + 1,
            tid: 1000 + (i % 7) as u32,
            chain: (i % 3) as u32,
        }
    }

    /// The slots of every table: what the live set costs besides its side map.
    fn slots<X>(m: &LiveMap<X>) -> usize {
        m.shards.iter().map(|t| t.slots.len()).sum()
    }

    /// Growing by half, a table past its first growths is at least half full (by doubling, a
    /// table just grown was 3/8 full), and every block is still found where it was put.
    #[test]
    fn a_growing_live_set_stays_at_least_half_full() {
        let mut m: LiveMap = LiveMap::default();
        let addr = |i: u64| 0x5555_0000_0000 + i * 48;
        let mut lowest = f64::MAX;
        for i in 0..1_500_000 {
            m.insert(addr(i), live(i), ());
            // Past a table's smallest sizes, where the 64 start at MIN_CAP whatever they hold.
            if i >= 64 * 1024 && i % 1000 == 0 {
                lowest = lowest.min(m.len() as f64 / slots(&m) as f64);
            }
        }
        assert!(lowest >= 0.49, "a load of {lowest:.3}");
        assert!(m.shards.iter().any(|t| !t.slots.len().is_power_of_two()));
        for i in (0..1_500_000).step_by(7) {
            assert_eq!(m.remove(addr(i)), Some((live(i), ())), "{i}");
        }
        assert_eq!(m.len(), 1_500_000 - 1_500_000_usize.div_ceil(7));
    }

    #[test]
    fn inserts_replaces_removes_and_iterates_exactly() {
        let mut m: LiveMap = LiveMap::default();
        let addr = |i: u64| 0x5555_0000_0000 + i * 32;
        for i in 0..200_000 {
            assert_eq!(m.insert(addr(i), live(i), ()), None);
        }
        assert_eq!(m.len(), 200_000);
        assert!(m.side.is_empty());
        // Replacing returns the old block.
        assert_eq!(m.insert(addr(5), live(6), ()), Some((live(5), ())));
        assert_eq!(m.remove(addr(5)), Some((live(6), ())));
        for i in (0..200_000).filter(|i| i % 3 == 0) {
            assert_eq!(m.remove(addr(i)), Some((live(i), ())), "{i}");
        }
        assert_eq!(m.remove(addr(3)), None);
        let mut n = 0;
        m.for_each(|a, b, ()| {
            let i = (a - 0x5555_0000_0000) / 32;
            assert!(i % 3 != 0 && i != 5);
            assert_eq!(b, live(i));
            n += 1;
        });
        assert_eq!(n, m.len());
    }

    /// Homes follow addresses: blocks 8 bytes apart (an allocator's smallest class) fill whole
    /// runs of slots, and runs of many regions overlap. Such a set is the homes' worst case (the
    /// map ops were about 7 times slower than with homes at random), and its tables scatter
    /// their homes; every block is still found, once.
    #[test]
    fn dense_regions_that_overlap_scatter_and_are_exact() {
        let mut m: LiveMap = LiveMap::default();
        let addr = |i: u64| 0x7f00_0000_0000 + (i % 4096) * 8 + (i / 4096) * 0x10_0000;
        let n = 400_000;
        for i in 0..n {
            assert_eq!(m.insert(addr(i), live(i), ()), None);
        }
        let scattered = m.shards.iter().filter(|t| t.scattered).count();
        assert_eq!(scattered, SHARDS, "tables that scattered their homes");
        for i in (0..n).step_by(2) {
            assert_eq!(m.remove(addr(i)), Some((live(i), ())), "{i}");
        }
        for i in 0..n {
            let want = (i % 2 == 1).then_some((live(i), ()));
            assert_eq!(m.remove(addr(i)), want, "{i}");
        }
        assert_eq!(m.len(), 0);
        // Scattered, the probes are short again: finding every block steps over fewer than 2
        // slots on average (in address order, about 300).
        for i in 0..n {
            m.insert(addr(i), live(i), ());
        }
        let steps: usize = (0..n)
            .map(|i| {
                let h = hash(addr(i));
                let (found, steps) = m.shards[LiveMap::<()>::shard(h)].find(h, addr(i));
                assert!(found.is_some());
                steps
            })
            .sum();
        assert!(steps < 2 * n as usize, "{steps} steps to find {n} blocks");
    }

    /// glibc's smallest blocks, 32 bytes apart, fill a quarter of their regions' runs: the
    /// probes stay short and no table leaves address order (which keeps the misses in runs).
    #[test]
    fn blocks_an_allocator_spaces_keep_their_homes_in_address_order() {
        let mut m: LiveMap = LiveMap::default();
        let addr = |i: u64| 0x5555_0000_0000 + i * 32;
        for i in 0..500_000 {
            m.insert(addr(i), live(i), ());
        }
        for i in (0..500_000).step_by(2) {
            assert_eq!(m.remove(addr(i)), Some((live(i), ())));
        }
        assert_eq!(m.shards.iter().filter(|t| t.scattered).count(), 0);
    }

    /// A block replaced by one that packs differently moves between the side map and a table,
    /// and is never in both (a replaced block's old copy would come back at its removal).
    #[test]
    fn a_replaced_block_is_in_one_place() {
        let mut m: LiveMap = LiveMap::default();
        let huge = Live {
            size: 1 << 40,
            ..live(1)
        };
        assert_eq!(m.insert(0x1000, huge, ()), None);
        assert_eq!(m.insert(0x1000, live(2), ()), Some((huge, ())));
        assert!(m.side.is_empty());
        assert_eq!(m.insert(0x1000, huge, ()), Some((live(2), ())));
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(0x1000), Some((huge, ())));
        assert_eq!(m.remove(0x1000), None);
    }

    #[test]
    fn what_does_not_pack_is_kept_whole() {
        let mut m: LiveMap = LiveMap::default();
        let odd = [
            Live {
                size: 1 << 40,
                ..live(1)
            },
            Live {
                stack: u32::MAX,
                ..live(1)
            },
            Live {
                chain: 1000,
                ..live(1)
            },
        ];
        for (i, b) in odd.iter().enumerate() {
            m.insert(0x1000 + i as u64 * 16, *b, ());
        }
        // A damaged dump's address 0, and a 300th thread.
        m.insert(0, live(2), ());
        for t in 0..300u32 {
            m.insert(0x10_0000 + t as u64 * 16, Live { tid: t, ..live(3) }, ());
        }
        // 256 thread indexes, one taken by live(2)'s thread: 45 of the 300 do not fit.
        assert_eq!(m.side.len(), 3 + 1 + (300 - 255));
        for (i, b) in odd.iter().enumerate() {
            assert_eq!(m.remove(0x1000 + i as u64 * 16), Some((*b, ())));
        }
        assert_eq!(m.remove(0), Some((live(2), ())));
        for t in 0..300u32 {
            assert_eq!(
                m.remove(0x10_0000 + t as u64 * 16),
                Some((Live { tid: t, ..live(3) }, ()))
            );
        }
        assert_eq!(m.len(), 0);
    }
}
