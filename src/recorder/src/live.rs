//! The live set: every block the program holds, by address, with its requested and usable size
//! and its stack (in aggregated mode also its realloc chain and the stream that made it).
//!
//! Why not a general-purpose map: the live set is the recorder's largest structure (one entry per
//! live block, millions in a big program), and it is updated on every `malloc` and `free`. A
//! `dashmap<usize, LiveBlock>` took 40 bytes of key and value per entry, plus the hash table's
//! control bytes and load factor: 69–88 bytes per live block in the traced process. Here an entry
//! is 16 bytes (the address, and one word with size, usable size and stack packed), in 64 shards
//! of open addressing with linear probing, each shard's table in an anonymous mapping of its own
//! ([`map_anon`]: a raw system call, so never through the program's `malloc` or its interposed
//! `mmap`, and never a root of the leak check), grown by doubling under the shard's spin lock.
//!
//! Entries that do not fit the packed word (a huge size, an odd usable size, a stack id beyond
//! 2^24, a long realloc chain in aggregated mode) keep a flag and an index into the shard's
//! overflow slab, which holds them unpacked. They are rare, so they cost nothing on the whole.
//!
//! Deletion shifts the following entries of the probe run back (no tombstones), so a table that
//! sees billions of `malloc`/`free` pairs never degrades and never needs a rebuild.
//!
//! A block's shard is chosen by its page. A big table (past the caches) places the blocks of a
//! page side by side in address order, so that a program working through its heap in order
//! probes a few cache lines again and again instead of missing memory on every call; a table
//! whose pages turn out denser than their slots goes back to hashing ([`Table::home`]).
//!
//! In sampled recording (without `--all-blocks`) the set holds the few sampled blocks and
//! nearly every free is of one it does not hold: a filter of 2^14 one-byte counters
//! ([`LiveSet::enable_filter`]) answers those without a lock or a probe.
//!
//! Locks: each shard is a [`SpinLock`], held for one probe (or one growth, which maps and
//! unmaps with system calls only). The `fork` handlers take all 64 in shard order
//! ([`LiveSet::lock_all`]) at their fixed place in the recorder's lock order (see `fork`).

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};

use crate::heap::{map_anon, map_table, unmap};
use crate::sync::SpinLock;
use crate::LiveBlock;

pub(crate) const SHARDS: usize = 64;
const SHARD_BITS: u32 = 6;
/// The first table of a shard: one page of 16-byte slots (and the 256 places of a page's blocks,
/// [`Table::home`]).
const MIN_CAP: usize = 256;
/// The flag of an overflow entry; its low 32 bits index the shard's overflow slab.
const OVERFLOW: u64 = 1 << 63;
const NONE: u32 = u32::MAX;

/// How the packed word is laid out: field widths in bits, from bit 0 up, in the order stack,
/// size, slack (usable − size), chain, stream. They add up to 63 at most (bit 63 is
/// [`OVERFLOW`]).
#[derive(Clone, Copy, Debug)]
struct Packing {
    stack: u32,
    size: u32,
    slack: u32,
    chain: u32,
    stream: u32,
}

/// Event mode: chain and stream are not kept (only aggregated mode uses them). 16 M stacks,
/// 256 MiB blocks, 2 KiB of slack (glibc's small blocks have at most 24, jemalloc's classes
/// up to 8 KiB at most 2 KiB).
const EVENTS: Packing = Packing {
    stack: 24,
    size: 28,
    slack: 11,
    chain: 0,
    stream: 0,
};

/// Aggregated mode: 4 M stacks (the counter table's limit too), 16 MiB blocks, 63 bytes of
/// slack, chains of 7 reallocs, 256 streams (thread states). The rest overflows.
const AGGREGATED: Packing = Packing {
    stack: 22,
    size: 24,
    slack: 6,
    chain: 3,
    stream: 8,
};

/// The packing of a mode, as a constant: every shift and mask of the hot path is folded.
#[inline(always)]
const fn packing<const AGG: bool>() -> Packing {
    if AGG {
        AGGREGATED
    } else {
        EVENTS
    }
}

#[inline(always)]
fn fits(v: u64, bits: u32) -> bool {
    v >> bits == 0
}

impl Packing {
    /// The packed word, or None when a field does not fit.
    #[inline(always)]
    fn pack(&self, b: &LiveBlock) -> Option<u64> {
        let slack = b.usable.checked_sub(b.size)?;
        let (stack, chain, stream) = (b.stack as u64, b.chain as u64, b.stream as u64);
        // A field of no bits is not kept (chain and stream in event mode).
        let kept = |v: u64, bits: u32| if bits == 0 { 0 } else { v };
        let (chain, stream) = (kept(chain, self.chain), kept(stream, self.stream));
        if !(fits(stack, self.stack)
            && fits(b.size, self.size)
            && fits(slack, self.slack)
            && fits(chain, self.chain)
            && fits(stream, self.stream))
        {
            return None;
        }
        let mut shift = self.stack;
        let mut w = stack;
        w |= b.size << shift;
        shift += self.size;
        w |= slack << shift;
        shift += self.slack;
        w |= chain << shift;
        shift += self.chain;
        w |= stream << shift;
        Some(w)
    }

    #[inline(always)]
    fn unpack(&self, w: u64) -> LiveBlock {
        let mut shift = 0;
        let mut field = |bits: u32| {
            let v = (w >> shift) & ((1u64 << bits) - 1);
            shift += bits;
            v
        };
        let stack = field(self.stack) as u32;
        let size = field(self.size);
        let slack = field(self.slack);
        let chain = field(self.chain) as u32;
        let stream = field(self.stream) as u32;
        LiveBlock {
            size,
            usable: size + slack,
            stack,
            chain,
            stream,
        }
    }
}

/// One slot: `addr` 0 is empty (no allocator hands out address 0).
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    addr: u64,
    meta: u64,
}

/// An overflow entry, unpacked; `next_free` links the free ones.
#[derive(Clone, Copy)]
struct Big {
    block: LiveBlock,
    next_free: u32,
}

/// One shard's table.
struct Table {
    /// `cap` slots (0 or a power of two), in a mapping of their own.
    slots: *mut Slot,
    cap: usize,
    /// 64 − log2(cap): the slot index is the hash's bits below the shard bits.
    shift: u32,
    len: usize,
    /// The table doubles when `len` reaches this: 5/8 of `cap`. Linear probing's runs grow
    /// as 1/(1-load)^2: at 3/4 an insert (a miss: it looks for the address all the way to an
    /// empty slot) took 4.3 probes on average on Redis under `--all-blocks`, and a remove as
    /// many steps of its backward shift; at 5/8 they are ~2.5, for 16/load bytes per live
    /// block between 26 and 51 (was 21 and 43).
    grow_at: usize,
    /// The overflow slab: `big_cap` entries, `big_top` used so far, a free list.
    big: *mut Big,
    big_cap: usize,
    big_top: usize,
    big_free: u32,
    big_len: usize,
    /// How addresses are placed: by page (a page's blocks side by side, in address order), or
    /// by address ([`hash`]); see [`Table::home`]. By page from [`LOCAL_MIN_CAP`] slots on,
    /// unless `hashed_for_good`.
    local: bool,
    /// The probes of a table placed by page were long: its pages hold more blocks than their
    /// slots.
    hashed_for_good: bool,
    /// Inserts, and the slots they stepped over, since the last judgement ([`JUDGE_EVERY`]).
    inserts: u32,
    steps: u32,
}

/// Every this many inserts (and at each growth) a table placed by page is judged: more than
/// [`MEAN_STEPS`] steps an insert on average tells that its pages hold more blocks than their
/// 256 slots (jemalloc's 8- and 16-byte classes, 512 and 256 to a page) and it is rebuilt with
/// hashed placement. Hashed placement at 5/8 load takes about 1.5 steps; glibc's heap placed by
/// page about as many (manyblocks.c).
const JUDGE_EVERY: u32 = 1 << 14;
/// Tables are placed by page from this many slots on (256 KiB a shard, 16 MiB for the 64): below
/// it they stay in the caches, where locality buys nothing and the denser runs cost steps
/// (sites.c, 4,096 live blocks in a few pages: 2.3 % more instructions placed by page).
const LOCAL_MIN_CAP: usize = 1 << 14;
const MEAN_STEPS: u32 = 4;
/// An insert that steps over this many slots has the table judged at once (once it has seen
/// [`JUDGE_MIN`] inserts: one long run in a good table must not condemn it).
const LONG_RUN: usize = 128;
const JUDGE_MIN: u32 = 256;

// SAFETY: the table owns its mappings; it is only touched under its shard's lock.
unsafe impl Send for Table {}

impl Table {
    const fn new() -> Table {
        Table {
            slots: std::ptr::null_mut(),
            cap: 0,
            shift: 64,
            len: 0,
            grow_at: 0,
            big: std::ptr::null_mut(),
            big_cap: 0,
            big_top: 0,
            big_free: NONE,
            big_len: 0,
            local: false,
            hashed_for_good: false,
            inserts: 0,
            steps: 0,
        }
    }

    /// Where the probe for `addr` starts.
    ///
    /// By page while it works: the page's hash chooses a base, and the block's place in its page
    /// (16-byte steps) is XORed into it, so the blocks of a page share an aligned run of 256
    /// slots (64 cache lines), in address order. A program that allocates or frees in address
    /// order (a heap carved in order, a list freed as it was built) then probes the same few
    /// lines call after call, where hashed placement made every probe of a big table a miss to
    /// memory (manyblocks.c, 5 M blocks on glibc: 291 → 244 ns a call, 256 → 184 aggregated).
    /// Where pages hold more blocks than that (jemalloc's smallest classes) the runs grow long,
    /// and [`Table::insert`] turns the table to hashed placement (without it, 8-byte blocks
    /// under jemalloc took 3 times as long).
    #[inline(always)]
    fn home(&self, addr: u64) -> usize {
        home_in(addr, self.shift, self.local)
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> *mut Slot {
        // SAFETY (of callers): i < cap.
        unsafe { self.slots.add(i) }
    }

    /// Doubles the table (or makes the first one); false when the system refuses the memory.
    #[cold]
    fn grow(&mut self) -> bool {
        if self.local && self.probes_long() {
            self.hashed_for_good = true;
        }
        let cap = (self.cap * 2).max(MIN_CAP);
        self.rehash(cap, cap >= LOCAL_MIN_CAP && !self.hashed_for_good)
    }

    /// True when the inserts since the last judgement stepped over more than [`MEAN_STEPS`]
    /// slots each on average; starts the next count.
    fn probes_long(&mut self) -> bool {
        let long = self.steps / MEAN_STEPS > self.inserts;
        self.inserts = 0;
        self.steps = 0;
        long
    }

    /// [`JUDGE_EVERY`]: a table placed by page whose probes are long is placed by address from
    /// now on (a refusal of the memory leaves it as it is: slower, but right).
    #[cold]
    fn judge(&mut self) {
        if self.inserts < JUDGE_MIN {
            return;
        }
        if self.probes_long() {
            self.hashed_for_good = true;
            self.rehash(self.cap, false);
        }
    }

    /// Moves every entry to a new table of `cap` slots placed as `local` says; false (nothing
    /// changed) when the system refuses the memory.
    #[cold]
    fn rehash(&mut self, cap: usize, local: bool) -> bool {
        let Some(p) = map_table(cap * std::mem::size_of::<Slot>()) else {
            return false;
        };
        let old = (self.slots, self.cap);
        self.slots = p.as_ptr().cast();
        self.cap = cap;
        self.local = local;
        self.inserts = 0;
        self.steps = 0;
        self.shift = 64 - cap.trailing_zeros();
        self.grow_at = cap / 8 * 5;
        let mask = cap - 1;
        for j in 0..old.1 {
            // SAFETY: j < the old capacity; the new table is fresh (zeroed: every slot empty).
            unsafe {
                let s = *old.0.add(j);
                if s.addr == 0 {
                    continue;
                }
                let mut i = self.home(s.addr);
                while (*self.slot(i)).addr != 0 {
                    i = (i + 1) & mask;
                }
                *self.slot(i) = s;
            }
        }
        if !old.0.is_null() {
            unmap(old.0.cast(), old.1 * std::mem::size_of::<Slot>());
        }
        true
    }

    /// A free overflow entry holding `b`: its index, or None when no memory can be had.
    #[cold]
    fn big_put(&mut self, b: LiveBlock) -> Option<u32> {
        let i = if self.big_free != NONE {
            let i = self.big_free;
            // SAFETY: on the free list, so below big_top.
            self.big_free = unsafe { (*self.big.add(i as usize)).next_free };
            i
        } else {
            if self.big_top == self.big_cap {
                let cap = (self.big_cap * 2).max(4096 / std::mem::size_of::<Big>());
                if cap >= NONE as usize {
                    return None;
                }
                let p = map_anon(cap * std::mem::size_of::<Big>())?;
                let p: *mut Big = p.as_ptr().cast();
                if !self.big.is_null() {
                    // SAFETY: both mappings hold big_top entries at least; the old is ours.
                    unsafe { std::ptr::copy_nonoverlapping(self.big, p, self.big_top) };
                    unmap(self.big.cast(), self.big_cap * std::mem::size_of::<Big>());
                }
                self.big = p;
                self.big_cap = cap;
            }
            self.big_top += 1;
            (self.big_top - 1) as u32
        };
        // SAFETY: i < big_top <= big_cap.
        unsafe {
            *self.big.add(i as usize) = Big {
                block: b,
                next_free: NONE,
            }
        };
        self.big_len += 1;
        Some(i)
    }

    fn big_get(&self, meta: u64) -> LiveBlock {
        // SAFETY: an overflow word names a used entry of the slab.
        unsafe { (*self.big.add((meta & 0xffff_ffff) as usize)).block }
    }

    fn big_take(&mut self, meta: u64) -> LiveBlock {
        let i = (meta & 0xffff_ffff) as u32;
        let b = self.big_get(meta);
        // SAFETY: as in big_get.
        unsafe { (*self.big.add(i as usize)).next_free = self.big_free };
        self.big_free = i;
        self.big_len -= 1;
        b
    }

    #[inline(always)]
    fn decode<const AGG: bool>(&self, meta: u64) -> LiveBlock {
        if meta & OVERFLOW == 0 {
            packing::<AGG>().unpack(meta)
        } else {
            self.big_get(meta)
        }
    }

    /// Adds or replaces the entry of `addr`; false when there is no memory for it. Inlined into
    /// its callers (`--all-blocks` runs it on nearly every `malloc`): a call and a second frame
    /// cost more than the probe at a low load.
    #[inline(always)]
    fn insert<const AGG: bool>(&mut self, addr: u64, b: &LiveBlock) -> bool {
        if self.len >= self.grow_at && !self.grow() {
            return false;
        }
        let meta = match packing::<AGG>().pack(b) {
            Some(m) => m,
            None => match self.big_put(*b) {
                Some(i) => OVERFLOW | i as u64,
                None => return false,
            },
        };
        let mask = self.cap - 1;
        let mut i = self.home(addr);
        let start = i;
        loop {
            // SAFETY: i < cap; the table has an empty slot (load below 5/8).
            let s = unsafe { &mut *self.slot(i) };
            if s.addr == 0 {
                *s = Slot { addr, meta };
                self.len += 1;
                if self.local {
                    let steps = i.wrapping_sub(start) & mask;
                    self.steps = self.steps.saturating_add(steps as u32);
                    self.inserts += 1;
                    if self.inserts == JUDGE_EVERY || steps > LONG_RUN {
                        self.judge();
                    }
                }
                return true;
            }
            if s.addr == addr {
                // Freed where we could not see it, and handed out again: the new block counts.
                let old = s.meta;
                s.meta = meta;
                if old & OVERFLOW != 0 {
                    self.big_take(old);
                }
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes the entry of `addr`, shifting the rest of its probe run back.
    #[inline]
    fn remove<const AGG: bool>(&mut self, addr: u64) -> Option<LiveBlock> {
        self.remove_as::<AGG, false>(addr)
    }

    /// [`Self::remove`]; with `SAMPLED_ONLY`, an entry of an unsampled block (`--all-blocks`:
    /// stack [`crate::sample::UNSAMPLED`]) is removed but not unpacked, and None is returned, as
    /// for an absent one: its free needs nothing of it.
    #[inline]
    fn remove_as<const AGG: bool, const SAMPLED_ONLY: bool>(
        &mut self,
        addr: u64,
    ) -> Option<LiveBlock> {
        if self.cap == 0 {
            return None;
        }
        let mask = self.cap - 1;
        let mut i = self.home(addr);
        let meta = loop {
            // SAFETY: i < cap.
            let s = unsafe { *self.slot(i) };
            if s.addr == addr {
                break s.meta;
            }
            if s.addr == 0 {
                return None;
            }
            i = (i + 1) & mask;
        };
        let unsampled =
            meta & ((1u64 << packing::<AGG>().stack) - 1) == u64::from(crate::sample::UNSAMPLED);
        let b = if meta & OVERFLOW != 0 {
            Some(self.big_take(meta))
        } else if SAMPLED_ONLY && unsampled {
            None
        } else {
            Some(packing::<AGG>().unpack(meta))
        };
        // Backward shift: each later entry of the run whose home is not cyclically in
        // (i, j] moves into the hole.
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            // SAFETY: i, j < cap.
            let s = unsafe { *self.slot(j) };
            if s.addr == 0 {
                break;
            }
            let k = self.home(s.addr);
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                // SAFETY: i < cap.
                unsafe { *self.slot(i) = s };
                i = j;
            }
        }
        // SAFETY: i < cap.
        unsafe { (*self.slot(i)).addr = 0 };
        self.len -= 1;
        b
    }

    fn for_each<const AGG: bool>(&self, f: &mut impl FnMut(u64, LiveBlock)) {
        for i in 0..self.cap {
            // SAFETY: i < cap.
            let s = unsafe { *self.slot(i) };
            if s.addr != 0 {
                f(s.addr, self.decode::<AGG>(s.meta));
            }
        }
    }

    fn clear(&mut self) {
        if !self.slots.is_null() {
            unmap(self.slots.cast(), self.cap * std::mem::size_of::<Slot>());
        }
        if !self.big.is_null() {
            unmap(self.big.cast(), self.big_cap * std::mem::size_of::<Big>());
        }
        *self = Table::new();
    }

    #[cfg(test)]
    fn mapped_bytes(&self) -> usize {
        self.cap * std::mem::size_of::<Slot>() + self.big_cap * std::mem::size_of::<Big>()
    }
}

/// A shard on cache lines of its own: threads working on two shards never share a line.
///
/// The second field is a hint for [`LiveSet::prefetch`]: the table's slots, placement and shift
/// as last set under the lock ([`HINT_LOCAL`]), read without the lock. A stale hint only
/// prefetches the wrong line: a prefetch never faults, even on memory that a growth has since
/// unmapped.
#[repr(align(64))]
struct Shard(SpinLock<Table>, AtomicU64);

/// A shard's hint: the slots pointer below this bit (user space is 47 bits), the table's
/// placement (`local`) in it, the shift above it.
const HINT_LOCAL: u64 = 1 << 55;
const HINT_SHIFT: u32 = 56;

impl Shard {
    /// Publishes the table's layout for [`LiveSet::prefetch`]; under the lock, after any change.
    #[inline(always)]
    fn publish(&self, t: &Table) {
        let local = if t.local { HINT_LOCAL } else { 0 };
        let hint = t.slots as u64 | local | u64::from(t.shift) << HINT_SHIFT;
        if self.1.load(Ordering::Relaxed) != hint {
            self.1.store(hint, Ordering::Relaxed);
        }
    }
}

/// The multiplicative (Fibonacci) hash of an address: its bits below the top 6 choose the slot
/// of a table placed by address, and the free filter's counter. Addresses differ in their middle
/// bits; the product's high bits depend on all of them.
#[inline(always)]
fn hash(addr: u64) -> u64 {
    addr.wrapping_mul(GOLDEN)
}

/// Fibonacci hashing's multiplier (2^64 divided by the golden ratio).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hash of an address's page: its top bits choose the shard (whatever the table's
/// placement), the next ones a page's base slot ([`Table::home`]).
#[inline(always)]
fn page_hash(addr: u64) -> u64 {
    (addr >> 12).wrapping_mul(GOLDEN)
}

/// [`Table::home`] of `addr` in a table of 2^(64 − `shift`) slots (256 at least, so that the
/// place in the page, 0 to 255, XORed into a base stays in the table).
#[inline(always)]
fn home_in(addr: u64, shift: u32, local: bool) -> usize {
    if local {
        let base = (page_hash(addr) << SHARD_BITS) >> shift;
        (base ^ ((addr >> 4) & 0xff)) as usize
    } else {
        ((hash(addr) << SHARD_BITS) >> shift) as usize
    }
}

/// Starts loading the cache line of `p`, whatever `p` is: a prefetch is only a hint, and never
/// faults (not on an unmapped address, not on a guard page).
#[inline(always)]
fn prefetch(p: u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as above: no access is made, so no address is wrong.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The filter's counters: 2^14 bytes. Every free reads one, at random: in 16 KiB they mostly
/// stay in the first-level cache, where 2^15 four-byte ones (128 KiB) missed it on every free
/// (cachegrind, manyblocks.c 1 M sampled at 512 KiB, a 32 KiB L1: 999,574 misses in 1 M frees;
/// now 304,140). The price: with `n` sampled blocks live, about n/16,384 of the other frees
/// pass to the lock and the probe (400 live at 512 KiB in 200 MiB of heap: 2.4 %).
const FILTER_BITS: u32 = 14;

/// A filter counter's top: a counter that reaches it stays there (it then only lets more
/// frees through to the lock and the probe, never misses a held block).
const STUCK: u8 = u8::MAX;

/// One more entry on a filter counter (none once it is [`STUCK`]).
fn count_up(c: &AtomicU8) {
    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        (v != STUCK).then(|| v + 1)
    });
}

/// One entry fewer on a filter counter (none when it is [`STUCK`]: it may count more than 255).
fn count_down(c: &AtomicU8) {
    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        (v != STUCK && v != 0).then(|| v - 1)
    });
}

/// The recorder's live set's free filter ([`LiveSet::publish_filter`]), or null: what the hooks'
/// fast path reads ([`filter_says_absent`]), one load with no `Core` to reach first.
static FREE_FILTER: AtomicPtr<AtomicU8> = AtomicPtr::new(std::ptr::null_mut());

/// The counter of hash `h` in a filter of 2^[`FILTER_BITS`] counters: the hash's bits below
/// the shard's, so that the counters spread whatever the shard.
#[inline(always)]
fn filter_index(h: u64) -> usize {
    ((h << SHARD_BITS) >> (64 - FILTER_BITS)) as usize
}

/// True when the published filter is on and says that the live set does not hold `addr`;
/// false when no filter is published (every mode but sampled recording without
/// `--all-blocks`, and before the recorder is set up).
#[inline(always)]
pub(crate) fn filter_says_absent(addr: usize) -> bool {
    let f = FREE_FILTER.load(Ordering::Acquire);
    // SAFETY: the index is below the filter's length; a published filter is never unmapped.
    !f.is_null()
        && unsafe { (*f.add(filter_index(hash(addr as u64)))).load(Ordering::Relaxed) } == 0
}

/// The live set (see the module's documentation).
pub(crate) struct LiveSet {
    shards: [Shard; SHARDS],
    /// Aggregated mode's packing ([`AGGREGATED`]), else [`EVENTS`].
    aggregated: bool,
    /// Null, or the free filter ([`Self::enable_filter`]): 2^[`FILTER_BITS`] counters, each the
    /// number of entries (at least) whose address hashes to it.
    filter: AtomicPtr<AtomicU8>,
}

impl LiveSet {
    /// An empty set; `aggregated`: keep each block's realloc chain and stream too.
    pub(crate) const fn new(aggregated: bool) -> LiveSet {
        LiveSet {
            shards: [const { Shard(SpinLock::new(Table::new()), AtomicU64::new(0)) }; SHARDS],
            aggregated,
            filter: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Turns on the free filter, before the first insert: for sampled recording, where the set
    /// holds a few blocks (one in ~8,000 at 512 KiB for 64-byte blocks) and nearly every free is
    /// of a block it does not hold. Each entry adds one to a counter chosen by its address's
    /// hash, and its removal takes it off, so a free whose counter is 0 needs no lock and no
    /// probe ([`Self::may_hold`]). An insert that replaced an entry counts twice: only a lookup
    /// too many later, never a block missed. Without memory for it, the filter stays off.
    pub(crate) fn enable_filter(&self) {
        if let Some(p) = map_anon(std::mem::size_of::<AtomicU8>() << FILTER_BITS) {
            self.filter.store(p.as_ptr().cast(), Ordering::Release);
        }
    }

    /// Makes this set's filter the one the hooks' fast path reads ([`filter_says_absent`]): the
    /// recorder's own set, once, after [`Self::enable_filter`].
    pub(crate) fn publish_filter(&self) {
        FREE_FILTER.store(self.filter.load(Ordering::Acquire), Ordering::Release);
    }

    /// The filter's counter for hash `h`, when the filter is on.
    #[inline(always)]
    fn filter_slot(&self, h: u64) -> Option<&AtomicU8> {
        let f = self.filter.load(Ordering::Acquire);
        if f.is_null() {
            return None;
        }
        let i = filter_index(h);
        // SAFETY: i < 2^FILTER_BITS, the filter's length; it is never unmapped.
        Some(unsafe { &*f.add(i) })
    }

    /// False when the set certainly does not hold `addr` (its filter counter is 0). The count
    /// of an insert is made before the block's address is handed to the program, so any thread
    /// that frees the block sees it (the program's own synchronisation orders the two).
    #[cfg(test)]
    pub(crate) fn may_hold(&self, addr: usize) -> bool {
        self.filter_slot(hash(addr as u64))
            .is_none_or(|c| c.load(Ordering::Relaxed) != 0)
    }

    /// The shard of `addr`: by its page, whatever the table's placement.
    #[inline(always)]
    fn shard_of(&self, addr: u64) -> &Shard {
        &self.shards[(page_hash(addr) >> (64 - SHARD_BITS)) as usize]
    }

    #[inline(always)]
    fn shard(&self, addr: u64) -> &SpinLock<Table> {
        &self.shard_of(addr).0
    }

    /// Starts loading the slot where `addr`'s probe will begin, so that the insert or removal
    /// that follows (after the unwind, or the free's bookkeeping) finds it in cache. With
    /// millions of live blocks the tables are far larger than the caches and every probe is a
    /// miss to memory: on manyblocks.c (5 M blocks) the one load of the probe took 80 % of
    /// `record_alloc`'s samples. No lock, no store: only the shard's published hint is read.
    #[inline(always)]
    pub(crate) fn prefetch(&self, addr: usize) {
        if let Some(p) = self.hinted_home(addr) {
            prefetch(p);
        }
    }

    /// Where the shard's hint says `addr`'s probe begins; None before the shard has a table.
    #[inline(always)]
    fn hinted_home(&self, addr: usize) -> Option<u64> {
        let addr = addr as u64;
        let hint = self.shard_of(addr).1.load(Ordering::Relaxed);
        let (slots, shift) = (hint & (HINT_LOCAL - 1), (hint >> HINT_SHIFT) as u32);
        if slots == 0 {
            return None;
        }
        let home = home_in(addr, shift, hint & HINT_LOCAL != 0) as u64;
        Some(slots.wrapping_add(home * std::mem::size_of::<Slot>() as u64))
    }

    /// Adds (or replaces) the block at `addr`. Returns false when no memory could be had for it:
    /// the block is then not tracked (its free will count as untracked).
    #[inline(always)]
    pub(crate) fn insert(&self, addr: usize, b: LiveBlock) -> bool {
        let addr = addr as u64;
        if let Some(c) = self.filter_slot(hash(addr)) {
            return self.insert_counted(c, addr, &b);
        }
        self.insert_at(addr, &b)
    }

    #[inline(always)]
    fn insert_at(&self, addr: u64, b: &LiveBlock) -> bool {
        let shard = self.shard_of(addr);
        let mut t = shard.0.lock();
        let done = if self.aggregated {
            t.insert::<true>(addr, b)
        } else {
            t.insert::<false>(addr, b)
        };
        shard.publish(&t);
        done
    }

    /// [`Self::insert`] with the filter on (sampled recording: a sampled block, rare), out of
    /// line so that the unfiltered path stays as it was.
    #[inline(never)]
    fn insert_counted(&self, c: &AtomicU8, addr: u64, b: &LiveBlock) -> bool {
        count_up(c);
        let done = self.insert_at(addr, b);
        if !done {
            count_down(c);
        }
        done
    }

    /// Takes the block at `addr` out of the set.
    #[inline(always)]
    pub(crate) fn remove(&self, addr: usize) -> Option<LiveBlock> {
        let addr = addr as u64;
        if let Some(c) = self.filter_slot(hash(addr)) {
            if c.load(Ordering::Relaxed) == 0 {
                return None;
            }
            return self.remove_counted(c, addr);
        }
        self.remove_at(addr)
    }

    /// Takes the block at `addr` out of the set, and returns it if it was sampled (its stack is
    /// not [`crate::sample::UNSAMPLED`]): the free of a block under `--all-blocks`, where the
    /// unsampled ones, nearly all, need nothing back (not even unpacked).
    #[inline(always)]
    pub(crate) fn remove_sampled(&self, addr: usize) -> Option<LiveBlock> {
        let addr = addr as u64;
        if self.filter_slot(hash(addr)).is_some() {
            return self.remove(addr as usize);
        }
        let mut t = self.shard(addr).lock();
        if self.aggregated {
            t.remove_as::<true, true>(addr)
        } else {
            t.remove_as::<false, true>(addr)
        }
    }

    #[inline(always)]
    fn remove_at(&self, addr: u64) -> Option<LiveBlock> {
        let mut t = self.shard(addr).lock();
        if self.aggregated {
            t.remove::<true>(addr)
        } else {
            t.remove::<false>(addr)
        }
    }

    /// [`Self::remove`] past the filter (a block it may hold), out of line as
    /// [`Self::insert_counted`].
    #[inline(never)]
    fn remove_counted(&self, c: &AtomicU8, addr: u64) -> Option<LiveBlock> {
        let b = self.remove_at(addr);
        if b.is_some() {
            count_down(c);
        }
        b
    }

    /// Calls `f` with every entry, one shard at a time (each under its lock).
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, LiveBlock)) {
        for s in &self.shards {
            self.visit(&s.0.lock(), &mut f);
        }
    }

    /// [`Self::for_each`] for the leak check, with the other threads stopped: a lock is only
    /// tried (a stopped thread never holds one: it was stopped outside the recorder; a thread
    /// that could not be stopped holds one for a moment), and waiting in a lock's slow path
    /// must not allocate. False when a lock stayed taken until `deadline` (in `now_mono` ns).
    pub(crate) fn try_for_each(&self, deadline: u64, mut f: impl FnMut(u64, LiveBlock)) -> bool {
        for s in &self.shards {
            let t = loop {
                if let Some(t) = s.0.try_lock() {
                    break t;
                }
                if crate::clock::now_mono() > deadline {
                    return false;
                }
                // SAFETY: no preconditions.
                unsafe { libc::sched_yield() };
            };
            self.visit(&t, &mut f);
        }
        true
    }

    fn visit(&self, t: &Table, f: &mut impl FnMut(u64, LiveBlock)) {
        if self.aggregated {
            t.for_each::<true>(f)
        } else {
            t.for_each::<false>(f)
        }
    }

    /// The entries now, for the leak check: locks only tried, as in [`Self::try_for_each`].
    pub(crate) fn try_len(&self, deadline: u64) -> Option<usize> {
        let mut n = 0;
        for s in &self.shards {
            loop {
                if let Some(t) = s.0.try_lock() {
                    n += t.len;
                    break;
                }
                if crate::clock::now_mono() > deadline {
                    return None;
                }
                // SAFETY: no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
        Some(n)
    }

    /// The entries now (each shard's count read under its lock, the sum not atomic).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len).sum()
    }

    /// Forgets every entry and gives the tables back.
    pub(crate) fn clear(&self) {
        for s in &self.shards {
            let mut t = s.0.lock();
            t.clear();
            s.publish(&t);
        }
        let f = self.filter.load(Ordering::Acquire);
        if !f.is_null() {
            for i in 0..1usize << FILTER_BITS {
                // SAFETY: i below the filter's length.
                unsafe { (*f.add(i)).store(0, Ordering::Relaxed) };
            }
        }
    }

    /// Bytes of the tables and slabs (mapped; what has been touched of them is resident).
    #[cfg(test)]
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().mapped_bytes()).sum()
    }

    /// Entries kept in the overflow slabs.
    #[cfg(test)]
    pub(crate) fn overflowed(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().big_len).sum()
    }

    /// Takes every shard's lock, in shard order (the `fork` handlers).
    pub(crate) fn lock_all(&self) {
        for s in &self.shards {
            s.0.raw_lock();
        }
    }

    /// Releases what [`Self::lock_all`] took.
    ///
    /// # Safety
    /// The locks were taken with [`Self::lock_all`] (in this process or, after `fork`, in the
    /// parent), and no guard of them is alive.
    pub(crate) unsafe fn unlock_all(&self) {
        for s in self.shards.iter().rev() {
            s.0.raw_unlock();
        }
    }
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    fn block(size: u64, usable: u64, stack: u32) -> LiveBlock {
        LiveBlock {
            size,
            usable,
            stack,
            chain: 0,
            stream: 0,
        }
    }

    fn same(a: LiveBlock, b: LiveBlock) -> bool {
        (a.size, a.usable, a.stack, a.chain, a.stream)
            == (b.size, b.usable, b.stack, b.chain, b.stream)
    }

    /// Spread-out, 16-aligned addresses, as an allocator's.
    fn addr(i: u64) -> usize {
        (0x5555_0000_0000 + i * 48) as usize
    }

    /// The slot that the probe of `addr` starts at, read under the shard's lock.
    fn true_home(set: &LiveSet, addr: usize) -> Option<u64> {
        let t = set.shard(addr as u64).lock();
        (t.cap > 0).then(|| t.slot(t.home(addr as u64)) as u64)
    }

    #[test]
    fn the_prefetch_hint_names_the_probes_first_slot_through_growth_and_clear() {
        let set = LiveSet::new(false);
        assert_eq!(set.hinted_home(addr(7)), None);
        let n = 100_000u64;
        for i in 0..n {
            assert!(set.insert(addr(i), block(32, 40, 1)));
            // Every few inserts, and always right after the first (each shard's first table).
            if i % 97 == 0 || i < 64 {
                let probe = addr(i * 31 % (i + 1));
                assert_eq!(set.hinted_home(probe), true_home(&set, probe), "after {i}");
            }
        }
        for i in (0..n).step_by(1009) {
            assert_eq!(set.hinted_home(addr(i)), true_home(&set, addr(i)));
        }
        set.clear();
        assert_eq!(set.hinted_home(addr(7)), None);
        assert_eq!(true_home(&set, addr(7)), None);
    }

    /// The longest probe run of the table that holds `addr`, and its placement.
    fn longest_run(set: &LiveSet, addr: u64) -> (usize, bool) {
        let t = set.shard(addr).lock();
        let (mut best, mut run) = (0, 0);
        for i in 0..2 * t.cap {
            // SAFETY: below cap.
            if unsafe { (*t.slot(i % t.cap)).addr } != 0 {
                run += 1;
                best = best.max(run);
            } else {
                run = 0;
            }
        }
        (best.min(t.cap), t.local)
    }

    #[test]
    fn pages_denser_than_their_slots_turn_the_table_to_hashed_placement() {
        // glibc-like: 32 to 80 bytes apart. The tables keep placing by page, runs stay short.
        let set = LiveSet::new(false);
        let mut a = 0x5555_0000_0000u64;
        let mut spread = Vec::new();
        for i in 0..400_000u64 {
            a += 32 + 16 * (i * 7 % 4);
            spread.push(a);
            assert!(set.insert(a as usize, block(24, 24, 1)));
        }
        let (run, local) = longest_run(&set, spread[0]);
        assert!(local && run < 256, "run {run}, local {local}");
        // jemalloc's 8-byte class: 512 blocks a page, twice the page's slots.
        let dense = LiveSet::new(false);
        let packed: Vec<u64> = (0..2_000_000u64)
            .map(|i| 0x7f00_0000_0000 + 8 * i)
            .collect();
        for &a in &packed {
            assert!(dense.insert(a as usize, block(8, 8, 2)));
        }
        let (run, local) = longest_run(&dense, packed[0]);
        assert!(!local && run < 128, "run {run}, local {local}");
        // Every entry is where a lookup finds it, in both.
        for &a in spread.iter().step_by(3) {
            assert!(set.remove(a as usize).is_some());
        }
        for &a in packed.iter().step_by(3) {
            assert!(dense.remove(a as usize).is_some());
        }
        assert_eq!(set.len(), 400_000 - spread.iter().step_by(3).count());
        assert_eq!(dense.len(), packed.len() - packed.iter().step_by(3).count());
        for (k, &a) in packed.iter().enumerate() {
            assert_eq!(dense.remove(a as usize).is_some(), k % 3 != 0, "{k}");
        }
    }

    #[test]
    fn inserts_removes_and_grows_with_every_entry_intact() {
        let set = LiveSet::new(false);
        let n = 300_000u64;
        for i in 0..n {
            assert!(set.insert(addr(i), block(16 + i % 49, 24 + i % 49, i as u32 % 1000)));
        }
        assert_eq!(set.len(), n as usize);
        assert_eq!(set.overflowed(), 0);
        // Half of them go, in an order unrelated to the insertion's.
        for i in (0..n).filter(|i| i % 2 == 1).rev() {
            let b = set.remove(addr(i)).expect("present");
            assert!(same(b, block(16 + i % 49, 24 + i % 49, i as u32 % 1000)));
        }
        assert!(set.remove(addr(1)).is_none());
        assert!(set.remove(addr(n + 5)).is_none());
        assert_eq!(set.len(), n as usize / 2);
        // The rest is all there, found by lookup and by iteration.
        let mut seen = 0;
        set.for_each(|a, b| {
            let i = (a - 0x5555_0000_0000) / 48;
            assert_eq!(i % 2, 0);
            assert!(same(b, block(16 + i % 49, 24 + i % 49, i as u32 % 1000)));
            seen += 1;
        });
        assert_eq!(seen, n / 2);
        for i in (0..n).step_by(2) {
            assert!(set.remove(addr(i)).is_some());
        }
        assert_eq!(set.len(), 0);
        set.clear();
        assert_eq!(set.mapped_bytes(), 0);
    }

    #[test]
    fn remove_sampled_takes_every_block_and_returns_the_sampled_ones() {
        for aggregated in [false, true] {
            let set = LiveSet::new(aggregated);
            for i in 0..2000u64 {
                // Every third block sampled (stack 1 + i), the rest unsampled; one huge one of each.
                let stack = if i % 3 == 0 { 1 + i as u32 } else { 0 };
                let size = if i < 2 { 1 << 40 } else { 16 + i % 64 };
                assert!(set.insert(addr(i), block(size, size, stack)));
            }
            for i in 0..2000u64 {
                let got = set.remove_sampled(addr(i));
                let size = if i < 2 { 1 << 40 } else { 16 + i % 64 };
                match got {
                    // A huge block is unpacked from the slab either way.
                    Some(b) if b.stack == 0 => assert!(i < 2 && i % 3 != 0, "block {i}"),
                    Some(b) => assert!(i % 3 == 0 && same(b, block(size, size, 1 + i as u32))),
                    None => assert!(i % 3 != 0, "sampled block {i} not returned"),
                }
                assert!(set.remove(addr(i)).is_none(), "block {i} still held");
            }
            assert_eq!((set.len(), set.overflowed()), (0, 0));
            set.clear();
        }
    }

    #[test]
    fn random_inserts_replacements_and_removes_agree_with_a_reference_map() {
        // Churn at every load up to the growth point, with wrap-around runs: every entry must
        // stay findable after each backward shift.
        let set = LiveSet::new(false);
        let mut reference = std::collections::HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..400_000u64 {
            // Few distinct addresses, so that inserts hit held ones (replacements) and removes
            // find most; the live count swings between about 0 and 6,000.
            let live_target = 3000 + (round / 50_000 % 2) * 3000;
            let a = addr(next() % (2 * live_target));
            if next() % 2 == 0 {
                let b = block(round % 100, round % 100 + 8, (round % 5000) as u32);
                assert!(set.insert(a, b));
                reference.insert(a, b);
            } else {
                let got = set.remove(a);
                let want = reference.remove(&a);
                assert_eq!(got.is_some(), want.is_some(), "round {round}");
                if let (Some(g), Some(w)) = (got, want) {
                    assert!(same(g, w), "round {round}");
                }
            }
        }
        assert_eq!(set.len(), reference.len());
        for (a, b) in &reference {
            assert!(same(set.remove(*a).expect("held"), *b));
        }
        assert_eq!(set.len(), 0);
        set.clear();
    }

    #[test]
    fn sixteen_bytes_an_entry_and_at_most_five_eighths_full() {
        let set = LiveSet::new(false);
        let n = 1_000_000u64;
        for i in 0..n {
            set.insert(addr(i), block(32, 40, 7));
        }
        let per = set.mapped_bytes() as f64 / n as f64;
        // 16 bytes / load factor, the load between 5/16 and 5/8 (one shard a little fuller
        // than the mean may have doubled already).
        assert!(
            (16.0 / 0.63..=16.0 / 0.25).contains(&per),
            "{per} bytes per entry"
        );
        set.clear();
    }

    #[test]
    fn what_does_not_fit_the_packed_word_overflows_and_comes_back_exact() {
        for aggregated in [false, true] {
            let set = LiveSet::new(aggregated);
            let odd = [
                block(1 << 40, 1 << 40, 3), // huge
                block(100, 100 + 5000, 3),  // much slack
                block(100, 50, 3),          // usable below size (a front end's 0)
                block(8, 8, u32::MAX),      // stack id beyond the packing
                LiveBlock {
                    chain: 1000,
                    ..block(8, 8, 1)
                }, // a long realloc chain
                LiveBlock {
                    stream: 4000,
                    ..block(8, 8, 1)
                },
            ];
            for (i, b) in odd.iter().enumerate() {
                set.insert(addr(i as u64), *b);
            }
            for i in 0..1000u64 {
                set.insert(addr(100 + i), block(24, 24, 5));
            }
            // In event mode chain and stream are not kept, so those two fit.
            assert_eq!(set.overflowed(), if aggregated { 6 } else { 4 });
            for (i, b) in odd.iter().enumerate() {
                let got = set.remove(addr(i as u64)).unwrap();
                let want = if aggregated || (b.chain == 0 && b.stream == 0) {
                    *b
                } else {
                    LiveBlock {
                        chain: 0,
                        stream: 0,
                        ..*b
                    }
                };
                assert!(same(got, want), "{i}: {got:?}");
            }
            assert_eq!(set.overflowed(), 0);
            // A replaced overflow entry gives its slab entry back; slab entries are reused.
            set.insert(addr(0), odd[0]);
            set.insert(addr(0), block(8, 8, 1));
            assert_eq!(set.overflowed(), 0);
            set.insert(addr(0), odd[0]);
            assert!(same(set.remove(addr(0)).unwrap(), odd[0]));
            assert_eq!(set.len(), 1000);
            set.clear();
        }
    }

    #[test]
    fn aggregated_mode_keeps_chain_and_stream() {
        let set = LiveSet::new(true);
        let b = LiveBlock {
            size: 100,
            usable: 104,
            stack: 12345,
            chain: 5,
            stream: 200,
        };
        set.insert(addr(1), b);
        assert_eq!(set.overflowed(), 0);
        assert!(same(set.remove(addr(1)).unwrap(), b));
    }

    #[test]
    fn a_filter_counter_past_255_sticks_and_never_misses_a_held_block() {
        let set = LiveSet::new(false);
        set.enable_filter();
        // 300 addresses on one counter: more than a byte counts.
        let want = filter_index(hash(addr(0) as u64));
        let same: Vec<usize> = (0..u64::MAX)
            .map(addr)
            .filter(|&a| filter_index(hash(a as u64)) == want)
            .take(300)
            .collect();
        for &a in &same {
            assert!(set.insert(a, block(64, 64, 1)));
        }
        for (k, &a) in same.iter().enumerate() {
            assert!(set.may_hold(a), "block {k}");
            assert!(set.remove(a).is_some(), "block {k}");
        }
        assert_eq!(set.len(), 0);
        // Stuck: it lets every address of its counter through from now on.
        assert!(set.may_hold(same[0]));
        set.clear();
        assert!(!set.may_hold(same[0]));
    }

    #[test]
    fn the_filter_passes_every_held_block_and_stops_most_others() {
        let set = LiveSet::new(false);
        set.enable_filter();
        // 1,000 held blocks; 100,000 other addresses, which the filter should mostly stop
        // (1,000 of 16,384 counters taken: about 6 % of the others pass).
        for i in 0..1000u64 {
            assert!(set.insert(addr(i), block(64, 64, 1)));
        }
        assert!((0..1000).all(|i| set.may_hold(addr(i))));
        let passed = (1000..101_000u64)
            .filter(|&i| set.may_hold(addr(i)))
            .count();
        assert!(
            passed < 8_000,
            "{passed} of 100,000 absent addresses passed the filter"
        );
        assert!((1000..101_000u64).all(|i| set.remove(addr(i)).is_none()));
        // Replaced entries count twice, removed ones not at all: still no held block missed.
        for i in 0..500u64 {
            assert!(set.insert(addr(i), block(32, 32, 2)));
        }
        for i in 0..1000u64 {
            assert!(set.may_hold(addr(i)));
            assert!(set.remove(addr(i)).is_some(), "block {i}");
        }
        assert_eq!(set.len(), 0);
        // The 500 counted twice keep their counters at 1 (at most 500 of 16,384).
        let passed = (0..101_000u64).filter(|&i| set.may_hold(addr(i))).count();
        assert!(
            passed < 5_000,
            "{passed} addresses pass an empty set's filter"
        );
        set.clear();
        assert!((0..101_000u64).all(|i| !set.may_hold(addr(i))));
        // Without the filter every address may be held.
        assert!(LiveSet::new(false).may_hold(addr(5)));
    }

    #[test]
    fn threads_inserting_and_removing_at_once_lose_nothing() {
        static SET: LiveSet = LiveSet::new(false);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let base = t << 32;
                    // Each thread keeps a window of 5,000 live blocks of its own.
                    for i in 0..200_000u64 {
                        let a = addr(base + i);
                        assert!(SET.insert(a, block(i % 64, i % 64 + 8, t as u32)));
                        if i >= 5000 {
                            let j = i - 5000;
                            let b = SET.remove(addr(base + j)).expect("live");
                            assert!(same(b, block(j % 64, j % 64 + 8, t as u32)));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(SET.len(), 8 * 5000);
        let mut per_thread = [0usize; 8];
        SET.for_each(|a, b| {
            assert_eq!(b.stack as u64, ((a - 0x5555_0000_0000) / 48) >> 32);
            per_thread[b.stack as usize] += 1;
        });
        assert_eq!(per_thread, [5000; 8]);
        SET.clear();
    }
}
